//! The `course` plugin against the real broker: Stud.IP course members subscribe, autors chat,
//! staff-only messages reach tutors and dozents only (WebSocket and SSE).

use std::time::Duration;

use serde_json::{json, Value};
use stellwerk_e2e::{assert_ws_error, Server, SseStream, WsClient};

const COURSE: &str = "a07535cf2f8a72df33c12ddfa4b53dde";
const OTHER_COURSE: &str = "5b7e2c1d9f0a4e3b8c6d1a2f3e4b5c6d";
const CHAT: &str = "course:a07535cf2f8a72df33c12ddfa4b53dde:chat";

// Stud.IP user ids (32 hex characters), named after their role in the tests.
const AUTOR: &str = "e7a0a84b161f3e8c09b4a0a2e8a58147";
const AUTOR_2: &str = "1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f";
const USER: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
const TUTOR: &str = "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d";
const DOZENT: &str = "76ed43ef286fb55cf9e41beadb484a9f";
const STRANGER: &str = "d41d8cd98f00b204e9800998ecf8427e";
const ADMIN: &str = "aaaaaaaaaaaaaaaabbbbbbbbbbbbbbbb";
const ROOT: &str = "ccccccccccccccccdddddddddddddddd";

/// Claims of a Stud.IP session token: global perm `autor`, `status` in `COURSE`.
fn member(status: &str) -> Value {
    json!({"perm": "autor", "courses": { COURSE: status }})
}

async fn join(server: &Server, sub: &str, claims: Value, channel: &str) -> (WsClient, Value) {
    let mut ws = server.ws_as(sub, claims).await;
    let reply = ws
        .request(json!({"type": "subscribe", "channel": channel}))
        .await;
    assert_eq!(
        reply["type"], "subscribed",
        "{sub} subscribes {channel}: {reply}"
    );
    (ws, reply)
}

/// An SSE stream of `sub` on `channel`, read up to its `subscribed` event (so it is live).
async fn join_sse(server: &Server, sub: &str, claims: Value, channel: &str) -> SseStream {
    let token = server.mint(sub, claims, Duration::from_secs(3600));
    let mut sse = server
        .sse(&format!("/sse?channel={channel}&token={token}"))
        .await;
    loop {
        let event = sse.next_event().await;
        if event.event.as_deref() == Some("subscribed") {
            assert_eq!(event.json()["channel"], channel, "{event:?}");
            return sse;
        }
    }
}

/// Publishes chat `data` from a client and returns the `published` reply.
async fn chat(ws: &mut WsClient, data: Value) -> Value {
    ws.request(json!({"type": "publish", "channel": CHAT, "data": data}))
        .await
}

#[tokio::test]
async fn course_members_chat_and_every_member_receives_it() {
    let server = Server::start().await;
    let (mut ada, subscribed) = join(&server, AUTOR, member("autor"), CHAT).await;
    let (mut bob, _) = join(&server, AUTOR_2, member("user"), CHAT).await;

    let reply = chat(&mut ada, json!({"text": "Hallo zusammen"})).await;
    assert_eq!(reply["type"], "published", "{reply}");
    assert_eq!(reply["channel"], CHAT);
    assert_eq!(reply["epoch"], subscribed["epoch"], "{reply}");
    let offset = reply["offset"].as_u64().expect("numeric offset");
    assert!(offset > subscribed["offset"].as_u64().unwrap(), "{reply}");

    let want = json!({
        "type": "message",
        "channel": CHAT,
        "epoch": reply["epoch"],
        "offset": offset,
        "data": {"text": "Hallo zusammen", "author": AUTOR},
    });
    assert_eq!(
        ada.recv_skipping_presence().await,
        want,
        "the sender receives its own message"
    );
    assert_eq!(bob.recv_skipping_presence().await, want);
}

#[tokio::test]
async fn a_member_with_status_user_may_not_chat() {
    let server = Server::start().await;
    let (mut reader, subscribed) = join(&server, AUTOR, member("autor"), CHAT).await;
    let (mut guest, _) = join(&server, USER, member("user"), CHAT).await;

    let reply = chat(&mut guest, json!({"text": "darf ich?"})).await;
    assert_ws_error(&reply, "forbidden");
    assert!(
        reply["message"].as_str().unwrap().contains("autor"),
        "the plugin's reason reaches the client: {reply}"
    );

    // Nothing was published: the next message is the marker, right after the start offset.
    let marker = server.publish_ok(CHAT, &json!({"marker": 1})).await;
    assert_eq!(marker["offset"], subscribed["offset"].as_u64().unwrap() + 1);
    assert_eq!(
        reader.recv_skipping_presence().await["data"],
        json!({"marker": 1})
    );
}

#[tokio::test]
async fn clients_chat_only_on_the_chat_topic_while_the_server_publishes_on_any() {
    let server = Server::start().await;
    let wiki = format!("course:{COURSE}:wiki");
    let (mut dozent, _) = join(&server, DOZENT, member("dozent"), &wiki).await;

    let reply = dozent
        .request(json!({"type": "publish", "channel": wiki, "data": {"text": "x"}}))
        .await;
    assert_ws_error(&reply, "forbidden");

    let data = json!({"type": "wiki.page.updated", "page": "Literatur"});
    let result = server.publish_ok(&wiki, &data).await;
    let push = dozent.recv_skipping_presence().await;
    assert_eq!(push["offset"], result["offset"], "{push}");
    assert_eq!(push["data"], data, "HTTP publishes pass unchanged");
}

