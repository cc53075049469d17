//! Retries across scheduler + leases + state machine, and lease properties.

use kiln_queue::{
    transition, BuildId, BuildState, Effect, Event, History, LeaseError, Leases, Plan, Priority, QueuedBuild,
    Scheduler, TenantId, WorkerId, DEFAULT_LEASE_TTL_MS,
};
use proptest::prelude::*;
use std::collections::HashMap;

fn w(i: usize) -> WorkerId {
    WorkerId::new(format!("worker-{i}"))
}

fn any_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        Just(Event::Lease),
        Just(Event::Started),
        Just(Event::StepsDone),
        Just(Event::Extracted),
        Just(Event::UserFailure),
        Just(Event::InfraFailure("boom".into())),
        Just(Event::Cancel),
        Just(Event::LeaseExpired),
    ]
}

fn drive_to_completion(h: &mut History, mut at: u64) {
    for _ in 0..32 {
        let e = match h.state() {
            BuildState::Queued => Event::Lease,
            BuildState::Provisioning => Event::Started,
            BuildState::Running => Event::StepsDone,
            BuildState::Extracting => Event::Extracted,
            _ => return,
        };
        at += 1;
        h.apply(e, at).unwrap();
    }
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Success,
    User,
    Infra,
    Expire,
    Cancel,
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        2 => Just(Outcome::Success),
        1 => Just(Outcome::User),
        3 => Just(Outcome::Infra),
        3 => Just(Outcome::Expire),
        1 => Just(Outcome::Cancel),
    ]
}

proptest! {
    /// (c) arbitrary event streams (duplicates, garbage, retries) never run a
    /// build more than 3 times; rejected events change nothing; driving to
    /// completion always ends terminal.
    #[test]
    fn never_more_than_three_runs(events in proptest::collection::vec(any_event(), 0..60)) {
        let mut h = History::new(0);
        for (i, e) in events.into_iter().enumerate() {
            let before = h.clone();
            let pure = transition(before.state(), &e, before.retries_used());
            match h.apply(e.clone(), i as u64 + 1) {
                Ok(effect) => prop_assert_eq!(pure, Ok((h.state(), effect))),
                Err(err) => {
                    prop_assert_eq!(pure, Err(err));
                    prop_assert_eq!(&h, &before);
                }
            }
            prop_assert!(h.attempts() <= 3);
            prop_assert!(h.retries_used() <= 2);
        }
        drive_to_completion(&mut h, 1000);
        prop_assert!(h.state().is_terminal());
        prop_assert!(h.attempts() <= 3);
    }

    /// (c) end to end: scheduler picks, lease granted, random outcome per
    /// attempt; retries requeue. Each build is leased at most 3 times, ends
    /// terminal, and the scheduler and lease table end empty.
    #[test]
    fn end_to_end_retries_terminate(
        n_builds in 1usize..20,
        outcomes in proptest::collection::vec(outcome(), 1..200),
    ) {
        let mut s = Scheduler::new();
        let mut leases = Leases::new();
        let mut hist: HashMap<BuildId, History> = HashMap::new();
        let mut leased_count: HashMap<BuildId, u32> = HashMap::new();
        for i in 0..n_builds {
            let id = BuildId(i as u64);
            let tenant = TenantId::new(format!("t{}", i % 3));
            s.set_plan(&tenant, Plan::pro());
            s.enqueue(QueuedBuild { id, tenant, priority: Priority::Normal, enqueued_at: 0 }).unwrap();
            hist.insert(id, History::new(0));
        }
        let mut now = 0u64;
        let mut k = 0usize;
        while let Some(id) = s.next(now) {
            now += 10;
            let worker = w(k % 4);
            leases.grant(id, worker.clone(), now, None).unwrap();
            *leased_count.entry(id).or_default() += 1;
            prop_assert!(leased_count[&id] <= 3, "{} leased {} times", id, leased_count[&id]);
            let h = hist.get_mut(&id).unwrap();
            h.apply(Event::Lease, now).unwrap();
            h.apply(Event::Started, now).unwrap();
            s.started(id).unwrap();
            let o = outcomes[k % outcomes.len()];
            k += 1;
            let effect = match o {
                Outcome::Success => {
                    h.apply(Event::StepsDone, now).unwrap();
                    h.apply(Event::Extracted, now).unwrap()
                }
                Outcome::User => h.apply(Event::UserFailure, now).unwrap(),
                Outcome::Infra => h.apply(Event::InfraFailure("died".into()), now).unwrap(),
                Outcome::Cancel => h.apply(Event::Cancel, now).unwrap(),
                Outcome::Expire => {
                    now += DEFAULT_LEASE_TTL_MS;
                    prop_assert_eq!(leases.expired(now), vec![id]);
                    prop_assert!(leases.heartbeat(id, &worker, now).is_err());
                    h.apply(Event::LeaseExpired, now).unwrap()
                }
            };
            if !matches!(o, Outcome::Expire) {
                leases.release(id, &worker).unwrap();
            }
            match effect {
                Effect::Retry => s.requeue(id).unwrap(),
                Effect::Finish => s.finished(id).unwrap(),
                other => prop_assert!(false, "unexpected effect {:?}", other),
            }
        }
        for (id, h) in &hist {
            prop_assert!(h.state().is_terminal(), "{} ended {:?}", id, h.state());
            prop_assert!(h.attempts() <= 3);
        }
        prop_assert_eq!(s.queued_len(), 0);
        prop_assert!(leases.is_empty());
    }
}

