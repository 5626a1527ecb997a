//! `GET /v1/nodes`: the servers on this database, as their heartbeats say,
//! for the operator. Any server answers the same: the rows are shared, and
//! the status is derived from the last heartbeat with this server's
//! [`crate::ApiConfig::node_dead_after`].

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiResult;
use crate::extract::Caller;
use crate::render::{ok, ts, Envelope};
use crate::AppState;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_nodes))
}

/// What a node has.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeCapacity {
    /// CPUs, in millicores.
    pub cpu_millis: u64,
    /// Memory, in bytes.
    pub memory_bytes: u64,
}

/// A server on this database.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeObject {
    /// Its ID (kept in its data dir).
    pub id: String,
    /// `ready` (heard from lately), `stopped` (stopped cleanly) or `dead`
    /// (silent for longer than the server's `node_dead_after`).
    #[schema(value_type = String, example = "ready")]
    pub status: &'static str,
    /// Where it is reached.
    pub address: String,
    /// The `hangar` version it runs.
    pub version: String,
    /// What it has.
    pub capacity: NodeCapacity,
    /// Replicas it ran at its last heartbeat.
    pub replicas: u64,
    /// When it started.
    pub started_at: String,
    /// Its last heartbeat.
    pub last_heartbeat_at: String,
}

/// The servers on this database (admins of the operator organization).
#[utoipa::path(get, path = "/v1/nodes", tag = "nodes",
    responses((status = 200, body = Envelope<Vec<NodeObject>>), (status = 403, description = "FORBIDDEN")))]
async fn list_nodes(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Envelope<Vec<NodeObject>>>> {
    caller.require_operator()?;
    let now = hangar_store::store_now();
    let nodes = state.store.list_nodes().await?;
    Ok(ok(nodes
        .into_iter()
        .map(|node| NodeObject {
            status: node.status(now, state.config.node_dead_after).as_str(),
            id: node.beat.id,
            address: node.beat.address,
            version: node.beat.version,
            capacity: NodeCapacity {
                cpu_millis: node.beat.cpu_millis,
                memory_bytes: node.beat.memory_bytes,
            },
            replicas: node.beat.replicas,
            started_at: ts(node.started_at),
            last_heartbeat_at: ts(node.heartbeat_at),
        })
        .collect()))
}
