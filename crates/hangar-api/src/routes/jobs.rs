//! Jobs: async invocations (`"async": true`), synchronous invocations made
//! with an `Idempotency-Key`, and `/v1/jobs/{id}` to poll or cancel them.
//!
//! Every async invocation becomes a row of the store's durable queue before
//! the 202 goes out; the server's job runner (or any server's, on a shared
//! PostgreSQL) runs it. A synchronous invocation with an `Idempotency-Key` is
//! recorded the same way, leased to the request that runs it, so a repeat of
//! the key answers from the record (or waits for the first request to end)
//! instead of invoking the agent again. A key is per agent; a repeat returns
//! the first request's job whatever its body. `GET /v1/jobs` lists an
//! organization's jobs (of one agent, in one status), newest first.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;

use hangar_core::model::{Instance, Job};
use hangar_core::status::JobStatus;
use hangar_gateway::{ErrorClass, Gateway};
use hangar_store::{JobOutcome, JobResult, NewJob};
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, Found, Kind};
use crate::extract::{Caller, Path, Query};
use crate::render::{self, ok, ok_list, Envelope, JobObject, ListEnvelope, Pagination};
use crate::{decode_cursor, AppState};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(cancel_job))
}

/// Longest `Idempotency-Key`.
const MAX_KEY_LEN: usize = 255;

/// How often a repeated synchronous request looks at the first one's job.
const WAIT_POLL: Duration = Duration::from_millis(25);

/// The request's `Idempotency-Key`: 1–255 printable ASCII characters, once.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let invalid = |why: &str| ApiError::invalid("Idempotency-Key", why);
    if values.next().is_some() {
        return Err(invalid("must be sent once"));
    }
    let key = value
        .to_str()
        .map_err(|_| invalid("must be printable ASCII"))?;
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(invalid("must be 1 to 255 characters"));
    }
    if !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(invalid("must be printable ASCII"));
    }
    Ok(Some(key.to_owned()))
}

/// What an invocation asked for, shared by the async and keyed paths.
pub(crate) struct Invocation {
    /// The agent's `input`.
    pub input: Value,
    /// `options.timeout`.
    pub timeout: Duration,
    /// `options.headers`.
    pub headers: BTreeMap<String, String>,
    /// The `Idempotency-Key`.
    pub key: Option<String>,
}

impl Invocation {
    fn new_job(self, org: &str, agent_id: &str, run_by: Option<String>) -> NewJob {
        NewJob {
            organization_id: org.to_owned(),
            agent_id: agent_id.to_owned(),
            input: self.input,
            headers: self.headers,
            timeout: self.timeout,
            idempotency_key: self.key,
            run_by,
        }
    }
}

/// `"async": true`: the job is stored, then answered 202 (a repeated key:
/// the same job, in whatever state it is now).
pub(crate) async fn accept(
    state: &AppState,
    org: &str,
    agent_id: &str,
    invocation: Invocation,
) -> ApiResult<Response> {
    let (job, created) = state
        .intake
        .accept(invocation.new_job(org, agent_id, None))
        .await?;
    if created {
        state.job_accepted();
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "success": true,
            "data": {
                "job_id": job.id,
                "status": job.status,
                "poll_url": format!("/v1/jobs/{}", job.id),
            },
            "meta": {"request_id": crate::context::request_id()},
        })),
    )
        .into_response())
}

