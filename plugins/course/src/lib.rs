//! Channel plugin for the `course` namespace: live updates and a chat per Stud.IP course.
//!
//! Channels: `course:<course_id>:<topic>`, for example
//! `course:a07535cf2f8a72df33c12ddfa4b53dde:chat` or `…:wiki`. The course id is Stud.IP's
//! `seminar_id` (32 hex characters); the topic is one non-empty name of the page's choosing.
//!
//! The token Stud.IP mints carries two claims this plugin reads:
//! - `courses`: course id → the user's status in that course (`user`, `autor`, `tutor`,
//!   `dozent`), like `CourseMember::status`;
//! - `perm`: the global permission (`user`, `autor`, `tutor`, `dozent`, `admin`, `root`).
//!
//! Rules:
//! - Members of the course subscribe to every topic; `admin` and `root` subscribe to every
//!   course. Everybody else, and anonymous connections, are refused.
//! - Subscribers are grouped into two audiences: `staff` (course status `tutor`/`dozent`, or
//!   perm `admin`/`root`) and `members` (everybody else). A message with
//!   `"visibility": "staff"` reaches `staff` only.
//! - Clients publish on the `chat` topic only, with course status `autor` or above (or perm
//!   `admin`/`root`). The plugin writes the sender's user id into `author`, whatever the client
//!   sent there, and cuts `text` to 2,000 characters.
//! - Stud.IP's server (the HTTP API) publishes on any topic, unchanged.
//!
//! Presence is on (who is in the course right now), history keeps 200 messages for an hour.

use stellwerk_plugin_sdk::prelude::*;

pub struct Course;

/// The only topic clients may publish on.
const CHAT: &str = "chat";
/// Longest chat `text` kept, in characters (not bytes: umlauts count once).
const MAX_CHAT_CHARS: usize = 2000;
/// Audience tags handed out at subscribe time and checked in `filter`.
const STAFF: &str = "staff";
const MEMBERS: &str = "members";

impl ChannelPlugin for Course {
    fn describe() -> Description {
        Description::new("course", env!("CARGO_PKG_VERSION"))
            .namespace(
                "course",
                ChannelOptions::new()
                    .presence()
                    .history(200, Duration::from_secs(3600))
                    .client_publish(),
            )
            // Staff-only messages need the `filter` hook.
            .with_filter()
    }

    fn authorize_subscribe(req: &SubscribeRequest) -> SubscribeDecision {
        let Some(identity) = &req.identity else {
            return SubscribeDecision::deny("login required");
        };
        let course_id = match parse_channel(&req.channel) {
            Ok((course_id, _topic)) => course_id,
            Err(reason) => return SubscribeDecision::deny(reason),
        };
        let status = course_status(identity, course_id);
        if status.is_none() && !is_admin(identity) {
            return SubscribeDecision::deny(format!("not a member of course {course_id}"));
        }

        let audience = if is_admin(identity) || status >= Some(Status::Tutor) {
            STAFF
        } else {
            MEMBERS
        };
        let decision = SubscribeDecision::allow_with_audience(audience);
        // What the other members see in presence: the display name, if Stud.IP sent one.
        match identity.claim_str("name") {
            Some(name) => decision.with_presence(json!({ "name": name })),
            None => decision,
        }
    }

    fn on_publish(req: &PublishRequest) -> PublishDecision {
        let (course_id, topic) = match parse_channel(&req.channel) {
            Ok(parts) => parts,
            Err(reason) => return PublishDecision::deny(reason),
        };
        let identity = match (req.source, &req.identity) {
            // Stud.IP's server may publish anything on any topic.
            (Source::Http, _) => return PublishDecision::allow(),
            (Source::Client, Some(identity)) => identity,
            (Source::Client, None) => return PublishDecision::deny("login required"),
        };

        if topic != CHAT {
            return PublishDecision::deny("clients may publish only on the chat topic");
        }
        let status = course_status(identity, course_id);
        if !is_admin(identity) && status < Some(Status::Autor) {
            return PublishDecision::deny(
                "only course members with status autor or above may chat",
            );
        }
        let Value::Object(mut message) = req.data.clone() else {
            return PublishDecision::deny(
                r#"a chat message is a JSON object, e.g. {"text": "Hallo"}"#,
            );
        };

        // The author is whoever holds the token, never what the client claims.
        message.insert("author".into(), json!(identity.user));
        if let Some(Value::String(text)) = message.get_mut("text") {
            if let Some((cut, _)) = text.char_indices().nth(MAX_CHAT_CHARS) {
                text.truncate(cut);
            }
        }
        PublishDecision::replace(Value::Object(message))
    }

