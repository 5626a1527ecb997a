-- What the runtime controller keeps: instance logs (the stdout/stderr lines of an
-- instance's replicas), where ingestion of each replica's output stopped, and which
-- deleted instances still have replicas to remove.

-- Last seq handed out in the instance's log. Appending bumps it with one UPDATE
-- in the transaction that inserts the lines, so writers of one instance serialize
-- on its row and seqs are gapless and strictly increasing.
ALTER TABLE instances ADD COLUMN log_seq BIGINT NOT NULL DEFAULT 0;

-- Set once the controller has removed every replica of a deleted instance; until
-- then the tombstone is something the controller must look at. The partial index
-- holds only those rows, so the controller's scan stays small however many
-- instances were ever reaped.
ALTER TABLE instances ADD COLUMN reaped_at BIGINT;
CREATE INDEX instances_unreaped ON instances (id) WHERE reaped_at IS NULL;

-- seq is per instance (instances.log_seq); lines are only ever removed oldest
-- first (trim) or all at once (reap), so an instance's stored seqs are a range.
CREATE TABLE instance_logs (
    instance_id TEXT NOT NULL REFERENCES instances (id),
    seq BIGINT NOT NULL,
    replica_id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    stream TEXT NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (instance_id, seq)
);
-- For `since` reads; seq is included so finding where `since` starts in seq order
-- reads this index alone.
CREATE INDEX instance_logs_ts ON instance_logs (instance_id, ts, seq);

-- The last line number of a replica's output already stored (the replica's own
-- counter, assigned by its shim from 1), so that after a restart of the server
-- ingestion resumes where it stopped: no duplicates, no gaps.
CREATE TABLE replica_log_cursors (
    replica_id TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    seq BIGINT NOT NULL
);
CREATE INDEX replica_log_cursors_instance ON replica_log_cursors (instance_id);
