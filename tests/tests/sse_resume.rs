//! Server-Sent Events resume: the `id:` cursor covers every channel of a stream, and
//! `Last-Event-ID` (or `?lastEventId=` on a first connect) picks all of them up exactly where
//! the client left off, or says clearly that it cannot. Streams end with a `disconnect` event.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use stellwerk_e2e::{Server, SseEvent, SseStream};

const ADA: &str = "e7a0a84b161f3e8c09b4a0a2e8a58147";
const COURSE: &str = "a07535cf2f8a72df33c12ddfa4b53dde";
const PUBLIC: &str = "public:news";
const WIKI: &str = "course:a07535cf2f8a72df33c12ddfa4b53dde:wiki";
const USER: &str = "user:e7a0a84b161f3e8c09b4a0a2e8a58147";
/// The `public` plugin keeps this many messages per channel.
const PUBLIC_HISTORY: u64 = 100;

/// Ada's token: an `autor` in the course, so the course plugin's staff-only messages are
/// filtered out for her.
fn ada_token(server: &Server) -> String {
    server.mint(
        ADA,
        json!({"perm": "autor", "courses": { COURSE: "autor" }}),
        Duration::from_secs(3600),
    )
}

fn query(channels: &[&str], token: &str) -> String {
    let mut path = String::from("/sse?");
    for channel in channels {
        path.push_str(&format!("channel={channel}&"));
    }
    path.push_str(&format!("token={token}"));
    path
}

/// Opens `path`, with a `Last-Event-ID` header if given, and expects 200.
async fn open(server: &Server, path: &str, last_event_id: Option<&str>) -> SseStream {
    let mut req = reqwest::Client::new()
        .get(server.http_url(path))
        .header("Accept", "text/event-stream");
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id);
    }
    let resp = req.send().await.expect("GET /sse");
    let status = resp.status().as_u16();
    assert_eq!(status, 200, "GET {path}");
    SseStream::new(resp)
}

/// The next event that is not a keep-alive comment or the `retry:` block.
async fn next_significant(sse: &mut SseStream) -> SseEvent {
    loop {
        let event = sse.next_event().await;
        if event.event.is_some() || !event.data.is_empty() || event.id.is_some() {
            return event;
        }
    }
}

/// Reads the opening: one `subscribed` per channel in `channels`' order. Returns them by
/// channel, checking that each carries the stream's cursor as `id:`.
async fn read_subscribed(sse: &mut SseStream, channels: &[&str]) -> BTreeMap<String, Value> {
    let mut subscribed = BTreeMap::new();
    for channel in channels {
        let event = next_significant(sse).await;
        assert_eq!(event.event.as_deref(), Some("subscribed"), "{event:?}");
        assert!(
            event.id.as_deref().is_some_and(|id| !id.is_empty()),
            "`subscribed` carries the cursor: {event:?}"
        );
        let data = event.json();
        assert_eq!(data["channel"], *channel, "{data}");
        subscribed.insert((*channel).to_owned(), data);
    }
    subscribed
}

/// Reads the next `message` event, checks it against `channel`, `offset` and `data`, and
/// returns its cursor.
async fn expect_message(sse: &mut SseStream, channel: &str, offset: u64, data: &Value) -> String {
    let event = next_significant(sse).await;
    assert_eq!(event.event.as_deref(), Some("message"), "{event:?}");
    let push = event.json();
    assert_eq!(push["channel"], channel, "{push}");
    assert_eq!(push["offset"], offset, "{push}");
    assert_eq!(push["data"], *data, "{push}");
    event.id.expect("every message carries a cursor")
}

/// One message to each of the three channels, read by `sse`; returns the last cursor.
async fn one_each(server: &Server, sse: &mut SseStream, round: u64) -> String {
    let mut cursor = String::new();
    for channel in [PUBLIC, WIKI, USER] {
        let data = json!({"round": round, "to": channel});
        let result = server.publish_ok(channel, &data).await;
        let offset = result["offset"].as_u64().unwrap();
        cursor = expect_message(sse, channel, offset, &data).await;
    }
    cursor
}

/// What Ada misses while she is away: two messages per channel and a staff-only one on the
/// course channel, which she must not get on resume either. Returns what she should get, in
/// publishing order, as (channel, offset, data).
async fn publish_while_away(server: &Server) -> Vec<(String, u64, Value)> {
    let mut expected = Vec::new();
    for (channel, data) in [
        (PUBLIC, json!({"away": 1})),
        (WIKI, json!({"away": 1})),
        (WIKI, json!({"away": "staff", "visibility": "staff"})),
        (USER, json!({"away": 1})),
        (PUBLIC, json!({"away": 2})),
        (WIKI, json!({"away": 2})),
        (USER, json!({"away": 2})),
    ] {
        let result = server.publish_ok(channel, &data).await;
        if data.get("visibility").is_none() {
            let offset = result["offset"].as_u64().unwrap();
            expected.push((channel.to_owned(), offset, data));
        }
    }
    expected
}

