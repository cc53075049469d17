//! Decision logic for the queue behind `kiln serve`.
//!
//! # What this crate owns
//!
//! * [`state`]: the lifecycle of one build ([`BuildState`]) and the only
//!   legal ways to move through it ([`transition`]), including the retry
//!   policy for infrastructure failures and which duplicate events are
//!   harmless.
//! * [`fair`]: which queued build gets the next free worker
//!   ([`Scheduler::next`]): urgent before normal, FIFO within a tenant and
//!   tier, deficit round robin (DRR) across tenants, and per-tenant
//!   concurrency caps from their [`Plan`].
//! * [`lease`]: who currently holds a build ([`Leases`]), heartbeats, and
//!   taking leases back when a worker goes quiet.
//!
//! # Design
//!
//! Everything here is **pure**: no I/O, no threads, no clock reads. Time is a
//! `u64` of milliseconds passed in by the caller, so the control plane decides
//! what "now" is (and persists state however it likes) while tests drive
//! time deterministically and property-test the invariants.
//!
//! Fairness uses **deficit round robin** over the tenants that have queued
//! work, one ring per priority tier. A tenant at the front of the ring gets
//! `quantum * weight` picks before it rotates to the back, so one tenant with
//! 500 queued builds cannot starve another with one: with the default quantum
//! of 1 every tenant with work is served once per round. DRR was chosen over
//! e.g. weighted fair queueing by virtual finish time because builds have no
//! meaningful known "size" up front, it needs no sorting, and `next` costs
//! `O(tenants)` at worst (amortised `O(1)` in the common case), never
//! `O(queued builds)`.
//!
//! # Limits
//!
//! * Not thread-safe by itself and not durable: the caller wraps it in a lock
//!   and is responsible for persistence/recovery (e.g. rebuilding a
//!   [`Scheduler`] from the database at start-up).
//! * The scheduler caps concurrency per tenant only; global worker capacity
//!   is expressed by the caller only calling [`Scheduler::next`] when a
//!   worker is free. There is no preemption of running builds.
//! * DRR counts builds, not build cost (minutes): a tenant with long builds
//!   gets the same number of starts as one with short builds.
//! * Plan fields other than `max_concurrent` (timeout, cache quota) are
//!   carried here for the control plane to enforce; this crate does not.
//! * Cancelled queued builds are removed lazily (tombstoned), so memory of a
//!   tenant's queue is reclaimed when the queue drains past them.

pub mod fair;
pub mod lease;
pub mod state;

use serde::{Deserialize, Serialize};
use std::fmt;

pub use fair::{Plan, Priority, QueuedBuild, SchedError, SchedStatus, Scheduler};
pub use lease::{Lease, LeaseError, Leases, DEFAULT_LEASE_TTL_MS};
pub use state::{
    transition, transition_with, BuildState, Effect, Event, FailureClass, History, Record, TransitionError,
    UnknownState, DEFAULT_MAX_RETRIES,
};

/// Identifier of one build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BuildId(pub u64);

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "build#{}", self.0)
    }
}

/// Identifier of a tenant (the account whose plan applies).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TenantId(pub String);

impl TenantId {
    /// Convenience constructor.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identifier of a worker that can hold leases.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkerId(pub String);

impl WorkerId {
    /// Convenience constructor.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
