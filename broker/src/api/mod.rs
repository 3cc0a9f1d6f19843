//! The HTTP API for Stud.IP's PHP (`/api/*`, behind the API key) and the
//! open health endpoints.

mod error;
mod health;
mod publish;

pub(crate) use error::ApiError;
pub(crate) use health::{healthz, readyz};
pub(crate) use publish::publish;
