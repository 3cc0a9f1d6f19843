//! Rate limits: token buckets per WebSocket connection (all commands, client
//! publishes, subscribe churn) and one for the API key's `POST /api/publish`.
//!
//! A bucket holds `burst` tokens and gains `per_second` of them per second;
//! every action takes one, and an action that finds the bucket empty is
//! refused and takes nothing. The state is kept the GCRA way, as the one
//! instant at which the bucket would be full again, so that a connection's
//! three buckets are three integers and a check is arithmetic: no
//! allocation, no lock, no timer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::RateLimitsConfig;
use crate::protocol::{CommandKind, ErrorCode, Refusal};

/// The limits, by the stem of their settings (`rate_limits.<stem>_per_second`),
/// which is also their `limit` label in `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// Every WebSocket command.
    Commands,
    /// WebSocket `publish`.
    Publishes,
    /// WebSocket `subscribe` and `unsubscribe`: each may push a presence
    /// `join`/`leave` to every member of the channel.
    Subscriptions,
    /// `POST /api/publish` with the API key.
    ApiPublishes,
}

impl Limit {
    const ALL: [Limit; 4] = [
        Limit::Commands,
        Limit::Publishes,
        Limit::Subscriptions,
        Limit::ApiPublishes,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Limit::Commands => "commands",
            Limit::Publishes => "publishes",
            Limit::Subscriptions => "subscriptions",
            Limit::ApiPublishes => "api_publishes",
        }
    }

    /// What the refused client did too often, for the message.
    fn what(self) -> &'static str {
        match self {
            Limit::Commands => "commands on this connection",
            Limit::Publishes => "publishes on this connection",
            Limit::Subscriptions => "subscribes and unsubscribes on this connection",
            Limit::ApiPublishes => "publish requests with this API key",
        }
    }
}

/// A configured rate: `per_second` tokens a second, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate {
    per_second: u32,
    burst: u32,
    /// Time to earn one token.
    interval: Duration,
    /// Time to fill the whole bucket (`burst` intervals).
    capacity: Duration,
}

impl Rate {
    /// `None` when `per_second` is 0: that limit is off. A burst of 0 is
    /// refused by the config check; here it counts as 1.
    pub(crate) fn new(per_second: u32, burst: u32) -> Option<Rate> {
        if per_second == 0 {
            return None;
        }
        let burst = burst.max(1);
        let interval = Duration::from_secs(1) / per_second;
        Some(Rate {
            per_second,
            burst,
            interval,
            capacity: interval * burst,
        })
    }
}

/// One bucket's state: when it would be full again (`None`: full).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TokenBucket {
    full_at: Option<Instant>,
}

impl TokenBucket {
    /// Takes a token at `now`, or says how long until one is there.
    pub(crate) fn take(&mut self, rate: &Rate, now: Instant) -> Result<(), Duration> {
        let full_at = self.full_at.map_or(now, |at| at.max(now)) + rate.interval;
        let debt = full_at - now;
        if debt > rate.capacity {
            return Err(debt - rate.capacity);
        }
        self.full_at = Some(full_at);
        Ok(())
    }
}

/// The process-wide side: the configured rates, the API key's bucket and the
/// refusal counters for `/metrics`.
#[derive(Debug)]
pub(crate) struct RateLimits {
    commands: Option<Rate>,
    publishes: Option<Rate>,
    subscriptions: Option<Rate>,
    api_publishes: Option<(Rate, Mutex<TokenBucket>)>,
    /// Refusals by [`Limit`], in [`Limit::ALL`] order.
    refused: [AtomicU64; 4],
}

impl RateLimits {
    pub(crate) fn new(config: &RateLimitsConfig) -> RateLimits {
        RateLimits {
            commands: Rate::new(config.commands_per_second, config.commands_burst),
            publishes: Rate::new(config.publishes_per_second, config.publishes_burst),
            subscriptions: Rate::new(config.subscriptions_per_second, config.subscriptions_burst),
            api_publishes: Rate::new(config.api_publishes_per_second, config.api_publishes_burst)
                .map(|rate| (rate, Mutex::new(TokenBucket::default()))),
            refused: Default::default(),
        }
    }

    /// Admits one `POST /api/publish` (one request, however many channels).
    pub(crate) fn admit_api_publish(&self, now: Instant) -> Result<(), Refused> {
        let Some((rate, bucket)) = &self.api_publishes else {
            return Ok(());
        };
        let taken = bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(rate, now);
        taken.map_err(|retry_after| self.refuse(Limit::ApiPublishes, rate, retry_after))
    }

