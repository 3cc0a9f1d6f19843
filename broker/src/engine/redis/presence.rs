//! Presence on Redis: members of all nodes, with each node's members
//! expiring when the node stops saying it is alive.
//!
//! Per channel `c`: `stellwerk:{c}:members` (user → info JSON) and
//! `stellwerk:{c}:nodes` (user → on how many nodes it is present). Per node
//! `n`: `stellwerk:node:n:members` (`<channel>\0<user>` for every member it
//! added, so that a join or leave applies once even when retried, and the
//! others can undo what it added) and `stellwerk:node:n:alive`, a key a
//! heartbeat renews; `stellwerk:nodes` lists the nodes. A node whose alive
//! key expired (SIGKILL, power loss, a partition) is reaped by whichever
//! node sees it first: its members are removed and a `leave` is published
//! for every user present nowhere else.
//!
//! Events travel on the channel's pub/sub topic as `!` + JSON (an epoch
//! never starts with `!`), so they reach exactly the nodes subscribed to
//! the channel, in order with its messages.

use std::sync::{Arc, Weak};
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::Script;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{topic, unavailable};
use crate::channel::ChannelName;
use crate::engine::presence::{Change, Member, Presence, PresenceEvent};
use crate::engine::{EngineError, EngineFuture};

const JOIN: &str = r"
-- KEYS: members, nodes, this node's members. ARGV: user, info, entry, topic, event.
if redis.call('SADD', KEYS[3], ARGV[3]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[2], ARGV[1], 1) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('PUBLISH', ARGV[4], ARGV[5])
end
return 1
";

const LEAVE: &str = r"
-- KEYS: members, nodes, this node's members. ARGV: user, entry, topic, event.
if redis.call('SREM', KEYS[3], ARGV[2]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[2], ARGV[1], -1) <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('PUBLISH', ARGV[3], ARGV[4])
end
return 1
";

const UPDATE: &str = r"
-- KEYS: members. ARGV: user, info. Only a present user's.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
";

/// Undoes what a dead node added. Touches keys it is not given (the dead
/// node's channels are only known inside): fine on one Redis, not on a
/// Redis Cluster.
const REAP: &str = r#"
-- ARGV: the dead node's id.
local id = ARGV[1]
if redis.call('EXISTS', 'stellwerk:node:' .. id .. ':alive') == 1 then return 0 end
local set = 'stellwerk:node:' .. id .. ':members'
local reaped = 0
for _, entry in ipairs(redis.call('SMEMBERS', set)) do
  local cut = string.find(entry, '\0', 1, true)
  local channel, user = string.sub(entry, 1, cut - 1), string.sub(entry, cut + 1)
  local members, nodes = 'stellwerk:{' .. channel .. '}:members', 'stellwerk:{' .. channel .. '}:nodes'
  if redis.call('HINCRBY', nodes, user, -1) <= 0 then
    local info = redis.call('HGET', members, user) or '{}'
    redis.call('HDEL', nodes, user)
    redis.call('HDEL', members, user)
    redis.call('PUBLISH', 'stellwerk:{' .. channel .. '}',
      '!{"k":"leave","n":' .. cjson.encode(id) .. ',"c":0,"u":' .. cjson.encode(user) ..
      ',"i":' .. info .. '}')
  end
  reaped = reaped + 1
end
redis.call('DEL', set)
redis.call('SREM', 'stellwerk:nodes', id)
return reaped
"#;

/// How long a leave is retried while Redis does not take it.
const LEAVE_RETRY: Duration = Duration::from_secs(300);

/// An event as it travels on pub/sub (after the `!`).
#[derive(Debug, Serialize, Deserialize)]
struct Wire<'a> {
    k: &'a str,
    n: &'a str,
    c: u64,
    u: &'a str,
    i: &'a serde_json::value::RawValue,
}

/// The pub/sub form of `event`.
fn encode(event: &PresenceEvent) -> String {
    let info = event.info_json();
    let wire = Wire {
        k: event.change.as_str(),
        n: &event.node,
        c: event.connection,
        u: &event.user,
        i: &info,
    };
    format!("!{}", serde_json::to_string(&wire).unwrap_or_default())
}

