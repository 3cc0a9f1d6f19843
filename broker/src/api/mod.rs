//! The HTTP API for Stud.IP's PHP (`/api/*`, behind the API key), the open
//! health endpoints, and `/metrics` and `/admin/*` (behind the admin token).

mod access;
pub(crate) mod admin;
mod channels;
mod error;
mod health;
mod history;
mod info;
mod metrics;
mod publish;
mod users;

pub(crate) use channels::{channels, presence};
pub(crate) use error::ApiError;
pub(crate) use health::{healthz, readyz};
pub(crate) use history::history;
pub(crate) use info::info;
pub(crate) use metrics::{metrics, open_metrics};
pub(crate) use publish::publish;
pub(crate) use users::disconnect;
