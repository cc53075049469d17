//! Every statement of the control database, on SQLite and on a real
//! PostgreSQL cluster the test starts itself (`initdb` in a scratch
//! directory, a loopback port): the two backends must answer alike.

use kiln_server::db::{
    AttemptRow, ClaimRequest, ControlDb, Expect, NewBuild, Principal, QueueCounts, UsageRow,
};
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
        submitted_by: Some(format!("0123456789abcdef (tenant {tenant})")),
    }
}

fn claim_request(worker: &str, now_ms: i64) -> ClaimRequest {
    ClaimRequest {
        worker: worker.into(),
        server: Some("server-a".into()),
        now_ms,
        lease_until_ms: now_ms + 30_000,
        caps: vec![("free".into(), 1), ("team".into(), 4)],
        default_cap: 1,
    }
}

/// The build must still be in `state` at `attempt`.
fn at(state: &str, attempt: i64) -> Expect<'_> {
    Expect { state, attempt, lease_ended_by: None }
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
    assert_eq!(b1.submitted_by.as_deref(), Some("0123456789abcdef (tenant acme)"));
    assert_eq!(c.build_by_n(n2).unwrap().unwrap().id, "b2");
    assert_eq!(
        c.builds(None, None, 10).unwrap().iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
        ["b2", "b1"]
    );
    assert_eq!(c.builds(Some("acme"), None, 10).unwrap().len(), 1);
    assert_eq!(c.builds(None, Some("running"), 10).unwrap().len(), 0);

    // Claims, transitions and attempts.
    let claim = |worker: &str, at: i64| {
        let req = claim_request(worker, at);
        c.claim(&req, std::sync::Arc::new(|prev: &AttemptRow| prev.log_base + 7)).unwrap()
    };
    let (b, a1) = claim("w1", 2000).expect("b1 is claimable");
    assert_eq!(
        (b.id.as_str(), b.state.as_str(), b.lease_until_ms),
        ("b1", "provisioning", Some(2000 + 30_000))
    );
    assert_eq!((a1.attempt, a1.engine_id.as_str(), a1.log_base), (1, "b1", 0));
    assert_eq!(b.server.as_deref(), Some("server-a"));
    let (b2, _) = claim("w9", 2001).expect("b2 is claimable");
    assert_eq!(b2.id, "b2");
    assert!(claim("w9", 2002).is_none(), "beta is on the free plan: one build at a time");
    assert!(!c
        .record_transition("b1", at("queued", 1), "running", None, None, 0, "start", "", 2500)
        .unwrap());
    assert!(!c
        .record_transition("b1", at("provisioning", 2), "running", None, None, 0, "start", "", 2500)
        .unwrap());
    assert!(c
        .record_transition("b1", at("provisioning", 1), "running", None, None, 0, "start", "", 2500)
        .unwrap());
    assert_eq!(c.build("b1").unwrap().unwrap().attempt_started_ms, Some(2500));
    // Leases: renewed only by their holder; taken back only once run out.
    assert!(c.renew_lease("b1", "w1", 1, 40_000).unwrap());
    assert!(!c.renew_lease("b1", "w2", 1, 90_000).unwrap(), "not its lease");
    assert!(!c.renew_lease("b1", "w1", 2, 90_000).unwrap(), "not its attempt");
    assert!(c.expired_leases(39_000).unwrap().iter().all(|b| b.id != "b1"));
    assert_eq!(
        c.expired_leases(40_001).unwrap().iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
        ["b1", "b2"]
    );
    let not_yet = Expect { state: "running", attempt: 1, lease_ended_by: Some(39_000) };
    assert!(!c.record_transition("b1", not_yet, "queued", None, None, 1, "lease-expired", "", 3000).unwrap());
    // Timeouts are marked once.
    assert!(c.mark_timed_out(2500 + 600_000).unwrap().is_empty());
    assert_eq!(c.mark_timed_out(2501 + 600_000).unwrap(), vec![("b1".to_string(), "acme".to_string(), 600)]);
    assert!(c.mark_timed_out(2502 + 600_000).unwrap().is_empty());
    assert!(c.build("b1").unwrap().unwrap().timed_out);
    assert_eq!(c.queue_counts().unwrap(), QueueCounts { queued: 0, held: 2, held_remote: 0 });
    let ended = Expect { state: "running", attempt: 1, lease_ended_by: Some(40_001) };
    assert!(c
        .record_transition("b1", ended, "queued", None, None, 1, "infra-failure", "disk", 3000)
        .unwrap());
    let b1 = c.build("b1").unwrap().unwrap();
    assert_eq!((b1.worker, b1.lease_until_ms, b1.server, b1.timed_out), (None, None, None, false));
    assert_eq!(c.queue_counts().unwrap(), QueueCounts { queued: 1, held: 1, held_remote: 0 });
    let (_, a2) = claim("w2", 3500).expect("the retry is claimable");
    assert_eq!((a2.attempt, a2.engine_id.as_str(), a2.log_base), (2, "b1.2", 7));
    assert!(c
        .record_transition(
            "b1",
            at("provisioning", 2),
            "failed",
            Some("user"),
            Some("exit 1"),
            1,
            "finish",
            "",
            4000
        )
        .unwrap());
    assert!(
        !c.record_transition(
            "b1",
            at("provisioning", 2),
            "failed",
            Some("user"),
            Some("again"),
            1,
            "finish",
            "",
            4001
        )
        .unwrap(),
        "only the first decision applies"
    );
    let b1 = c.build("b1").unwrap().unwrap();
    assert_eq!(b1.state, "failed");
    assert_eq!(b1.failure.as_deref(), Some("user"));
    assert_eq!(b1.reason.as_deref(), Some("exit 1"));
    assert_eq!((b1.started_ms, b1.finished_ms, b1.retries, b1.attempt), (Some(2500), Some(4000), 1, 2));
    assert_eq!(b1.worker.as_deref(), Some("w2"));
    assert_eq!(b1.lease_until_ms, None, "a finished build holds no lease");
    let states: Vec<String> = c.transitions("b1").unwrap().into_iter().map(|t| t.state).collect();
    assert_eq!(states, ["queued", "provisioning", "running", "queued", "provisioning", "failed"]);
    assert_eq!(c.attempts("b1").unwrap().len(), 2);
    // b2 goes back to the queue for what follows.
    assert!(c
        .record_transition("b2", at("provisioning", 1), "queued", None, None, 1, "lease-expired", "", 4100)
        .unwrap());
    assert_eq!(
        c.lease_order(None).unwrap(),
        vec![
            ("b1".into(), "acme".into(), "normal".into()),
            ("b2".into(), "beta".into(), "normal".into()),
            ("b1".into(), "acme".into(), "normal".into())
        ]
    );
    assert_eq!(c.lease_order(Some("beta")).unwrap(), vec![("b2".into(), "beta".into(), "normal".into())]);
    assert_eq!(c.lease_order(Some("nobody")).unwrap(), vec![]);
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
    // A delivery is leased: one server at a time, taken over once the
    // holder's lease runs out, recorded only by whoever holds it then.
    assert!(c.claim_notification("b1", "s1", 1000, 2000).unwrap());
    assert!(!c.claim_notification("b1", "s2", 1500, 2500).unwrap(), "s1 holds it");
    assert!(!c.renew_notification("b1", "s2", 9000).unwrap(), "not s2's to renew");
    assert!(c.renew_notification("b1", "s1", 3000).unwrap());
    assert!(!c.claim_notification("b1", "s2", 2500, 3500).unwrap(), "renewed past 2500");
    assert!(c.claim_notification("b1", "s2", 3001, 4000).unwrap(), "s1's lease ran out: s2 takes over");
    assert!(!c.renew_notification("b1", "s1", 9000).unwrap(), "s1 learns it lost it");
    assert!(!c.record_delivery("b1", "s1", true, "[200]").unwrap(), "a late record of s1 changes nothing");
    assert_eq!(c.notification("b1").unwrap(), Some(("https://deploy.example/hook".into(), None, None)));
    assert!(c.record_delivery("b1", "s2", true, "[200]").unwrap());
    assert!(!c.claim_notification("b1", "s3", 9000, 9500).unwrap(), "delivered: nothing to take");
    assert!(!c.due_notifications(i64::MAX).unwrap().contains(&"b1".to_string()));
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
    assert_eq!(versions, [1, 2, 3, 4, 5]);
    raw.execute("INSERT INTO kiln_schema (version, applied_at) VALUES (99, 'later')", &[]).unwrap();
    let e = ControlDb::connect(Some(url), std::path::Path::new("/nonexistent")).unwrap_err().to_string();
    assert!(e.contains("version 99") && e.contains("newer"), "{e}");
}

