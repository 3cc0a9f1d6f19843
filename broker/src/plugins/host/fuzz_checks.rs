//! The properties of the checks on plugin answers, for `crate::fuzzing::plugin_answer`
//! (here because the WIT types are private to `host`). Answers are made from the fuzzer's
//! bytes; no wasm runs.

use std::path::Path;
use std::time::Duration;

use arbitrary::{Result, Unstructured};
use serde_json::Value;

use super::{
    check_description, deliveries, is_plugin_name, publish_verdict, subscribe_verdict, wit,
};
use crate::channel::{is_namespace, ChannelName};
use crate::fuzzing::{check_push, json_object, json_text, json_value};
use crate::plugins::{Delivery, PluginLimits, PublishVerdict, SubscribeVerdict};
use crate::protocol::{self, Refusal};

/// One answer of one hook, checked against what the broker makes of it; `true` when the
/// broker accepted it.
pub(crate) fn answer(u: &mut Unstructured<'_>) -> Result<bool> {
    // A small limit sometimes, so that the size check is reached.
    let max = if u.arbitrary()? {
        u.int_in_range(0..=256)?
    } else {
        PluginLimits::default().max_output_bytes
    };
    let channel = ChannelName::parse("course:0123abcd").expect("valid");
    match u.int_in_range(0..=3)? {
        0 => authorize_subscribe(u, max),
        1 => on_publish(u, max, &channel),
        2 => filter(u, max, &channel),
        _ => describe(u, max),
    }
}

fn authorize_subscribe(u: &mut Unstructured<'_>, max: usize) -> Result<bool> {
    if u.arbitrary()? {
        let reason: String = u.arbitrary()?;
        let verdict = subscribe_verdict(wit::SubscribeDecision::Deny(reason.clone()), max);
        assert_eq!(verdict.is_ok(), reason.len() <= max);
        let Ok(verdict) = verdict else {
            return Ok(false);
        };
        check_refusal(&reason);
        assert_eq!(verdict, SubscribeVerdict::Deny { reason });
        return Ok(true);
    }
    let presence_info_json = optional(u, |u| json_text(u, &|u| json_value(u, 3)))?;
    let audience = optional(u, |u| u.arbitrary::<String>())?;
    let size = presence_info_json.as_ref().map_or(0, String::len)
        + audience.as_ref().map_or(0, String::len);
    let info: Option<std::result::Result<Value, _>> =
        presence_info_json.as_deref().map(serde_json::from_str);
    let grant = wit::SubscriptionGrant {
        presence_info_json: presence_info_json.clone(),
        audience: audience.clone(),
    };
    let verdict = subscribe_verdict(wit::SubscribeDecision::Allow(grant), max);
    let acceptable = size <= max && !matches!(info, Some(Err(_)));
    assert_eq!(
        verdict.is_ok(),
        acceptable,
        "{presence_info_json:?} {verdict:?}"
    );
    if let Ok(verdict) = verdict {
        let presence_info = info.map(|info| info.expect("checked above"));
        assert_eq!(
            verdict,
            SubscribeVerdict::Allow {
                presence_info: presence_info.clone(),
                audience
            }
        );
        // Presence info goes to the other members inside a `join` push.
        let join = serde_json::json!({"type": "join", "info": presence_info}).to_string();
        assert_eq!(
            json_object(&join)["info"],
            presence_info.unwrap_or(Value::Null)
        );
        return Ok(true);
    }
    Ok(false)
}

fn on_publish(u: &mut Unstructured<'_>, max: usize, channel: &ChannelName) -> Result<bool> {
    let (decision, expected) = match u.int_in_range(0..=3)? {
        0 => (wit::PublishDecision::Allow, Some(PublishVerdict::Allow)),
        1 => {
            let reason: String = u.arbitrary()?;
            let expected = (reason.len() <= max).then(|| PublishVerdict::Deny {
                reason: reason.clone(),
            });
            (wit::PublishDecision::Deny(reason), expected)
        }
        _ => {
            let text = json_text(u, &|u| json_value(u, 3))?;
            let expected = (text.len() <= max && is_json(&text))
                .then(|| PublishVerdict::Replace(text.clone()));
            (wit::PublishDecision::Replace(text), expected)
        }
    };
    let verdict = publish_verdict(decision, max);
    assert_eq!(verdict.as_ref().ok(), expected.as_ref(), "{verdict:?}");
    match &verdict {
        Ok(PublishVerdict::Replace(text)) => check_push(channel, text),
        Ok(PublishVerdict::Deny { reason }) => check_refusal(reason),
        _ => {}
    }
    Ok(verdict.is_ok())
}

