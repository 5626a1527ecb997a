-- The durable job queue. A job is `pending` until a server claims it: the claim
-- sets `status = 'running'`, a lease (`lease_owner`, `lease_until`) and bumps
-- `attempts`. The owner renews the lease while the agent works; a lease that
-- runs out (its server died) puts the job back to `pending`. A retried job
-- waits until `not_before`. Sync invocations made with an Idempotency-Key are
-- recorded here too (`sync = 1`), so a repeat is answered from the row.

ALTER TABLE jobs ADD COLUMN headers TEXT NOT NULL DEFAULT '{}';
ALTER TABLE jobs ADD COLUMN timeout_ms BIGINT NOT NULL DEFAULT 300000;
ALTER TABLE jobs ADD COLUMN sync BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN usage TEXT;
ALTER TABLE jobs ADD COLUMN instance_id TEXT;
ALTER TABLE jobs ADD COLUMN replica_id TEXT;
ALTER TABLE jobs ADD COLUMN latency_ms BIGINT;
ALTER TABLE jobs ADD COLUMN not_before BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_until BIGINT;

-- Claiming reads the oldest pending jobs: a range of this index, holding only
-- pending rows however many finished jobs the table keeps.
CREATE INDEX jobs_pending ON jobs (id, agent_id, not_before) WHERE status = 'pending';
-- The per-agent concurrency cap counts an agent's running jobs; lease renewal
-- and reclaiming look running jobs up by owner and by expiry.
CREATE INDEX jobs_running_agent ON jobs (agent_id) WHERE status = 'running';
CREATE INDEX jobs_running_owner ON jobs (lease_owner) WHERE status = 'running';
CREATE INDEX jobs_running_lease ON jobs (lease_until) WHERE status = 'running';
-- Replaced by the partial indexes above.
DROP INDEX jobs_status;
