-- The control database on PostgreSQL, version 1: the same tables as on
-- SQLite (migrations/sqlite/0001_control.sql), in PostgreSQL's types.
CREATE TABLE tenants (
    name       TEXT PRIMARY KEY,
    plan       TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE tokens (
    hash       TEXT PRIMARY KEY,
    tenant     TEXT,
    operator   BOOLEAN NOT NULL,
    worker     BOOLEAN NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE builds (
    n                BIGSERIAL PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    tenant           TEXT NOT NULL,
    priority         TEXT NOT NULL,
    state            TEXT NOT NULL,
    failure          TEXT,
    reason           TEXT,
    retries          BIGINT NOT NULL DEFAULT 0,
    attempt          BIGINT NOT NULL DEFAULT 0,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    timeout_secs     BIGINT NOT NULL,
    pipeline         TEXT NOT NULL,
    workflow         TEXT NOT NULL,
    git_ref          TEXT NOT NULL,
    source_tar       TEXT,
    source_tree      TEXT,
    idem_key         TEXT,
    body_hash        TEXT NOT NULL,
    worker           TEXT,
    created_at       TEXT NOT NULL,
    enqueued_ms      BIGINT NOT NULL,
    started_ms       BIGINT,
    finished_ms      BIGINT,
    UNIQUE (tenant, idem_key)
);
CREATE INDEX builds_by_tenant ON builds (tenant, n);
CREATE INDEX builds_by_state ON builds (state, n);
CREATE TABLE transitions (
    n        BIGSERIAL PRIMARY KEY,
    build_id TEXT NOT NULL,
    at_ms    BIGINT NOT NULL,
    ts       TEXT NOT NULL,
    state    TEXT NOT NULL,
    event    TEXT NOT NULL,
    detail   TEXT NOT NULL
);
CREATE INDEX transitions_by_build ON transitions (build_id, n);
CREATE TABLE attempts (
    build_id   TEXT NOT NULL,
    attempt    BIGINT NOT NULL,
    engine_id  TEXT NOT NULL,
    log_base   BIGINT NOT NULL,
    worker     TEXT NOT NULL,
    started_ms BIGINT NOT NULL,
    PRIMARY KEY (build_id, attempt)
);
CREATE TABLE secrets (
    tenant     TEXT NOT NULL,
    name       TEXT NOT NULL,
    phases     TEXT NOT NULL,
    nonce      BYTEA NOT NULL,
    ciphertext BYTEA NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (tenant, name)
);
CREATE TABLE usage (
    build_id           TEXT PRIMARY KEY,
    tenant             TEXT NOT NULL,
    status             TEXT NOT NULL,
    queue_wait_seconds DOUBLE PRECISION NOT NULL,
    wall_seconds       DOUBLE PRECISION NOT NULL,
    cpu_seconds        DOUBLE PRECISION NOT NULL,
    peak_memory_bytes  BIGINT NOT NULL,
    egress_bytes       BIGINT NOT NULL,
    artifact_bytes     BIGINT NOT NULL,
    cache_read_bytes   BIGINT NOT NULL,
    cache_write_bytes  BIGINT NOT NULL,
    log_bytes          BIGINT NOT NULL,
    attempts           BIGINT NOT NULL,
    finished_at        TEXT NOT NULL
);
CREATE INDEX usage_by_tenant ON usage (tenant);
CREATE TABLE notifications (
    build_id  TEXT PRIMARY KEY,
    url       TEXT NOT NULL,
    delivered BOOLEAN,
    attempts  TEXT,
    at        TEXT
);
CREATE TABLE audit (
    n        BIGSERIAL PRIMARY KEY,
    ts       TEXT NOT NULL,
    tenant   TEXT,
    build_id TEXT,
    kind     TEXT NOT NULL,
    actor    TEXT NOT NULL,
    detail   TEXT NOT NULL
);
CREATE FUNCTION kiln_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END;
$$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION kiln_audit_append_only();
CREATE TRIGGER audit_append_only_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION kiln_audit_append_only();
