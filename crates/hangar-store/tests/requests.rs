//! Request figures per node against real databases: SQLite always,
//! PostgreSQL when configured (and always in CI). "Two nodes" are two
//! stores (two pools) on one database, each adding its own counts.

use hangar_store::seal::Sealer;
use hangar_store::testing::each_backend;
use hangar_store::{MinuteFigures, RequestCounts, RequestMinute, Store};

fn minute(
    instance: &str,
    minute: i64,
    requests: u64,
    errors: u64,
    latency_us: u64,
) -> RequestMinute {
    RequestMinute {
        instance_id: instance.to_owned(),
        minute,
        figures: MinuteFigures {
            counts: RequestCounts {
                requests,
                errors,
                latency_us,
            },
            ..MinuteFigures::default()
        },
    }
}

#[tokio::test]
async fn counts_of_every_node_add_up_per_instance_within_the_window() {
    each_backend(|a, url| async move {
        let b = Store::connect(&url, Sealer::new(&Sealer::generate_key()).expect("key"))
            .await
            .expect("second node's store");
        // Node a writes twice into one minute (two flushes), and into two
        // instances; node b into the same minutes and an older one.
        a.add_request_counts(
            "node-a",
            &[
                minute("inst_1", 1000, 3, 1, 30_000),
                minute("inst_2", 1000, 1, 0, 5_000),
            ],
        )
        .await
        .expect("a");
        a.add_request_counts("node-a", &[minute("inst_1", 1000, 2, 0, 20_000)])
            .await
            .expect("a again");
        b.add_request_counts(
            "node-b",
            &[
                minute("inst_1", 1000, 4, 2, 40_000),
                minute("inst_1", 1001, 1, 1, 1_000),
                minute("inst_1", 990, 100, 100, 1_000_000),
            ],
        )
        .await
        .expect("b");
        // Nothing counted is nothing written; one key twice in one call is
        // added, not refused.
        b.add_request_counts("node-b", &[minute("inst_2", 1000, 0, 0, 0)])
            .await
            .expect("empty");
        b.add_request_counts(
            "node-b",
            &[
                minute("inst_2", 1001, 1, 0, 1_000),
                minute("inst_2", 1001, 1, 1, 2_000),
            ],
        )
        .await
        .expect("twice");

        for reader in [&a, &b] {
            let counts = reader
                .request_counts(&["inst_1", "inst_2", "inst_3"], 1000)
                .await
                .expect("read");
            assert_eq!(
                counts.get("inst_1"),
                Some(&RequestCounts {
                    requests: 10,
                    errors: 4,
                    latency_us: 91_000
                })
            );
            assert_eq!(
                counts.get("inst_2"),
                Some(&RequestCounts {
                    requests: 3,
                    errors: 1,
                    latency_us: 8_000
                })
            );
            assert_eq!(counts.get("inst_3"), None);
        }
        // A wider window takes the older minute in; one instance alone.
        let counts = a.request_counts(&["inst_1"], 0).await.expect("read");
        assert_eq!(counts.len(), 1);
        assert_eq!(counts["inst_1"].requests, 110);

        // Pruning drops every node's minutes before the cut, only those.
        assert_eq!(a.prune_request_counts(1000).await.expect("prune"), 1);
        let counts = b.request_counts(&["inst_1"], 0).await.expect("read");
        assert_eq!(counts["inst_1"].requests, 10);
        assert!(a.request_counts(&[], 0).await.expect("none").is_empty());
        b.close().await;
    })
    .await;
}

#[tokio::test]
async fn a_read_of_many_instances_spans_statements() {
    each_backend(|store, _| async move {
        let ids: Vec<String> = (0..600).map(|i| format!("inst_{i:04}")).collect();
        let rows: Vec<RequestMinute> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| minute(id, 5, i as u64 + 1, 0, 0))
            .collect();
        store
            .add_request_counts("node-a", &rows)
            .await
            .expect("write");
        let wanted: Vec<&str> = ids.iter().map(String::as_str).collect();
        let counts = store.request_counts(&wanted, 5).await.expect("read");
        assert_eq!(counts.len(), 600);
        assert_eq!(counts["inst_0599"].requests, 600);
    })
    .await;
}
