//! The engine for several nodes: channel state in a shared Redis (7.x).
//!
//! Per channel `c`, under keys with the hash tag `{c}` (so that a Redis
//! Cluster keeps them in one slot):
//! - `stellwerk:{c}:meta`: a hash with the `epoch` and the latest `offset`;
//!   it expires after the longer of the history age and `channel_idle`
//!   unused, and nodes with subscribers keep it alive;
//! - `stellwerk:{c}:stream`: the kept messages, a stream whose entry ids
//!   are `<offset>-0`, capped with `MAXLEN` and expired with the history age;
//! - the pub/sub channel `stellwerk:{c}` carries `<epoch> <offset> <data>`.
//!
//! A publish is one Lua script over all its channels (offset, history and
//! `PUBLISH` at once, so no subscriber sees a message history lacks).
//! Two connections: one multiplexed for commands, one (RESP3) for pub/sub,
//! both reconnecting with backoff. A node subscribes to a pub/sub channel
//! while it has local subscribers, and tells the hub to make them recover
//! whenever it may have missed something: the pub/sub connection dropped,
//! an offset jumped or an epoch changed, or its read backlog overflowed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Script, Value};
use tokio::sync::{mpsc, oneshot};

mod control;
mod presence;

use self::control::Asks;
use self::presence::RedisPresence;
use super::{
    new_epoch, Attached, Engine, EngineError, EngineFuture, EngineStats, HistoryPolicy, Lifetimes,
    Outgoing, Position, Publication, Sink, Stored,
};
use crate::channel::ChannelName;

/// Pub/sub messages read from Redis and not yet handed to the sink. Past
/// this the node stops reading them and makes every subscriber recover.
const MAX_UNREAD: usize = 65_536;

/// How long one Redis command may take before the caller gets `unavailable`.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

const PUBLISH: &str = r"
-- KEYS: meta, stream per channel. ARGV[1]: an epoch for channels without one;
-- then per channel: pub/sub name, data, history size, history ttl (s), keep (s).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 0, #KEYS / 2 - 1 do
  local meta, stream = KEYS[2 * i + 1], KEYS[2 * i + 2]
  local a = 2 + i * 5
  local size, ttl, keep = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    epoch = ARGV[1]
    redis.call('HSET', meta, 'epoch', epoch)
  end
  local offset = redis.call('HINCRBY', meta, 'offset', 1)
  if redis.call('TTL', meta) < keep then redis.call('EXPIRE', meta, keep) end
  if size > 0 then
    redis.call('XADD', stream, 'MAXLEN', size, offset .. '-0', 't', now, 'd', ARGV[a + 1])
    redis.call('EXPIRE', stream, ttl)
  else
    redis.call('DEL', stream)
  end
  redis.call('PUBLISH', ARGV[a], epoch .. ' ' .. offset .. ' ' .. ARGV[a + 1])
  out[#out + 1] = {epoch, offset}
end
return out
";

/// Kept entries of `stream` after offset `from` (inclusive of `from + 1`),
/// younger than `ttl_ms`, oldest first, as two parallel tables.
const ENTRIES: &str = r"
local function entries(stream, first, ttl_ms, reverse, count)
  local t = redis.call('TIME')
  local oldest = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - ttl_ms
  local found
  if reverse then
    found = redis.call('XREVRANGE', stream, '+', first .. '-0', 'COUNT', count)
  else
    found = redis.call('XRANGE', stream, first .. '-0', '+')
  end
  local offsets, datas = {}, {}
  for _, e in ipairs(found) do
    local fields = e[2]
    if tonumber(fields[2]) >= oldest then
      offsets[#offsets + 1] = tonumber(string.match(e[1], '^(%d+)'))
      datas[#datas + 1] = fields[4]
    end
  end
  return offsets, datas
end
";

const ATTACH: &str = r"
-- KEYS: meta, stream. ARGV: epoch for a new channel, keep (s), ttl (ms),
-- recovery epoch ('' for none), recovery offset.
local meta, stream = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
end
local offset = tonumber(redis.call('HGET', meta, 'offset') or '0')
local keep = tonumber(ARGV[2])
if redis.call('TTL', meta) < keep then redis.call('EXPIRE', meta, keep) end
local offsets, datas = {}, {}
if ARGV[4] ~= '' and ARGV[4] == epoch and tonumber(ARGV[5]) < offset then
  offsets, datas = entries(stream, tonumber(ARGV[5]) + 1, tonumber(ARGV[3]), false, 0)
end
return {epoch, offset, offsets, datas}
";

const HISTORY: &str = r"
-- KEYS: meta, stream. ARGV: limit, since, ttl (ms). Creates nothing.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then return {'', {}, {}} end
local limit = tonumber(ARGV[1])
if limit == 0 then return {epoch, {}, {}} end
local offsets, datas = entries(KEYS[2], tonumber(ARGV[2]) + 1, tonumber(ARGV[3]), true, limit)
local n = #offsets
for i = 1, math.floor(n / 2) do
  offsets[i], offsets[n + 1 - i] = offsets[n + 1 - i], offsets[i]
  datas[i], datas[n + 1 - i] = datas[n + 1 - i], datas[i]
end
return {epoch, offsets, datas}
";

/// Asks the subscription task to change what this node receives.
enum Subscription {
    /// One more local subscription; answered once the node is subscribed.
    Attach(ChannelName, oneshot::Sender<Result<(), EngineError>>),
    Detach(ChannelName),
}

pub(crate) struct RedisEngine {
    commands: ConnectionManager,
    subscriptions: mpsc::UnboundedSender<Subscription>,
    lifetimes: Lifetimes,
    publish: Script,
    attach: Script,
    history: Script,
    /// Channels this node is subscribed to (for `/metrics`).
    attached: Arc<AtomicU64>,
    /// A task is PINGing the command connection back to life.
    reviving: Arc<AtomicBool>,
    /// Questions to the other nodes waiting for answers.
    asks: Arc<Asks>,
    presence: Arc<RedisPresence>,
}

impl std::fmt::Debug for RedisEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEngine").finish_non_exhaustive()
    }
}

/// Both connections, before the engine runs.
pub(crate) struct Connected {
    commands: ConnectionManager,
    pubsub: ConnectionManager,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
    unread: Arc<AtomicUsize>,
    overflowed: Arc<AtomicBool>,
    lifetimes: Lifetimes,
}

impl std::fmt::Debug for Connected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connected").finish_non_exhaustive()
    }
}

