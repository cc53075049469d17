//! Fair scheduling of queued builds across tenants.
//!
//! Policy, in order:
//!
//! 1. **Tier**: any eligible `Urgent` build is picked before any `Normal`
//!    build, globally. Running builds are never preempted.
//! 2. **Tenant**: within a tier, tenants with queued work take turns by
//!    deficit round robin. When a tenant reaches the front of the tier's ring
//!    with an empty deficit it is credited `quantum * weight` picks; each pick
//!    spends one; when the credit is spent (or its queue empties) it moves to
//!    the back. A tenant already at its plan's `max_concurrent` is skipped
//!    (its credit is forfeited, as DRR does for idle flows).
//! 3. **Build**: FIFO within a tenant and tier, except that
//!    [`Scheduler::requeue`] (a retry) puts a build back at the front.
//!
//! A build counts against its tenant's concurrency from the moment
//! [`Scheduler::next`] returns it (leased) until [`Scheduler::finished`],
//! [`Scheduler::requeue`] or [`Scheduler::cancel`], so calling `next` twice
//! before the worker reports `started` cannot exceed the cap.
//!
//! Cost: `next` visits each tenant of a tier's ring at most once, so it is
//! `O(tenants)` at worst and amortised `O(1)` when the front tenant is
//! eligible. Cancelling a queued build is `O(1)` (a tombstone skipped later).

use crate::{BuildId, TenantId};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use thiserror::Error;

/// Priority tier of a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Priority {
    /// Picked before any normal build (no preemption).
    Urgent,
    /// Everything else.
    Normal,
}

impl Priority {
    fn index(self) -> usize {
        match self {
            Priority::Urgent => 0,
            Priority::Normal => 1,
        }
    }
}

/// A build waiting for a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedBuild {
    /// Unique id.
    pub id: BuildId,
    /// Owning tenant.
    pub tenant: TenantId,
    /// Tier.
    pub priority: Priority,
    /// When it was first queued (ms); kept across retries.
    pub enqueued_at: u64,
}

/// What a tenant is allowed to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Plan {
    /// Builds leased or running at once. `0` suspends the tenant.
    pub max_concurrent: u32,
    /// Longest a build may run (enforced by the caller).
    pub max_timeout_secs: u64,
    /// Cache storage quota (enforced by the caller).
    pub cache_quota_bytes: u64,
}

impl Plan {
    /// 1 concurrent build, 10 minute timeout, 1 GiB cache.
    pub fn free() -> Self {
        Self { max_concurrent: 1, max_timeout_secs: 600, cache_quota_bytes: 1 << 30 }
    }

    /// 8 concurrent builds, 3 hour timeout, 50 GiB cache.
    pub fn pro() -> Self {
        Self { max_concurrent: 8, max_timeout_secs: 3 * 3600, cache_quota_bytes: 50 << 30 }
    }
}

impl Default for Plan {
    fn default() -> Self {
        Self::free()
    }
}

/// Where a build is, as far as the scheduler knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SchedStatus {
    /// Waiting.
    Queued,
    /// Returned by [`Scheduler::next`] at `at`; the worker has not reported `started`.
    Leased {
        /// Time of the pick (ms).
        at: u64,
    },
    /// The worker reported `started`.
    Running {
        /// Time of the pick (ms).
        at: u64,
    },
}

/// Misuse of the scheduler API.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SchedError {
    /// `enqueue` with an id the scheduler already tracks.
    #[error("{0} is already known to the scheduler")]
    Duplicate(BuildId),
    /// The id is not tracked (never enqueued, finished or cancelled).
    #[error("{0} is not known to the scheduler")]
    Unknown(BuildId),
    /// `started`/`finished`/`requeue` on a build that is still queued.
    #[error("{0} is queued, not leased or running")]
    NotActive(BuildId),
}

#[derive(Debug)]
struct Entry {
    build: QueuedBuild,
    tenant: usize,
    status: Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// `seq` identifies the live queue slot; older slots for the id are tombstones.
    Queued {
        seq: u64,
    },
    Leased {
        at: u64,
    },
    Running {
        at: u64,
    },
}

#[derive(Debug, Default)]
struct TierQueue {
    /// `(id, seq)`; an element is live iff the entry is `Queued { seq }`.
    q: VecDeque<(BuildId, u64)>,
    live: usize,
    deficit: u64,
    in_ring: bool,
}

#[derive(Debug)]
struct Tenant {
    id: TenantId,
    plan: Plan,
    weight: u32,
    active: u32,
    tiers: [TierQueue; 2],
}

