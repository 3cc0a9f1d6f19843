//! The churning clients: WebSocket clients that connect, subscribe, chat, ask for presence
//! and history, refresh their token, subscribe to a throw-away channel and leave again
//! (closing, being disconnected by the API, or just dropping the socket); SSE streams that
//! open, read and drop. All of it far below the default rate limits: each connection sends
//! `command_rate` commands a second (at most 20), every second one a chat publish, and
//! five subscribes and unsubscribes in its life of 10 to 17 commands.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::delivery::Tag;
use super::session::{SseSession, WsSession};
use super::{Shared, CHAT, NEWS};
use crate::servers::{API_KEY, JWT_SECRET};
use crate::stellwerk;

/// Cycles one churner runs at the most, whatever the duration: a bound on the loop.
const MAX_CYCLES: u64 = 1_000_000;

/// Runs WebSocket churner `slot` until the churn ends. Each failed cycle is counted as an
/// error (by the step that failed) and the next cycle starts.
pub(crate) async fn ws_churner(slot: usize, shared: Arc<Shared>, http: reqwest::Client) {
    let mut seq = 0;
    for cycle in 0..MAX_CYCLES {
        if Instant::now() >= shared.churn_until {
            break;
        }
        if let Err(e) = ws_cycle(slot, cycle, &mut seq, &shared, &http).await {
            shared.error(&e);
        }
        tokio::time::sleep(Duration::from_millis(100 + spread(slot, cycle, 400))).await;
    }
}

/// A number in `0..range` that differs between slots and cycles, so that the churners do
/// not move in lockstep (no randomness needed: the mix is the same on every run).
fn spread(slot: usize, cycle: u64, range: u64) -> u64 {
    (slot as u64 * 7919 + cycle * 104_729) % range.max(1)
}

/// The claims of a soak user: a member of the soak's course, with a display name that
/// presence shows.
pub(crate) fn claims(user: &str, status: &str) -> Value {
    json!({"courses": {super::COURSE_ID: status}, "name": user})
}

async fn ws_cycle(
    slot: usize,
    cycle: u64,
    seq: &mut u64,
    shared: &Shared,
    http: &reqwest::Client,
) -> Result<()> {
    let user = format!("soak-churn-{slot}");
    let claims = claims(&user, "autor");
    let token = stellwerk::token(JWT_SECRET, &user, Some(&claims))?;
    // Half the connections bring the token in the URL, half in `connect`.
    let mut s = if cycle.is_multiple_of(2) {
        WsSession::open(shared.addr, &format!("/ws?token={token}"))
            .await
            .context("connect")?
    } else {
        let mut s = WsSession::open(shared.addr, "/ws")
            .await
            .context("connect")?;
        s.expect(json!({"type": "connect", "token": token}), "connected")
            .await
            .context("connect")?;
        s
    };
    shared.count("ws connects");
    let life = ws_life(&mut s, slot, cycle, seq, &user, &claims, shared).await;
    if life.is_err() {
        // What arrived until the failure is checked all the same.
        let _ = settle(&mut s, shared);
        return life;
    }
    match cycle % 3 {
        0 => {
            settle(&mut s, shared)?;
            s.close().await.context("client close")?;
            shared.count("client closes");
        }
        1 => {
            let disconnected = api_disconnect(shared, http, &user)
                .await
                .context("disconnect API")?;
            if disconnected < 1 {
                bail!("disconnect API: the user's connection was not counted ({disconnected})");
            }
            let code = s
                .read_until_closed(Duration::from_secs(10))
                .await
                .context("disconnect API")?;
            let pushed = s.pushes.disconnect.take().map(|d| d["code"].clone());
            if code != Some(4003) || pushed != Some(json!(4003)) {
                bail!("disconnect API: closed with {code:?} after the push {pushed:?}, not 4003");
            }
            settle(&mut s, shared)?;
            shared.count("API disconnects");
        }
        _ => {
            // The TCP socket dropped without a close frame (a laptop lid closing).
            settle(&mut s, shared)?;
            drop(s);
            shared.count("socket drops");
        }
    }
    Ok(())
}

/// Checks what every subscription of `s` received so far (and forgets it), and fails on
/// any push an honest client never gets.
fn settle(s: &mut WsSession, shared: &Shared) -> Result<()> {
    for (channel, received) in s.pushes.subscriptions.drain() {
        shared.churn_checked(&channel, &received);
    }
    if let Some(push) = s.pushes.disconnect.take() {
        bail!("unexpected disconnect: {push}");
    }
    let unexpected = std::mem::take(&mut s.pushes.unexpected);
    if let Some(push) = unexpected.first() {
        bail!(
            "unexpected push: {} of them, the first: {push}",
            unexpected.len()
        );
    }
    Ok(())
}

