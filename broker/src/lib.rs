//! Stellwerk: the realtime broker for Stud.IP.
//!
//! PHP publishes over HTTP, browsers subscribe over WebSocket or Server-Sent
//! Events, and a WebAssembly plugin per channel namespace decides who may
//! subscribe or publish and what each subscriber sees.
//!
//! # Layout
//! Modules in the order a message flows through them:
//! - [`config`]: the TOML file, `STELLWERK_*` overrides and the embedded default.
//! - `auth`: JWT identities for clients, the API key for Stud.IP's PHP.
//! - `channel`: channel names (`namespace:rest`), validated at the edge.
//! - `api`: `POST /api/publish` and the health endpoints.
//! - `transport`: WebSocket (`/ws`) and SSE (`/sse`) connections.
//! - `rate`: token buckets that refuse commands and publishes over the rate limits.
//! - `protocol`: the JSON frames of wire contract v1.
//! - `hub`: subscriptions, fan-out and bounded per-connection queues; asks
//!   `plugins` before anything is subscribed or published.
//! - `plugins`: the wasmtime host that runs the channel plugins.
//! - `engine`: offsets, epochs and history per channel (in memory for now).
//! - `metrics`: counters and histograms for `GET /metrics`.
//! - `listener`: the accept loop: HTTP timeouts, write timeout, bounded shutdown.
//! - `server`: wires it all together and runs until shutdown.
//! - `request_log`: a debug line per HTTP request, credentials in the query redacted.
//! - `fuzzing` (feature `fuzzing`, hidden): entry points for the fuzz targets in `fuzz/`.

pub(crate) mod api;
pub mod auth;
pub(crate) mod channel;
pub mod config;
pub(crate) mod engine;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod hub;
pub(crate) mod listener;
pub(crate) mod metrics;
pub(crate) mod plugins;
pub(crate) mod protocol;
pub(crate) mod rate;
pub(crate) mod reload;
mod request_log;
mod server;
pub(crate) mod transport;

pub use server::{listen, run, ServeError};
