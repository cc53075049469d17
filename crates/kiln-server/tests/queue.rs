//! The queue core without sandboxes: claims, fairness, leases, timeouts of
//! reports and recovery, driven through `Core` directly. Every test runs on
//! both control databases: SQLite, and a PostgreSQL cluster it starts.

use std::sync::Arc;

use kiln_server::core::{AttemptOutcome, ManualClock};
use kiln_server::db::{now_ms, ControlDb, NewBuild};
use kiln_server::pgcluster::{test_database, LocalCluster, TestDatabase};
use kiln_server::{Core, ServerConfig};

/// A test's state dir, its database, and the server's settings.
struct Env {
    _dir: tempfile::TempDir,
    _cluster: Option<LocalCluster>,
    cfg: ServerConfig,
    /// The queue's time: moved by hand, never slept for.
    clock: Arc<ManualClock>,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new(dir.path().join("state"));
    cfg.workers = 0;
    cfg.lease_ttl_ms = 1;
    let clock = ManualClock::new();
    cfg.clock = clock.clone();
    let cluster = match test_database() {
        TestDatabase::Sqlite => None,
        TestDatabase::Postgres => {
            let c = LocalCluster::start().unwrap_or_else(|e| panic!("the PostgreSQL test cluster: {e}"));
            cfg.database = Some(c.database("kiln").unwrap());
            Some(c)
        }
    };
    Env { _dir: dir, _cluster: cluster, cfg, clock }
}

kiln_server::on_both_databases!(
    claims_follow_priority_fairness_and_plan_caps,
    expired_leases_retry_twice_then_fail_as_infrastructure,
    an_infrastructure_failure_is_retried_on_another_worker_first,
    a_restart_requeues_held_builds_and_keeps_the_queue_order,
    cancelling_a_queued_build_is_immediate_and_a_held_one_waits_for_its_worker,
);

fn tenants(cfg: &ServerConfig, list: &[(&str, &str)]) {
    let db = ControlDb::connect(cfg.database.as_deref(), &cfg.state_dir).unwrap();
    for (t, plan) in list {
        db.upsert_tenant(t, plan).unwrap();
    }
}

fn submit(core: &Core, tenant: &str, priority: &str) -> String {
    let n = NewBuild {
        id: kiln_engine::time::new_build_id() + &format!("-{tenant}-{}", now_ms() % 100_000),
        tenant: tenant.into(),
        priority: priority.into(),
        timeout_secs: 600,
        pipeline: "ci".into(),
        workflow: "jobs:\n  a:\n    steps:\n      - run: echo\n".into(),
        git_ref: String::new(),
        source_tar: None,
        source_tree: None,
        idem_key: None,
        body_hash: String::new(),
        enqueued_ms: now_ms(),
        submitted_by: Some("t0 (tenant test)".into()),
    };
    let id = n.id.clone();
    core.submit(n).unwrap().unwrap();
    id
}

fn state(core: &Core, id: &str) -> (String, Option<String>, i64) {
    let b = core.read().build(id).unwrap().unwrap();
    (b.state, b.failure, b.retries)
}

fn finish_ok(core: &Core, id: &str, attempt: i64) {
    core.started(id, attempt).unwrap();
    core.finish_attempt(
        id,
        attempt,
        AttemptOutcome::Finished { status: "succeeded".into(), egress_bytes: 0 },
    )
    .unwrap();
}

