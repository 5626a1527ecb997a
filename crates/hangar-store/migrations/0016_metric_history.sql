-- Metric history: per instance, minute and node, what plots over 1 h,
-- 24 h and 7 d need, kept for the configured retention (a week by default)
-- and written by the server that saw the traffic or ran the replicas, in
-- the flush that already writes request_counts (every few seconds).
--
-- request_counts is extended, not joined by a sibling table: it already has
-- the key these figures share (instance, minute, node), its readers keep
-- working (they read only the columns they know), one row per key and one
-- upsert per flush carry everything, and one DELETE prunes it. The new
-- columns default to 0, so servers of the version before, which write only
-- requests, errors and latency_us, still insert (their rows simply have no
-- resource figures). Every column merges by addition, like the others:
--   cpu_us          CPU time the node's replicas of the instance used, µs;
--   cpu_wall_ms     the wall time those figures cover, ms (cpu_us over it
--                   is the node's CPU use; 0: not measured);
--   memory_kib      memory of the node's replicas, KiB, summed over samples;
--   memory_samples  how many samples (memory_kib over it is the mean).
ALTER TABLE request_counts ADD COLUMN cpu_us BIGINT NOT NULL DEFAULT 0;
ALTER TABLE request_counts ADD COLUMN cpu_wall_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE request_counts ADD COLUMN memory_kib BIGINT NOT NULL DEFAULT 0;
ALTER TABLE request_counts ADD COLUMN memory_samples BIGINT NOT NULL DEFAULT 0;

-- Latency histograms beside the counts: how many invocations of an
-- instance, in a minute, on a node, took a time within bucket `bucket`'s
-- bounds (fixed and log-spaced, see hangar_store::LatencyHistogram; bucket
-- k ends at 0.25 ms × 2^(k/2)). Only buckets that counted something have a
-- row, so a minute costs a row per distinct latency range, not one per
-- bucket; counts add up across flushes and nodes, and percentiles come
-- from the merged buckets of any set of nodes and minutes.
CREATE TABLE latency_buckets (
    instance_id TEXT NOT NULL,
    at_minute BIGINT NOT NULL,
    node_id TEXT NOT NULL,
    bucket BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    PRIMARY KEY (instance_id, at_minute, node_id, bucket)
);
CREATE INDEX latency_buckets_minute ON latency_buckets (at_minute);
