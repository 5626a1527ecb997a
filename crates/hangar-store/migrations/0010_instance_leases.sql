-- Which node runs each instance: a lease per instance, held by one node
-- (node_id) until expires_at (the holder's clock, in ms, like heartbeats),
-- renewed by the holder well before then. generation is the fencing token:
-- it grows by one on every acquisition, so a holder that lost the lease
-- and renews with its old generation learns so. A released lease keeps its
-- row (node_id NULL), so the generation keeps growing across holders; the
-- row goes with the instance once it is reaped.
CREATE TABLE instance_leases (
    instance_id TEXT PRIMARY KEY,
    node_id TEXT,
    generation BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX instance_leases_node ON instance_leases (node_id);