impl Connected {
    /// Starts the tasks that read pub/sub (handing it to `sink`) and manage
    /// subscriptions; they end when the engine is dropped.
    pub(crate) fn start(self, sink: Weak<dyn Sink>) -> Arc<RedisEngine> {
        let attached = Arc::new(AtomicU64::new(0));
        let (subscriptions, subscriptions_rx) = mpsc::unbounded_channel();
        let node: Arc<str> = Arc::from(format!("{:016x}", rand::random::<u64>()));
        let asks = Arc::new(Asks::new(node.clone()));
        tokio::spawn(read_pubsub(
            self.pushes,
            self.unread,
            self.overflowed,
            sink,
            self.pubsub.clone(),
            self.commands.clone(),
            asks.clone(),
        ));
        tokio::spawn(manage_subscriptions(
            subscriptions_rx,
            self.pubsub,
            self.commands.clone(),
            attached.clone(),
            self.lifetimes,
        ));
        let presence =
            RedisPresence::start(self.commands.clone(), node, self.lifetimes.node_timeout);
        Arc::new(RedisEngine {
            commands: self.commands,
            subscriptions,
            asks,
            lifetimes: self.lifetimes,
            publish: Script::new(PUBLISH),
            attach: Script::new(&format!("{ENTRIES}\n{ATTACH}")),
            history: Script::new(&format!("{ENTRIES}\n{HISTORY}")),
            attached,
            reviving: Arc::new(AtomicBool::new(false)),
            presence,
        })
    }
}

fn unavailable(error: &::redis::RedisError) -> EngineError {
    EngineError::Unavailable(format!("redis: {error}"))
}

fn meta_key(channel: &ChannelName) -> String {
    format!("stellwerk:{{{channel}}}:meta")
}

fn stream_key(channel: &ChannelName) -> String {
    format!("stellwerk:{{{channel}}}:stream")
}

fn topic(channel: &ChannelName) -> String {
    format!("stellwerk:{{{channel}}}")
}

