//! Handlers, one module per API family.

pub mod agents;
pub mod events;
pub mod extras;
pub mod instances;
pub mod invoke;
pub mod jobs;
mod logs;
pub(crate) mod metrics;
pub(crate) mod proxy;
pub mod tenancy;
pub(crate) mod tokens;

use serde::Deserialize;

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