    fn filter(req: &FilterRequest, audience: &str) -> Delivery {
        let staff_only = req.data.get("visibility").and_then(Value::as_str) == Some("staff");
        if staff_only && audience != STAFF {
            Delivery::skip()
        } else {
            Delivery::original()
        }
    }
}

export_plugin!(Course);

/// A Stud.IP course status, lowest first, so that `>=` means "at least". As an `Option`,
/// `None` (not a member) sorts below every status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    User,
    Autor,
    Tutor,
    Dozent,
}

/// The identity's status in the course, from the `courses` claim; `None` if it is not a
/// member (or the status is one Stud.IP does not know: fail closed).
fn course_status(identity: &Identity, course_id: &str) -> Option<Status> {
    match identity.claim_entry("courses", course_id)? {
        "user" => Some(Status::User),
        "autor" => Some(Status::Autor),
        "tutor" => Some(Status::Tutor),
        "dozent" => Some(Status::Dozent),
        _ => None,
    }
}

/// Global `admin` and `root` may enter every course.
fn is_admin(identity: &Identity) -> bool {
    matches!(identity.claim_str("perm"), Some("admin" | "root"))
}

/// Splits `course:<course_id>:<topic>` into course id and topic, or says what is wrong.
fn parse_channel(channel: &Channel) -> Result<(&str, &str), String> {
    let mut segments = channel.segments();
    let (Some(course_id), Some(topic), None) = (segments.next(), segments.next(), segments.next())
    else {
        return Err("course channels are named course:<course_id>:<topic>".into());
    };
    if course_id.len() != 32 || !course_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{course_id:?} is not a Stud.IP course id (32 hex characters)"
        ));
    }
    if topic.is_empty() {
        return Err(
            "course channels are named course:<course_id>:<topic>; the topic is empty".into(),
        );
    }
    Ok((course_id, topic))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stellwerk_plugin_sdk::testing;

    const COURSE: &str = "a07535cf2f8a72df33c12ddfa4b53dde";
    const OTHER_COURSE: &str = "5b7e2c1d9f0a4e3b8c6d1a2f3e4b5c6d";
    const CHAT_CHANNEL: &str = "course:a07535cf2f8a72df33c12ddfa4b53dde:chat";
    const WIKI_CHANNEL: &str = "course:a07535cf2f8a72df33c12ddfa4b53dde:wiki";
    const USER_ID: &str = "e7a0a84b161f3e8c09b4a0a2e8a58147";

    /// Claims of a token for someone with `status` in `COURSE` and global perm `autor`.
    fn member(status: &str) -> Value {
        json!({"perm": "autor", "courses": { COURSE: status }})
    }

    fn subscribe(channel: &str, claims: Value) -> SubscribeDecision {
        Course::authorize_subscribe(
            &SubscribeRequest::for_channel(channel).by_user(USER_ID, claims),
        )
    }

    fn chat(channel: &str, claims: Value, data: Value) -> PublishDecision {
        Course::on_publish(
            &PublishRequest::for_channel(channel)
                .with_data(data)
                .by_user(USER_ID, claims),
        )
    }

    #[test]
    fn governs_course_with_presence_an_hour_of_history_chat_and_a_filter() {
        let description = testing::describe::<Course>();
        assert_eq!(description.name(), "course");
        assert_eq!(description.namespaces().len(), 1);
        let options = description.options("course").expect("governs `course`");
        assert!(options.presence);
        assert_eq!(options.history_size, 200);
        assert_eq!(options.history_ttl, Duration::from_secs(3600));
        assert!(options.client_publish, "chat needs client publish");
        assert!(description.filters(), "staff-only messages need `filter`");
    }

    #[test]
    fn members_of_every_status_subscribe_to_every_topic() {
        for status in ["user", "autor", "tutor", "dozent"] {
            for channel in [CHAT_CHANNEL, WIKI_CHANNEL] {
                let decision = subscribe(channel, member(status));
                assert!(decision.is_allowed(), "{status} on {channel}: {decision:?}");
            }
        }
    }

    #[test]
    fn non_members_are_refused_whatever_their_global_perm() {
        for perm in ["user", "autor", "tutor", "dozent"] {
            let claims = json!({"perm": perm, "courses": { OTHER_COURSE: "dozent" }});
            let decision = subscribe(CHAT_CHANNEL, claims);
            assert_eq!(
                decision.deny_reason(),
                Some(format!("not a member of course {COURSE}").as_str()),
                "perm {perm}"
            );
        }
        assert!(
            !subscribe(CHAT_CHANNEL, json!({})).is_allowed(),
            "no claims at all"
        );
        assert!(
            !subscribe(CHAT_CHANNEL, json!({"courses": { COURSE: "superuser" }})).is_allowed(),
            "a status Stud.IP does not know counts as no membership"
        );
        assert!(
            !subscribe(CHAT_CHANNEL, json!({"courses": [COURSE]})).is_allowed(),
            "`courses` must map ids to statuses"
        );
    }

    #[test]
    fn admin_and_root_subscribe_without_membership() {
        for perm in ["admin", "root"] {
            let decision = subscribe(CHAT_CHANNEL, json!({ "perm": perm }));
            assert!(decision.is_allowed(), "{perm}: {decision:?}");
        }
    }

    #[test]
    fn anonymous_subscribers_are_refused() {
        let decision = Course::authorize_subscribe(&SubscribeRequest::for_channel(CHAT_CHANNEL));
        assert_eq!(decision.deny_reason(), Some("login required"));
    }

    #[test]
    fn malformed_channels_are_refused_with_a_reason() {
        let admin = json!({"perm": "root"});
        for channel in [
            "course:abc:chat",                               // id too short
            "course:a07535cf2f8a72df33c12ddfa4b53ddz:chat",  // not hex
            "course:a07535cf2f8a72df33c12ddfa4b53dde0:chat", // 33 characters
        ] {
            let reason = subscribe(channel, admin.clone());
            let reason = reason
                .deny_reason()
                .unwrap_or_else(|| panic!("{channel} allowed"));
            assert!(
                reason.contains("not a Stud.IP course id"),
                "{channel}: {reason}"
            );
        }
        for channel in [
            "course:a07535cf2f8a72df33c12ddfa4b53dde",  // no topic
            "course:a07535cf2f8a72df33c12ddfa4b53dde:", // empty topic
            "course:a07535cf2f8a72df33c12ddfa4b53dde:chat:x", // one topic only
            "course:",
        ] {
            let decision = subscribe(channel, admin.clone());
            let reason = decision
                .deny_reason()
                .unwrap_or_else(|| panic!("{channel} allowed"));
            assert!(
                reason.contains("course:<course_id>:<topic>"),
                "{channel}: {reason}"
            );
        }
        let upper_hex = "course:A07535CF2F8A72DF33C12DDFA4B53DDE:chat";
        assert!(
            subscribe(upper_hex, admin).is_allowed(),
            "hex in either case"
        );
    }

    #[test]
    fn tutors_dozents_admins_and_roots_are_staff_everyone_else_members() {
        for (claims, audience) in [
            (member("user"), MEMBERS),
            (member("autor"), MEMBERS),
            (member("tutor"), STAFF),
            (member("dozent"), STAFF),
            // The global perm does not make a course member staff …
            (
                json!({"perm": "dozent", "courses": { COURSE: "autor" }}),
                MEMBERS,
            ),
            // … but admin and root are staff everywhere.
            (json!({"perm": "admin"}), STAFF),
            (
                json!({"perm": "root", "courses": { COURSE: "user" }}),
                STAFF,
            ),
        ] {
            assert_eq!(
                subscribe(CHAT_CHANNEL, claims.clone()).audience(),
                Some(audience),
                "{claims}"
            );
        }
    }

    #[test]
    fn presence_shows_the_name_claim_when_there_is_one() {
        let claims = json!({"name": "Ada Lovelace", "courses": { COURSE: "autor" }});
        assert_eq!(
            subscribe(CHAT_CHANNEL, claims).presence_info(),
            Some(&json!({"name": "Ada Lovelace"}))
        );
        assert_eq!(
            subscribe(CHAT_CHANNEL, member("autor")).presence_info(),
            None
        );
    }

    #[test]
    fn autors_and_above_chat_and_the_author_is_the_sender() {
        for claims in [
            member("autor"),
            member("tutor"),
            member("dozent"),
            json!({"perm": "admin"}),
            json!({"perm": "root"}),
        ] {
            let decision = chat(CHAT_CHANNEL, claims.clone(), json!({"text": "Hallo"}));
            assert_eq!(
                decision,
                PublishDecision::replace(json!({"text": "Hallo", "author": USER_ID})),
                "{claims}"
            );
        }
    }

    #[test]
    fn users_and_non_members_may_not_chat() {
        let decision = chat(CHAT_CHANNEL, member("user"), json!({"text": "Hallo"}));
        assert_eq!(
            decision.deny_reason(),
            Some("only course members with status autor or above may chat")
        );
        for claims in [
            json!({"perm": "dozent", "courses": { OTHER_COURSE: "dozent" }}),
            json!({}),
        ] {
            assert!(
                !chat(CHAT_CHANNEL, claims.clone(), json!({"text": "x"})).is_allowed(),
                "{claims}"
            );
        }
    }

    #[test]
    fn the_author_cannot_be_spoofed_and_other_fields_stay() {
        let decision = chat(
            CHAT_CHANNEL,
            member("autor"),
            json!({"text": "Hallo", "author": "someone-else", "reply_to": 7}),
        );
        assert_eq!(
            decision,
            PublishDecision::replace(json!({"text": "Hallo", "author": USER_ID, "reply_to": 7}))
        );
    }

    #[test]
    fn text_is_cut_to_2000_characters_not_bytes() {
        let long = "ä".repeat(2500); // two bytes each
        let PublishDecision::Replace(data) =
            chat(CHAT_CHANNEL, member("autor"), json!({ "text": long }))
        else {
            panic!("chat refused");
        };
        let text = data["text"].as_str().unwrap();
        assert_eq!(text.chars().count(), 2000);
        assert_eq!(text, "ä".repeat(2000));

        let exact = "x".repeat(2000);
        let PublishDecision::Replace(data) =
            chat(CHAT_CHANNEL, member("autor"), json!({ "text": exact }))
        else {
            panic!("chat refused");
        };
        assert_eq!(data["text"], exact, "2,000 characters stay whole");
    }

    #[test]
    fn clients_publish_only_on_chat_and_only_objects() {
        let decision = chat(WIKI_CHANNEL, member("dozent"), json!({"text": "x"}));
        assert_eq!(
            decision.deny_reason(),
            Some("clients may publish only on the chat topic")
        );
        let decision = chat(CHAT_CHANNEL, member("autor"), json!("just a string"));
        assert!(
            decision.deny_reason().unwrap().contains("JSON object"),
            "{decision:?}"
        );
    }

    #[test]
    fn the_server_publishes_on_any_topic_unchanged() {
        for channel in [CHAT_CHANNEL, WIKI_CHANNEL] {
            let req = PublishRequest::for_channel(channel).with_data(
                json!({"type": "wiki.page.updated", "author": "system", "text": "x".repeat(3000)}),
            );
            assert_eq!(
                Course::on_publish(&req),
                PublishDecision::allow(),
                "{channel}"
            );
        }
    }

    #[test]
    fn publishing_on_a_malformed_channel_is_refused() {
        let req = PublishRequest::for_channel("course:nope:chat").with_data(json!({}));
        assert!(Course::on_publish(&req)
            .deny_reason()
            .unwrap()
            .contains("course id"));
        let req = PublishRequest::for_channel("course:a07535cf2f8a72df33c12ddfa4b53dde");
        assert!(!Course::on_publish(&req).is_allowed());
    }

    #[test]
    fn staff_only_messages_reach_staff_only() {
        let audiences = [STAFF, MEMBERS, ""];
        let staff_only = FilterRequest::for_channel(CHAT_CHANNEL)
            .with_data(json!({"text": "Klausur korrigiert", "visibility": "staff"}));
        assert_eq!(
            testing::filter::<Course>(&staff_only, &audiences),
            [Delivery::Original, Delivery::Skip, Delivery::Skip]
        );

        for data in [
            json!({"text": "Hallo"}),
            json!({"text": "Hallo", "visibility": "members"}),
            json!("not an object"),
        ] {
            let normal = FilterRequest::for_channel(CHAT_CHANNEL).with_data(data.clone());
            assert_eq!(
                testing::filter::<Course>(&normal, &audiences),
                [Delivery::Original, Delivery::Original, Delivery::Original],
                "{data}"
            );
        }
    }
}
