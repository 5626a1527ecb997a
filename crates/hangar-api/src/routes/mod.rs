//! Handlers, one module per API family.

pub mod agents;
pub(crate) mod builds;
pub mod events;
pub(crate) mod history;
pub mod instances;
pub mod invoke;
pub mod jobs;
mod logs;
pub(crate) mod metrics;
pub(crate) mod nodes;
pub(crate) mod proxy;
pub(crate) mod secrets;
pub(crate) mod sessions;
pub mod tenancy;
pub(crate) mod tokens;
pub(crate) mod uploads;
pub(crate) mod webhooks;

use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// `limit` of list routes: 1–100, default 50.
pub(crate) fn page_size(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(50),
        Some(l @ 1..=100) => Ok(l),
        Some(_) => Err(ApiError::invalid("limit", "must be between 1 and 100")),
    }
}

/// `?limit=&cursor=` of `/v1/agents/{id}/builds` (its cursor is a build's).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageQuery {
    /// Page size, 1–100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^(build_[A-Za-z0-9_]{0,57})?$")]
    pub cursor: Option<String>,
}

/// What deleting answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Deleted {
    /// The deleted object's ID (or a secret's name).
    pub id: String,
    /// Always true.
    pub deleted: bool,
}
