-- How a deleted or stopped instance's replicas go: 1 = SIGKILL now
-- (`DELETE /instances/{id}?force=true`), 0 = SIGTERM and a grace period.
ALTER TABLE instances ADD COLUMN force_stop BIGINT NOT NULL DEFAULT 0;