/// Servers sharing a database (replicas) claim from one queue: four
/// connections claiming and finishing at once hand each build out exactly
/// once and never give a tenant more than its plan's builds at a time.
fn concurrent_claims_hand_each_build_out_once_within_plan_caps(db: &Db) {
    let c = db.open();
    c.upsert_tenant("acme", "team").unwrap();
    c.upsert_tenant("beta", "free").unwrap();
    let mut ids = Vec::new();
    for i in 0..40 {
        let tenant = if i % 3 == 0 { "beta" } else { "acme" };
        let id = format!("c{i}");
        c.insert_build(&build(&id, tenant, None)).unwrap();
        ids.push(id);
    }
    let max_held = std::sync::Mutex::new(std::collections::HashMap::<String, i64>::new());
    let claimed = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for w in 0..4 {
            let (max_held, claimed) = (&max_held, &claimed);
            s.spawn(move || {
                let c = db.open();
                let worker = format!("w{w}");
                let mut idle = 0;
                while idle < 50 {
                    let req = claim_request(&worker, 10_000);
                    let Some((b, a)) = c.claim(&req, std::sync::Arc::new(|_: &AttemptRow| 0)).unwrap() else {
                        idle += 1;
                        std::thread::sleep(std::time::Duration::from_millis(2));
                        continue;
                    };
                    idle = 0;
                    // What the tenant holds now, this claim included.
                    let held: i64 = ["provisioning", "running", "extracting"]
                        .iter()
                        .map(|st| c.builds(Some(&b.tenant), Some(st), 100).unwrap().len() as i64)
                        .sum();
                    let mut m = max_held.lock().unwrap();
                    let e = m.entry(b.tenant.clone()).or_default();
                    *e = (*e).max(held);
                    drop(m);
                    claimed.lock().unwrap().push((b.id.clone(), a.attempt));
                    assert!(c
                        .record_transition(
                            &b.id,
                            at("provisioning", 1),
                            "running",
                            None,
                            None,
                            0,
                            "start",
                            "",
                            1
                        )
                        .unwrap());
                    assert!(c
                        .record_transition(
                            &b.id,
                            at("running", 1),
                            "succeeded",
                            None,
                            None,
                            0,
                            "finish",
                            "",
                            2
                        )
                        .unwrap());
                }
            });
        }
    });
    let mut claimed = claimed.into_inner().unwrap();
    claimed.sort();
    let mut want: Vec<(String, i64)> = ids.iter().map(|i| (i.clone(), 1)).collect();
    want.sort();
    assert_eq!(claimed, want, "every build handed out exactly once");
    let m = max_held.into_inner().unwrap();
    assert!(m["acme"] <= 4 && m["beta"] <= 1, "plan caps held across connections: {m:?}");
    assert!(ids.iter().all(|i| c.build(i).unwrap().unwrap().state == "succeeded"));
}