/// The fair scheduler. See the [module docs](self).
#[derive(Debug)]
pub struct Scheduler {
    quantum: u32,
    default_plan: Plan,
    tenants: Vec<Tenant>,
    tenant_ix: HashMap<TenantId, usize>,
    builds: HashMap<BuildId, Entry>,
    /// Per tier: tenants with (possibly) queued work in that tier.
    rings: [VecDeque<usize>; 2],
    queued: usize,
    next_seq: u64,
}

impl Default for Scheduler {
    fn default() -> Self {
        Self::new()
    }
}

impl Scheduler {
    /// Quantum 1 (strict round robin between tenants), unknown tenants on [`Plan::free`].
    pub fn new() -> Self {
        Self::with_quantum(1)
    }

    /// Picks a tenant gets per turn (times its weight). Clamped to at least 1.
    pub fn with_quantum(quantum: u32) -> Self {
        Self {
            quantum: quantum.max(1),
            default_plan: Plan::free(),
            tenants: Vec::new(),
            tenant_ix: HashMap::new(),
            builds: HashMap::new(),
            rings: [VecDeque::new(), VecDeque::new()],
            queued: 0,
            next_seq: 0,
        }
    }

    /// The quantum in use.
    pub fn quantum(&self) -> u32 {
        self.quantum
    }

    /// Plan for tenants that were never given one (default [`Plan::free`]).
    pub fn set_default_plan(&mut self, plan: Plan) {
        self.default_plan = plan;
    }

    fn tenant_index(&mut self, tenant: &TenantId) -> usize {
        if let Some(&i) = self.tenant_ix.get(tenant) {
            return i;
        }
        let i = self.tenants.len();
        self.tenants.push(Tenant {
            id: tenant.clone(),
            plan: self.default_plan,
            weight: 1,
            active: 0,
            tiers: [TierQueue::default(), TierQueue::default()],
        });
        self.tenant_ix.insert(tenant.clone(), i);
        i
    }

    /// Set a tenant's plan. Lowering `max_concurrent` below what is running
    /// preempts nothing; it only stops new picks.
    pub fn set_plan(&mut self, tenant: &TenantId, plan: Plan) {
        let i = self.tenant_index(tenant);
        self.tenants[i].plan = plan;
    }

    /// Set a tenant's DRR weight (picks per turn = quantum * weight). Clamped to at least 1.
    pub fn set_weight(&mut self, tenant: &TenantId, weight: u32) {
        let i = self.tenant_index(tenant);
        self.tenants[i].weight = weight.max(1);
    }

    /// A tenant's plan (the default plan if unknown).
    pub fn plan(&self, tenant: &TenantId) -> Plan {
        self.tenant_ix.get(tenant).map_or(self.default_plan, |&i| self.tenants[i].plan)
    }

    /// Builds of `tenant` currently leased or running.
    pub fn active(&self, tenant: &TenantId) -> u32 {
        self.tenant_ix.get(tenant).map_or(0, |&i| self.tenants[i].active)
    }

    /// Total queued builds.
    pub fn queued_len(&self) -> usize {
        self.queued
    }

    /// Queued builds of `tenant` in `priority`.
    pub fn queued_for(&self, tenant: &TenantId, priority: Priority) -> usize {
        self.tenant_ix.get(tenant).map_or(0, |&i| self.tenants[i].tiers[priority.index()].live)
    }

    /// The build as enqueued.
    pub fn build(&self, id: BuildId) -> Option<&QueuedBuild> {
        self.builds.get(&id).map(|e| &e.build)
    }

    /// Where the build is, or `None` if untracked.
    pub fn status(&self, id: BuildId) -> Option<SchedStatus> {
        self.builds.get(&id).map(|e| match e.status {
            Status::Queued { .. } => SchedStatus::Queued,
            Status::Leased { at } => SchedStatus::Leased { at },
            Status::Running { at } => SchedStatus::Running { at },
        })
    }