/// Reads the replay after a resume: exactly `expected`, in order per channel (channels are
/// replayed one after the other in the stream's order). Returns the last cursor.
async fn expect_replay(
    sse: &mut SseStream,
    channels: &[&str],
    expected: &[(String, u64, Value)],
) -> String {
    let mut cursor = String::new();
    for channel in channels {
        for (_, offset, data) in expected.iter().filter(|(c, _, _)| c == channel) {
            cursor = expect_message(sse, channel, *offset, data).await;
        }
    }
    cursor
}

#[tokio::test]
async fn sse_resumes_three_channels_from_the_last_event_id_header() {
    let server = Server::start().await;
    let token = ada_token(&server);
    let channels = [PUBLIC, WIKI, USER];
    let path = query(&channels, &token);

    let mut sse = open(&server, &path, None).await;
    let first = read_subscribed(&mut sse, &channels).await;
    assert!(
        first.values().all(|s| s.get("recovered").is_none()),
        "a fresh stream has no `recovered`: {first:?}"
    );
    let cursor = one_each(&server, &mut sse, 1).await;
    drop(sse);

    let expected = publish_while_away(&server).await;
    // What `EventSource` does by itself: the same URL, the last id as a header.
    let mut sse = open(&server, &path, Some(&cursor)).await;
    let resumed = read_subscribed(&mut sse, &channels).await;
    for (channel, subscribed) in &resumed {
        assert_eq!(subscribed["recovered"], true, "{channel}: {subscribed}");
    }
    let cursor = expect_replay(&mut sse, &channels, &expected).await;
    // Live messages follow the replay.
    one_each(&server, &mut sse, 2).await;
    drop(sse);

    // The cursor of the replay's last message resumes right after it: round 2 again (it came
    // live after that cursor), nothing twice, nothing lost.
    let mut sse = open(&server, &path, Some(&cursor)).await;
    let resumed = read_subscribed(&mut sse, &channels).await;
    assert!(
        resumed.values().all(|s| s["recovered"] == true),
        "{resumed:?}"
    );
    for channel in channels {
        let data = json!({"round": 2, "to": channel});
        let offset = resumed[channel]["offset"].as_u64().unwrap();
        expect_message(&mut sse, channel, offset, &data).await;
    }
    one_each(&server, &mut sse, 3).await;
}

#[tokio::test]
async fn sse_resumes_from_the_last_event_id_query_parameter_in_any_channel_order() {
    let server = Server::start().await;
    let token = ada_token(&server);
    let channels = [PUBLIC, WIKI, USER];
    let mut sse = open(&server, &query(&channels, &token), None).await;
    read_subscribed(&mut sse, &channels).await;
    let cursor = one_each(&server, &mut sse, 1).await;
    drop(sse);

    let expected = publish_while_away(&server).await;
    // A page that comes back (bfcache, a new tab) opens a new EventSource; it cannot set
    // headers, so it passes the last id in the URL. The channel order does not matter.
    let reordered = [USER, PUBLIC, WIKI];
    let path = format!("{}&lastEventId={cursor}", query(&reordered, &token));
    let mut sse = open(&server, &path, None).await;
    let resumed = read_subscribed(&mut sse, &reordered).await;
    assert!(
        resumed.values().all(|s| s["recovered"] == true),
        "{resumed:?}"
    );
    let cursor = expect_replay(&mut sse, &reordered, &expected).await;
    one_each(&server, &mut sse, 2).await;
    drop(sse);

    // On its own reconnects EventSource keeps the URL (with the stale `lastEventId`) and adds
    // the header: the header wins.
    let latest = server.publish_ok(WIKI, &json!({"after": "header"})).await;
    let mut sse = open(&server, &path, Some(&cursor)).await;
    read_subscribed(&mut sse, &reordered).await;
    // The header's cursor is newer than the URL's: round 2 and the one after it come, not
    // the messages published while away.
    for channel in reordered {
        let event = next_significant(&mut sse).await;
        assert_eq!(event.event.as_deref(), Some("message"), "{event:?}");
        let push = event.json();
        assert_eq!(push["channel"], channel, "{push}");
        let data = json!({"round": 2, "to": channel});
        assert_eq!(
            push["data"], data,
            "the header's position, not the URL's: {push}"
        );
    }
    let offset = latest["offset"].as_u64().unwrap();
    expect_message(&mut sse, WIKI, offset, &json!({"after": "header"})).await;
}