/// The channel a pub/sub name belongs to.
fn channel_of_topic(topic: &[u8]) -> Option<ChannelName> {
    let name = std::str::from_utf8(topic).ok()?;
    let inner = name.strip_prefix("stellwerk:{")?.strip_suffix('}')?;
    ChannelName::parse(inner).ok()
}

/// How long a channel's meta hash lives unused under `policy`: like the
/// memory engine, `channel_idle` after its last use or after its history
/// expired.
fn keep_seconds(policy: HistoryPolicy, lifetimes: Lifetimes) -> u64 {
    let history = if policy.size == 0 {
        Duration::ZERO
    } else {
        policy.ttl
    };
    (history + lifetimes.channel_idle).as_secs().max(1)
}

impl RedisEngine {
    /// Connects to Redis at `url` (both connections); [`Connected::start`]
    /// then starts the engine. Fails when Redis cannot be reached now: a
    /// node that starts without its store would only answer `unavailable`.
    pub(crate) async fn connect(url: &str, lifetimes: Lifetimes) -> Result<Connected, EngineError> {
        // One TLS provider for `rediss://`; installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let info = url
            .into_connection_info()
            .map_err(|e| EngineError::Unavailable(format!("engine.redis_url: {e}")))?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = ::redis::Client::open(info.set_redis_settings(settings))
            .map_err(|e| unavailable(&e))?;
        let config = || {
            ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(4)
                .set_max_delay(Duration::from_secs(2))
        };
        let commands = client
            .get_connection_manager_with_config(config())
            .await
            .map_err(|e| unavailable(&e))?;

        let unread = Arc::new(AtomicUsize::new(0));
        let overflowed = Arc::new(AtomicBool::new(false));
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let sender = {
            let (unread, overflowed) = (unread.clone(), overflowed.clone());
            move |info: PushInfo| -> Result<(), ::redis::aio::SendError> {
                if info.kind == PushKind::Message && unread.load(Ordering::Relaxed) >= MAX_UNREAD {
                    overflowed.store(true, Ordering::Relaxed);
                    return Ok(());
                }
                unread.fetch_add(1, Ordering::Relaxed);
                push_tx.send(info).map_err(|_| ::redis::aio::SendError)
            }
        };
        let pubsub = client
            .get_connection_manager_with_config(
                config()
                    .set_push_sender(sender)
                    .set_automatic_resubscription(),
            )
            .await
            .map_err(|e| unavailable(&e))?;
        // Questions between nodes; resubscribed with the rest after a reconnect.
        let mut control = pubsub.clone();
        control
            .subscribe(super::CONTROL)
            .await
            .map_err(|e| unavailable(&e))?;

        Ok(Connected {
            commands,
            pubsub,
            pushes: push_rx,
            unread,
            overflowed,
            lifetimes,
        })
    }

    /// A command failed: the error for the caller, and (once) a task that
    /// keeps the connection reconnecting, so that the first request after
    /// an outage finds it back instead of failing to trigger the reconnect.
    fn failed(&self, error: &::redis::RedisError) -> EngineError {
        if !self.reviving.swap(true, Ordering::AcqRel) {
            let (commands, reviving) = (self.commands.clone(), self.reviving.clone());
            tokio::spawn(async move {
                prod_until_connected(commands, "command").await;
                reviving.store(false, Ordering::Release);
            });
        }
        unavailable(error)
    }

    async fn publish_now(&self, batch: &[Outgoing]) -> Result<Vec<Position>, EngineError> {
        let mut invocation = self.publish.prepare_invoke();
        invocation.arg(&*new_epoch());
        for outgoing in batch {
            invocation
                .key(meta_key(&outgoing.channel))
                .key(stream_key(&outgoing.channel))
                .arg(topic(&outgoing.channel))
                .arg(&*outgoing.data)
                .arg(outgoing.history.size)
                .arg(outgoing.history.ttl.as_secs().max(1))
                .arg(keep_seconds(outgoing.history, self.lifetimes));
        }
        let positions: Vec<(String, u64)> = invocation
            .invoke_async(&mut self.commands.clone())
            .await
            .map_err(|e| self.failed(&e))?;
        Ok(positions
            .into_iter()
            .map(|(epoch, offset)| Position {
                epoch: Arc::from(epoch),
                offset,
            })
            .collect())
    }

