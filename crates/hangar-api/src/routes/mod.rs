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

/// `?limit=&cursor=` of `/v1` lists.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub(crate) struct PageQuery {
    /// Page size, 1–100 (default 50).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
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
