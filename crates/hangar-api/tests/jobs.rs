//! Jobs through the API: `"async": true`, `Idempotency-Key` on async and sync
//! invokes, polling and cancelling, tenancy. The server here has no runtime,
//! so a test plays the job runner of another server on the same database
//! (claims and finishes jobs through the store), as one would on a shared
//! PostgreSQL.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{each_backend, Harness, Reply};
use hangar_core::status::InstanceStatus;
use hangar_store::{job_error, JobOutcome, JobResult};
use serde_json::{json, Value};

/// An agent whose default instance runs (as a controller would report it).
async fn running_agent(h: &Harness, name: &str) -> String {
    let (agent, build) = h.ready_agent(&h.a, name).await;
    let instance =
        h.db.store
            .deploy_build(&build)
            .await
            .expect("deploy")
            .expect("instance");
    h.db.store
        .record_instance_status(&instance.id, InstanceStatus::Running, None, 1, 0)
        .await
        .expect("running");
    agent
}

async fn invoke(h: &Harness, agent: &str, key: Option<&[u8]>, body: Value) -> Reply {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(format!("/v1/agents/{agent}/invoke"))
        .header("authorization", format!("Bearer {}", h.a.key));
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    h.send(req.body(Body::from(body.to_string())).expect("request"))
        .await
}

/// Another server's runner: claims the next job and ends it with `outcome`.
async fn run_elsewhere(h: &Harness, outcome: JobOutcome) -> String {
    loop {
        let jobs =
            h.db.store
                .claim_jobs("other-server", 1, 10, Duration::from_secs(60))
                .await
                .expect("claim");
        if let Some(job) = jobs.into_iter().next() {
            let done =
                h.db.store
                    .finish_jobs(
                        "other-server",
                        &[JobResult {
                            job_id: job.id.clone(),
                            outcome,
                        }],
                    )
                    .await
                    .expect("finish");
            assert_eq!(done, vec![true]);
            return job.id;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn completed(output: Value) -> JobOutcome {
    JobOutcome::Completed {
        output,
        usage: Some(json!({"tokens_used": 3})),
        instance_id: "inst_elsewhere".into(),
        replica_id: "rep_elsewhere".into(),
        latency: Duration::from_millis(12),
    }
}

#[tokio::test]
async fn async_invoke_answers_202_and_the_job_is_polled_and_cancelled() {
    each_backend(|h| async move {
        let agent = running_agent(&h, "asyncer").await;
        let r = invoke(
            &h,
            &agent,
            None,
            json!({"input": {"document": "..."}, "async": true}),
        )
        .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        assert_eq!(r.body["success"], true);
        let job = r.body["data"]["job_id"]
            .as_str()
            .expect("job_id")
            .to_owned();
        assert!(job.starts_with("job_"));
        assert_eq!(r.body["data"]["status"], "pending");
        assert_eq!(r.body["data"]["poll_url"], format!("/v1/jobs/{job}"));

        let r = h.get(&format!("/v1/jobs/{job}"), &h.a.key).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let d = &r.body["data"];
        assert_eq!(
            (d["id"].as_str(), d["status"].as_str(), d["mode"].as_str()),
            (Some(job.as_str()), Some("pending"), Some("async"))
        );
        assert_eq!(d["attempts"], 0);
        assert!(d["output"].is_null() && d["finished_at"].is_null());

        // Completed by a runner: output, usage, timings.
        assert_eq!(
            run_elsewhere(&h, completed(json!({"summary": "short"}))).await,
            job
        );
        let r = h.get(&format!("/v1/jobs/{job}"), &h.a.key).await;
        let d = &r.body["data"];
        assert_eq!(d["status"], "completed");
        assert_eq!(d["output"], json!({"summary": "short"}));
        assert_eq!(d["usage"], json!({"tokens_used": 3}));
        assert_eq!(d["attempts"], 1);
        assert_eq!(d["latency_ms"], 12);
        assert!(
            d["started_at"].is_string()
                && d["finished_at"].is_string()
                && d["duration_ms"].is_u64(),
            "{d}"
        );
        // A finished job cannot be cancelled.
        let r = h
            .call(
                Method::POST,
                &format!("/v1/jobs/{job}/cancel"),
                &h.a.key,
                None,
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::CONFLICT, "JOB_ALREADY_FINISHED")
        );

        // A pending job is cancelled and never claimed.
        let r = invoke(&h, &agent, None, json!({"input": 2, "async": true})).await;
        let job2 = r.body["data"]["job_id"]
            .as_str()
            .expect("job_id")
            .to_owned();
        for _ in 0..2 {
            let r = h
                .call(
                    Method::POST,
                    &format!("/v1/jobs/{job2}/cancel"),
                    &h.a.key,
                    None,
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            assert_eq!(r.body["data"]["status"], "cancelled");
        }
        assert!(h
            .db
            .store
            .claim_jobs("x", 10, 10, Duration::from_secs(60))
            .await
            .expect("claim")
            .is_empty());

        // Another organization's job is not found, to read or to cancel.
        let r = h.get(&format!("/v1/jobs/{job}"), &h.b.key).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::NOT_FOUND, "JOB_NOT_FOUND")
        );
        let r = h
            .call(
                Method::POST,
                &format!("/v1/jobs/{job2}/cancel"),
                &h.b.key,
                None,
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::NOT_FOUND, "JOB_NOT_FOUND")
        );
        // Nor may org B queue jobs on org A's agent.
        let r = h
            .post(
                &format!("/v1/agents/{agent}/invoke"),
                &h.b.key,
                json!({"input": 1, "async": true}),
            )
            .await;
        assert_eq!(r.code(), "AGENT_NOT_FOUND");
    })
    .await;
}

