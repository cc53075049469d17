//! Decision logic for the queue behind `kiln serve`: the lifecycle of one
//! build ([`BuildState`]) and the only legal ways to move through it
//! ([`transition`]), including the retry policy for infrastructure failures
//! and which duplicate events are harmless; and what a tenant's [`Plan`]
//! allows.
//!
//! Everything here is **pure**: no I/O, no threads, no clock reads. Which
//! build a worker gets next, leases and their expiry are decided by
//! `kiln-server` in its control database (one transaction per claim), so
//! that servers sharing the database never decide the same thing twice;
//! this crate says what each decision may do to a build.

pub mod state;

use serde::{Deserialize, Serialize};

pub use state::{
    transition, transition_with, BuildState, Effect, Event, FailureClass, History, Record, TransitionError,
    UnknownState, DEFAULT_MAX_RETRIES,
};

/// Default time-to-live of a lease without a renewal: 30 s.
pub const DEFAULT_LEASE_TTL_MS: u64 = 30_000;

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
