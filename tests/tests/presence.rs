//! Presence on a course channel as Stud.IP's course page uses it: who is online (WS `presence`),
//! and `join`/`leave` pushes as people come and go, counting a user with several tabs once.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use stellwerk_e2e::{assert_ws_error, Server, WsClient};

const COURSE: &str = "a07535cf2f8a72df33c12ddfa4b53dde";
const CHAT: &str = "course:a07535cf2f8a72df33c12ddfa4b53dde:chat";

// Stud.IP user ids (32 hex characters), named after their role in the tests.
const ADA: &str = "e7a0a84b161f3e8c09b4a0a2e8a58147";
const BOB: &str = "1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f";
const CARL: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
const TUTOR: &str = "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d";
const STRANGER: &str = "d41d8cd98f00b204e9800998ecf8427e";

const ADMIN_TOKEN: &str = "presence-admin";

/// Claims of a course member (`autor` in `COURSE`), with a display name when given.
fn member(name: Option<&str>) -> Value {
    let mut claims = json!({"perm": "autor", "courses": { COURSE: "autor" }});
    if let Some(name) = name {
        claims["name"] = json!(name);
    }
    claims
}

/// A broker whose `/metrics` the tests may read (to know when a dropped socket is gone).
async fn start() -> Server {
    Server::builder()
        .env("STELLWERK_ADMIN_TOKEN", ADMIN_TOKEN)
        .start()
        .await
}

async fn subscribe(ws: &mut WsClient, channel: &str) {
    let reply = ws
        .request(json!({"type": "subscribe", "channel": channel}))
        .await;
    assert_eq!(reply["type"], "subscribed", "subscribe {channel}: {reply}");
}

async fn unsubscribe(ws: &mut WsClient, channel: &str) {
    let reply = ws
        .request(json!({"type": "unsubscribe", "channel": channel}))
        .await;
    assert_eq!(
        reply["type"], "unsubscribed",
        "unsubscribe {channel}: {reply}"
    );
}

/// A connection of `sub` subscribed to `CHAT`.
async fn join(server: &Server, sub: &str, claims: Value) -> WsClient {
    let mut ws = server.ws_as(sub, claims).await;
    subscribe(&mut ws, CHAT).await;
    ws
}

/// Everything pushed to `ws` before the broker answered a `ping` sent now. The broker writes
/// queued pushes before it reads the next command, so every push queued for `ws` before the
/// `ping` (e.g. a `join` caused by another client's already answered `subscribe`) is in here.
async fn pushes_so_far(ws: &mut WsClient) -> Vec<Value> {
    let pong = ws.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong", "{pong}");
    ws.take_pending()
}

/// The `join`/`leave` pushes among `pushes` as `(type, user)`.
fn presence_events(pushes: &[Value]) -> Vec<(String, String)> {
    pushes
        .iter()
        .filter(|p| p["type"] == "join" || p["type"] == "leave")
        .map(|p| {
            assert_eq!(p["channel"], CHAT, "{p}");
            (
                p["type"].as_str().unwrap().to_owned(),
                p["user"].as_str().expect("string user").to_owned(),
            )
        })
        .collect()
}

async fn presence(ws: &mut WsClient, channel: &str) -> Value {
    ws.request(json!({"type": "presence", "channel": channel}))
        .await
}

/// The `members` of a `presence` reply, checking the reply's shape.
async fn members(ws: &mut WsClient) -> Value {
    let reply = presence(ws, CHAT).await;
    assert_eq!(reply["type"], "presence", "{reply}");
    assert_eq!(reply["channel"], CHAT, "{reply}");
    reply["members"].clone()
}

/// Presence members as the broker lists them: sorted by user id.
fn by_user_id(mut members: Vec<Value>) -> Value {
    members.sort_by(|a, b| a["user"].as_str().cmp(&b["user"].as_str()));
    Value::Array(members)
}

