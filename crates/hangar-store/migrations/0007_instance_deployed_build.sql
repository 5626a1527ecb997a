-- The build whose deployment was last announced (`agent.deployed`) for an
-- agent's default instance: the controller announces a build once, when the
-- instance first runs on it, and not again on restarts, re-adoptions after a
-- restart of the server, or from a second server on the same database.
ALTER TABLE instances ADD COLUMN deployed_build_id TEXT;
-- Instances already running on their build were deployed before there were
-- events: nothing to announce.
UPDATE instances SET deployed_build_id = build_id WHERE status = 'running';