#[test]
fn sqlite_concurrent_claims_hand_each_build_out_once_within_plan_caps() {
    concurrent_claims_hand_each_build_out_once_within_plan_caps(&Db::sqlite());
}

#[test]
fn postgres_concurrent_claims_hand_each_build_out_once_within_plan_caps() {
    concurrent_claims_hand_each_build_out_once_within_plan_caps(&Db::postgres());
}

/// Any number of servers connect to one PostgreSQL database, and a restart
/// of PostgreSQL is survived (the next call connects again).
#[test]
fn postgres_is_shared_by_servers_and_survives_a_restart() {
    let db = Db::postgres();
    let Db::Postgres(cluster, url) = &db else { unreachable!() };
    let dir = std::path::Path::new("/nonexistent");
    let first = ControlDb::connect_server(Some(url), dir).unwrap();
    let second = ControlDb::connect_server(Some(url), dir).unwrap();
    first.upsert_tenant("acme", "free").unwrap();
    assert_eq!(second.tenants().unwrap().len(), 1, "one database, seen by both");
    cluster.stop().unwrap();
    assert!(first.tenants().is_err(), "the database is down");
    cluster.restart().unwrap();
    assert_eq!(first.tenants().unwrap().len(), 1, "connected again after the restart");
    assert_eq!(second.tenants().unwrap().len(), 1, "connected again after the restart");
}

/// Found by the `kiln serve` tests: a server and `kiln admin` opening a
/// version-1 `control.db` at once both applied migration 2, and the second
/// failed (`duplicate column name`). Each migration is now decided under
/// the write lock.
#[test]
fn bug_two_processes_migrating_control_db_at_once_collided() {
    for _ in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let barrier = std::sync::Barrier::new(6);
        std::thread::scope(|s| {
            for _ in 0..6 {
                s.spawn(|| {
                    barrier.wait();
                    ControlDb::open(dir.path()).map(|_| ()).unwrap_or_else(|e| panic!("opening: {e}"));
                });
            }
        });
    }
}
