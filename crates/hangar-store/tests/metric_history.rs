//! Metric history against real databases: SQLite always, PostgreSQL when
//! configured (and always in CI). "Two nodes" are two stores (two pools)
//! on one database, each adding its own figures, as two servers do.

use std::time::Duration;

use hangar_store::seal::Sealer;
use hangar_store::testing::each_backend;
use hangar_store::{
    LatencyHistogram, MinuteFigures, RequestCounts, RequestMinute, ResourceUse, SeriesSpan, Store,
};

/// `n` invocations of `latency` (`errors` of them failed), and what the
/// replicas used, in one minute.
fn minute(
    instance: &str,
    minute: i64,
    n: u64,
    errors: u64,
    latency: Duration,
    usage: ResourceUse,
) -> RequestMinute {
    let mut histogram = LatencyHistogram::default();
    for _ in 0..n {
        histogram.record(latency);
    }
    RequestMinute {
        instance_id: instance.to_owned(),
        minute,
        figures: MinuteFigures {
            counts: RequestCounts {
                requests: n,
                errors,
                latency_us: n * u64::try_from(latency.as_micros()).expect("µs"),
            },
            latency: histogram,
            usage,
        },
    }
}

/// `cpu` seconds of CPU over a minute, and `samples` samples of `mib`.
fn usage(cpu: u64, mib: u64, samples: u64) -> ResourceUse {
    ResourceUse {
        cpu_us: cpu * 1_000_000,
        cpu_wall_ms: 60_000,
        memory_kib: mib * 1024 * samples,
        memory_samples: samples,
    }
}

const MS: Duration = Duration::from_millis(1);

#[tokio::test]
async fn buckets_of_two_nodes_merge_and_percentiles_come_from_the_sum() {
    each_backend(|a, url| async move {
        let b = Store::connect(&url, Sealer::new(&Sealer::generate_key()).expect("key"))
            .await
            .expect("second node's store");
        // Steps of two minutes; the last holds minute 1001.
        let span = SeriesSpan::ending_at(1001, 2, 3);
        assert_eq!(span.first_minute, 996);

        // Minute 1000: node a answers 90 fast invocations in two flushes
        // and runs a replica at 50% CPU, 100 MiB; node b answers 10 slow
        // ones (2 failed) and runs one at 25%, 50 MiB.
        a.add_request_counts(
            "node-a",
            &[minute("inst_1", 1000, 40, 0, MS, usage(30, 100, 3))],
        )
        .await
        .expect("a");
        a.add_request_counts(
            "node-a",
            &[
                minute("inst_1", 1000, 50, 0, MS, ResourceUse::default()),
                // Minute 1001: only node a, at 100% CPU, 100 MiB.
                minute("inst_1", 1001, 0, 0, MS, usage(60, 100, 1)),
                // Another instance and a minute before the span.
                minute("inst_2", 1000, 7, 7, MS, ResourceUse::default()),
                minute("inst_1", 995, 1000, 0, 100 * MS, usage(60, 900, 1)),
            ],
        )
        .await
        .expect("a again");
        b.add_request_counts(
            "node-b",
            &[minute("inst_1", 1000, 10, 2, 100 * MS, usage(15, 50, 2))],
        )
        .await
        .expect("b");

        for reader in [&a, &b] {
            let series = reader.metric_series("inst_1", span).await.expect("series");
            assert_eq!(series.len(), 3);
            // Minutes 996–999 had nothing: zeros, and nothing known.
            for empty in &series[..2] {
                assert_eq!(empty.counts.requests, 0);
                assert!(empty.latency.is_empty());
                assert_eq!(empty.cpu_percent(), None);
                assert_eq!(empty.memory_mb(), None);
            }
            let last = &series[2];
            assert_eq!(last.counts.requests, 100);
            assert_eq!(last.counts.errors, 2);
            assert_eq!(last.counts.latency_us, 90 * 1_000 + 10 * 100_000);
            assert_eq!(last.latency.total(), 100);
            // The median is a fast one, node a's; the 95th percentile a
            // slow one, node b's: neither node alone has both.
            let p50 = last.latency.percentile_ms(0.5).expect("p50");
            assert!((0.707..=1.0).contains(&p50), "p50 {p50}");
            let p95 = last.latency.percentile_ms(0.95).expect("p95");
            assert!((90.5..=128.0).contains(&p95), "p95 {p95}");
            let p99 = last.latency.percentile_ms(0.99).expect("p99");
            assert!((p95..=128.0).contains(&p99), "p99 {p99}");
            // CPU: minute 1000 is 50% + 25% (two nodes' replicas), 1001 is
            // 100%: a mean of 87.5%. Memory likewise: (150 + 100) / 2.
            assert_eq!(last.cpu_percent(), Some(87.5));
            assert_eq!(last.memory_mb(), Some(125.0));
        }

        // One node's figures alone would say otherwise: the sum is what is
        // read, not either node's.
        let other = a.metric_series("inst_2", span).await.expect("inst_2");
        assert_eq!(other[2].counts.requests, 7);
        assert_eq!(other[2].cpu_percent(), None);

        // Wider steps (aligned to ten minutes) take the older minute in.
        let wide = a
            .metric_series("inst_1", SeriesSpan::ending_at(1001, 10, 2))
            .await
            .expect("wide");
        assert_eq!(wide[0].counts.requests, 1000);
        assert_eq!(
            wide[0].latency.percentile_ms(0.5).map(|p| p > 90.5),
            Some(true)
        );
        assert_eq!(wide[1].counts.requests, 100);
        assert_eq!(wide[1].latency.total(), 100);
        b.close().await;
    })
    .await;
}

#[tokio::test]
async fn retention_deletes_every_nodes_old_figures_and_only_those() {
    each_backend(|store, _| async move {
        for (node, at) in [("node-a", 100), ("node-b", 100), ("node-a", 200)] {
            store
                .add_request_counts(node, &[minute("inst_1", at, 3, 1, 5 * MS, usage(1, 10, 1))])
                .await
                .expect("write");
        }
        let old = SeriesSpan::ending_at(100, 1, 1);
        let new = SeriesSpan::ending_at(200, 1, 1);
        assert_eq!(
            store.metric_series("inst_1", old).await.expect("old")[0]
                .latency
                .total(),
            6
        );

        // Two rows of counts and two of buckets (one bucket each) go.
        assert_eq!(store.prune_request_counts(150).await.expect("prune"), 4);
        let gone = store.metric_series("inst_1", old).await.expect("old");
        assert_eq!(gone[0].counts.requests, 0);
        assert!(gone[0].latency.is_empty());
        assert_eq!(gone[0].memory_mb(), None);
        let kept = store.metric_series("inst_1", new).await.expect("new");
        assert_eq!(kept[0].counts.requests, 3);
        assert_eq!(kept[0].latency.total(), 3);
        assert_eq!(kept[0].memory_mb(), Some(10.0));
        assert_eq!(store.prune_request_counts(150).await.expect("again"), 0);
    })
    .await;
}
