-- One schema for SQLite and PostgreSQL: portable types only (TEXT, BIGINT), times
-- as Unix milliseconds, flags as 0/1, nested objects as JSON text. Deleted agents
-- and instances keep a tombstone (deleted_at) until the controller has removed
-- their replicas; partial unique indexes free their names at once.

CREATE TABLE organizations (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    max_instances BIGINT NOT NULL,
    instance_count BIGINT NOT NULL DEFAULT 0,
    is_operator BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    email TEXT NOT NULL,
    name TEXT,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX users_org_email ON users (organization_id, email);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    user_id TEXT NOT NULL REFERENCES users (id),
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at BIGINT
);
CREATE INDEX api_keys_org ON api_keys (organization_id, id);

CREATE TABLE clouds (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    name TEXT NOT NULL,
    driver TEXT NOT NULL,
    config TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX clouds_org_name ON clouds (organization_id, name);

CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    user_id TEXT NOT NULL,
    cloud_id TEXT NOT NULL REFERENCES clouds (id),
    name TEXT NOT NULL,
    resource_name TEXT NOT NULL,
    display_name TEXT,
    version TEXT,
    runtime TEXT NOT NULL,
    resources TEXT NOT NULL,
    scaling TEXT NOT NULL,
    config TEXT NOT NULL,
    environment TEXT NOT NULL,
    source TEXT NOT NULL,
    metadata TEXT NOT NULL,
    desired_state TEXT NOT NULL,
    latest_build_id TEXT,
    default_instance_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deployed_at BIGINT,
    deleted_at BIGINT
);
CREATE UNIQUE INDEX agents_cloud_name ON agents (organization_id, cloud_id, name) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX agents_resource_name ON agents (resource_name) WHERE deleted_at IS NULL;
CREATE INDEX agents_org ON agents (organization_id, id);

CREATE TABLE builds (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    agent_id TEXT NOT NULL REFERENCES agents (id),
    status TEXT NOT NULL,
    reason TEXT,
    source TEXT NOT NULL,
    artifact TEXT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT
);
CREATE INDEX builds_agent ON builds (agent_id, id);
CREATE INDEX builds_status ON builds (status, id);

CREATE TABLE build_logs (
    build_id TEXT NOT NULL REFERENCES builds (id),
    seq BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    stream TEXT NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (build_id, seq)
);

CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    agent_id TEXT NOT NULL REFERENCES agents (id),
    build_id TEXT NOT NULL REFERENCES builds (id),
    user_id TEXT NOT NULL,
    name TEXT NOT NULL,
    resource_name TEXT NOT NULL,
    config TEXT NOT NULL,
    resources TEXT NOT NULL,
    env_vars TEXT NOT NULL,
    replicas BIGINT NOT NULL,
    desired_state TEXT NOT NULL,
    status TEXT NOT NULL,
    status_reason TEXT,
    ready_replicas BIGINT NOT NULL DEFAULT 0,
    restart_count BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted_at BIGINT
);
CREATE UNIQUE INDEX instances_org_name ON instances (organization_id, name) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX instances_resource_name ON instances (resource_name) WHERE deleted_at IS NULL;
CREATE INDEX instances_org ON instances (organization_id, id);
CREATE INDEX instances_agent ON instances (agent_id, id);

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    agent_id TEXT NOT NULL REFERENCES agents (id),
    status TEXT NOT NULL,
    input TEXT NOT NULL,
    output TEXT,
    error TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    idempotency_key TEXT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT
);
CREATE INDEX jobs_status ON jobs (status, id);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (organization_id, agent_id, idempotency_key);

CREATE TABLE uploads (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    size_bytes BIGINT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    completed_at BIGINT
);

CREATE TABLE secrets (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    name TEXT NOT NULL,
    sealed_value TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX secrets_org_name ON secrets (organization_id, name);

CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    description TEXT,
    enabled BIGINT NOT NULL,
    sealed_secret TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX webhooks_org ON webhooks (organization_id, id);

-- At most one operator organization: two servers bootstrapping one PostgreSQL at
-- once cannot both create it.
CREATE UNIQUE INDEX organizations_operator ON organizations (is_operator) WHERE is_operator = 1;
