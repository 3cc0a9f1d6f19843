//! How clients are connected: WebSocket (`/ws`) and Server-Sent Events
//! (`/sse`). Both register with the hub and drain a bounded push queue; `origin` decides
//! which web pages may open them.

pub(crate) mod origin;
pub(crate) mod sse;
pub(crate) mod ws;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::auth::Identity;

/// When `identity`'s token stops being accepted: its `exp` plus the clock
/// leeway the verifier grants, on the monotonic clock (so that a wall-clock
/// jump cannot end or prolong a connection). `None` when it lies beyond what
/// the clock can represent: in practice, never.
fn token_deadline(identity: &Identity, leeway_seconds: u64) -> Option<Instant> {
    let end = UNIX_EPOCH.checked_add(Duration::from_secs(
        identity.expires_at.saturating_add(leeway_seconds),
    ))?;
    let left = end
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Instant::now().checked_add(left)
}