fn claims_follow_priority_fairness_and_plan_caps() {
    let env = env();
    let cfg = env.cfg.clone();
    tenants(&cfg, &[("flood", "team"), ("solo", "team"), ("free", "free")]);
    let core: Arc<Core> = Core::start(cfg).unwrap();
    let floods: Vec<String> = (0..20).map(|_| submit(&core, "flood", "normal")).collect();
    let solo = submit(&core, "solo", "normal");
    let urgent = submit(&core, "flood", "urgent");
    let free1 = submit(&core, "free", "normal");
    let free2 = submit(&core, "free", "normal");
    let mut order = Vec::new();
    while let Some(c) = core.try_claim("w", false).unwrap() {
        order.push(c.build.id.clone());
        finish_ok(&core, &c.build.id, c.attempt.attempt);
    }
    assert_eq!(order.len(), 24);
    assert_eq!(order[0], urgent);
    let pos = |id: &str| order.iter().position(|o| o == id).unwrap();
    assert!(pos(&solo) <= 3, "{order:?}");
    assert!(pos(&free1) <= 3, "{order:?}");
    let flood_order: Vec<&String> = order.iter().filter(|o| floods.contains(o)).collect();
    assert_eq!(flood_order, floods.iter().collect::<Vec<_>>());
    // The free plan: one at a time. While free1 is held, free2 is not handed out.
    let a = submit(&core, "free", "normal");
    let b = submit(&core, "free", "normal");
    let first = core.try_claim("w", false).unwrap().unwrap();
    assert_eq!(first.build.id, a);
    assert!(core.try_claim("w", false).unwrap().is_none(), "the free plan allows one build at a time");
    finish_ok(&core, &a, first.attempt.attempt);
    assert_eq!(core.try_claim("w", false).unwrap().unwrap().build.id, b);
    let _ = free2;
}

fn expired_leases_retry_twice_then_fail_as_infrastructure() {
    let env = env();
    let cfg = env.cfg.clone();
    tenants(&cfg, &[("t", "team")]);
    let core = Core::start(cfg).unwrap();
    let id = submit(&core, "t", "normal");
    for round in 0..3 {
        let c = core.try_claim("remote:w", true).unwrap().expect("claimable");
        assert_eq!(c.attempt.attempt, round + 1);
        core.started(&id, c.attempt.attempt).unwrap();
        // The lease is 1 ms; the worker says nothing for 5.
        env.clock.advance(5);
        core.reap().unwrap();
        // A late report of the lost attempt changes nothing.
        core.finish_attempt(
            &id,
            c.attempt.attempt,
            AttemptOutcome::Finished { status: "succeeded".into(), egress_bytes: 0 },
        )
        .unwrap();
    }
    assert_eq!(state(&core, &id), ("failed".into(), Some("infrastructure".into()), 2));
    let transitions = core.read().transitions(&id).unwrap();
    let events: Vec<&str> = transitions.iter().map(|t| t.event.as_str()).collect();
    assert_eq!(events.iter().filter(|e| **e == "lease-expired").count(), 3, "{events:?}");
}

fn an_infrastructure_failure_is_retried_on_another_worker_first() {
    let env = env();
    let cfg = env.cfg.clone();
    tenants(&cfg, &[("t", "team")]);
    let core = Core::start(cfg).unwrap();
    let id = submit(&core, "t", "normal");
    let c = core.try_claim("remote:sick", true).unwrap().expect("claimable");
    core.finish_attempt(&id, c.attempt.attempt, AttemptOutcome::Infra("No space left on device".into()))
        .unwrap();
    assert_eq!(state(&core, &id).0, "queued");
    // The worker that failed it does not get it straight back...
    assert!(core.try_claim("remote:sick", true).unwrap().is_none());
    env.clock.advance(kiln_server::db::RETRY_ELSEWHERE_MS - 1);
    assert!(core.try_claim("remote:sick", true).unwrap().is_none());
    // ...another does.
    let other = core.try_claim("remote:well", true).unwrap().expect("another worker takes the retry");
    assert_eq!((other.build.id.as_str(), other.attempt.attempt), (id.as_str(), 2));
    core.finish_attempt(&id, 2, AttemptOutcome::Infra("the runtime is gone".into())).unwrap();
    // Once the wait is over, the first worker may take it again (it may be
    // the only one): here "well" failed it last, so "sick" gets it now.
    let again = core.try_claim("remote:sick", true).unwrap().expect("the other worker may retry it");
    assert_eq!(again.attempt.attempt, 3);
    core.finish_attempt(&id, 3, AttemptOutcome::Finished { status: "succeeded".into(), egress_bytes: 0 })
        .unwrap();
    assert_eq!(state(&core, &id).0, "succeeded");
    // A build the only worker failed waits RETRY_ELSEWHERE_MS, then runs there.
    let lone = submit(&core, "t", "normal");
    let c = core.try_claim("remote:sick", true).unwrap().expect("claimable");
    core.finish_attempt(&lone, c.attempt.attempt, AttemptOutcome::Infra("disk full".into())).unwrap();
    assert!(core.try_claim("remote:sick", true).unwrap().is_none());
    env.clock.advance(kiln_server::db::RETRY_ELSEWHERE_MS);
    assert_eq!(core.try_claim("remote:sick", true).unwrap().expect("after the wait").build.id, lone);
}

