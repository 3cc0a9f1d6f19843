//! The witnesses: long-lived subscribers of the news and the chat, over WebSocket (some
//! with batching) and SSE. They stay for the whole run and must receive every
//! acknowledged message exactly once and in order; they send nothing after subscribing,
//! so no rate limit can touch them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::sync::watch;
use tokio::time::Instant;

use super::churn::claims;
use super::delivery::Received;
use super::session::{Pushes, SseSession, WsSession};
use super::{CHAT, NEWS};
use crate::servers::JWT_SECRET;
use crate::stellwerk;

/// How long a witness may take, once publishing stopped, to receive the last offsets.
const DRAIN: Duration = Duration::from_secs(30);

/// A connected witness, before the run.
pub(crate) enum Witness {
    Ws(Box<WsSession>),
    Sse(Box<SseSession>),
}

/// What a witness saw, and its connection (kept open until the descriptors are counted).
pub(crate) struct Seen {
    pub(crate) name: String,
    pub(crate) subscriptions: HashMap<String, Received>,
    pub(crate) presence: u64,
    /// Why the witness stopped early or saw something it should not have.
    pub(crate) failure: Option<String>,
    pub(crate) connection: Witness,
}

impl Witness {
    /// WebSocket witness `index` (user `soak-witness-<index>`, every second one batched
    /// and `tutor`, so that the chat has both of the `course` plugin's audiences).
    pub(crate) async fn ws(addr: SocketAddr, index: usize) -> Result<Self> {
        let user = ws_user(index);
        let status = if index.is_multiple_of(2) {
            "autor"
        } else {
            "tutor"
        };
        let token = stellwerk::token(JWT_SECRET, &user, Some(&claims(&user, status)))?;
        let batch = if index % 2 == 1 { "&batch=1" } else { "" };
        let mut s = WsSession::open(addr, &format!("/ws?token={token}{batch}")).await?;
        s.subscribe(NEWS).await?;
        s.subscribe(CHAT).await?;
        Ok(Self::Ws(Box::new(s)))
    }

    /// SSE witness `index` on the news and the chat.
    pub(crate) async fn sse(addr: SocketAddr, index: usize) -> Result<Self> {
        let user = format!("soak-sse-witness-{index}");
        let token = stellwerk::token(JWT_SECRET, &user, Some(&claims(&user, "autor")))?;
        Ok(Self::Sse(Box::new(
            SseSession::open(addr, &[NEWS, CHAT], &token).await?,
        )))
    }

    fn pushes(&mut self) -> &mut Pushes {
        match self {
            Self::Ws(s) => &mut s.pushes,
            Self::Sse(s) => &mut s.pushes,
        }
    }

    /// Reads for at most `period`; an error when the connection ended.
    async fn read(&mut self, period: Duration) -> Result<()> {
        let until = Instant::now() + period;
        match self {
            Self::Ws(s) => s.read_frame(until).await.map(drop),
            Self::Sse(s) => s.read_event(until).await.map(drop),
        }
    }

    /// Reads until `finals` (channel → last offset) is given and reached, or `hard_stop`.
    pub(crate) async fn watch(
        mut self,
        name: String,
        mut finals: watch::Receiver<Option<HashMap<String, u64>>>,
        hard_stop: Instant,
    ) -> Seen {
        let mut drain_until = None;
        let failure = loop {
            if let Some(finals) = finals.borrow_and_update().clone() {
                let until = *drain_until.get_or_insert_with(|| Instant::now() + DRAIN);
                let subs = &self.pushes().subscriptions;
                let behind: Vec<String> = finals
                    .iter()
                    .filter(|(c, last)| subs.get(*c).is_some_and(|r| r.last() < **last))
                    .map(|(c, last)| format!("{c} at {} of {last}", subs[c].last()))
                    .collect();
                if behind.is_empty() {
                    break None;
                }
                if Instant::now() >= until {
                    break Some(format!(
                        "did not receive the last offsets within {DRAIN:?}: {}",
                        behind.join(", ")
                    ));
                }
            }
            if Instant::now() >= hard_stop {
                break Some("still reading at the run's hard stop".to_owned());
            }
            if let Err(e) = self.read(Duration::from_millis(200)).await {
                break Some(format!("{e:#}"));
            }
        };
        let failure = failure.or_else(|| self.trouble().err().map(|e| format!("{e:#}")));
        let pushes = std::mem::take(self.pushes());
        Seen {
            name,
            subscriptions: pushes.subscriptions,
            presence: pushes.presence,
            failure,
            connection: self,
        }
    }

    /// A witness must never be told anything but messages and presence.
    fn trouble(&mut self) -> Result<()> {
        let pushes = self.pushes();
        if let Some(push) = &pushes.disconnect {
            bail!("disconnected: {push}");
        }
        if let Some(push) = pushes.unexpected.first() {
            return Err(anyhow::anyhow!("{push}")).context(format!(
                "{} unexpected pushes, the first",
                pushes.unexpected.len()
            ));
        }
        Ok(())
    }
}

/// The user of WebSocket witness `index`: always a member of the chat's presence.
pub(crate) fn ws_user(index: usize) -> String {
    format!("soak-witness-{index}")
}
