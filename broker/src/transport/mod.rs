//! How clients are connected: WebSocket (`/ws`) and Server-Sent Events
//! (`/sse`). Both register with the hub and drain a bounded push queue.

pub(crate) mod sse;
pub(crate) mod ws;
