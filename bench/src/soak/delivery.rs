//! What one subscription received, and the check that it is complete: every offset after
//! the subscription point exactly once, in order, each carrying the message that was
//! acknowledged for it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde::Serialize;
use serde_json::Value;

/// Who published a message: publisher 0 is the HTTP publisher, 1.. the churning clients;
/// `seq` counts each publisher's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tag {
    pub(crate) publisher: u64,
    pub(crate) seq: u64,
}

impl Tag {
    /// The soak's payload: `{"p":…,"s":…}` (plus what the plugin adds, such as `author`).
    pub(crate) fn of(data: &Value) -> Option<Self> {
        Some(Self {
            publisher: data["p"].as_u64()?,
            seq: data["s"].as_u64()?,
        })
    }

    pub(crate) fn payload(self) -> Value {
        serde_json::json!({"p": self.publisher, "s": self.seq, "text": "soak"})
    }
}

/// Every acknowledged publish (a 200 from `POST /api/publish`, a `published` reply): per
/// channel, offset → what was published there.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    channels: Mutex<HashMap<String, BTreeMap<u64, Tag>>>,
}

impl Ledger {
    pub(crate) fn record(&self, channel: &str, offset: u64, tag: Tag) {
        let mut channels = self.channels.lock().unwrap();
        channels
            .entry(channel.to_owned())
            .or_default()
            .insert(offset, tag);
    }

    /// The highest acknowledged offset of `channel` (0 when nothing was).
    pub(crate) fn last(&self, channel: &str) -> u64 {
        let channels = self.channels.lock().unwrap();
        channels
            .get(channel)
            .and_then(|m| m.keys().next_back().copied())
            .unwrap_or(0)
    }

    pub(crate) fn acknowledged(&self, channel: &str) -> u64 {
        let channels = self.channels.lock().unwrap();
        channels.get(channel).map_or(0, |m| m.len() as u64)
    }

    /// Checks what a subscription of `channel` received over `(start, end]` against the
    /// entries acknowledged so far (an offset whose acknowledgement is still on its way is
    /// not compared).
    pub(crate) fn check(&self, channel: &str, received: &Received, end: u64) -> Faults {
        let channels = self.channels.lock().unwrap();
        received.check(end, channels.get(channel))
    }
}

/// Lost, duplicated, out-of-order and wrong messages of one or many subscriptions.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub(crate) struct Faults {
    /// Offsets in the checked range that never arrived.
    pub(crate) lost: u64,
    /// Arrivals of an offset that had arrived already, or of one at or before the point
    /// the subscription started from.
    pub(crate) duplicated: u64,
    /// Arrivals of an offset lower than one that arrived before it.
    pub(crate) reordered: u64,
    /// Arrivals whose payload is not what was acknowledged at that offset, or beyond the
    /// channel's last offset.
    pub(crate) mismatched: u64,
}

impl Faults {
    pub(crate) fn add(&mut self, other: Faults) {
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.mismatched += other.mismatched;
    }

    pub(crate) fn total(&self) -> u64 {
        self.lost + self.duplicated + self.reordered + self.mismatched
    }
}

/// The message pushes one subscription received, in arrival order.
#[derive(Debug, Default)]
pub(crate) struct Received {
    /// From the `subscribed` reply; `None` while it is still outstanding (messages may be
    /// queued before it).
    pub(crate) start: Option<(String, u64)>,
    pub(crate) arrivals: Vec<(u64, Option<Tag>)>,
    /// Every epoch the pushes carried (one, the subscription's, when all is well).
    epochs: Vec<String>,
}

impl Received {
    /// Notes one `message` push (its `epoch`, `offset`, `data`).
    pub(crate) fn push(&mut self, message: &Value) {
        let offset = message["offset"].as_u64().unwrap_or(0);
        let epoch = message["epoch"].as_str().unwrap_or_default();
        if !self.epochs.iter().any(|e| e == epoch) {
            self.epochs.push(epoch.to_owned());
        }
        self.arrivals.push((offset, Tag::of(&message["data"])));
    }

    /// The highest offset that arrived, or the start when none did.
    pub(crate) fn last(&self) -> u64 {
        let start = self.start.as_ref().map_or(0, |(_, o)| *o);
        self.arrivals
            .iter()
            .map(|(o, _)| *o)
            .max()
            .unwrap_or(0)
            .max(start)
    }

    /// Checks the arrivals against the range `(start, end]`, and their payloads against
    /// `ledger` where given.
    pub(crate) fn check(&self, end: u64, ledger: Option<&BTreeMap<u64, Tag>>) -> Faults {
        let mut faults = Faults::default();
        let Some((epoch, start)) = &self.start else {
            // Never subscribed: whatever arrived was not asked for.
            faults.mismatched += self.arrivals.len() as u64;
            return faults;
        };
        let start = *start;
        if self.epochs.iter().any(|e| e != epoch) {
            faults.mismatched += self.arrivals.len() as u64;
            return faults;
        }
        let span = end.saturating_sub(start) as usize;
        let mut seen = vec![false; span];
        let mut highest = start;
        for &(offset, tag) in &self.arrivals {
            if offset <= start {
                faults.duplicated += 1;
                continue;
            }
            if offset > end {
                faults.mismatched += 1;
                continue;
            }
            let slot = &mut seen[(offset - start - 1) as usize];
            if *slot {
                faults.duplicated += 1;
                continue;
            }
            *slot = true;
            if offset < highest {
                faults.reordered += 1;
            }
            highest = highest.max(offset);
            if let Some(expected) = ledger.and_then(|l| l.get(&offset)) {
                if tag != Some(*expected) {
                    faults.mismatched += 1;
                }
            }
        }
        faults.lost = seen.iter().filter(|s| !**s).count() as u64;
        faults
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn received(start: u64, offsets: &[u64]) -> Received {
        let mut r = Received {
            start: Some(("e".into(), start)),
            ..Received::default()
        };
        for &offset in offsets {
            r.push(&json!({"epoch": "e", "offset": offset, "data": {"p": 0, "s": offset}}));
        }
        r
    }

    #[test]
    fn a_complete_run_has_no_faults() {
        let r = received(10, &[11, 12, 13]);
        assert_eq!(r.check(13, None), Faults::default());
        assert_eq!(r.last(), 13);
    }

    #[test]
    fn gaps_duplicates_reordering_and_stale_offsets_are_counted_apart() {
        let r = received(10, &[11, 13, 13, 12, 10, 16]);
        let faults = r.check(16, None);
        assert_eq!(
            faults,
            Faults {
                lost: 2,       // 14 and 15
                duplicated: 2, // 13 again; 10 is the subscription point itself
                reordered: 1,  // 12 after 13
                mismatched: 0,
            }
        );
        assert_eq!(faults.total(), 5);
    }

    #[test]
    fn the_tail_that_never_came_is_lost() {
        assert_eq!(received(0, &[1, 2]).check(5, None).lost, 3);
    }

    #[test]
    fn payloads_are_checked_against_the_ledger() {
        let r = received(0, &[1, 2]);
        let mut ledger = BTreeMap::new();
        ledger.insert(
            1,
            Tag {
                publisher: 0,
                seq: 1,
            },
        );
        ledger.insert(
            2,
            Tag {
                publisher: 3,
                seq: 2,
            },
        );
        assert_eq!(r.check(2, Some(&ledger)).mismatched, 1);
    }

    #[test]
    fn another_epoch_makes_every_arrival_wrong() {
        let mut r = received(0, &[1]);
        r.push(&json!({"epoch": "f", "offset": 2, "data": {}}));
        assert_eq!(r.check(2, None).mismatched, 2);
    }
}
