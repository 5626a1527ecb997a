//! Events and the webhook outbox on real databases (SQLite always,
//! PostgreSQL when configured, and always in CI).

use hangar_core::events::DeliveryStatus;
use hangar_store::testing::each_backend;
use hangar_store::{Attempt, NewWebhook, Store};
use serde_json::json;

async fn hook(store: &Store, org: &str, events: &[&str]) -> String {
    store
        .create_webhook(NewWebhook {
            organization_id: org.to_owned(),
            url: "http://127.0.0.1:9/hook".into(),
            events: events.iter().map(|e| (*e).to_owned()).collect(),
            description: None,
            secret: None,
        })
        .await
        .expect("webhook")
        .0
        .id
}

#[tokio::test]
async fn events_queue_deliveries_in_order_per_subject_with_leases_and_retries() {
    each_backend(|store, _| async move {
        let org = store
            .bootstrap(None)
            .await
            .expect("bootstrap")
            .organization
            .id;
        let all = hook(&store, &org, &[]).await;
        let deployed_only = hook(&store, &org, &["agent.deployed"]).await;

        let first = store
            .record_event(&org, "agent.deployed", "agent_a", json!({"n": 1}))
            .await
            .expect("event");
        store
            .record_event(&org, "agent.scaled", "agent_a", json!({"n": 2}))
            .await
            .expect("event");
        store
            .record_event(&org, "agent.scaled", "agent_b", json!({"n": 3}))
            .await
            .expect("event");

        // The log, newest first, by type, with a cursor.
        let events = store.list_events(&org, None, None, 10).await.expect("list");
        assert_eq!(events.len(), 3);
        assert_eq!(events[2].id, first.id);
        let scaled = store
            .list_events(&org, None, Some("agent.scaled"), 10)
            .await
            .expect("list");
        assert_eq!(scaled.len(), 2);
        let older = store
            .list_events(&org, Some(&events[0].id), None, 10)
            .await
            .expect("list");
        assert_eq!(older.len(), 2);

        // Due now: the first of each subject at each endpoint. agent_a's
        // second event waits for its first at `all`.
        let due = store.take_due_deliveries(10, 30_000).await.expect("due");
        let mut seen: Vec<(String, i64)> = due
            .iter()
            .map(|d| {
                (
                    d.delivery.webhook_id.clone(),
                    d.event.data["n"].as_i64().expect("n"),
                )
            })
            .collect();
        seen.sort();
        let mut want = vec![
            (all.clone(), 1),
            (all.clone(), 3),
            (deployed_only.clone(), 1),
        ];
        want.sort();
        assert_eq!(seen, want);
        assert!(due
            .iter()
            .all(|d| d.secret.starts_with("whsec_") && d.url.ends_with("/hook")));
        // Leased: nobody else takes them.
        assert!(store
            .take_due_deliveries(10, 30_000)
            .await
            .expect("due")
            .is_empty());

        // agent_a's first at `all` fails and is retried later: its second
        // still waits (order), the others are done.
        for d in &due {
            let attempt = if d.delivery.webhook_id == all && d.event.subject == "agent_a" {
                Attempt::Failed {
                    status: Some(500),
                    error: "receiver said 500".into(),
                    retry_at: Some(i64::MAX / 2),
                }
            } else {
                Attempt::Delivered(204)
            };
            store
                .record_attempt(&d.delivery.id, &attempt)
                .await
                .expect("attempt");
        }
        assert!(store
            .take_due_deliveries(10, 30_000)
            .await
            .expect("due")
            .is_empty());

        // Redelivered now: it goes, and once delivered the second follows.
        let failed = store
            .list_deliveries(&org, &all, None, 10)
            .await
            .expect("deliveries")
            .into_iter()
            .find(|d| d.last_status_code == Some(500))
            .expect("the failed one");
        assert_eq!(
            (failed.status, failed.attempts),
            (DeliveryStatus::Pending, 1)
        );
        store
            .redeliver(&org, &all, &failed.id)
            .await
            .expect("redeliver")
            .expect("exists");
        let due = store.take_due_deliveries(10, 30_000).await.expect("due");
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].delivery.id, failed.id);
        store
            .record_attempt(&failed.id, &Attempt::Delivered(200))
            .await
            .expect("attempt");
        let due = store.take_due_deliveries(10, 30_000).await.expect("due");
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].event.data["n"], 2);
        // The schedule runs out: failed for good.
        store
            .record_attempt(
                &due[0].delivery.id,
                &Attempt::Failed {
                    status: None,
                    error: "connection refused".into(),
                    retry_at: None,
                },
            )
            .await
            .expect("attempt");
        let deliveries = store
            .list_deliveries(&org, &all, None, 10)
            .await
            .expect("list");
        assert_eq!(deliveries.len(), 3);
        let failed: Vec<_> = deliveries
            .iter()
            .filter(|d| d.status == DeliveryStatus::Failed)
            .collect();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].last_error.as_deref(), Some("connection refused"));
        assert!(store
            .take_due_deliveries(10, 30_000)
            .await
            .expect("due")
            .is_empty());

        // Another organization sees none of it; deleting an endpoint takes its
        // deliveries along.
        assert!(store
            .list_deliveries("org_other", &all, None, 10)
            .await
            .expect("list")
            .is_empty());
        assert!(store.delete_webhook(&org, &all).await.expect("delete"));
        assert!(store
            .list_deliveries(&org, &all, None, 10)
            .await
            .expect("list")
            .is_empty());
    })
    .await;
}
