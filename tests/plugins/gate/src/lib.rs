//! Test plugin `gate` (never deploy): its rules come from its sidecar `gate.toml`, so that
//! the hot-reload tests (`tests/tests/reload.rs`) and `stellwerk-bench reload` change them
//! by rewriting that file. The crate `gate-v2` builds this same source as version 2.0.0:
//! two different `.wasm` files of one plugin.
//!
//! Config keys, all optional:
//! - `name` (default `"gate"`) and `namespaces` (default `["gate"]`): what `describe` says,
//!   so that a copy can claim a taken namespace or name.
//! - `deny`: user ids whose subscriptions are refused (and revoked on reload).
//! - `revision`: appended to the version (`1.0.0+r2`), so that a config change is visible.
//!
//! Every other authenticated user may subscribe. An HTTP publish is stamped with the version
//! that let it through: `{"version": "1.0.0+r2", "data": <original>}`.

use stellwerk_plugin_sdk::prelude::*;

pub struct Gate;

fn version(config: &Value) -> String {
    let base = env!("CARGO_PKG_VERSION");
    match config.get("revision").and_then(Value::as_str) {
        Some(revision) => format!("{base}+{revision}"),
        None => base.to_owned(),
    }
}

impl ChannelPlugin for Gate {
    fn describe() -> Description {
        let config = host::config();
        let name = config.get("name").and_then(Value::as_str).unwrap_or("gate");
        let mut description = Description::new(name, version(&config));
        let namespaces: Vec<&str> = config
            .get("namespaces")
            .and_then(Value::as_array)
            .map(|list| list.iter().filter_map(Value::as_str).collect())
            .unwrap_or_else(|| vec!["gate"]);
        for namespace in namespaces {
            description = description.namespace(namespace, ChannelOptions::new());
        }
        description
    }

    fn authorize_subscribe(req: &SubscribeRequest) -> SubscribeDecision {
        let Some(user) = req.user() else {
            return SubscribeDecision::deny("login required");
        };
        let config = host::config();
        let denied = config
            .get("deny")
            .and_then(Value::as_array)
            .is_some_and(|list| list.iter().any(|u| u.as_str() == Some(user)));
        if denied {
            return SubscribeDecision::deny(format!(
                "user {user} is not admitted by gate {}",
                version(&config)
            ));
        }
        SubscribeDecision::allow()
    }

    fn on_publish(req: &PublishRequest) -> PublishDecision {
        if req.source != Source::Http {
            return PublishDecision::deny("only the HTTP API publishes here");
        }
        let version = version(&host::config());
        PublishDecision::replace(json!({"version": version, "data": req.data}))
    }
}

export_plugin!(Gate);

#[cfg(test)]
mod tests {
    use super::*;
    use stellwerk_plugin_sdk::testing;

    #[test]
    fn without_config_it_governs_gate_and_admits_everyone() {
        let description = testing::describe::<Gate>();
        assert_eq!(description.name(), "gate");
        assert!(description.options("gate").is_some());
        let decision = Gate::authorize_subscribe(
            &SubscribeRequest::for_channel("gate:x").by_user("u1", json!({})),
        );
        assert!(decision.is_allowed());
    }
}