#[tokio::test]
async fn an_idempotency_key_returns_the_same_job() {
    each_backend(|h| async move {
        let agent = running_agent(&h, "keyed").await;
        let body = json!({"input": {"n": 1}, "async": true});
        let first = invoke(&h, &agent, Some(b"order-42"), body.clone()).await;
        assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
        let again = invoke(&h, &agent, Some(b"order-42"), body.clone()).await;
        assert_eq!(again.status, StatusCode::ACCEPTED);
        assert_eq!(again.body["data"]["job_id"], first.body["data"]["job_id"]);
        let other = invoke(&h, &agent, Some(b"order-43"), body.clone()).await;
        assert_ne!(other.body["data"]["job_id"], first.body["data"]["job_id"]);
        let job = first.body["data"]["job_id"].as_str().expect("id");
        let r = h.get(&format!("/v1/jobs/{job}"), &h.a.key).await;
        assert_eq!(r.body["data"]["idempotency_key"], "order-42");

        // Keys are validated.
        let long = vec![b'k'; 256];
        for bad in [&b""[..], &long[..], "clé".as_bytes(), b"tab\there"] {
            let r = invoke(&h, &agent, Some(bad), body.clone()).await;
            assert_eq!(
                (r.status, r.code()),
                (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
                "{bad:?}"
            );
            assert_eq!(r.body["error"]["field"], "Idempotency-Key");
        }
    })
    .await;
}

#[tokio::test]
async fn a_sync_invoke_with_a_key_is_answered_once_and_then_from_its_record() {
    each_backend(|h| async move {
        let agent = running_agent(&h, "syncer").await;
        let body = json!({"input": {"q": "once"}, "options": {"timeout": 30}});
        // No runtime here: the first request queues the job and waits for
        // whichever server runs it.
        let (reply, job) = tokio::join!(
            invoke(&h, &agent, Some(b"sync-1"), body.clone()),
            run_elsewhere(&h, completed(json!("the answer")))
        );
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert_eq!(reply.body["data"]["output"], "the answer");
        assert_eq!(reply.body["data"]["usage"], json!({"tokens_used": 3}));
        assert_eq!(reply.body["meta"]["job_id"], job.as_str());
        assert_eq!(reply.body["meta"]["instance_id"], "inst_elsewhere");
        // A repeat is answered from the record: nothing is queued again.
        let again = invoke(&h, &agent, Some(b"sync-1"), body.clone()).await;
        assert_eq!(again.status, StatusCode::OK, "{}", again.text);
        assert_eq!(again.body["data"]["output"], "the answer");
        assert_eq!(again.body["meta"]["job_id"], job.as_str());
        assert!(h
            .db
            .store
            .claim_jobs("x", 10, 10, Duration::from_secs(60))
            .await
            .expect("claim")
            .is_empty());
        let r = h.get(&format!("/v1/jobs/{job}"), &h.a.key).await;
        assert_eq!(r.body["data"]["status"], "completed");

        // A failure is recorded and repeated as the same error.
        let (reply, _) = tokio::join!(
            invoke(&h, &agent, Some(b"sync-2"), body.clone()),
            run_elsewhere(
                &h,
                JobOutcome::Failed {
                    error: {
                        let mut e = job_error("AGENT_ERROR", "the agent answered 500");
                        e["details"] = json!({"agent_status": 500, "agent_body": "boom"});
                        e
                    },
                    instance_id: None,
                }
            )
        );
        for r in [
            reply,
            invoke(&h, &agent, Some(b"sync-2"), body.clone()).await,
        ] {
            assert_eq!(
                (r.status, r.code()),
                (StatusCode::BAD_GATEWAY, "AGENT_ERROR"),
                "{}",
                r.text
            );
            assert_eq!(r.body["error"]["details"]["agent_status"], 500);
        }
    })
    .await;
}

#[tokio::test]
async fn jobs_need_a_running_agent() {
    each_backend(|h| async move {
        let (agent, _) = h.ready_agent(&h.a, "idle").await;
        let r = invoke(&h, &agent, None, json!({"input": 1, "async": true})).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::CONFLICT, "AGENT_NOT_RUNNING")
        );
        let r = invoke(&h, &agent, Some(b"k"), json!({"input": 1})).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::CONFLICT, "AGENT_NOT_RUNNING")
        );
    })
    .await;
}