fn filter(u: &mut Unstructured<'_>, max: usize, channel: &ChannelName) -> Result<bool> {
    let audiences = u.int_in_range(0..=6)?;
    // Mostly one delivery per audience, sometimes a miscount.
    let count = if u.ratio(7, 8)? {
        audiences
    } else {
        u.int_in_range(0..=7)?
    };
    let mut answer = Vec::with_capacity(count);
    for _ in 0..count {
        answer.push(match u.int_in_range(0..=2)? {
            0 => wit::Delivery::Skip,
            1 => wit::Delivery::Original,
            _ => wit::Delivery::Replace(json_text(u, &|u| json_value(u, 2))?),
        });
    }
    let replaced: Vec<Option<String>> = answer
        .iter()
        .map(|d| match d {
            wit::Delivery::Replace(text) => Some(text.clone()),
            _ => None,
        })
        .collect();
    let kinds: Vec<u8> = answer
        .iter()
        .map(|d| match d {
            wit::Delivery::Skip => 0,
            wit::Delivery::Original => 1,
            wit::Delivery::Replace(_) => 2,
        })
        .collect();
    let size: usize = replaced.iter().flatten().map(String::len).sum();
    let acceptable =
        count == audiences && size <= max && replaced.iter().flatten().all(|t| is_json(t));
    let result = deliveries(answer, audiences, max);
    assert_eq!(result.is_ok(), acceptable, "{replaced:?} {result:?}");
    let Ok(result) = result else {
        return Ok(false);
    };
    for ((delivery, kind), text) in result.iter().zip(&kinds).zip(&replaced) {
        match delivery {
            Delivery::Skip => assert_eq!(*kind, 0),
            Delivery::Original => assert_eq!(*kind, 1),
            Delivery::Replace(data) => {
                assert_eq!(Some(data), text.as_ref());
                check_push(channel, data);
            }
        }
    }
    Ok(true)
}

fn describe(u: &mut Unstructured<'_>, max: usize) -> Result<bool> {
    let name = match u.int_in_range(0..=2)? {
        0 => u.arbitrary()?,
        _ => (*u.choose(&["public", "course", "my-plugin.v2", "", "Bad Name"])?).to_owned(),
    };
    let mut namespaces = Vec::new();
    for _ in 0..u.int_in_range(0..=4)? {
        let name = match u.int_in_range(0..=2)? {
            0 => u.arbitrary()?,
            _ => {
                (*u.choose(&["public", "course", "user", "a_b-9", "Course", "a:b", ""])?).to_owned()
            }
        };
        namespaces.push(wit::Namespace {
            name,
            options: wit::ChannelOptions {
                presence: u.arbitrary()?,
                history_size: u.arbitrary()?,
                history_ttl_seconds: u.arbitrary()?,
                client_publish: u.arbitrary()?,
            },
        });
    }
    let description = wit::Description {
        name: name.clone(),
        version: u.arbitrary()?,
        namespaces,
        filters: u.arbitrary()?,
    };
    let size = description.name.len()
        + description.version.len()
        + description
            .namespaces
            .iter()
            .map(|n| n.name.len())
            .sum::<usize>();
    let mut distinct: Vec<&str> = description
        .namespaces
        .iter()
        .map(|n| n.name.as_str())
        .collect();
    distinct.sort_unstable();
    distinct.dedup();
    let acceptable = size <= max
        && plain_name(&name)
        && !description.namespaces.is_empty()
        && description.namespaces.iter().all(|n| is_namespace(&n.name))
        && distinct.len() == description.namespaces.len();
    let limits = PluginLimits {
        max_output_bytes: max,
        ..PluginLimits::default()
    };
    let described = check_description(&description, Path::new("fuzz.wasm"), &limits);
    assert_eq!(described.is_ok(), acceptable, "{:?}", described.err());
    let Ok(described) = described else {
        return Ok(false);
    };
    assert!(is_plugin_name(&described.name));
    assert_eq!(described.name, description.name);
    assert_eq!(described.version, description.version);
    assert_eq!(described.namespaces.len(), description.namespaces.len());
    for ((namespace, options), declared) in described.namespaces.iter().zip(&description.namespaces)
    {
        assert_eq!(*namespace, declared.name);
        assert_eq!(options.presence, declared.options.presence);
        assert_eq!(options.history_size, declared.options.history_size);
        assert_eq!(
            options.history_ttl,
            Duration::from_secs(declared.options.history_ttl_seconds)
        );
        assert_eq!(options.client_publish, declared.options.client_publish);
        let channel = ChannelName::parse(&format!("{namespace}:x")).expect("a usable namespace");
        assert_eq!(channel.namespace(), namespace);
    }
    Ok(true)
}

/// The plugin-name rule of the contract, written apart from the host's.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

fn is_json(text: &str) -> bool {
    serde_json::from_str::<Value>(text).is_ok()
}

fn optional<T>(
    u: &mut Unstructured<'_>,
    make: impl FnOnce(&mut Unstructured<'_>) -> Result<T>,
) -> Result<Option<T>> {
    Ok(if u.arbitrary()? { Some(make(u)?) } else { None })
}

/// A denial's reason reaches the client inside an error reply.
fn check_refusal(reason: &str) {
    let refusal = Refusal::new(protocol::ErrorCode::Forbidden, reason);
    let reply = json_object(&protocol::error_reply(Some(1), &refusal));
    assert_eq!(reply["message"], reason);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the plugin_answer target: without serde_json's `float_roundtrip` the last
    /// digit of a presence info number changed on its way to the other members.
    #[test]
    fn presence_info_numbers_reach_members_unchanged() {
        for number in [
            "7.789457098860468e-203",
            "0.30000000000000004",
            "1.7976931348623157e308",
        ] {
            let grant = wit::SubscriptionGrant {
                presence_info_json: Some(format!(r#"{{"x":{number}}}"#)),
                audience: None,
            };
            let Ok(SubscribeVerdict::Allow {
                presence_info: Some(info),
                ..
            }) = subscribe_verdict(wit::SubscribeDecision::Allow(grant), 1024)
            else {
                panic!("accepted");
            };
            // Rust's own float parsing is correctly rounded.
            let exact: f64 = number.parse().unwrap();
            assert_eq!(info["x"].as_f64(), Some(exact), "{number}");
            let sent: Value = serde_json::from_str(&info.to_string()).unwrap();
            assert_eq!(sent["x"].as_f64(), Some(exact), "{number}");
        }
    }
}
