-- Path-style agent URLs (`<cloud base URL>/agents/<name>`): a cloud may have
-- an origin of its own for them (NULL: the server's public URL), copied onto
-- each agent made on it, and an agent's URL key (that origin's authority, or
-- nothing, then '/' and its name) is unique among live agents, so a request's
-- host and path lead to one agent.
ALTER TABLE clouds ADD COLUMN base_url TEXT;
ALTER TABLE agents ADD COLUMN url_base TEXT;
ALTER TABLE agents ADD COLUMN url_key TEXT;
-- Agents made before this had names unique only within their cloud: the
-- oldest of each name takes the URL; the others keep their host-style URL
-- only until renamed.
UPDATE agents SET url_key = '/' || name
WHERE deleted_at IS NULL AND NOT EXISTS (
    SELECT 1 FROM agents older
    WHERE older.deleted_at IS NULL AND older.name = agents.name
      AND (older.created_at < agents.created_at
           OR (older.created_at = agents.created_at AND older.id < agents.id)));
CREATE UNIQUE INDEX agents_url_key ON agents (url_key) WHERE deleted_at IS NULL;
