-- Work shared by the servers on one database.
--
-- A build's claim names its builder (`<node>/<boot>`) and counts an attempt:
-- only the builder holding a build beats its heart and records its end, and
-- a build whose builder fell silent (its server was killed) is queued again
-- for any server to build, up to a few attempts, instead of failing.
ALTER TABLE builds ADD COLUMN builder TEXT;
ALTER TABLE builds ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;