/// A pub/sub payload that starts with `!`, back into an event.
pub(super) fn decode(channel: ChannelName, payload: &str) -> Option<PresenceEvent> {
    let wire: Wire<'_> = serde_json::from_str(payload.strip_prefix('!')?).ok()?;
    let change = match wire.k {
        "join" => Change::Join,
        "leave" => Change::Leave,
        _ => return None,
    };
    Some(PresenceEvent {
        channel,
        change,
        user: Arc::from(wire.u),
        info: Arc::from(wire.i.get()),
        node: Arc::from(wire.n),
        connection: wire.c,
    })
}

fn members_key(channel: &ChannelName) -> String {
    format!("stellwerk:{{{channel}}}:members")
}

fn nodes_key(channel: &ChannelName) -> String {
    format!("stellwerk:{{{channel}}}:nodes")
}

fn node_members_key(node: &str) -> String {
    format!("stellwerk:node:{node}:members")
}

fn alive_key(node: &str) -> String {
    format!("stellwerk:node:{node}:alive")
}

/// What the presence task is asked to do, in order.
enum Op {
    Join(PresenceEvent, oneshot::Sender<Result<(), EngineError>>),
    Leave(PresenceEvent),
    Update(PresenceEvent),
}

pub(crate) struct RedisPresence {
    node: Arc<str>,
    ops: mpsc::UnboundedSender<Op>,
    commands: ConnectionManager,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl RedisPresence {
    /// Starts the presence task, the heartbeat and the reaper; they end
    /// when the returned value is dropped (the heartbeat then stops, and
    /// the other nodes reap this one after `node_timeout`).
    pub(crate) fn start(
        commands: ConnectionManager,
        node: Arc<str>,
        node_timeout: Duration,
    ) -> Arc<Self> {
        let (ops, ops_rx) = mpsc::unbounded_channel();
        let presence = Arc::new(Self {
            node: node.clone(),
            ops,
            commands: commands.clone(),
        });
        tokio::spawn(apply(ops_rx, commands.clone(), node.clone()));
        tokio::spawn(heartbeat(
            Arc::downgrade(&presence),
            commands,
            node,
            node_timeout,
        ));
        presence
    }
}

impl Presence for RedisPresence {
    fn node(&self) -> &str {
        &self.node
    }

    fn join(&self, event: PresenceEvent) -> EngineFuture<'_, ()> {
        let (reply, done) = oneshot::channel();
        let sent = self.ops.send(Op::Join(event, reply)).is_ok();
        Box::pin(async move {
            if !sent {
                return Err(EngineError::Unavailable("redis: presence stopped".into()));
            }
            done.await
                .map_err(|_| EngineError::Unavailable("redis: presence stopped".into()))?
        })
    }

    fn leave(&self, event: PresenceEvent) {
        let _ = self.ops.send(Op::Leave(event));
    }

    fn update(&self, event: PresenceEvent) {
        let _ = self.ops.send(Op::Update(event));
    }

    fn members<'a>(&'a self, channel: &'a ChannelName) -> EngineFuture<'a, Vec<Member>> {
        let mut commands = self.commands.clone();
        Box::pin(async move {
            let mut all: Vec<(String, String)> = ::redis::cmd("HGETALL")
                .arg(members_key(channel))
                .query_async(&mut commands)
                .await
                .map_err(|e| unavailable(&e))?;
            all.sort();
            Ok(all
                .into_iter()
                .map(|(user, info)| Member {
                    user: Arc::from(user),
                    info: Arc::from(info),
                })
                .collect())
        })
    }
}

