//! Every statement of the control database, on SQLite and on a real
//! PostgreSQL cluster the test starts itself (`initdb` in a scratch
//! directory, a loopback port): the two backends must answer alike.

use kiln_server::db::{ControlDb, NewBuild, Principal, UsageRow};
use kiln_server::pgcluster::LocalCluster;

/// A fresh database of each kind.
enum Db {
    Sqlite(tempfile::TempDir),
    Postgres(LocalCluster, String),
}

impl Db {
    fn sqlite() -> Db {
        Db::Sqlite(tempfile::tempdir().unwrap())
    }

    fn postgres() -> Db {
        let cluster = LocalCluster::start().unwrap_or_else(|e| panic!("the PostgreSQL test cluster: {e}"));
        let url = cluster.database("kiln").unwrap();
        Db::Postgres(cluster, url)
    }

    fn open(&self) -> ControlDb {
        match self {
            Db::Sqlite(dir) => ControlDb::open(dir.path()).unwrap(),
            Db::Postgres(_, url) => {
                ControlDb::connect(Some(url), std::path::Path::new("/nonexistent")).unwrap()
            }
        }
    }
}

fn build(id: &str, tenant: &str, key: Option<&str>) -> NewBuild {
    NewBuild {
        id: id.into(),
        tenant: tenant.into(),
        priority: "normal".into(),
        timeout_secs: 600,
        pipeline: "ci".into(),
        workflow: "jobs: {}".into(),
        git_ref: "refs/heads/main".into(),
        source_tar: None,
        source_tree: Some("sha256:ab".into()),
        idem_key: key.map(str::to_string),
        body_hash: "h".into(),
        enqueued_ms: 1000,
    }
}