    async fn attach_now(
        &self,
        channel: &ChannelName,
        recover_from: Option<&Position>,
        policy: HistoryPolicy,
    ) -> Result<Attached, EngineError> {
        let (reply, subscribed) = oneshot::channel();
        self.subscriptions
            .send(Subscription::Attach(channel.clone(), reply))
            .map_err(|_| EngineError::Unavailable("redis: engine stopped".into()))?;
        subscribed
            .await
            .map_err(|_| EngineError::Unavailable("redis: engine stopped".into()))??;
        // Subscribed: everything published from here on reaches the sink.
        // Counted now: given back unless the caller gets the attachment (an
        // error, or this future dropped while Redis answers).
        let mut counted = Counted {
            engine: self,
            channel,
            armed: true,
        };
        let attached = self.read_position(channel, recover_from, policy).await;
        counted.armed = attached.is_err();
        attached
    }

    async fn read_position(
        &self,
        channel: &ChannelName,
        recover_from: Option<&Position>,
        policy: HistoryPolicy,
    ) -> Result<Attached, EngineError> {
        let (from_epoch, from_offset) = match recover_from {
            Some(from) => (&*from.epoch, from.offset),
            None => ("", 0),
        };
        let (epoch, offset, offsets, datas): (String, u64, Vec<u64>, Vec<String>) = self
            .attach
            .key(meta_key(channel))
            .key(stream_key(channel))
            .arg(&*new_epoch())
            .arg(keep_seconds(policy, self.lifetimes))
            .arg(ttl_ms(policy))
            .arg(from_epoch)
            .arg(from_offset)
            .invoke_async(&mut self.commands.clone())
            .await
            .map_err(|e| self.failed(&e))?;
        let position = Position {
            epoch: Arc::from(epoch),
            offset,
        };
        let missed = recover_from.and_then(|from| {
            if from.epoch != position.epoch || from.offset > offset {
                return None;
            }
            // Contiguous from the next offset up to the position, or nothing.
            let complete = offsets.len() as u64 == offset - from.offset
                && offsets
                    .first()
                    .is_none_or(|first| *first == from.offset + 1);
            complete.then(|| stored(offsets, datas))
        });
        Ok(Attached { position, missed })
    }

    fn detach_now(&self, channel: &ChannelName) {
        let _ = self
            .subscriptions
            .send(Subscription::Detach(channel.clone()));
    }

    async fn history_now(
        &self,
        channel: &ChannelName,
        limit: usize,
        since: Option<u64>,
        policy: HistoryPolicy,
    ) -> Result<(Arc<str>, Vec<Stored>), EngineError> {
        let (epoch, offsets, datas): (String, Vec<u64>, Vec<String>) = self
            .history
            .key(meta_key(channel))
            .key(stream_key(channel))
            .arg(limit)
            .arg(since.unwrap_or(0))
            .arg(ttl_ms(policy))
            .invoke_async(&mut self.commands.clone())
            .await
            .map_err(|e| self.failed(&e))?;
        if epoch.is_empty() {
            return Ok((new_epoch(), Vec::new()));
        }
        Ok((Arc::from(epoch), stored(offsets, datas)))
    }
}

/// A subscription this node counted for a caller that may not get it.
struct Counted<'a> {
    engine: &'a RedisEngine,
    channel: &'a ChannelName,
    armed: bool,
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.engine.detach_now(self.channel);
        }
    }
}

fn ttl_ms(policy: HistoryPolicy) -> u64 {
    u64::try_from(policy.ttl.as_millis()).unwrap_or(u64::MAX)
}

fn stored(offsets: Vec<u64>, datas: Vec<String>) -> Vec<Stored> {
    offsets
        .into_iter()
        .zip(datas)
        .map(|(offset, data)| Stored {
            offset,
            data: Arc::from(data),
        })
        .collect()
}

impl Engine for RedisEngine {
    fn publish<'a>(&'a self, batch: &'a [Outgoing]) -> EngineFuture<'a, Vec<Position>> {
        Box::pin(self.publish_now(batch))
    }

