//! WebSocket client connections with small buffers, so that 10,000 of them fit beside the
//! server under test on the same machine.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Opens `ws://addr{path_and_query}`. `read_buffer` is allocated eagerly per connection.
pub(crate) async fn connect(
    addr: SocketAddr,
    path_and_query: &str,
    read_buffer: usize,
) -> Result<Ws> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("tcp connect to {addr}"))?;
    tcp.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        // Write each frame straight away: the generator sends little and wants no latency.
        .write_buffer_size(0);
    let url = format!("ws://{addr}{path_and_query}");
    let (ws, _response) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
        .await
        .with_context(|| format!("websocket handshake with {addr}"))?;
    Ok(ws)
}