/// A synchronous invocation with an `Idempotency-Key`. The first request of
/// a key runs it here (when this server has a runtime; otherwise it queues
/// it for one that has) and records the result; a repeat answers from the
/// record, waiting up to its own timeout for a first request still running.
pub(crate) async fn invoke_keyed(
    state: &AppState,
    org: &str,
    agent_id: &str,
    here: Option<(Arc<Gateway>, Arc<Instance>)>,
    invocation: Invocation,
) -> ApiResult<Response> {
    let timeout = invocation.timeout;
    let owner = format!("sync/{}", crate::context::request_id());
    let (mut job, created) = state
        .store
        .create_job(invocation.new_job(org, agent_id, here.is_some().then(|| owner.clone())))
        .await?;
    match (created, here) {
        (true, Some((gateway, instance))) => {
            let headers = hangar_gateway::jobs::delivery_headers(&job.headers, &job.id);
            let outcome = match gateway
                .invoke(&instance, &job.input, timeout, &headers)
                .await
            {
                Ok(done) => JobOutcome::Completed {
                    output: done.output,
                    usage: done.usage,
                    instance_id: instance.id.clone(),
                    replica_id: done.replica_id,
                    latency: done.latency,
                },
                Err(err) => JobOutcome::Failed {
                    error: hangar_gateway::jobs::invoke_failure(&err).0,
                    instance_id: Some(instance.id.clone()),
                },
            };
            let recorded = state
                .store
                .finish_jobs(
                    &owner,
                    &[JobResult {
                        job_id: job.id.clone(),
                        outcome: outcome.clone(),
                    }],
                )
                .await?;
            if recorded.first().copied().unwrap_or(false) {
                apply(&mut job, outcome);
            } else {
                // Cancelled meanwhile: answer what the record says.
                job = state
                    .store
                    .get_job(org, &job.id)
                    .await?
                    .found(Kind::Job, &job.id)?;
            }
        }
        (created, _) => {
            if created {
                state.job_accepted();
            }
            let deadline = Instant::now() + timeout + hangar_store::SYNC_LEASE_MARGIN;
            while !job.status.is_terminal() && Instant::now() < deadline {
                tokio::time::sleep(WAIT_POLL).await;
                job = state
                    .store
                    .get_job(org, &job.id)
                    .await?
                    .found(Kind::Job, &job.id)?;
            }
        }
    }
    sync_answer(&job)
}

/// The record of a job as it ends with `outcome` (for answering without
/// reading it back).
fn apply(job: &mut Job, outcome: JobOutcome) {
    match outcome {
        JobOutcome::Completed {
            output,
            usage,
            instance_id,
            replica_id,
            latency,
        } => {
            job.status = JobStatus::Completed;
            job.output = Some(output);
            job.usage = usage;
            job.instance_id = Some(instance_id);
            job.replica_id = Some(replica_id);
            job.latency_ms = Some(u64::try_from(latency.as_millis()).unwrap_or(u64::MAX));
        }
        JobOutcome::Failed { error, instance_id } => {
            job.status = JobStatus::Failed;
            job.error = Some(error);
            job.instance_id = instance_id;
        }
        JobOutcome::Retry { error, .. } => job.error = Some(error),
    }
}

/// A synchronous invocation's answer from its job: the invoke envelope when
/// completed, the same errors a synchronous invoke gives when failed.
fn sync_answer(job: &Job) -> ApiResult<Response> {
    match job.status {
        JobStatus::Completed => Ok(Json(json!({
            "success": true,
            "data": {"output": job.output, "usage": job.usage},
            "meta": {
                "request_id": crate::context::request_id(),
                "latency_ms": job.latency_ms.unwrap_or(0),
                "instance_id": job.instance_id,
                "job_id": job.id,
            },
        }))
        .into_response()),
        JobStatus::Failed => Err(stored_error(job.error.as_ref())),
        JobStatus::Cancelled => Err(ApiError::Conflict {
            code: "JOB_CANCELLED",
            message: format!("job {} was cancelled", job.id),
        }),
        JobStatus::Pending | JobStatus::Running => Err(ApiError::Conflict {
            code: "JOB_IN_PROGRESS",
            message: format!(
                "a request with this Idempotency-Key is still running as job {}; poll /v1/jobs/{}",
                job.id, job.id
            ),
        }),
    }
}

/// A failed job's stored `{code, message, details}` as the error a
/// synchronous invoke answers with: its code read back through the one
/// table ([`ErrorClass::of_stored`]), so a keyed invocation answers as an
/// unkeyed one would have.
fn stored_error(error: Option<&Value>) -> ApiError {
    let text = |k: &str| {
        error
            .and_then(|e| e.get(k))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    ApiError::Failed {
        class: ErrorClass::of_stored(&text("code")),
        message: text("message"),
        details: error.and_then(|e| e.get("details")).cloned(),
    }
}

/// Query of `GET /v1/jobs`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct JobsQuery {
    /// Page size, 1–100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^(job_[A-Za-z0-9_]{0,59})?$")]
    cursor: Option<String>,
    /// Only this agent's jobs.
    #[param(pattern = r"^[A-Za-z0-9_]+$", max_length = 64)]
    agent_id: Option<String>,
    /// Only jobs in this status.
    status: Option<JobStatus>,
}

