-- An organization's jobs, newest first (`GET /v1/jobs`, optionally of one
-- agent or in one status): read by organization and ID instead of a scan
-- of every organization's jobs.
CREATE INDEX jobs_organization ON jobs (organization_id, id);
