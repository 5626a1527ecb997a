-- The servers (nodes) on this database: each keeps its row fresh with a
-- heartbeat, so any of them can tell which others are alive and what they
-- run. A node that stops cleanly says so (stopped_at); one that stops
-- beating without saying so is taken for dead after the configured time.
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    version TEXT NOT NULL,
    cpu_millis BIGINT NOT NULL,
    memory_bytes BIGINT NOT NULL,
    replicas BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    stopped_at BIGINT
);