#[tokio::test]
async fn a_key_on_a_streaming_invoke_is_refused_before_anything_runs() {
    each_backend(|h| async move {
        let agent = running_agent(&h, "streamer").await;
        let body = json!({"input": {"q": "once"}, "options": {"timeout": 1}});
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("/v1/agents/{agent}/invoke"))
            .header("authorization", format!("Bearer {}", h.a.key))
            .header("idempotency-key", "stream-1")
            .header("accept", "text/event-stream")
            .body(Body::from(body.to_string()))
            .expect("request");
        let r = h.send(request).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
            "{}",
            r.text
        );
        assert_eq!(r.body["error"]["field"], "Idempotency-Key");
        assert!(
            r.body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("text/event-stream")),
            "{}",
            r.text
        );
        // Nothing was recorded under the key: without streaming it is new.
        let r = invoke(
            &h,
            &agent,
            Some(b"stream-1"),
            json!({"input": {}, "async": true}),
        )
        .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        let job = r.body["data"]["job_id"].as_str().expect("job_id");
        let r = h.get(&format!("/v1/jobs/{job}"), &h.a.key).await;
        assert_eq!(r.body["data"]["mode"], "async", "{}", r.text);
    })
    .await;
}

#[tokio::test]
async fn an_organizations_jobs_are_listed_filtered_and_paged() {
    each_backend(|h| async move {
        let first = running_agent(&h, "lister-a").await;
        let second = running_agent(&h, "lister-b").await;
        let mut jobs = Vec::new();
        for agent in [&first, &second, &first] {
            let r = invoke(&h, agent, None, json!({"input": {}, "async": true})).await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
            jobs.push(r.body["data"]["job_id"].as_str().expect("job").to_owned());
        }
        let r = h
            .send(
                Request::post(format!("/v1/jobs/{}/cancel", jobs[2]))
                    .header("authorization", format!("Bearer {}", h.a.key))
                    .body(Body::empty())
                    .expect("request"),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let ids = |r: &Reply| -> Vec<String> {
            r.body["data"]
                .as_array()
                .expect("data")
                .iter()
                .map(|j| j["id"].as_str().expect("id").to_owned())
                .collect()
        };
        let newest_first: Vec<String> = jobs.iter().rev().cloned().collect();

        let r = h.get("/v1/jobs", &h.a.key).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(ids(&r), newest_first);
        assert_eq!(r.body["pagination"]["has_more"], false, "{}", r.text);

        let r = h.get(&format!("/v1/jobs?agent_id={first}"), &h.a.key).await;
        assert_eq!(ids(&r), [jobs[2].clone(), jobs[0].clone()]);
        let r = h.get("/v1/jobs?status=cancelled", &h.a.key).await;
        assert_eq!(ids(&r), [jobs[2].clone()]);
        assert_eq!(r.body["data"][0]["status"], "cancelled");

        let page = h.get("/v1/jobs?limit=2", &h.a.key).await;
        assert_eq!(ids(&page), newest_first[..2]);
        assert_eq!(page.body["pagination"]["has_more"], true, "{}", page.text);
        let cursor = page.body["pagination"]["next_cursor"]
            .as_str()
            .expect("next_cursor");
        let rest = h
            .get(&format!("/v1/jobs?limit=2&cursor={cursor}"), &h.a.key)
            .await;
        assert_eq!(ids(&rest), newest_first[2..]);

        let r = h.get("/v1/jobs?agent_id=agent_nowhere", &h.a.key).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::NOT_FOUND, "AGENT_NOT_FOUND")
        );
        let r = h.get("/v1/jobs?status=sleeping", &h.a.key).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
        // Another organization sees none of them, nor their agent.
        let r = h.get("/v1/jobs", &h.b.key).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert!(ids(&r).is_empty(), "{}", r.text);
        let r = h.get(&format!("/v1/jobs?agent_id={first}"), &h.b.key).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    })
    .await;
}
