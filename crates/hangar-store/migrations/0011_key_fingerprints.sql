-- What every server on this database must agree on without storing it: a
-- fingerprint (HMAC-SHA256 of a fixed label under the key, never the key)
-- of each shared key, by name. The first server to start writes it; a server
-- whose key gives another fingerprint refuses to start, because the secrets
-- sealed by the others would be unreadable to it and its stream tokens and
-- upload URLs worthless to them.
CREATE TABLE key_fingerprints (
    name TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);