    /// Refusals so far, by limit, for `/metrics`.
    pub(crate) fn refusals(&self) -> [(Limit, u64); 4] {
        Limit::ALL.map(|limit| (limit, self.refused[limit as usize].load(Ordering::Relaxed)))
    }

    fn refuse(&self, limit: Limit, rate: &Rate, retry_after: Duration) -> Refused {
        self.refused[limit as usize].fetch_add(1, Ordering::Relaxed);
        Refused {
            limit,
            rate: *rate,
            retry_after,
        }
    }
}

/// A refused action: which limit, and how long until it would be admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) limit: Limit,
    rate: Rate,
    pub(crate) retry_after: Duration,
}

impl Refused {
    /// Whole seconds, at least 1, for HTTP's `Retry-After`.
    pub(crate) fn retry_after_seconds(&self) -> u64 {
        let secs = self.retry_after.as_secs();
        if self.retry_after.subsec_nanos() > 0 || secs == 0 {
            secs + 1
        } else {
            secs
        }
    }

    /// The message: what was done too often, the setting, when to retry.
    pub(crate) fn message(&self) -> String {
        let stem = self.limit.as_str();
        format!(
            "rate limit: too many {} (rate_limits.{stem}_per_second = {}, \
             rate_limits.{stem}_burst = {}); retry in {} ms",
            self.limit.what(),
            self.rate.per_second,
            self.rate.burst,
            self.retry_after.as_millis().max(1),
        )
    }
}

impl From<Refused> for Refusal {
    fn from(refused: Refused) -> Refusal {
        Refusal::new(ErrorCode::RateLimited, refused.message())
    }
}

/// A WebSocket connection's buckets. Every command takes a token from
/// `commands`; `publish` also one from `publishes`, `subscribe` and
/// `unsubscribe` also one from `subscriptions`. A command refused by its
/// second bucket has still spent its command token: it was received and
/// answered.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ConnectionBuckets {
    commands: TokenBucket,
    publishes: TokenBucket,
    subscriptions: TokenBucket,
}