/// The connection's life between connecting and leaving: a chat publish every tick, with
/// the other commands in between.
async fn ws_life(
    s: &mut WsSession,
    slot: usize,
    cycle: u64,
    seq: &mut u64,
    user: &str,
    claims: &Value,
    shared: &Shared,
) -> Result<()> {
    let publisher = slot as u64 + 1;
    let tick = Duration::from_secs_f64(1.0 / shared.p.command_rate.max(0.1));
    s.subscribe(NEWS).await.context("subscribe")?;
    s.subscribe(CHAT).await.context("subscribe")?;
    shared.count_n("subscribes", 2);
    let ticks = 10 + spread(slot, cycle, 8);
    for step in 0..ticks {
        if Instant::now() >= shared.churn_until {
            break;
        }
        if step % 2 == 0 {
            *seq += 1;
            let tag = Tag {
                publisher,
                seq: *seq,
            };
            let reply = s
                .expect(
                    json!({"type": "publish", "channel": CHAT, "data": tag.payload()}),
                    "published",
                )
                .await
                .context("client publish")?;
            let offset = reply["offset"]
                .as_u64()
                .context("client publish: no offset")?;
            shared.ledger.record(CHAT, offset, tag);
            shared.count("client publishes");
        } else {
            match step {
                1 => presence(s, user, shared).await.context("presence")?,
                3 => history(s, shared).await.context("history")?,
                5 => {
                    let channel = format!("public:soak-void-{slot}-{cycle}");
                    let reply = s
                        .expect(json!({"type": "history", "channel": channel}), "history")
                        .await
                        .context("history")?;
                    if reply["messages"] != json!([]) {
                        bail!("history: a never-used channel has messages: {reply}");
                    }
                    shared.count("history reads");
                }
                7 => {
                    let token = stellwerk::token(JWT_SECRET, user, Some(claims))?;
                    s.expect(json!({"type": "refresh", "token": token}), "refreshed")
                        .await
                        .context("refresh")?;
                    shared.count("refreshes");
                }
                9 => {
                    // A channel of its own, used once: the broker must forget it again.
                    let channel = format!("public:soak-idle-{slot}-{cycle}");
                    s.subscribe(&channel).await.context("subscribe")?;
                    let received = s.unsubscribe(&channel).await.context("unsubscribe")?;
                    shared.churn_checked(&channel, &received);
                    shared.count("subscribes");
                    shared.count("unsubscribes");
                }
                _ => {
                    s.expect(json!({"type": "ping"}), "pong")
                        .await
                        .context("ping")?;
                }
            }
        }
        s.read_for(tick).await.context("read")?;
    }
    if cycle.is_multiple_of(2) {
        let received = s.unsubscribe(NEWS).await.context("unsubscribe")?;
        shared.churn_checked(NEWS, &received);
        shared.count("unsubscribes");
    }
    Ok(())
}

/// `presence` on the chat: every WebSocket witness and this user must be members.
async fn presence(s: &mut WsSession, user: &str, shared: &Shared) -> Result<()> {
    let reply = s
        .expect(json!({"type": "presence", "channel": CHAT}), "presence")
        .await?;
    let members: Vec<&str> = reply["members"]
        .as_array()
        .context("no members")?
        .iter()
        .filter_map(|m| m["user"].as_str())
        .collect();
    for want in shared
        .presence_members
        .iter()
        .map(String::as_str)
        .chain([user])
    {
        if !members.contains(&want) {
            bail!("{want} is subscribed but not a member: {reply}");
        }
    }
    shared.count("presence");
    Ok(())
}

/// `history` of the chat: the latest messages, contiguous, in the subscription's epoch.
async fn history(s: &mut WsSession, shared: &Shared) -> Result<()> {
    let reply = s
        .expect(
            json!({"type": "history", "channel": CHAT, "limit": 20}),
            "history",
        )
        .await?;
    let epoch = s
        .pushes
        .subscriptions
        .get(CHAT)
        .and_then(|r| r.start.clone());
    if let Some((epoch, _)) = epoch {
        if reply["epoch"] != epoch.as_str() {
            bail!(
                "history in epoch {} while subscribed in {epoch}",
                reply["epoch"]
            );
        }
    }
    let offsets: Vec<u64> = reply["messages"]
        .as_array()
        .context("no messages")?
        .iter()
        .filter_map(|m| m["offset"].as_u64())
        .collect();
    if offsets.windows(2).any(|w| w[1] != w[0] + 1) {
        bail!("history offsets not contiguous: {offsets:?}");
    }
    shared.count("history reads");
    Ok(())
}

/// `POST /api/users/{user}/disconnect`; the number of connections it cut off.
async fn api_disconnect(shared: &Shared, http: &reqwest::Client, user: &str) -> Result<u64> {
    let answer: Value = http
        .post(format!(
            "http://{}/api/users/{user}/disconnect",
            shared.addr
        ))
        .bearer_auth(API_KEY)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    answer["disconnected"]
        .as_u64()
        .with_context(|| format!("answer without `disconnected`: {answer}"))
}

/// Runs SSE churner `index` until the churn ends: a stream on the news and the chat, read
/// for a few seconds, then dropped.
pub(crate) async fn sse_churner(index: usize, shared: Arc<Shared>) {
    for cycle in 0..MAX_CYCLES {
        if Instant::now() >= shared.churn_until {
            break;
        }
        if let Err(e) = sse_cycle(index, cycle, &shared).await {
            shared.error(&e);
        }
        tokio::time::sleep(Duration::from_millis(100 + spread(index, cycle, 400))).await;
    }
}

async fn sse_cycle(index: usize, cycle: u64, shared: &Shared) -> Result<()> {
    let user = format!("soak-sse-churn-{index}");
    let token = stellwerk::token(JWT_SECRET, &user, Some(&claims(&user, "autor")))?;
    let mut s = SseSession::open(shared.addr, &[NEWS, CHAT], &token)
        .await
        .context("sse connect")?;
    shared.count("sse streams");
    let life = Duration::from_millis(2000 + spread(index, cycle, 3000));
    let until = (Instant::now() + life).min(shared.churn_until);
    let read = s
        .read_for(until.saturating_duration_since(Instant::now()))
        .await;
    for (channel, received) in &s.pushes.subscriptions {
        shared.churn_checked(channel, received);
    }
    read.context("sse read")?;
    if let Some(push) = s.pushes.unexpected.first() {
        bail!("sse: unexpected event: {push}");
    }
    if let Some(push) = &s.pushes.disconnect {
        bail!("sse: the stream was ended: {push}");
    }
    Ok(())
}