fn every_statement(db: &Db) {
    let c = db.open();
    // Tenants and tokens.
    assert!(c.upsert_tenant("acme", "free").unwrap());
    assert!(!c.upsert_tenant("acme", "team").unwrap(), "the second upsert updates");
    assert_eq!(c.tenant_plan("acme").unwrap().as_deref(), Some("team"));
    assert_eq!(c.tenant_plan("nobody").unwrap(), None);
    c.upsert_tenant("beta", "free").unwrap();
    assert_eq!(c.tenants().unwrap(), vec![("acme".into(), "team".into()), ("beta".into(), "free".into())]);
    let p = Principal { tenant: Some("acme".into()), operator: false, worker: true };
    c.insert_token("hash1", &p).unwrap();
    assert_eq!(c.principal("hash1").unwrap(), Some(p));
    assert_eq!(c.principal("nope").unwrap(), None);
    assert!(c.insert_token("hash1", &Principal { tenant: None, operator: true, worker: false }).is_err());

    // Builds, in queue order, idempotency keys per tenant.
    let n1 = c.insert_build(&build("b1", "acme", Some("k1"))).unwrap();
    let n2 = c.insert_build(&build("b2", "beta", Some("k1"))).unwrap();
    assert!(n2 > n1);
    assert!(c.insert_build(&build("b3", "acme", Some("k1"))).is_err(), "a key is unique per tenant");
    assert_eq!(c.build_by_key("acme", "k1").unwrap().unwrap().id, "b1");
    let b1 = c.build("b1").unwrap().unwrap();
    assert_eq!((b1.state.as_str(), b1.n, b1.cancel_requested), ("queued", n1, false));
    assert_eq!(c.build_by_n(n2).unwrap().unwrap().id, "b2");
    assert_eq!(
        c.builds(None, None, 10).unwrap().iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
        ["b2", "b1"]
    );
    assert_eq!(c.builds(Some("acme"), None, 10).unwrap().len(), 1);
    assert_eq!(c.builds(None, Some("running"), 10).unwrap().len(), 0);

    // Transitions and attempts.
    c.record_transition("b1", "provisioning", None, None, 0, "lease", "w1", 2000).unwrap();
    let a1 = c.start_attempt("b1", "w1", 2000, 0).unwrap();
    assert_eq!((a1.attempt, a1.engine_id.as_str()), (1, "b1"));
    c.record_transition("b1", "running", None, None, 0, "start", "", 2500).unwrap();
    c.record_transition("b1", "queued", None, None, 1, "infra-failure", "disk", 3000).unwrap();
    assert_eq!(c.build("b1").unwrap().unwrap().worker, None, "a requeued build has no worker");
    let a2 = c.start_attempt("b1", "w2", 3500, 7).unwrap();
    assert_eq!((a2.attempt, a2.engine_id.as_str(), a2.log_base), (2, "b1.2", 7));
    c.record_transition("b1", "failed", Some("user"), Some("exit 1"), 1, "finish", "", 4000).unwrap();
    let b1 = c.build("b1").unwrap().unwrap();
    assert_eq!(b1.state, "failed");
    assert_eq!(b1.failure.as_deref(), Some("user"));
    assert_eq!(b1.reason.as_deref(), Some("exit 1"));
    assert_eq!((b1.started_ms, b1.finished_ms, b1.retries, b1.attempt), (Some(2500), Some(4000), 1, 2));
    assert_eq!(b1.worker.as_deref(), Some("w2"));
    let states: Vec<String> = c.transitions("b1").unwrap().into_iter().map(|t| t.state).collect();
    assert_eq!(states, ["queued", "provisioning", "running", "queued", "failed"]);
    assert_eq!(c.attempts("b1").unwrap().len(), 2);
    assert_eq!(c.lease_order(None).unwrap(), vec![("b1".into(), "acme".into(), "normal".into())]);
    assert_eq!(c.lease_order(Some("beta")).unwrap(), vec![]);
    assert_eq!(
        c.builds_in(&["queued", "failed"]).unwrap().iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
        ["b1", "b2"]
    );
    c.set_cancel_requested("b2", Some("by a user")).unwrap();
    let b2 = c.build("b2").unwrap().unwrap();
    assert!(b2.cancel_requested);
    assert_eq!(b2.reason.as_deref(), Some("by a user"));

    // Secrets (stored as given: the vault encrypts before this).
    c.put_secret("acme", "TOKEN", &["build".into(), "deploy".into()], b"nonce", &[0, 159, 255]).unwrap();
    c.put_secret("acme", "TOKEN", &["deploy".into()], b"nonce2", &[1]).unwrap();
    let s = c.secrets("acme").unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(
        (s[0].phases.clone(), s[0].nonce.clone(), s[0].ciphertext.clone()),
        (vec!["deploy".to_string()], b"nonce2".to_vec(), vec![1])
    );
    assert!(c.secrets("beta").unwrap().is_empty());
    assert!(c.delete_secret("acme", "TOKEN").unwrap());
    assert!(!c.delete_secret("acme", "TOKEN").unwrap());

    // Usage.
    let mut u = UsageRow {
        build: "b1".into(),
        tenant: "acme".into(),
        status: "failed".into(),
        queue_wait_seconds: 1.5,
        wall_seconds: 2.25,
        cpu_seconds: 0.5,
        peak_memory_bytes: 1 << 40,
        egress_bytes: 3,
        artifact_bytes: 4,
        cache_read_bytes: 5,
        cache_write_bytes: 6,
        log_bytes: 7,
        attempts: 2,
        finished_at: "2026-12-03T00:00:00.000Z".into(),
    };
    c.insert_usage(&u).unwrap();
    u.status = "succeeded".into();
    c.insert_usage(&u).unwrap();
    let got = c.usage_of("acme", "b1").unwrap().unwrap();
    assert_eq!((got.status.as_str(), got.peak_memory_bytes, got.wall_seconds), ("succeeded", 1 << 40, 2.25));
    assert_eq!(c.usage("acme").unwrap().len(), 1);
    assert_eq!(c.usage_of("beta", "b1").unwrap().map(|u| u.build), None, "tenants are apart");

    // Webhooks.
    c.set_notify("b1", "https://deploy.example/hook").unwrap();
    assert_eq!(c.notification("b1").unwrap(), Some(("https://deploy.example/hook".into(), None, None)));
    c.record_delivery("b1", true, "[200]").unwrap();
    assert_eq!(
        c.notification("b1").unwrap(),
        Some(("https://deploy.example/hook".into(), Some(true), Some("[200]".into())))
    );
    assert_eq!(c.notification("b2").unwrap(), None);

    // The audit log: ordered, per tenant, and append-only.
    c.audit(Some("acme"), Some("b1"), "admin", "kiln admin", "one").unwrap();
    c.audit(Some("beta"), None, "admin", "kiln admin", "two").unwrap();
    c.audit(None, None, "server", "kiln serve", "three").unwrap();
    let all = c.audit_events(None, 0, 10).unwrap();
    assert_eq!(all.iter().map(|a| a.detail.as_str()).collect::<Vec<_>>(), ["one", "two", "three"]);
    let acme = c.audit_events(Some("acme"), 0, 10).unwrap();
    assert_eq!(acme.len(), 1);
    assert_eq!(c.audit_events(None, all[0].seq, 1).unwrap()[0].detail, "two");
}

