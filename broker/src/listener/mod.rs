//! Our own accept loop, in place of `axum::serve`, which runs hyper without
//! a timer: a half-sent request would hold its descriptor for ever, and one
//! such socket would hold up shutdown.
//!
//! Every connection gets a header-read timeout (which hyper also applies to
//! the wait for the next request on a keep-alive connection, so it is the
//! idle timeout as well) and a write timeout ([`WriteDeadline`]) that stays
//! on the socket after a WebSocket upgrade. Accept errors (out of
//! descriptors) back off instead of spinning. At shutdown the loop stops
//! accepting, asks every connection to finish, and drops those left when
//! the caller's deadline passes.

mod write_deadline;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

pub(crate) use write_deadline::WriteDeadline;

/// How long the loop pauses after an accept error that is not about one
/// connection (out of descriptors or memory): long enough not to spin,
/// short enough to serve again soon after descriptors are freed.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// At most one log line per this for repeated accept errors.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// The timeouts every accepted connection gets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// From accept (and after each answer) until a complete request head.
    pub(crate) header_read: Duration,
    /// A write that makes no progress for this long fails.
    pub(crate) write: Duration,
}

/// The HTTP connections of a listener whose accept loop has stopped.
#[derive(Debug)]
pub(crate) struct Remaining {
    tasks: JoinSet<()>,
}

impl Remaining {
    /// Waits until every connection is done or `deadline` passes, then
    /// drops (closes) whatever is left. Returns how many were dropped.
    pub(crate) async fn finish_by(mut self, deadline: Instant) -> usize {
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(_) => {}
                Err(_elapsed) => break,
            }
        }
        let left = self.tasks.len();
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        left
    }
}

/// Serves `router` on `listener` until `stop` turns `true`, then stops
/// accepting (the listener is closed) and returns the connections still open;
/// each of them has been asked to shut down gracefully.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    timeouts: Timeouts,
    stop: watch::Receiver<bool>,
) -> Remaining {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read)
        .keep_alive(true);
    let http = Arc::new(http);
    let mut tasks = JoinSet::new();
    let mut errors = AcceptErrors::default();
    let stopping = stopped(stop.clone());
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            biased;
            () = &mut stopping => break,
            // Reap finished connections so that the set stays small.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    tasks.spawn(connection(
                        stream,
                        router.clone(),
                        http.clone(),
                        timeouts.write,
                        stop.clone(),
                    ));
                }
                Err(error) => errors.handle(&error).await,
            },
        }
    }
    drop(listener);
    Remaining { tasks }
}

/// Serves one connection until it ends, asking it to finish once `stop`
/// turns `true` (an idle keep-alive connection closes at once; one in the
/// middle of a request answers first).
async fn connection(
    stream: TcpStream,
    router: Router,
    http: Arc<http1::Builder>,
    write_timeout: Duration,
    stop: watch::Receiver<bool>,
) {
    let io = TokioIo::new(WriteDeadline::new(stream, write_timeout));
    let conn = http
        .serve_connection(io, TowerToHyperService::new(router))
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopped(stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        tracing::debug!("http connection ended: {error}");
    }
}

/// Resolves once `stop` is `true` (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Rate-limited logging and back-off for accept errors.
#[derive(Debug, Default)]
struct AcceptErrors {
    last_logged: Option<Instant>,
    /// Errors since the last line.
    unlogged: u64,
}

impl AcceptErrors {
    async fn handle(&mut self, error: &io::Error) {
        // The peer gave up before we accepted: nothing to wait for.
        if matches!(
            error.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionRefused
                | io::ErrorKind::Interrupted
        ) {
            return;
        }
        self.unlogged += 1;
        let now = Instant::now();
        if self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= ACCEPT_ERROR_LOG_INTERVAL)
        {
            tracing::error!(
                errors = self.unlogged,
                "cannot accept connections: {error} (out of file descriptors? \
                 raise `ulimit -n`); retrying every {} ms",
                ACCEPT_BACKOFF.as_millis()
            );
            self.last_logged = Some(now);
            self.unlogged = 0;
        }
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }
}