#[tokio::test]
async fn non_members_are_refused_and_admin_and_root_may_subscribe_without_membership() {
    let server = Server::start().await;
    let stranger = json!({"perm": "dozent", "courses": { OTHER_COURSE: "dozent" }});
    let mut ws = server.ws_as(STRANGER, stranger).await;
    let reply = ws
        .request(json!({"type": "subscribe", "channel": CHAT}))
        .await;
    assert_ws_error(&reply, "forbidden");
    assert!(
        reply["message"].as_str().unwrap().contains("not a member"),
        "{reply}"
    );

    let (mut admin, _) = join(&server, ADMIN, json!({"perm": "admin"}), CHAT).await;
    let (mut root, _) = join(&server, ROOT, json!({"perm": "root"}), CHAT).await;
    // And they receive what the course receives.
    let data = json!({"type": "course.news", "id": 3});
    let result = server.publish_ok(CHAT, &data).await;
    for ws in [&mut admin, &mut root] {
        let push = ws.recv_skipping_presence().await;
        assert_eq!((&push["offset"], &push["data"]), (&result["offset"], &data));
    }
}

#[tokio::test]
async fn malformed_course_channels_are_refused_with_a_reason() {
    let server = Server::start().await;
    let mut root = server.ws_as(ROOT, json!({"perm": "root"})).await;
    for (channel, reason) in [
        ("course:abc:chat".to_owned(), "course id"),
        (format!("course:{COURSE}"), "course:<course_id>:<topic>"),
    ] {
        let reply = root
            .request(json!({"type": "subscribe", "channel": channel}))
            .await;
        assert_ws_error(&reply, "forbidden");
        assert!(
            reply["message"].as_str().unwrap().contains(reason),
            "{channel}: {reply}"
        );
    }
}

#[tokio::test]
async fn the_author_cannot_be_spoofed() {
    let server = Server::start().await;
    let (mut ada, _) = join(&server, AUTOR, member("autor"), CHAT).await;
    let (mut tutor, _) = join(&server, TUTOR, member("tutor"), CHAT).await;
    let (mut guest, _) = join(&server, USER, member("user"), CHAT).await;

    let reply = chat(
        &mut ada,
        json!({"text": "ich bin jemand anderes", "author": "someone-else"}),
    )
    .await;
    assert_eq!(reply["type"], "published", "{reply}");
    for ws in [&mut ada, &mut tutor, &mut guest] {
        let push = ws.recv_skipping_presence().await;
        assert_eq!(push["offset"], reply["offset"], "{push}");
        assert_eq!(
            push["data"],
            json!({"text": "ich bin jemand anderes", "author": AUTOR})
        );
    }
}

#[tokio::test]
async fn chat_text_is_cut_to_2000_characters() {
    let server = Server::start().await;
    let (mut ada, _) = join(&server, AUTOR, member("autor"), CHAT).await;
    let (mut bob, _) = join(&server, AUTOR_2, member("autor"), CHAT).await;

    // Multi-byte characters, so a cut by bytes would show.
    let long: String = "Grüße ".chars().cycle().take(2600).collect();
    let reply = chat(&mut ada, json!({ "text": long })).await;
    assert_eq!(reply["type"], "published", "{reply}");
    let want: String = long.chars().take(2000).collect();
    for ws in [&mut ada, &mut bob] {
        let push = ws.recv_skipping_presence().await;
        let text = push["data"]["text"].as_str().expect("text survives");
        assert_eq!(text.chars().count(), 2000);
        assert_eq!(text, want);
    }
}

#[tokio::test]
async fn staff_only_messages_reach_tutors_dozents_and_admins_only() {
    let server = Server::start().await;
    let (mut guest, _) = join(&server, USER, member("user"), CHAT).await;
    let (mut autor, _) = join(&server, AUTOR, member("autor"), CHAT).await;
    let (mut tutor, _) = join(&server, TUTOR, member("tutor"), CHAT).await;
    let (mut dozent, _) = join(&server, DOZENT, member("dozent"), CHAT).await;
    let (mut admin, _) = join(&server, ADMIN, json!({"perm": "admin"}), CHAT).await;

    let staff_only = json!({"type": "grades.published", "visibility": "staff"});
    let for_all = json!({"type": "course.news", "id": 1});
    let staff_result = server.publish_ok(CHAT, &staff_only).await;
    let all_result = server.publish_ok(CHAT, &for_all).await;

    for (who, ws) in [
        ("tutor", &mut tutor),
        ("dozent", &mut dozent),
        ("admin", &mut admin),
    ] {
        let first = ws.recv_skipping_presence().await;
        assert_eq!(first["data"], staff_only, "{who}: {first}");
        assert_eq!(first["offset"], staff_result["offset"], "{who}");
        let second = ws.recv_skipping_presence().await;
        assert_eq!(second["data"], for_all, "{who}: {second}");
    }
    for (who, ws) in [("user", &mut guest), ("autor", &mut autor)] {
        let next = ws.recv_skipping_presence().await;
        assert_eq!(
            next["data"], for_all,
            "{who} must not see the staff message: {next}"
        );
        assert_eq!(next["offset"], all_result["offset"], "{who}");
    }
}

#[tokio::test]
async fn staff_only_messages_respect_the_audience_over_sse_too() {
    let server = Server::start().await;
    let mut autor = join_sse(&server, AUTOR, member("autor"), CHAT).await;
    let mut tutor = join_sse(&server, TUTOR, member("tutor"), CHAT).await;

    let staff_only = json!({"text": "Klausur korrigiert", "visibility": "staff"});
    let for_all = json!({"text": "Morgen fällt die Übung aus"});
    server.publish_ok(CHAT, &staff_only).await;
    server.publish_ok(CHAT, &for_all).await;

    assert_eq!(tutor.next_message().await.json()["data"], staff_only);
    assert_eq!(tutor.next_message().await.json()["data"], for_all);
    let next = autor.next_message().await.json();
    assert_eq!(
        next["data"], for_all,
        "the autor must not see the staff message: {next}"
    );
}
