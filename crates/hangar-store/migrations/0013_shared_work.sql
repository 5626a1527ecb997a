-- Work shared by the servers on one database.
--
-- A build's claim names its builder (`<node>/<boot>`) and counts an attempt:
-- only the builder holding a build beats its heart and records its end, and
-- a build whose builder fell silent (its server was killed) is queued again
-- for any server to build, up to a few attempts, instead of failing.
ALTER TABLE builds ADD COLUMN builder TEXT;
ALTER TABLE builds ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;

-- Invocations per instance, minute (at_minute: minutes since the epoch)
-- and node: each node adds what its gateway answered every few seconds,
-- and readers sum the rows of every node, so request figures are the
-- cluster's, not a server's. latency_us sums the latencies, so means merge
-- exactly across nodes.
CREATE TABLE request_counts (
    instance_id TEXT NOT NULL,
    at_minute BIGINT NOT NULL,
    node_id TEXT NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    latency_us BIGINT NOT NULL,
    PRIMARY KEY (instance_id, at_minute, node_id)
);
CREATE INDEX request_counts_minute ON request_counts (at_minute);
