-- A node being drained: set by an operator (`POST /v1/nodes/{id}/drain`),
-- read back by the node with its heartbeat. A draining node takes no
-- instance and hands those it runs to the other nodes; cleared to undrain.
-- Additive (a nullable column): a server of the previous version ignores it.
ALTER TABLE nodes ADD COLUMN draining_at BIGINT;