/// Reads the `unrecovered` event and returns its channels, sorted.
async fn expect_unrecovered(sse: &mut SseStream) -> (Vec<String>, String) {
    let event = next_significant(sse).await;
    assert_eq!(event.event.as_deref(), Some("unrecovered"), "{event:?}");
    let data = event.json();
    assert_eq!(data["type"], "unrecovered", "{data}");
    let reason = data["reason"].as_str().unwrap_or_default().to_owned();
    assert!(!reason.is_empty(), "the event says why: {data}");
    let mut channels: Vec<String> = data["channels"]
        .as_array()
        .unwrap_or_else(|| panic!("`channels` is an array: {data}"))
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    channels.sort_unstable();
    (channels, reason)
}

#[tokio::test]
async fn an_unusable_cursor_is_answered_with_unrecovered_and_no_replay() {
    let server = Server::start().await;
    let token = server.token("u-tamper");
    let channels = ["public:a", "public:b"];
    let path = query(&channels, &token);
    let mut sse = open(&server, &path, None).await;
    read_subscribed(&mut sse, &channels).await;
    server.publish_ok("public:a", &json!({"n": 1})).await;
    let cursor = expect_message(&mut sse, "public:a", 1, &json!({"n": 1})).await;
    drop(sse);
    server.publish_ok("public:a", &json!({"n": 2})).await;
    server.publish_ok("public:b", &json!({"n": 1})).await;

    // One character changed, a cursor of another stream, and garbage.
    let mut tampered: Vec<char> = cursor.chars().collect();
    let i = tampered.len() / 2;
    tampered[i] = if tampered[i] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    let other_stream = {
        let single = ["public:a"];
        let mut sse = open(&server, &query(&single, &token), None).await;
        read_subscribed(&mut sse, &single).await;
        server.publish_ok("public:a", &json!({"n": 3})).await;
        expect_message(&mut sse, "public:a", 3, &json!({"n": 3})).await
    };
    let other_set = {
        let set = ["public:a", "public:c"];
        let mut sse = open(&server, &query(&set, &token), None).await;
        read_subscribed(&mut sse, &set).await;
        server.publish_ok("public:c", &json!({"n": 1})).await;
        expect_message(&mut sse, "public:c", 1, &json!({"n": 1})).await
    };
    for bad in [tampered, other_stream, other_set, "not-a-cursor".to_owned()] {
        for (path, header) in [
            (path.clone(), Some(bad.as_str())),
            (format!("{path}&lastEventId={bad}"), None),
        ] {
            let mut sse = open(&server, &path, header).await;
            let subscribed = read_subscribed(&mut sse, &channels).await;
            for s in subscribed.values() {
                assert_eq!(s["recovered"], false, "cursor {bad:?}: {s}");
            }
            let (unrecovered, _) = expect_unrecovered(&mut sse).await;
            assert_eq!(unrecovered, channels, "cursor {bad:?}");
            // Nothing replayed: the next message is a live one.
            let live = server.publish_ok("public:b", &json!({"live": true})).await;
            let offset = live["offset"].as_u64().unwrap();
            expect_message(&mut sse, "public:b", offset, &json!({"live": true})).await;
        }
    }
}

#[tokio::test]
async fn a_gap_older_than_history_is_unrecovered_for_that_channel_only() {
    let server = Server::start().await;
    let token = server.token("u-gap");
    let channels = ["public:busy", "public:calm"];
    let path = query(&channels, &token);
    let mut sse = open(&server, &path, None).await;
    read_subscribed(&mut sse, &channels).await;
    server.publish_ok("public:calm", &json!({"n": 1})).await;
    let cursor = expect_message(&mut sse, "public:calm", 1, &json!({"n": 1})).await;
    drop(sse);

    // More than `public` keeps: the first one missed on `busy` is gone.
    for n in 1..=PUBLIC_HISTORY + 1 {
        server.publish_ok("public:busy", &json!({ "n": n })).await;
    }
    server.publish_ok("public:calm", &json!({"n": 2})).await;

    let mut sse = open(&server, &path, Some(&cursor)).await;
    let subscribed = read_subscribed(&mut sse, &channels).await;
    assert_eq!(subscribed["public:busy"]["recovered"], false);
    assert_eq!(subscribed["public:busy"]["offset"], PUBLIC_HISTORY + 1);
    assert_eq!(subscribed["public:calm"]["recovered"], true);
    let (unrecovered, _) = expect_unrecovered(&mut sse).await;
    assert_eq!(unrecovered, ["public:busy"]);
    // `calm` is replayed; nothing of `busy` is (never a partial replay).
    let cursor = expect_message(&mut sse, "public:calm", 2, &json!({"n": 2})).await;
    drop(sse);

    // The cursor now holds `busy`'s live position: the next resume recovers both.
    server
        .publish_ok("public:busy", &json!({"n": "next"}))
        .await;
    let mut sse = open(&server, &path, Some(&cursor)).await;
    let subscribed = read_subscribed(&mut sse, &channels).await;
    assert!(
        subscribed.values().all(|s| s["recovered"] == true),
        "{subscribed:?}"
    );
    expect_message(
        &mut sse,
        "public:busy",
        PUBLIC_HISTORY + 2,
        &json!({"n": "next"}),
    )
    .await;
}