/// Raw SQL against the audit table must fail on both backends.
fn audit_is_append_only(db: &Db) {
    let c = db.open();
    c.audit(Some("acme"), None, "admin", "kiln admin", "kept").unwrap();
    match db {
        Db::Sqlite(dir) => {
            let raw = rusqlite::Connection::open(dir.path().join("control.db")).unwrap();
            assert!(raw.execute("UPDATE audit SET detail = 'changed'", []).is_err());
            assert!(raw.execute("DELETE FROM audit", []).is_err());
        }
        Db::Postgres(_, url) => {
            let mut raw = postgres::Client::connect(url, postgres::NoTls).unwrap();
            assert!(raw.execute("UPDATE audit SET detail = 'changed'", &[]).is_err());
            assert!(raw.execute("DELETE FROM audit", &[]).is_err());
            assert!(raw.batch_execute("TRUNCATE audit").is_err());
        }
    }
    assert_eq!(c.audit_events(None, 0, 10).unwrap()[0].detail, "kept");
}

#[test]
fn every_statement_on_sqlite() {
    every_statement(&Db::sqlite());
}

#[test]
fn every_statement_on_postgres() {
    every_statement(&Db::postgres());
}

#[test]
fn the_audit_log_is_append_only_on_sqlite() {
    audit_is_append_only(&Db::sqlite());
}

#[test]
fn the_audit_log_is_append_only_on_postgres() {
    audit_is_append_only(&Db::postgres());
}

/// The schema is migrated once, a second server finds it current, and a
/// database a newer kiln migrated is refused by name.
#[test]
fn postgres_migrations_apply_once_and_a_newer_schema_is_refused() {
    let db = Db::postgres();
    let Db::Postgres(_, url) = &db else { unreachable!() };
    drop(db.open());
    drop(db.open());
    let mut raw = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let versions: Vec<i64> = raw
        .query("SELECT version FROM kiln_schema ORDER BY version", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1]);
    raw.execute("INSERT INTO kiln_schema (version, applied_at) VALUES (99, 'later')", &[]).unwrap();
    let e = ControlDb::connect(Some(url), std::path::Path::new("/nonexistent")).unwrap_err().to_string();
    assert!(e.contains("version 99") && e.contains("newer"), "{e}");
}

/// One server runs the queue of a database: a second is refused while the
/// first holds it, and a restart of PostgreSQL is survived (the next call
/// connects again).
#[test]
fn postgres_has_one_queue_server_and_survives_a_restart() {
    let db = Db::postgres();
    let Db::Postgres(cluster, url) = &db else { unreachable!() };
    let dir = std::path::Path::new("/nonexistent");
    let first = ControlDb::connect_server(Some(url), dir).unwrap();
    let e = ControlDb::connect_server(Some(url), dir).unwrap_err().to_string();
    assert!(e.contains("another kiln serve"), "{e}");
    first.upsert_tenant("acme", "free").unwrap();
    cluster.stop().unwrap();
    assert!(first.tenants().is_err(), "the database is down");
    cluster.restart().unwrap();
    assert_eq!(first.tenants().unwrap().len(), 1, "connected again after the restart");
    drop(first);
    // The lock went with the first server's connection.
    let second = ControlDb::connect_server(Some(url), dir);
    assert!(second.is_ok(), "{:?}", second.err());
}