/// The organization's jobs (async invocations and synchronous ones made
/// with an `Idempotency-Key`), newest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(JobsQuery),
    responses((status = 200, body = ListEnvelope<JobObject>), (status = 404, description = "AGENT_NOT_FOUND: `agent_id` names no agent of the organization")))]
async fn list_jobs(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<JobsQuery>,
) -> ApiResult<Json<ListEnvelope<JobObject>>> {
    let limit = super::page_size(q.limit)?;
    let after = decode_cursor(q.cursor.as_deref(), "job_")?;
    if let Some(agent) = &q.agent_id {
        super::agents::find(&state, &caller, agent).await?;
    }
    let page = state
        .store
        .list_jobs(
            caller.org(),
            q.agent_id.as_deref(),
            q.status,
            after.as_deref(),
            limit,
        )
        .await?;
    Ok(ok_list(
        page.items.iter().map(render::job).collect(),
        Pagination::of(&page, limit),
    ))
}

/// An invocation's status and result.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "Job ID")),
    responses((status = 200, body = Envelope<JobObject>), (status = 404, description = "JOB_NOT_FOUND")))]
async fn get_job(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Envelope<JobObject>>> {
    let j = state
        .store
        .get_job(caller.org(), &id)
        .await?
        .found(Kind::Job, &id)?;
    Ok(ok(render::job(&j)))
}

/// Cancel a job that has not finished: a pending one never runs, a running
/// one's request to the agent is aborted. Cancelling a cancelled job is a
/// no-op; a finished one is `JOB_ALREADY_FINISHED`.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = String, Path, description = "Job ID")),
    responses((status = 200, body = Envelope<JobObject>), (status = 404, description = "JOB_NOT_FOUND"), (status = 409, description = "JOB_ALREADY_FINISHED")))]
async fn cancel_job(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Envelope<JobObject>>> {
    let j = state
        .store
        .cancel_job(caller.org(), &id)
        .await?
        .found(Kind::Job, &id)?;
    match j.status {
        JobStatus::Completed | JobStatus::Failed => Err(ApiError::Conflict {
            code: "JOB_ALREADY_FINISHED",
            message: format!("job {} already {}", j.id, j.status),
        }),
        _ => {
            state.job_cancelled(&j.id);
            Ok(ok(render::job(&j)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(v: &[u8]) -> ApiResult<Option<String>> {
        let mut h = HeaderMap::new();
        h.insert(
            "idempotency-key",
            axum::http::HeaderValue::from_bytes(v).expect("header"),
        );
        idempotency_key(&h)
    }

    #[test]
    fn idempotency_keys_are_validated() {
        assert_eq!(idempotency_key(&HeaderMap::new()).expect("none"), None);
        assert_eq!(
            key(b"order-42 retry").expect("ok").as_deref(),
            Some("order-42 retry")
        );
        assert!(key(b"").is_err());
        assert!(key(&[b'k'; 256]).is_err());
        assert!(key(&[b'k'; 255]).is_ok());
        assert!(key("clé".as_bytes()).is_err());
        assert!(key(b"tab\there").is_err());
        let mut twice = HeaderMap::new();
        twice.append("idempotency-key", "a".parse().expect("v"));
        twice.append("idempotency-key", "b".parse().expect("v"));
        assert!(idempotency_key(&twice).is_err());
    }

    #[test]
    fn stored_errors_answer_like_a_sync_invoke() {
        let e = stored_error(Some(&json!({"code": "INVOKE_TIMEOUT", "message": "slow"})));
        assert_eq!(e.code(), "INVOKE_TIMEOUT");
        let e = stored_error(Some(
            &json!({"code": "AGENT_ERROR", "message": "500", "details": {"agent_status": 500}}),
        ));
        assert_eq!(e.body()["error"]["details"]["agent_status"], 500);
        assert_eq!(stored_error(None).code(), "AGENT_ERROR");
    }

    #[test]
    fn a_stored_full_queue_answers_503_like_a_live_one() {
        let live = ApiError::from(hangar_gateway::InvokeError::Overloaded);
        let stored = stored_error(Some(
            &hangar_gateway::jobs::invoke_failure(&hangar_gateway::InvokeError::Overloaded).0,
        ));
        assert_eq!(stored.class(), live.class());
        assert_eq!(stored.code(), "AGENT_OVERLOADED");
        assert_eq!(stored.class().status, StatusCode::SERVICE_UNAVAILABLE);
    }
}