#[tokio::test]
async fn a_restarted_broker_has_new_epochs_and_says_unrecovered() {
    let first = Server::start().await;
    let token = ada_token(&first);
    let channels = [PUBLIC, WIKI, USER];
    let path = query(&channels, &token);
    let mut sse = open(&first, &path, None).await;
    read_subscribed(&mut sse, &channels).await;
    let cursor = one_each(&first, &mut sse, 1).await;
    drop(sse);
    let (api_key, jwt_secret) = (first.api_key().to_owned(), first.jwt_secret().to_owned());
    drop(first);

    // The same installation (API key, JWT secret) restarted: the cursor is genuine, but the
    // in-memory engine starts new epochs.
    let second = Server::builder()
        .env("STELLWERK_API_KEY", &api_key)
        .env("STELLWERK_JWT_SECRET", &jwt_secret)
        .start()
        .await;
    let mut sse = open(&second, &path, Some(&cursor)).await;
    let subscribed = read_subscribed(&mut sse, &channels).await;
    for s in subscribed.values() {
        assert_eq!(s["recovered"], false, "{s}");
    }
    let (unrecovered, reason) = expect_unrecovered(&mut sse).await;
    let mut all = channels.map(str::to_owned).to_vec();
    all.sort_unstable();
    assert_eq!(unrecovered, all);
    assert!(reason.contains("epoch"), "{reason}");
}

#[tokio::test]
async fn resume_under_concurrent_publishing_gives_contiguous_sequences() {
    const ROUNDS: usize = 6;
    const PER_ROUND: usize = 5;
    let server = Arc::new(Server::start().await);
    let token = server.token("u-busy");
    let channels = ["public:live-a", "public:live-b"];
    let path = query(&channels, &token);

    // The first stream is live before publishing starts, so it sees everything from 1.
    let mut sse = open(&server, &path, None).await;
    read_subscribed(&mut sse, &channels).await;
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (server, stop) = (server.clone(), stop.clone());
        tokio::spawn(async move {
            let mut count = [0u64; 2];
            // Bounded: at most 2,000 messages even if the reader stalls.
            for i in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let which = i % 2;
                count[which] += 1;
                server
                    .publish_ok(channels[which], &json!({ "n": count[which] }))
                    .await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            count
        })
    };

    let mut seen: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut cursor: Option<String> = None;
    for round in 0..ROUNDS {
        if round > 0 {
            drop(sse);
            sse = open(&server, &path, cursor.as_deref()).await;
            let subscribed = read_subscribed(&mut sse, &channels).await;
            assert!(
                subscribed.values().all(|s| s["recovered"] == true),
                "{subscribed:?}"
            );
        }
        // Read a few, then drop the connection mid-stream while publishing goes on.
        for _ in 0..PER_ROUND {
            let event = next_significant(&mut sse).await;
            assert_eq!(event.event.as_deref(), Some("message"), "{event:?}");
            let push = event.json();
            let channel = channels
                .into_iter()
                .find(|c| push["channel"] == *c)
                .expect("one of the stream's channels");
            assert_eq!(push["data"]["n"], push["offset"], "{push}");
            seen.entry(channel)
                .or_default()
                .push(push["offset"].as_u64().unwrap());
            cursor = event.id;
        }
    }
    drop(sse);
    stop.store(true, Ordering::Relaxed);
    let published = publisher.await.expect("publisher");

    // Catch up on the rest with the last cursor.
    let mut sse = open(&server, &path, cursor.as_deref()).await;
    let subscribed = read_subscribed(&mut sse, &channels).await;
    assert!(
        subscribed.values().all(|s| s["recovered"] == true),
        "{subscribed:?}"
    );
    let total = published[0] + published[1];
    while (seen.values().map(Vec::len).sum::<usize>() as u64) < total {
        let event = next_significant(&mut sse).await;
        let push = event.json();
        let channel = channels
            .into_iter()
            .find(|c| push["channel"] == *c)
            .expect("one of the stream's channels");
        seen.entry(channel)
            .or_default()
            .push(push["offset"].as_u64().unwrap());
    }
    for (i, channel) in channels.iter().enumerate() {
        let want: Vec<u64> = (1..=published[i]).collect();
        assert_eq!(
            seen.get(channel).cloned().unwrap_or_default(),
            want,
            "{channel}: every offset exactly once, in order"
        );
    }
}