impl ConnectionBuckets {
    /// Admits `command` now or refuses it (counted in `limits`).
    pub(crate) fn admit(
        &mut self,
        limits: &RateLimits,
        command: &CommandKind,
        now: Instant,
    ) -> Result<(), Refused> {
        if let Some(rate) = &limits.commands {
            self.commands
                .take(rate, now)
                .map_err(|retry| limits.refuse(Limit::Commands, rate, retry))?;
        }
        let (limit, rate, bucket) = match command {
            CommandKind::Publish { .. } => {
                (Limit::Publishes, &limits.publishes, &mut self.publishes)
            }
            CommandKind::Subscribe { .. } | CommandKind::Unsubscribe { .. } => (
                Limit::Subscriptions,
                &limits.subscriptions,
                &mut self.subscriptions,
            ),
            _ => return Ok(()),
        };
        match rate {
            Some(rate) => bucket
                .take(rate, now)
                .map_err(|retry| limits.refuse(limit, rate, retry)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_bucket_gives_its_burst_then_refuses_with_the_wait() {
        let rate = Rate::new(10, 3).unwrap();
        let start = Instant::now();
        let mut bucket = TokenBucket::default();
        for _ in 0..3 {
            assert_eq!(bucket.take(&rate, start), Ok(()));
        }
        // Empty: the next token comes after one interval (100 ms).
        assert_eq!(bucket.take(&rate, start), Err(ms(100)));
        assert_eq!(bucket.take(&rate, start + ms(40)), Err(ms(60)));
        // A refusal takes nothing: the wait does not grow.
        assert_eq!(bucket.take(&rate, start + ms(40)), Err(ms(60)));
        assert_eq!(bucket.take(&rate, start + ms(100)), Ok(()));
        assert_eq!(bucket.take(&rate, start + ms(100)), Err(ms(100)));
    }

    #[test]
    fn the_bucket_refills_at_the_rate_and_never_beyond_the_burst() {
        let rate = Rate::new(10, 3).unwrap();
        let start = Instant::now();
        let mut bucket = TokenBucket::default();
        for _ in 0..3 {
            bucket.take(&rate, start).unwrap();
        }
        // An hour idle refills three tokens, not 36,000.
        let later = start + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(bucket.take(&rate, later), Ok(()));
        }
        assert!(bucket.take(&rate, later).is_err());
    }

    #[test]
    fn a_steady_client_at_the_rate_is_never_refused() {
        let rate = Rate::new(50, 1).unwrap();
        let start = Instant::now();
        let mut bucket = TokenBucket::default();
        for i in 0..1000 {
            assert_eq!(bucket.take(&rate, start + ms(20 * i)), Ok(()), "take {i}");
        }
    }

    #[test]
    fn over_a_long_flood_the_admitted_count_is_burst_plus_rate_times_time() {
        let rate = Rate::new(10, 5).unwrap();
        let start = Instant::now();
        let mut bucket = TokenBucket::default();
        // 1,000 attempts a second for 10 s.
        let admitted = (0..10_000)
            .filter(|i| bucket.take(&rate, start + ms(*i)).is_ok())
            .count();
        // 5 at once, then one per 100 ms over 10 s (the last one at 9.9 s).
        assert_eq!(admitted, 5 + 99);
    }

    #[test]
    fn zero_per_second_is_off() {
        assert_eq!(Rate::new(0, 10), None);
        let limits = RateLimits::new(&RateLimitsConfig {
            api_publishes_per_second: 0,
            ..RateLimitsConfig::default()
        });
        let now = Instant::now();
        for _ in 0..100_000 {
            assert!(limits.admit_api_publish(now).is_ok());
        }
    }

    #[test]
    fn commands_are_charged_to_their_own_bucket_and_to_commands() {
        let limits = RateLimits::new(&RateLimitsConfig {
            commands_per_second: 1,
            commands_burst: 4,
            publishes_per_second: 1,
            publishes_burst: 1,
            subscriptions_per_second: 1,
            subscriptions_burst: 1,
            ..RateLimitsConfig::default()
        });
        let publish = || CommandKind::Publish {
            channel: "course:x:chat".into(),
            data: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
        };
        let subscribe = || CommandKind::Subscribe {
            channel: "course:x:chat".into(),
            recover: None,
        };
        let unsubscribe = || CommandKind::Unsubscribe {
            channel: "course:x:chat".into(),
        };
        let now = Instant::now();
        let mut buckets = ConnectionBuckets::default();
        assert_eq!(buckets.admit(&limits, &publish(), now), Ok(()));
        let refused = buckets.admit(&limits, &publish(), now).unwrap_err();
        assert_eq!(refused.limit, Limit::Publishes);
        assert_eq!(buckets.admit(&limits, &subscribe(), now), Ok(()));
        // Subscribe and unsubscribe share one bucket.
        let refused = buckets.admit(&limits, &unsubscribe(), now).unwrap_err();
        assert_eq!(refused.limit, Limit::Subscriptions);
        // Four commands so far, refused or not: the fifth exceeds `commands`.
        let refused = buckets.admit(&limits, &CommandKind::Ping, now).unwrap_err();
        assert_eq!(refused.limit, Limit::Commands);
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        let counts = limits.refusals();
        assert_eq!(
            counts,
            [
                (Limit::Commands, 1),
                (Limit::Publishes, 1),
                (Limit::Subscriptions, 1),
                (Limit::ApiPublishes, 0)
            ]
        );
        // A second later there is a command token again.
        let later = now + Duration::from_secs(1);
        assert_eq!(buckets.admit(&limits, &CommandKind::Ping, later), Ok(()));
    }

    #[test]
    fn the_message_names_the_settings_and_the_wait() {
        let limits = RateLimits::new(&RateLimitsConfig {
            api_publishes_per_second: 2,
            api_publishes_burst: 1,
            ..RateLimitsConfig::default()
        });
        let now = Instant::now();
        limits.admit_api_publish(now).unwrap();
        let refused = limits.admit_api_publish(now + ms(100)).unwrap_err();
        assert_eq!(refused.retry_after, ms(400));
        assert_eq!(refused.retry_after_seconds(), 1);
        assert_eq!(
            refused.message(),
            "rate limit: too many publish requests with this API key \
             (rate_limits.api_publishes_per_second = 2, rate_limits.api_publishes_burst = 1); \
             retry in 400 ms"
        );
        let refusal = Refusal::from(refused);
        assert_eq!(refusal.code, ErrorCode::RateLimited);
    }

    #[test]
    fn retry_after_seconds_rounds_up() {
        let refused = |retry_after| Refused {
            limit: Limit::ApiPublishes,
            rate: Rate::new(1, 1).unwrap(),
            retry_after,
        };
        assert_eq!(refused(Duration::ZERO).retry_after_seconds(), 1);
        assert_eq!(refused(ms(1)).retry_after_seconds(), 1);
        assert_eq!(refused(ms(1000)).retry_after_seconds(), 1);
        assert_eq!(refused(ms(1001)).retry_after_seconds(), 2);
    }

    #[test]
    fn connection_state_is_a_few_integers() {
        // Three `Option<Instant>`s; the later slice that squeezes idle
        // connections counts on this staying small.
        assert!(std::mem::size_of::<ConnectionBuckets>() <= 48);
    }
}
