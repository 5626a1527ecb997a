//! `GET /v1/nodes`: the servers on this database, as their heartbeats say,
//! for the operator; `POST`/`DELETE /v1/nodes/{id}/drain` drain one and
//! call that off. Any server answers the same: the rows are shared, and
//! the status is derived from the last heartbeat with this server's
//! [`crate::ApiConfig::node_dead_after`].

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiResult, Found, Kind};
use crate::extract::Caller;
use crate::render::{ok, ts, Envelope};
use crate::AppState;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_nodes))
        .routes(routes!(drain_node, undrain_node))
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
    /// Whether it is drained: it takes no instance, and those it ran move
    /// to other nodes (`replicas` reaches 0 when they all have).
    pub draining: bool,
    /// Since when it is drained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draining_since: Option<String>,
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
    let nodes = state.store.list_nodes().await?;
    Ok(ok(nodes
        .into_iter()
        .map(|node| render(&state, node))
        .collect()))
}

fn render(state: &AppState, node: hangar_store::Node) -> NodeObject {
    let now = hangar_store::store_now();
    NodeObject {
        status: node.status(now, state.config.node_dead_after).as_str(),
        id: node.beat.id,
        address: node.beat.address,
        version: node.beat.version,
        capacity: NodeCapacity {
            cpu_millis: node.beat.cpu_millis,
            memory_bytes: node.beat.memory_bytes,
        },
        replicas: node.beat.replicas,
        draining: node.draining_at.is_some(),
        draining_since: node.draining_at.map(ts),
        started_at: ts(node.started_at),
        last_heartbeat_at: ts(node.heartbeat_at),
    }
}

/// Drains or undrains node `id`, told at once when it is this node, and
/// otherwise at its next heartbeat (a third of `--node-dead-after`).
async fn set_draining(
    state: &AppState,
    caller: &Caller,
    id: &str,
    draining: bool,
) -> ApiResult<Json<Envelope<NodeObject>>> {
    caller.require_operator()?;
    let node = state
        .store
        .set_node_draining(id, draining)
        .await?
        .found(Kind::Node, id)?;
    let here = state.hops.as_ref().is_some_and(|hops| hops.node() == id);
    if let (true, Some(runtime)) = (here, &state.runtime) {
        runtime.set_draining(draining);
    }
    Ok(ok(render(state, node)))
}

/// Drain a node (admins of the operator organization): it takes no new
/// instance, and each instance it runs moves to the ready, undrained node
/// with the fewest replicas with the usual roll — the new node starts the
/// instance's replicas, and this node's stop once it runs them and their
/// requests in flight have finished — so no request fails. `replicas`
/// reaches 0 when all have moved. Draining stays set (across restarts)
/// until `DELETE`.
#[utoipa::path(post, path = "/v1/nodes/{id}/drain", tag = "nodes",
    params(("id" = String, Path, description = "Node ID")),
    responses((status = 200, body = Envelope<NodeObject>), (status = 403, description = "FORBIDDEN"),
        (status = 404, description = "NODE_NOT_FOUND")))]
async fn drain_node(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Envelope<NodeObject>>> {
    set_draining(&state, &caller, &id, true).await
}

/// Undrain a node: it takes instances again (those that moved away stay
/// where they are).
#[utoipa::path(delete, path = "/v1/nodes/{id}/drain", tag = "nodes",
    params(("id" = String, Path, description = "Node ID")),
    responses((status = 200, body = Envelope<NodeObject>), (status = 403, description = "FORBIDDEN"),
        (status = 404, description = "NODE_NOT_FOUND")))]
async fn undrain_node(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Envelope<NodeObject>>> {
    set_draining(&state, &caller, &id, false).await
}