    fn attach<'a>(
        &'a self,
        channel: &'a ChannelName,
        recover_from: Option<&'a Position>,
        history: HistoryPolicy,
    ) -> EngineFuture<'a, Attached> {
        Box::pin(self.attach_now(channel, recover_from, history))
    }

    fn detach(&self, channel: &ChannelName) {
        self.detach_now(channel);
    }

    fn history<'a>(
        &'a self,
        channel: &'a ChannelName,
        limit: usize,
        since: Option<u64>,
        history: HistoryPolicy,
    ) -> EngineFuture<'a, (Arc<str>, Vec<Stored>)> {
        Box::pin(self.history_now(channel, limit, since, history))
    }

    fn presence(&self) -> &dyn super::Presence {
        &*self.presence
    }

    fn ask_others<'a>(
        &'a self,
        question: &'a super::Question,
    ) -> EngineFuture<'a, Vec<serde_json::Value>> {
        Box::pin(self.asks.ask(&self.commands, question))
    }

    /// Channels this node is subscribed to; history lives in Redis and is
    /// not counted here (Redis's own `INFO memory` has it).
    fn stats(&self) -> EngineStats {
        EngineStats {
            channels: self.attached.load(Ordering::Relaxed),
            ..EngineStats::default()
        }
    }
}

/// Hands pub/sub messages to the sink in the order Redis sent them, and
/// tells it to make subscribers recover wherever one may be missing.
async fn read_pubsub(
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    unread: Arc<AtomicUsize>,
    overflowed: Arc<AtomicBool>,
    sink: Weak<dyn Sink>,
    pubsub: ConnectionManager,
    commands: ConnectionManager,
    asks: Arc<Asks>,
) {
    // The latest position seen per subscribed channel: the next message
    // must continue it.
    let mut latest: HashMap<ChannelName, Position> = HashMap::new();
    let mut seen_sink = false;
    while let Some(push) = pushes.recv().await {
        unread.fetch_sub(1, Ordering::Relaxed);
        // The engine starts while the hub (its sink) is being built: what
        // arrives before then (the control topic's confirmation) is nobody's.
        // Once the hub has been seen, its absence means it is gone.
        let Some(sink) = sink.upgrade() else {
            if seen_sink {
                return;
            }
            continue;
        };
        seen_sink = true;
        if overflowed.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                "redis: more than {MAX_UNREAD} pub/sub messages unread; subscribers recover"
            );
            latest.clear();
            sink.interrupted(None);
        }
        match push.kind {
            PushKind::Message if is_control(&push.data) => {
                if let Some(payload) = push.data.get(1).and_then(bulk) {
                    asks.incoming(payload, &*sink, &commands);
                }
            }
            PushKind::Message => {
                let publication = match incoming(&push.data) {
                    Some(Incoming::Message(publication)) => publication,
                    Some(Incoming::Presence(event)) => {
                        sink.presence(event);
                        continue;
                    }
                    None => {
                        tracing::warn!("redis: unreadable pub/sub message skipped");
                        continue;
                    }
                };
                let next = Position {
                    epoch: publication.epoch.clone(),
                    offset: publication.offset,
                };
                let continues = latest
                    .get(&publication.channel)
                    .is_none_or(|last| last.epoch == next.epoch && last.offset + 1 == next.offset);
                if !continues {
                    sink.interrupted(Some(&publication.channel));
                }
                latest.insert(publication.channel.clone(), next);
                sink.deliver(publication);
            }
            PushKind::Unsubscribe => {
                if let Some(channel) = push.data.first().and_then(bulk).and_then(channel_of_topic) {
                    latest.remove(&channel);
                }
            }
            PushKind::Disconnection => {
                tracing::warn!("redis: pub/sub connection lost; subscribers recover");
                latest.clear();
                sink.interrupted(None);
                // The manager reconnects on its own; a failed reconnect is
                // only retried on the next command, so keep sending one.
                tokio::spawn(prod_until_connected(pubsub.clone(), "pub/sub"));
                tokio::spawn(prod_until_connected(commands.clone(), "command"));
            }
            _ => {}
        }
    }
}