/// Reads until the `disconnect` event; it must be the stream's last.
async fn expect_disconnect(sse: &mut SseStream) -> Value {
    for _ in 0..100 {
        let event = next_significant(sse).await;
        if event.event.as_deref() == Some("disconnect") {
            let data = event.json();
            assert!(
                tokio::time::timeout(Duration::from_secs(5), sse.next_block())
                    .await
                    .expect("the stream ends after `disconnect`")
                    .is_none(),
                "nothing after `disconnect`"
            );
            return data;
        }
        assert_eq!(event.event.as_deref(), Some("subscribed"), "{event:?}");
    }
    panic!("no `disconnect` event");
}

#[tokio::test]
async fn an_expired_token_ends_the_stream_with_a_disconnect_event() {
    let server = Server::builder()
        .env("STELLWERK_JWT_LEEWAY_SECONDS", 0)
        .start()
        .await;
    let token = server.mint("u-expiring", json!({}), Duration::from_secs(3));
    let mut sse = open(&server, &query(&["public:news"], &token), None).await;
    read_subscribed(&mut sse, &["public:news"]).await;
    let data = expect_disconnect(&mut sse).await;
    assert_eq!(
        data,
        json!({"type": "disconnect", "code": 4004, "reason": "token expired"})
    );
}

#[tokio::test]
async fn disconnecting_the_user_ends_the_stream_with_a_disconnect_event() {
    let server = Server::start().await;
    let token = server.token(ADA);
    let mut sse = open(&server, &query(&[USER], &token), None).await;
    read_subscribed(&mut sse, &[USER]).await;
    server.disconnect_user(ADA).await;
    let data = expect_disconnect(&mut sse).await;
    assert_eq!(data["type"], "disconnect", "{data}");
    assert_eq!(data["code"], 4003, "{data}");
    assert!(
        data["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{data}"
    );
}

#[tokio::test]
async fn a_stream_that_does_not_keep_up_ends_with_a_disconnect_event_and_resumes() {
    let server = Server::builder()
        .env("STELLWERK_LIMITS_QUEUE_CAPACITY", 4)
        .start()
        .await;
    let token = server.token("u-slow");
    let path = query(&["public:flood"], &token);
    let mut sse = open(&server, &path, None).await;
    read_subscribed(&mut sse, &["public:flood"]).await;
    // The client stops reading: the socket buffers (a few MiB on loopback) and then the
    // queue of 4 fill up; 16 MiB is well beyond both.
    let filler = "x".repeat(256 * 1024);
    let mut published = 0;
    for n in 1..=64u64 {
        server
            .publish_ok("public:flood", &json!({ "n": n, "filler": filler }))
            .await;
        published = n;
    }
    // Whatever made it into the socket first, then the final event.
    let mut cursor = None;
    let data = loop {
        let event = next_significant(&mut sse).await;
        match event.event.as_deref() {
            Some("message") => cursor = event.id,
            Some("disconnect") => break event.json(),
            other => panic!("unexpected {other:?}: {event:?}"),
        }
    };
    assert_eq!(data["type"], "disconnect", "{data}");
    assert_eq!(data["code"], 4008, "{data}");
    assert!(
        tokio::time::timeout(Duration::from_secs(5), sse.next_block())
            .await
            .expect("the stream ends after `disconnect`")
            .is_none(),
        "nothing after `disconnect`"
    );

    // It comes back from the last message it got (or from the stream's start).
    let cursor = cursor.expect("some messages arrived before the cut-off");
    let mut sse = open(&server, &path, Some(&cursor)).await;
    let subscribed = read_subscribed(&mut sse, &["public:flood"]).await;
    assert_eq!(subscribed["public:flood"]["recovered"], true);
    let mut last = 0;
    while last < published {
        let event = next_significant(&mut sse).await;
        assert_eq!(event.event.as_deref(), Some("message"), "{event:?}");
        let offset = event.json()["offset"].as_u64().unwrap();
        assert!(last == 0 || offset == last + 1, "{offset} after {last}");
        last = offset;
    }
}
