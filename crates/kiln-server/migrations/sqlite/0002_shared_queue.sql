-- Version 2: the queue is decided in the database, so that servers sharing
-- it (replicas on PostgreSQL) never decide the same claim twice.
--   lease_until_ms      the holder's lease ends then unless renewed (NULL:
--                       not held, or held under version 1: taken back at once)
--   server              the server whose in-process worker holds the build
--                       (NULL: a remote worker holds it)
--   attempt_started_ms  when the current attempt started running (timeouts)
--   timed_out           the current attempt ran past its timeout (told once)
--   tenant_turns        the order in which tenants were last served
ALTER TABLE builds ADD COLUMN lease_until_ms INTEGER;
ALTER TABLE builds ADD COLUMN server TEXT;
ALTER TABLE builds ADD COLUMN attempt_started_ms INTEGER;
ALTER TABLE builds ADD COLUMN timed_out INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS builds_by_lease ON builds (state, lease_until_ms);
CREATE INDEX IF NOT EXISTS builds_by_tenant_state ON builds (tenant, state);
CREATE TABLE IF NOT EXISTS tenant_turns (
    tenant TEXT PRIMARY KEY,
    turn   INTEGER NOT NULL
);