/// PINGs until the connection answers, so that the manager reconnects (and
/// resubscribes) however long Redis is away.
async fn prod_until_connected(mut connection: ConnectionManager, which: &str) {
    let mut delay = Duration::from_millis(100);
    loop {
        let pong: Result<String, _> = ::redis::cmd("PING").query_async(&mut connection).await;
        if pong.is_ok() {
            tracing::info!("redis: {which} connection back");
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

fn bulk(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        _ => None,
    }
}

fn is_control(data: &[Value]) -> bool {
    data.first().and_then(bulk) == Some(super::CONTROL.as_bytes())
}

/// What a channel's pub/sub topic carries.
enum Incoming {
    Message(Publication),
    Presence(super::PresenceEvent),
}

/// `[topic, "<epoch> <offset> <data>"]` or `[topic, "!<presence event>"]`.
fn incoming(data: &[Value]) -> Option<Incoming> {
    let channel = channel_of_topic(bulk(data.first()?)?)?;
    let payload = std::str::from_utf8(bulk(data.get(1)?)?).ok()?;
    if payload.starts_with('!') {
        return presence::decode(channel, payload).map(Incoming::Presence);
    }
    let (epoch, rest) = payload.split_once(' ')?;
    let (offset, data) = rest.split_once(' ')?;
    Some(Incoming::Message(Publication {
        channel,
        epoch: Arc::from(epoch),
        offset: offset.parse().ok()?,
        data: Arc::from(data),
    }))
}

/// Owns this node's subscription counts, so that SUBSCRIBE and UNSUBSCRIBE
/// of a channel are sent in the order they are needed. Also keeps the meta
/// hashes of subscribed channels alive, and retries unsubscribes that failed
/// while Redis was away (the manager would otherwise resubscribe them).
async fn manage_subscriptions(
    mut control: mpsc::UnboundedReceiver<Subscription>,
    mut pubsub: ConnectionManager,
    mut commands: ConnectionManager,
    attached: Arc<AtomicU64>,
    lifetimes: Lifetimes,
) {
    let mut counts: HashMap<ChannelName, usize> = HashMap::new();
    let mut stale: HashSet<ChannelName> = HashSet::new();
    let mut tick = tokio::time::interval(lifetimes.sweep_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            request = control.recv() => {
                let Some(request) = request else { return };
                match request {
                    Subscription::Attach(channel, reply) => {
                        let count = counts.get(&channel).copied().unwrap_or(0);
                        let result = if count == 0 {
                            stale.remove(&channel);
                            pubsub.subscribe(topic(&channel)).await.map_err(|e| unavailable(&e))
                        } else {
                            Ok(())
                        };
                        let counted = result.is_ok();
                        if counted {
                            counts.insert(channel.clone(), count + 1);
                        }
                        // Nobody waits any more (the subscribe was given up):
                        // the count it would have detached goes now.
                        if reply.send(result).is_err() && counted {
                            detach(&mut counts, &mut stale, &mut pubsub, channel).await;
                        }
                    }
                    Subscription::Detach(channel) => {
                        detach(&mut counts, &mut stale, &mut pubsub, channel).await;
                    }
                }
                attached.store(counts.len() as u64, Ordering::Relaxed);
            }
            _ = tick.tick() => {
                keep_alive(&mut commands, counts.keys(), lifetimes).await;
                let retry: Vec<ChannelName> = stale.drain().collect();
                for channel in retry {
                    if !counts.contains_key(&channel)
                        && pubsub.unsubscribe(topic(&channel)).await.is_err()
                    {
                        stale.insert(channel);
                    }
                }
            }
        }
    }
}

/// One subscription of `channel` fewer; the node unsubscribes with the last.
async fn detach(
    counts: &mut HashMap<ChannelName, usize>,
    stale: &mut HashSet<ChannelName>,
    pubsub: &mut ConnectionManager,
    channel: ChannelName,
) {
    let Some(count) = counts.get_mut(&channel) else {
        return;
    };
    *count -= 1;
    if *count == 0 {
        counts.remove(&channel);
        if pubsub.unsubscribe(topic(&channel)).await.is_err() {
            stale.insert(channel);
        }
    }
}

/// Extends the meta hashes of subscribed channels to at least `channel_idle`
/// from now (`GT`: never shortens a longer history age).
async fn keep_alive<'a>(
    commands: &mut ConnectionManager,
    channels: impl Iterator<Item = &'a ChannelName>,
    lifetimes: Lifetimes,
) {
    let seconds = lifetimes.channel_idle.as_secs().max(1);
    let mut pipe = ::redis::pipe();
    let mut any = false;
    for channel in channels {
        pipe.cmd("EXPIRE")
            .arg(meta_key(channel))
            .arg(seconds)
            .arg("GT")
            .ignore();
        any = true;
    }
    if any {
        if let Err(e) = pipe.exec_async(commands).await {
            tracing::warn!("redis: cannot extend subscribed channels: {e}");
        }
    }
}