fn a_restart_requeues_held_builds_and_keeps_the_queue_order() {
    let env = env();
    let cfg = env.cfg.clone();
    tenants(&cfg, &[("t", "team")]);
    let (held, queued) = {
        let core = Core::start(cfg.clone()).unwrap();
        let held = submit(&core, "t", "normal");
        let queued: Vec<String> = (0..3).map(|_| submit(&core, "t", "normal")).collect();
        let c = core.try_claim("w", false).unwrap().unwrap();
        core.started(&held, c.attempt.attempt).unwrap();
        (held, queued)
        // Dropped without any shutdown: as after kill -9.
    };
    let core = Core::start(cfg).unwrap();
    assert_eq!(state(&core, &held), ("queued".into(), None, 1));
    let mut order = Vec::new();
    while let Some(c) = core.try_claim("w", false).unwrap() {
        order.push(c.build.id.clone());
        finish_ok(&core, &c.build.id, c.attempt.attempt);
    }
    let mut want = vec![held.clone()];
    want.extend(queued);
    assert_eq!(order, want, "the interrupted build goes first, the rest in order");
    assert_eq!(state(&core, &held), ("succeeded".into(), None, 1));
    assert_eq!(core.read().attempts(&held).unwrap().len(), 2);
}

fn cancelling_a_queued_build_is_immediate_and_a_held_one_waits_for_its_worker() {
    let env = env();
    let cfg = env.cfg.clone();
    tenants(&cfg, &[("t", "team")]);
    let core = Core::start(cfg).unwrap();
    let running = submit(&core, "t", "normal");
    let queued = submit(&core, "t", "normal");
    let c = core.try_claim("w", false).unwrap().unwrap();
    core.started(&running, c.attempt.attempt).unwrap();
    core.cancel(&queued, "test").unwrap();
    assert_eq!(state(&core, &queued).0, "cancelled");
    core.cancel(&running, "test").unwrap();
    assert_eq!(state(&core, &running).0, "running", "until the worker stops it");
    core.finish_attempt(
        &running,
        1,
        AttemptOutcome::Finished { status: "cancelled".into(), egress_bytes: 0 },
    )
    .unwrap();
    assert_eq!(state(&core, &running).0, "cancelled");
    assert!(core.try_claim("w", false).unwrap().is_none());
}

/// Two servers (replicas: each its own state dir) on one PostgreSQL
/// database. A server "dies" by being dropped without any shutdown.
struct Replicas {
    _dirs: [tempfile::TempDir; 2],
    _cluster: LocalCluster,
    cfgs: [ServerConfig; 2],
    clock: Arc<ManualClock>,
}

fn replicas() -> Replicas {
    let cluster = LocalCluster::start().unwrap_or_else(|e| panic!("the PostgreSQL test cluster: {e}"));
    let url = cluster.database("kiln").unwrap();
    let clock = ManualClock::new();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let cfgs = [0, 1].map(|i| {
        let mut cfg = ServerConfig::new(dirs[i].path().join("state"));
        cfg.workers = 0;
        cfg.lease_ttl_ms = 1000;
        cfg.clock = clock.clone();
        cfg.database = Some(url.clone());
        cfg
    });
    Replicas { _dirs: dirs, _cluster: cluster, cfgs, clock }
}

impl Replicas {
    /// Starts replica 0, then replica 1 with replica 0's keys.
    fn start(&self) -> (Arc<Core>, Arc<Core>) {
        let a = Core::start(self.cfgs[0].clone()).unwrap();
        kiln_server::replicate::copy_shared_keys(&self.cfgs[0].state_dir, &self.cfgs[1].state_dir).unwrap();
        (a, Core::start(self.cfgs[1].clone()).unwrap())
    }
}