/// Waits (bounded) until the broker counts `want` subscriptions: after that a dropped socket
/// has been fully processed, including any `leave` it caused.
async fn wait_for_subscriptions(server: &Server, want: u64) {
    let http = reqwest::Client::new();
    let mut seen = String::new();
    for _ in 0..200 {
        let text = http
            .get(server.http_url("/metrics"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body");
        let count = text.lines().find_map(|line| {
            line.strip_prefix("stellwerk_subscriptions ")
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
        if count == Some(want) {
            return;
        }
        seen = format!("{count:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the broker still counts {seen} subscriptions, expected {want}");
}

#[tokio::test]
async fn presence_lists_each_member_once_with_the_info_the_plugin_gave() {
    let server = start().await;
    let _ada_tab_1 = join(&server, ADA, member(Some("Ada Lovelace"))).await;
    let _ada_tab_2 = join(&server, ADA, member(Some("Ada Lovelace"))).await;
    let _bob = join(&server, BOB, member(None)).await;

    // A course member who is not subscribed may ask too, and is not listed.
    let mut tutor = server.ws_as(TUTOR, member(None)).await;
    let reply = tutor
        .request(json!({"id": 5, "type": "presence", "channel": CHAT}))
        .await;
    let want = by_user_id(vec![
        json!({"user": ADA, "info": {"name": "Ada Lovelace"}}),
        json!({"user": BOB, "info": {}}),
    ]);
    assert_eq!(
        reply,
        json!({"id": 5, "type": "presence", "channel": CHAT, "members": want}),
        "two tabs of one user are one member; sorted by user id"
    );

    // An empty channel of the course has no members, and that is not an error.
    let empty = presence(&mut tutor, &format!("course:{COURSE}:files")).await;
    assert_eq!(empty["type"], "presence", "{empty}");
    assert_eq!(empty["members"], json!([]), "{empty}");
}

#[tokio::test]
async fn presence_is_refused_where_the_plugin_has_it_off_or_the_client_may_not_subscribe() {
    let server = start().await;
    let _ada = join(&server, ADA, member(None)).await;

    let mut bob = server.ws_as(BOB, member(None)).await;
    subscribe(&mut bob, "public:news").await;
    let reply = presence(&mut bob, "public:news").await;
    assert_ws_error(&reply, "bad_request");
    assert!(
        reply["message"].as_str().unwrap().contains("presence"),
        "{reply}"
    );
    assert_ws_error(&presence(&mut bob, "nowhere:x").await, "not_found");
    assert_ws_error(&presence(&mut bob, "no namespace").await, "bad_request");
    let missing = bob.request(json!({"type": "presence"})).await;
    assert_ws_error(&missing, "bad_request");

    // Not a member of the course: the member list is not leaked.
    let mut stranger = server
        .ws_as(STRANGER, json!({"perm": "autor", "courses": {}}))
        .await;
    let reply = presence(&mut stranger, CHAT).await;
    assert_ws_error(&reply, "forbidden");
    assert!(reply.get("members").is_none(), "{reply}");

    // Errors leave the connection usable.
    assert_eq!(members(&mut bob).await, json!([{"user": ADA, "info": {}}]));
}

#[tokio::test]
async fn three_tabs_of_one_user_make_one_join_and_one_leave() {
    let server = start().await;
    let mut bob = join(&server, BOB, member(None)).await;

    let mut tabs = Vec::new();
    for _ in 0..3 {
        tabs.push(join(&server, ADA, member(Some("Ada"))).await);
    }
    let seen = pushes_so_far(&mut bob).await;
    assert_eq!(
        presence_events(&seen),
        [("join".to_owned(), ADA.to_owned())],
        "exactly one join for three tabs: {seen:?}"
    );
    let join_push = seen.iter().find(|p| p["type"] == "join").unwrap();
    assert_eq!(
        join_push,
        &json!({"type": "join", "channel": CHAT, "user": ADA, "info": {"name": "Ada"}})
    );
    // No tab hears about its own user joining (Bob was there first: nothing else to hear).
    for tab in &mut tabs {
        let own = pushes_so_far(tab).await;
        assert_eq!(presence_events(&own), [], "{own:?}");
    }

    // First tab unsubscribes, second tab's socket goes away: Ada is still here.
    let mut last = tabs.pop().unwrap();
    let second = tabs.pop().unwrap();
    let mut first = tabs.pop().unwrap();
    unsubscribe(&mut first, CHAT).await;
    drop(second);
    wait_for_subscriptions(&server, 2).await;
    let seen = pushes_so_far(&mut bob).await;
    assert_eq!(presence_events(&seen), [], "no leave while a tab remains");
    assert_eq!(
        members(&mut bob).await,
        by_user_id(vec![
            json!({"user": ADA, "info": {"name": "Ada"}}),
            json!({"user": BOB, "info": {}}),
        ])
    );

    // The last tab unsubscribes: exactly one leave, with the info of the join.
    unsubscribe(&mut last, CHAT).await;
    let seen = pushes_so_far(&mut bob).await;
    assert_eq!(
        presence_events(&seen),
        [("leave".to_owned(), ADA.to_owned())],
        "{seen:?}"
    );
    let leave = seen.iter().find(|p| p["type"] == "leave").unwrap();
    assert_eq!(
        leave,
        &json!({"type": "leave", "channel": CHAT, "user": ADA, "info": {"name": "Ada"}})
    );
    assert_eq!(members(&mut bob).await, json!([{"user": BOB, "info": {}}]));
    // The unsubscribed tab hears nothing more of the channel.
    assert_eq!(presence_events(&pushes_so_far(&mut first).await), []);
}

#[tokio::test]
async fn leave_follows_when_the_last_socket_of_a_user_drops() {
    let server = start().await;
    let mut bob = join(&server, BOB, member(None)).await;
    let ada = join(&server, ADA, member(None)).await;
    let seen = pushes_so_far(&mut bob).await;
    assert_eq!(
        presence_events(&seen),
        [("join".to_owned(), ADA.to_owned())]
    );

    // The laptop lid closes: no close frame, the TCP connection just goes.
    drop(ada);
    let leave = bob.recv_json().await;
    assert_eq!(
        leave,
        json!({"type": "leave", "channel": CHAT, "user": ADA, "info": {}})
    );
    wait_for_subscriptions(&server, 1).await;
    assert_eq!(presence_events(&pushes_so_far(&mut bob).await), []);
    assert_eq!(members(&mut bob).await, json!([{"user": BOB, "info": {}}]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tabs_of_several_users_keep_join_and_leave_alternating() {
    const USERS: [&str; 3] = [ADA, BOB, CARL];
    const TABS: usize = 3;
    const ROUNDS: usize = 5;
    let server = start().await;
    let mut watcher = join(&server, TUTOR, member(None)).await;

    // Every tab of every user subscribes and unsubscribes ROUNDS times, all at once.
    let mut tasks = Vec::new();
    for user in USERS {
        for _ in 0..TABS {
            let mut ws = server.ws_as(user, member(None)).await;
            tasks.push(tokio::spawn(async move {
                for _ in 0..ROUNDS {
                    subscribe(&mut ws, CHAT).await;
                    unsubscribe(&mut ws, CHAT).await;
                }
                ws
            }));
        }
    }
    let mut tabs = Vec::new();
    for task in tasks {
        tabs.push(
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("tabs finish")
                .expect("tab task"),
        );
    }

    // Every unsubscribe was answered, so every presence push is queued for the watcher.
    let seen = pushes_so_far(&mut watcher).await;
    let mut by_user: HashMap<String, Vec<String>> = HashMap::new();
    for (kind, user) in presence_events(&seen) {
        by_user.entry(user).or_default().push(kind);
    }
    for user in USERS {
        let kinds = by_user.remove(user).unwrap_or_default();
        assert!(!kinds.is_empty(), "{user} joined at least once: {seen:?}");
        assert!(
            kinds.len() <= 2 * TABS * ROUNDS,
            "{user}: more events than subscriptions: {kinds:?}"
        );
        for (i, kind) in kinds.iter().enumerate() {
            let want = if i % 2 == 0 { "join" } else { "leave" };
            assert_eq!(
                kind, want,
                "{user}: join and leave must alternate: {kinds:?}"
            );
        }
        assert_eq!(
            kinds.len() % 2,
            0,
            "{user} is gone, so the last event is a leave: {kinds:?}"
        );
    }
    assert!(by_user.is_empty(), "events of unknown users: {by_user:?}");
    assert_eq!(
        members(&mut watcher).await,
        json!([{"user": TUTOR, "info": {}}])
    );
    drop(tabs);
}

#[tokio::test]
async fn a_user_disconnected_by_stud_ip_leaves_once_and_every_tab_closes_with_4003() {
    let server = start().await;
    let mut bob = join(&server, BOB, member(None)).await;
    let mut tabs = [
        join(&server, ADA, member(None)).await,
        join(&server, ADA, member(None)).await,
    ];
    let seen = pushes_so_far(&mut bob).await;
    assert_eq!(
        presence_events(&seen),
        [("join".to_owned(), ADA.to_owned())]
    );

    server.disconnect_user(ADA).await;
    for tab in &mut tabs {
        let (code, _reason) = tab.expect_close().await;
        assert_eq!(code, 4003);
        let pending = tab.take_pending();
        assert_eq!(
            pending
                .last()
                .map(|p| (p["type"].clone(), p["code"].clone())),
            Some((json!("disconnect"), json!(4003))),
            "{pending:?}"
        );
    }
    wait_for_subscriptions(&server, 1).await;
    let seen = pushes_so_far(&mut bob).await;
    assert_eq!(
        presence_events(&seen),
        [("leave".to_owned(), ADA.to_owned())],
        "{seen:?}"
    );
    assert_eq!(members(&mut bob).await, json!([{"user": BOB, "info": {}}]));
}

#[tokio::test]
async fn a_refreshed_token_with_another_name_changes_the_listed_info_without_a_push() {
    let server = start().await;
    let mut ada = join(&server, ADA, member(Some("Ada"))).await;
    let mut bob = join(&server, BOB, member(None)).await;
    let token = server.mint(ADA, member(Some("Ada Lovelace")), Duration::from_secs(3600));
    let reply = ada
        .request(json!({"type": "refresh", "token": token}))
        .await;
    assert_ne!(reply["type"], "error", "{reply}");
    let members = members(&mut bob).await;
    let ada_info = members
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"] == ADA)
        .map(|m| m["info"].clone());
    assert_eq!(ada_info, Some(json!({"name": "Ada Lovelace"})));
    assert!(
        presence_events(&pushes_so_far(&mut bob).await).is_empty(),
        "no join or leave for a changed name"
    );
}
