//! The HTTP API for Stud.IP's PHP (`/api/*`, behind the API key), the open
//! health endpoints, and `/metrics` (behind the admin token).

mod error;
mod health;
mod history;
mod metrics;
mod publish;

pub(crate) use error::ApiError;
pub(crate) use health::{healthz, readyz};
pub(crate) use history::history;
pub(crate) use metrics::metrics;
pub(crate) use publish::publish;
