-- Version 2: the queue is decided in the database, so that replicas sharing
-- it never decide the same claim twice (see migrations/sqlite/0002).
ALTER TABLE builds ADD COLUMN lease_until_ms BIGINT;
ALTER TABLE builds ADD COLUMN server TEXT;
ALTER TABLE builds ADD COLUMN attempt_started_ms BIGINT;
ALTER TABLE builds ADD COLUMN timed_out BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX builds_by_lease ON builds (state, lease_until_ms);
CREATE INDEX builds_by_tenant_state ON builds (tenant, state);
CREATE TABLE tenant_turns (
    tenant TEXT PRIMARY KEY,
    turn   BIGINT NOT NULL
);
CREATE SEQUENCE kiln_turns;