    fn push_queued(&mut self, id: BuildId, front: bool) -> Result<(), SchedError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let entry = self.builds.get_mut(&id).ok_or(SchedError::Unknown(id))?;
        entry.status = Status::Queued { seq };
        let tier = entry.build.priority.index();
        let t = entry.tenant;
        let tq = &mut self.tenants[t].tiers[tier];
        if front {
            tq.q.push_front((id, seq));
        } else {
            tq.q.push_back((id, seq));
        }
        tq.live += 1;
        if !tq.in_ring {
            tq.in_ring = true;
            self.rings[tier].push_back(t);
        }
        self.queued += 1;
        Ok(())
    }

    /// Add a build at the back of its tenant's tier.
    pub fn enqueue(&mut self, build: QueuedBuild) -> Result<(), SchedError> {
        let id = build.id;
        if self.builds.contains_key(&id) {
            return Err(SchedError::Duplicate(id));
        }
        let tenant = self.tenant_index(&build.tenant);
        self.builds.insert(id, Entry { build, tenant, status: Status::Queued { seq: 0 } });
        self.push_queued(id, false)
    }

    /// Forget a build wherever it is. A queued build leaves the queue; a
    /// leased or running one frees its tenant's slot (stopping the worker is
    /// the caller's job). Returns where it was.
    pub fn cancel(&mut self, id: BuildId) -> Result<SchedStatus, SchedError> {
        let status = self.status(id).ok_or(SchedError::Unknown(id))?;
        let Some(entry) = self.builds.remove(&id) else {
            return Err(SchedError::Unknown(id));
        };
        let tenant = &mut self.tenants[entry.tenant];
        match entry.status {
            Status::Queued { .. } => {
                let tq = &mut tenant.tiers[entry.build.priority.index()];
                tq.live -= 1;
                if tq.live == 0 {
                    // Only tombstones left; drop them now. The ring entry is
                    // removed lazily by `next`.
                    tq.q.clear();
                }
                self.queued -= 1;
            }
            Status::Leased { .. } | Status::Running { .. } => tenant.active -= 1,
        }
        Ok(status)
    }

    /// Pick the next build to lease at `now`, or `None` if nothing queued is
    /// eligible (empty, or every tenant with work is at `max_concurrent`).
    /// The build becomes leased and counts against its tenant's cap.
    pub fn next(&mut self, now: u64) -> Option<BuildId> {
        self.pick_tier(0, now).or_else(|| self.pick_tier(1, now))
    }

    fn pick_tier(&mut self, tier: usize, now: u64) -> Option<BuildId> {
        let quantum = u64::from(self.quantum);
        let ring = &mut self.rings[tier];
        for _ in 0..ring.len() {
            let t = *ring.front()?;
            let tenant = &mut self.tenants[t];
            let tq = &mut tenant.tiers[tier];
            if tq.live == 0 {
                ring.pop_front();
                tq.in_ring = false;
                tq.deficit = 0;
                tq.q.clear();
                continue;
            }
            if tenant.active >= tenant.plan.max_concurrent {
                tq.deficit = 0;
                ring.rotate_left(1);
                continue;
            }
            if tq.deficit == 0 {
                tq.deficit = quantum * u64::from(tenant.weight);
            }
            // Pop the first live element, skipping tombstones.
            let mut picked = None;
            while let Some((id, seq)) = tq.q.pop_front() {
                if let Some(e) = self.builds.get_mut(&id) {
                    if e.status == (Status::Queued { seq }) {
                        e.status = Status::Leased { at: now };
                        picked = Some(id);
                        break;
                    }
                }
            }
            let Some(id) = picked else {
                // Inconsistent count; heal rather than panic.
                tq.live = 0;
                continue;
            };
            tq.live -= 1;
            tq.deficit -= 1;
            tenant.active += 1;
            self.queued -= 1;
            if tq.live == 0 {
                ring.pop_front();
                tq.in_ring = false;
                tq.deficit = 0;
            } else if tq.deficit == 0 {
                ring.rotate_left(1);
            }
            return Some(id);
        }
        None
    }

    /// The worker reported the build started. Idempotent.
    pub fn started(&mut self, id: BuildId) -> Result<(), SchedError> {
        let e = self.builds.get_mut(&id).ok_or(SchedError::Unknown(id))?;
        match e.status {
            Status::Queued { .. } => Err(SchedError::NotActive(id)),
            Status::Leased { at } | Status::Running { at } => {
                e.status = Status::Running { at };
                Ok(())
            }
        }
    }

    /// The build reached a terminal state: free its slot and forget it.
    pub fn finished(&mut self, id: BuildId) -> Result<(), SchedError> {
        let e = self.builds.get(&id).ok_or(SchedError::Unknown(id))?;
        if let Status::Queued { .. } = e.status {
            return Err(SchedError::NotActive(id));
        }
        let t = e.tenant;
        self.builds.remove(&id);
        self.tenants[t].active -= 1;
        Ok(())
    }

    /// Retry: free the slot and put the build at the FRONT of its tenant's
    /// tier, keeping `enqueued_at`.
    pub fn requeue(&mut self, id: BuildId) -> Result<(), SchedError> {
        let e = self.builds.get(&id).ok_or(SchedError::Unknown(id))?;
        if let Status::Queued { .. } = e.status {
            return Err(SchedError::NotActive(id));
        }
        let t = e.tenant;
        self.tenants[t].active -= 1;
        self.push_queued(id, true)
    }

    /// Tenants known to the scheduler.
    pub fn tenants(&self) -> impl Iterator<Item = &TenantId> {
        self.tenants.iter().map(|t| &t.id)
    }
}