// ------------------------------------------------------------------ leases

#[test]
fn lease_basics() {
    let mut l = Leases::new();
    let b = BuildId(1);
    let lease = l.grant(b, w(0), 1000, None).unwrap();
    assert_eq!(lease.expires_at, 1000 + DEFAULT_LEASE_TTL_MS);
    // wrong worker
    assert!(matches!(l.heartbeat(b, &w(1), 2000), Err(LeaseError::WrongWorker { .. })));
    assert!(matches!(l.grant(b, w(1), 2000, None), Err(LeaseError::WrongWorker { .. })));
    // heartbeat extends
    l.heartbeat(b, &w(0), 30_000).unwrap();
    assert!(l.expired(31_000).is_empty());
    assert_eq!(l.get(b).unwrap().expires_at, 60_000);
    // expired but not collected: heartbeat refused
    assert!(matches!(l.heartbeat(b, &w(0), 60_000), Err(LeaseError::Expired { .. })));
    assert_eq!(l.expired(60_000), vec![b]);
    assert_eq!(l.heartbeat(b, &w(0), 60_001), Err(LeaseError::NotLeased(b)));
    assert_eq!(l.release(b, &w(0)), Err(LeaseError::NotLeased(b)));
    // re-grant to another worker; the old one stays locked out
    l.grant(b, w(1), 61_000, Some(5_000)).unwrap();
    assert!(l.heartbeat(b, &w(0), 61_001).is_err());
    l.heartbeat(b, &w(1), 62_000).unwrap();
    assert!(l.release(b, &w(0)).is_err());
    l.release(b, &w(1)).unwrap();
    assert!(l.is_empty());
}

#[derive(Debug, Clone)]
enum LOp {
    Grant(u8, u8, Option<u64>),
    Heartbeat(u8, u8),
    Release(u8, u8),
    Advance(u64),
    Expire,
}

fn lop() -> impl Strategy<Value = LOp> {
    prop_oneof![
        1 => (0u8..4, 0u8..3, proptest::option::of(1u64..60_000)).prop_map(|(b, w, t)| LOp::Grant(b, w, t)),
        3 => (0u8..4, 0u8..3).prop_map(|(b, w)| LOp::Heartbeat(b, w)),
        1 => (0u8..4, 0u8..3).prop_map(|(b, w)| LOp::Release(b, w)),
        2 => (0u64..40_000).prop_map(LOp::Advance),
        1 => Just(LOp::Expire),
    ]
}

proptest! {
    /// (d) once `expired` returns a build, every heartbeat for it fails until
    /// it is granted again; `expired` returns exactly the leases past due.
    #[test]
    fn taken_back_leases_reject_heartbeats(ops in proptest::collection::vec(lop(), 1..200)) {
        let mut l = Leases::new();
        let mut now = 0u64;
        let mut taken_back: std::collections::HashSet<BuildId> = Default::default();
        for op in ops {
            match op {
                LOp::Grant(b, wk, ttl) => {
                    let b = BuildId(u64::from(b));
                    if l.grant(b, w(usize::from(wk)), now, ttl).is_ok() {
                        taken_back.remove(&b);
                    }
                }
                LOp::Heartbeat(b, wk) => {
                    let b = BuildId(u64::from(b));
                    let r = l.heartbeat(b, &w(usize::from(wk)), now);
                    if taken_back.contains(&b) {
                        prop_assert!(r.is_err(), "heartbeat accepted for taken-back {}", b);
                    }
                    if r.is_ok() {
                        prop_assert!(l.get(b).unwrap().expires_at > now);
                    }
                }
                LOp::Release(b, wk) => {
                    let _ = l.release(BuildId(u64::from(b)), &w(usize::from(wk)));
                }
                LOp::Advance(dt) => now += dt,
                LOp::Expire => {
                    let due: Vec<BuildId> = (0..4u64)
                        .map(BuildId)
                        .filter(|b| l.get(*b).is_some_and(|x| x.expires_at <= now))
                        .collect();
                    let got = l.expired(now);
                    prop_assert_eq!(&got, &due);
                    for b in got {
                        prop_assert!(l.get(b).is_none());
                        for wk in 0..3 {
                            prop_assert!(l.heartbeat(b, &w(wk), now).is_err());
                        }
                        taken_back.insert(b);
                    }
                }
            }
        }
    }
}
