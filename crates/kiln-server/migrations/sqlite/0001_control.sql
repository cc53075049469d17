-- The control database on SQLite, version 1.
CREATE TABLE IF NOT EXISTS tenants (
    name       TEXT PRIMARY KEY,
    plan       TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    hash       TEXT PRIMARY KEY,
    tenant     TEXT,
    operator   INTEGER NOT NULL,
    worker     INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS builds (
    n                INTEGER PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    tenant           TEXT NOT NULL,
    priority         TEXT NOT NULL,
    state            TEXT NOT NULL,
    failure          TEXT,
    reason           TEXT,
    retries          INTEGER NOT NULL DEFAULT 0,
    attempt          INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    timeout_secs     INTEGER NOT NULL,
    pipeline         TEXT NOT NULL,
    workflow         TEXT NOT NULL,
    git_ref          TEXT NOT NULL,
    source_tar       TEXT,
    source_tree      TEXT,
    idem_key         TEXT,
    body_hash        TEXT NOT NULL,
    worker           TEXT,
    created_at       TEXT NOT NULL,
    enqueued_ms      INTEGER NOT NULL,
    started_ms       INTEGER,
    finished_ms      INTEGER,
    UNIQUE (tenant, idem_key)
);
CREATE INDEX IF NOT EXISTS builds_by_tenant ON builds (tenant, n);
CREATE INDEX IF NOT EXISTS builds_by_state ON builds (state, n);
CREATE TABLE IF NOT EXISTS transitions (
    n        INTEGER PRIMARY KEY,
    build_id TEXT NOT NULL,
    at_ms    INTEGER NOT NULL,
    ts       TEXT NOT NULL,
    state    TEXT NOT NULL,
    event    TEXT NOT NULL,
    detail   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_by_build ON transitions (build_id, n);
CREATE TABLE IF NOT EXISTS attempts (
    build_id   TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    engine_id  TEXT NOT NULL,
    log_base   INTEGER NOT NULL,
    worker     TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    PRIMARY KEY (build_id, attempt)
);
CREATE TABLE IF NOT EXISTS secrets (
    tenant     TEXT NOT NULL,
    name       TEXT NOT NULL,
    phases     TEXT NOT NULL,
    nonce      BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (tenant, name)
);
CREATE TABLE IF NOT EXISTS usage (
    build_id          TEXT PRIMARY KEY,
    tenant            TEXT NOT NULL,
    status            TEXT NOT NULL,
    queue_wait_seconds REAL NOT NULL,
    wall_seconds      REAL NOT NULL,
    cpu_seconds       REAL NOT NULL,
    peak_memory_bytes INTEGER NOT NULL,
    egress_bytes      INTEGER NOT NULL,
    artifact_bytes    INTEGER NOT NULL,
    cache_read_bytes  INTEGER NOT NULL,
    cache_write_bytes INTEGER NOT NULL,
    log_bytes         INTEGER NOT NULL,
    attempts          INTEGER NOT NULL,
    finished_at       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_by_tenant ON usage (tenant);
CREATE TABLE IF NOT EXISTS notifications (
    build_id  TEXT PRIMARY KEY,
    url       TEXT NOT NULL,
    delivered INTEGER,
    attempts  TEXT,
    at        TEXT
);
CREATE TABLE IF NOT EXISTS audit (
    n        INTEGER PRIMARY KEY AUTOINCREMENT,
    ts       TEXT NOT NULL,
    tenant   TEXT,
    build_id TEXT,
    kind     TEXT NOT NULL,
    actor    TEXT NOT NULL,
    detail   TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_append_only_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_append_only_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
