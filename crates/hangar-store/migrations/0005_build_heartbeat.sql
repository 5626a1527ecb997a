-- A building build's builder touches heartbeat_at while it works, so a build whose
-- builder died (the process was killed mid-build) can be told apart from one still
-- running in another Hangar process on the same database, and failed instead of
-- staying `building` forever. (Numbered 0005: 0004 is taken by the jobs queue.)
ALTER TABLE builds ADD COLUMN heartbeat_at BIGINT;
CREATE INDEX builds_building ON builds (status, heartbeat_at);