/// A server whose keys are not the deployment's is refused at start,
/// naming the file to copy: it could open no secret the others stored.
#[test]
fn a_replica_with_other_keys_is_refused() {
    let r = replicas();
    let _a = Core::start(r.cfgs[0].clone()).unwrap();
    let e = Core::start(r.cfgs[1].clone()).unwrap_err().to_string();
    assert!(e.contains("secrets.key") && e.contains("copy"), "{e}");
}

/// Claims, reports and cancels reach the build through either replica:
/// each build is handed out once, a report to the other replica counts, a
/// cancel asked of one stops the worker of the other.
#[test]
fn replicas_on_one_postgres_share_one_queue() {
    let r = replicas();
    tenants(&r.cfgs[0], &[("t", "team"), ("u", "team")]);
    let (a, b) = r.start();
    let mut ids: Vec<String> = (0..4).map(|_| submit(&a, "t", "normal")).collect();
    ids.extend((0..4).map(|_| submit(&b, "u", "normal")));
    let mut claimed = Vec::new();
    for i in 0.. {
        let (mine, other) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let Some(c) = mine.try_claim("w", false).unwrap() else { break };
        // The worker reports to the other replica (behind a load balancer).
        finish_ok(other, &c.build.id, c.attempt.attempt);
        claimed.push(c.build.id);
    }
    claimed.sort();
    ids.sort();
    assert_eq!(claimed, ids, "each build handed out once, whichever replica was asked");
    assert!(ids.iter().all(|id| state(&a, id).0 == "succeeded"));

    // A cancel asked of b stops a's in-process worker at a's next tick.
    let id = submit(&b, "t", "normal");
    let c = a.try_claim("w", false).unwrap().unwrap();
    a.started(&id, c.attempt.attempt).unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    a.attach_cancel(&id, tx);
    b.cancel(&id, "test").unwrap();
    assert!(!*rx.borrow());
    a.reap().unwrap();
    assert!(*rx.borrow(), "the cancel reached the replica running the build");
    a.finish_attempt(&id, 1, AttemptOutcome::Finished { status: "cancelled".into(), egress_bytes: 0 })
        .unwrap();
    assert_eq!(state(&b, &id).0, "cancelled");
}

/// A replica killed while its worker holds a build: the other takes the
/// build back once its lease runs out (exactly once, however many reapers
/// run), hands it out again, and the dead attempt's late report is refused.
/// The killed replica, started again, leaves the new holder alone.
#[test]
fn a_dead_replicas_builds_are_taken_back_once_by_the_other() {
    let r = replicas();
    tenants(&r.cfgs[0], &[("t", "team")]);
    let (a, b) = r.start();
    let id = submit(&a, "t", "normal");
    let first = a.try_claim("w", false).unwrap().unwrap();
    a.started(&id, 1).unwrap();
    drop(a);
    // Still within the lease: nothing happens.
    r.clock.advance(500);
    b.reap().unwrap();
    assert_eq!(state(&b, &id).0, "running");
    r.clock.advance(600);
    let b2 = Core::start(r.cfgs[1].clone()).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| b.reap().unwrap());
        s.spawn(|| b2.reap().unwrap());
    });
    assert_eq!(state(&b, &id), ("queued".into(), None, 1));
    let events: Vec<String> = b.read().transitions(&id).unwrap().into_iter().map(|t| t.event).collect();
    assert_eq!(events.iter().filter(|e| *e == "lease-expired").count(), 1, "{events:?}");
    let second = b.try_claim("w", false).unwrap().unwrap();
    assert_eq!(second.attempt.attempt, 2);
    // The dead attempt's worker reports late: refused.
    assert!(b.holder_check(&id, "w", first.attempt.attempt, true).is_err());
    b.finish_attempt(&id, 1, AttemptOutcome::Finished { status: "succeeded".into(), egress_bytes: 0 })
        .unwrap();
    assert_eq!(state(&b, &id).0, "provisioning");
    // The killed replica comes back: the build is not its to recover now.
    let a = Core::start(r.cfgs[0].clone()).unwrap();
    assert_eq!(state(&a, &id).0, "provisioning");
    finish_ok(&b, &id, 2);
    assert_eq!(state(&a, &id), ("succeeded".into(), None, 1));
}
