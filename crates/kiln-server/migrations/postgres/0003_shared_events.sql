-- Version 3: the engine events of every attempt (log lines, job and step
-- records, artifacts, cache use, audit), so that every replica keeps the
-- build records and logs of builds other replicas or their workers ran.
-- Each replica applies them, in commit order, to its own state.db.
--   xid     the writing transaction: a follower reads only rows of
--           transactions older than every one still running, ordered by
--           (xid, n), so that no row committed late is ever passed over
--   origin  the server whose in-process worker produced the event (it has
--           it already); '' for a remote worker's (every server applies it)
--   seq     a log line's position in its attempt's log
CREATE TABLE attempt_events (
    n         BIGSERIAL PRIMARY KEY,
    xid       XID8 NOT NULL DEFAULT pg_current_xact_id(),
    origin    TEXT NOT NULL,
    build_id  TEXT NOT NULL,
    attempt   BIGINT NOT NULL,
    engine_id TEXT NOT NULL,
    seq       BIGINT,
    event     TEXT NOT NULL
);
CREATE INDEX attempt_events_in_order ON attempt_events (xid, n);
CREATE INDEX attempt_events_log ON attempt_events (engine_id, seq);

-- The keys every server of the deployment must share (the secrets key, the
-- provenance signing key, the webhook key), by fingerprint: a server whose
-- keys differ is refused at start instead of failing to open secrets or
-- signing with a key nobody publishes.
CREATE TABLE deployment_keys (
    name        TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL
);
