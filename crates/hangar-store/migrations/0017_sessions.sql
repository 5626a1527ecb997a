-- Sticky sessions: a caller's session ID (`options.session_id` on invoke,
-- `X-Hangar-Session` on instance URLs) and the replica that serves it, so
-- that every node reads the same answer and a restarted server keeps its
-- sessions. IDs are the caller's, unique within an organization; a row
-- lives while requests keep coming (expires_at = last_active_at + the
-- agent's idle timeout) and is deleted when the session ends. Times are
-- milliseconds since the epoch. Additive: a server of the previous
-- version never reads it.
CREATE TABLE sessions (
    organization_id TEXT NOT NULL,
    id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    replica_id TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    last_active_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    replica_changes BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (organization_id, id)
);
CREATE INDEX sessions_agent ON sessions (agent_id, organization_id);
CREATE INDEX sessions_instance ON sessions (instance_id);
CREATE INDEX sessions_expiry ON sessions (expires_at);
