//! `GET /metrics`: Prometheus text. On the public listener it is behind the
//! admin token (and off without one); on a separate admin listener
//! (`admin_listen`) it is open, as scrapers expect.

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};

use super::access::check_admin_token;
use super::ApiError;
use crate::metrics::{label, Exposition};
use crate::plugins::HookCounts;
use crate::server::AppState;

pub(crate) async fn metrics(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_admin_token(&app, &headers, "`/metrics`")?;
    Ok(open_metrics(State(app)).await)
}

/// `/metrics` on the admin listener: no token, that listener is the operators' own.
pub(crate) async fn open_metrics(State(app): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&app),
    )
        .into_response()
}

fn render(app: &AppState) -> String {
    let hub = app.hub.stats();
    let engine = app.hub.engine_stats();
    let mut e = Exposition::default();
    for (name, kind, help, value) in [
        (
            "stellwerk_connections",
            "gauge",
            "Open WebSocket connections and SSE streams.",
            hub.connections,
        ),
        (
            "stellwerk_channels",
            "gauge",
            "Channels with at least one local subscriber.",
            hub.channels,
        ),
        (
            "stellwerk_subscriptions",
            "gauge",
            "Subscriptions over all connections.",
            hub.subscriptions,
        ),
        (
            "stellwerk_messages_published_total",
            "counter",
            "Messages accepted for publishing.",
            hub.published,
        ),
        (
            "stellwerk_deliveries_total",
            "counter",
            "Messages queued to subscribers.",
            hub.deliveries,
        ),
        (
            "stellwerk_slow_consumers_total",
            "counter",
            "Connections cut off because their queue overflowed.",
            hub.cut_offs,
        ),
        (
            "stellwerk_stream_interruptions_total",
            "counter",
            "Channel streams interrupted (engine connection lost, offset gap, fan-out backlog \
             dropped); their subscribers were told to recover.",
            hub.interruptions,
        ),
        (
            "stellwerk_engine_channels",
            "gauge",
            "Channels whose epoch, offset and history the engine holds.",
            engine.channels,
        ),
        (
            "stellwerk_history_messages",
            "gauge",
            "Messages kept in history over all channels.",
            engine.history_messages,
        ),
        (
            "stellwerk_history_bytes",
            "gauge",
            "Bytes of history as engine.max_history_bytes counts them.",
            engine.history_bytes,
        ),
        (
            "stellwerk_history_evicted_total",
            "counter",
            "Messages dropped, oldest first, to stay within engine.max_history_bytes.",
            engine.history_evicted,
        ),
    ] {
        e.family(name, kind, help);
        e.sample(name, "", value);
    }
    let name = "stellwerk_connections_refused_total";
    e.family(
        name,
        "counter",
        "WebSocket connections and SSE streams refused over a connection cap.",
    );
    for (reason, value) in [
        ("max_connections", hub.refused_node_full),
        ("max_connections_per_user", hub.refused_user_full),
    ] {
        e.sample(name, &format!("reason=\"{reason}\""), value);
    }

    let name = "stellwerk_rate_limited_total";
    e.family(
        name,
        "counter",
        "Commands and requests refused over a rate limit ([rate_limits]), by limit.",
    );
    for (limit, refused) in app.rate.refusals() {
        e.sample(name, &format!("limit=\"{}\"", limit.as_str()), refused);
    }

    let plugins = app.hub.registry().list();
    let hooks = |stats: &crate::plugins::PluginStats| -> [(&'static str, HookCounts); 3] {
        [
            ("authorize-subscribe", stats.authorize_subscribe),
            ("on-publish", stats.on_publish),
            ("filter", stats.filter),
        ]
    };
    type Pick = fn(&HookCounts) -> u64;
    let counters: [(&str, &str, Pick); 3] = [
        ("stellwerk_plugin_calls_total", "Plugin hook calls.", |h| {
            h.calls
        }),
        (
            "stellwerk_plugin_denials_total",
            "Requests a plugin denied (filter: audiences skipped).",
            |h| h.denials,
        ),
        (
            "stellwerk_plugin_faults_total",
            "Traps, timeouts and malformed answers (each refused).",
            |h| h.faults,
        ),
    ];
    for (name, help, pick) in counters {
        e.family(name, "counter", help);
        for plugin in &plugins {
            for (hook, counts) in hooks(&plugin.stats) {
                e.sample(
                    name,
                    &format!("plugin=\"{}\",hook=\"{hook}\"", label(&plugin.name)),
                    pick(&counts),
                );
            }
        }
    }
    let name = "stellwerk_plugin_call_duration_seconds";
    e.family(name, "histogram", "Wall-clock time of plugin hook calls.");
    for plugin in &plugins {
        for (hook, counts) in hooks(&plugin.stats) {
            e.histogram(
                name,
                &format!("plugin=\"{}\",hook=\"{hook}\"", label(&plugin.name)),
                &counts.latency,
            );
        }
    }
    e.finish()
}