/// Applies joins and leaves one at a time, in the order the hub made them.
/// A join that fails is answered with the error (the subscribe fails); a
/// leave is retried until Redis takes it (it is idempotent), so that no
/// member outlives its connections because of an outage, for at most
/// [`LEAVE_RETRY`], so that the joins queued behind it do not wait forever.
async fn apply(
    mut ops: mpsc::UnboundedReceiver<Op>,
    mut commands: ConnectionManager,
    node: Arc<str>,
) {
    let join = Script::new(JOIN);
    let leave = Script::new(LEAVE);
    let update = Script::new(UPDATE);
    let own = node_members_key(&node);
    while let Some(op) = ops.recv().await {
        match op {
            Op::Join(event, reply) => {
                let result: Result<i64, _> = join
                    .key(members_key(&event.channel))
                    .key(nodes_key(&event.channel))
                    .key(&own)
                    .arg(&*event.user)
                    .arg(&*event.info)
                    .arg(entry(&event))
                    .arg(topic(&event.channel))
                    .arg(encode(&event))
                    .invoke_async(&mut commands)
                    .await;
                let _ = reply.send(result.map(drop).map_err(|e| unavailable(&e)));
            }
            Op::Update(event) => {
                // Best effort: a lost update leaves the older info listed.
                let result: Result<i64, _> = update
                    .key(members_key(&event.channel))
                    .arg(&*event.user)
                    .arg(&*event.info)
                    .invoke_async(&mut commands)
                    .await;
                if let Err(e) = result {
                    tracing::warn!("redis: presence info of {} not updated: {e}", event.user);
                }
            }
            Op::Leave(event) => {
                let mut delay = Duration::from_millis(100);
                let give_up = tokio::time::Instant::now() + LEAVE_RETRY;
                loop {
                    let result: Result<i64, _> = leave
                        .key(members_key(&event.channel))
                        .key(nodes_key(&event.channel))
                        .key(&own)
                        .arg(&*event.user)
                        .arg(entry(&event))
                        .arg(topic(&event.channel))
                        .arg(encode(&event))
                        .invoke_async(&mut commands)
                        .await;
                    if result.is_ok() {
                        break;
                    }
                    if tokio::time::Instant::now() >= give_up {
                        // Listed until this node goes (and is reaped) or the
                        // user leaves again; joins behind it must not wait forever.
                        tracing::error!(
                            user = %event.user,
                            channel = %event.channel,
                            "redis: presence leave not recorded after {LEAVE_RETRY:?}; given up"
                        );
                        break;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

fn entry(event: &PresenceEvent) -> String {
    format!("{}\0{}", event.channel, event.user)
}

/// Renews this node's alive key every third of `node_timeout` and reaps
/// nodes whose key expired. Ends with the presence.
async fn heartbeat(
    presence: Weak<RedisPresence>,
    mut commands: ConnectionManager,
    node: Arc<str>,
    node_timeout: Duration,
) {
    let reap = Script::new(REAP);
    let timeout_ms = u64::try_from(node_timeout.as_millis()).unwrap_or(u64::MAX);
    let mut tick = tokio::time::interval(node_timeout / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if presence.strong_count() == 0 {
            return;
        }
        let renewed: Result<(), _> = ::redis::pipe()
            .cmd("SET")
            .arg(alive_key(&node))
            .arg(1)
            .arg("PX")
            .arg(timeout_ms)
            .ignore()
            .cmd("SADD")
            .arg("stellwerk:nodes")
            .arg(&*node)
            .ignore()
            .exec_async(&mut commands)
            .await;
        if renewed.is_err() {
            continue;
        }
        let nodes: Vec<String> = match ::redis::cmd("SMEMBERS")
            .arg("stellwerk:nodes")
            .query_async(&mut commands)
            .await
        {
            Ok(nodes) => nodes,
            Err(_) => continue,
        };
        for other in nodes.iter().filter(|n| **n != *node) {
            let reaped: Result<i64, _> = reap.arg(other).invoke_async(&mut commands).await;
            if let Ok(reaped) =
                reaped.map_err(|e| tracing::warn!("redis: reaping node {other}: {e}"))
            {
                if reaped > 0 {
                    tracing::warn!(node = %other, members = reaped, "node stopped renewing; its presence members were removed");
                }
            }
        }
    }
}
