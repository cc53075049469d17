//! Worker leases on builds.
//!
//! A lease says "worker W holds build B until `expires_at`". The worker keeps
//! it alive with [`Leases::heartbeat`]; if it goes quiet,
//! [`Leases::expired`] takes the lease back and returns the build so the
//! caller can feed [`crate::Event::LeaseExpired`] into the state machine.
//! Once taken back, the old worker's heartbeats fail with
//! [`LeaseError::NotLeased`] (or [`LeaseError::WrongWorker`] if the build was
//! re-granted to someone else), which tells it to abandon the build.
//!
//! A lease is expired when `now >= expires_at`. An expired lease that has not
//! been collected by `expired` yet still rejects heartbeats
//! ([`LeaseError::Expired`]) and can be re-granted.

use crate::{BuildId, WorkerId};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use thiserror::Error;

/// Default time-to-live of a lease without a heartbeat: 30 s.
pub const DEFAULT_LEASE_TTL_MS: u64 = 30_000;

/// One lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Holder.
    pub worker: WorkerId,
    /// When granted (ms).
    pub granted_at: u64,
    /// Expires when `now >= expires_at` (ms).
    pub expires_at: u64,
    /// Extension applied by each heartbeat (ms).
    pub ttl: u64,
}

/// Lease operation refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LeaseError {
    /// No lease on the build (never granted, released, or taken back).
    #[error("{0} is not leased")]
    NotLeased(BuildId),
    /// Someone else holds the lease.
    #[error("{build} is leased to {holder}, not {worker}")]
    WrongWorker {
        /// The build.
        build: BuildId,
        /// Current holder.
        holder: WorkerId,
        /// Who asked.
        worker: WorkerId,
    },
    /// The lease ran out before this heartbeat.
    #[error("lease on {build} expired at {expires_at} ms")]
    Expired {
        /// The build.
        build: BuildId,
        /// When it expired.
        expires_at: u64,
    },
}

/// Table of live leases.
#[derive(Debug, Default, Clone)]
pub struct Leases {
    leases: HashMap<BuildId, Lease>,
}

impl Leases {
    /// Empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Grant `build` to `worker` for `ttl` ms ([`DEFAULT_LEASE_TTL_MS`] if `None`).
    ///
    /// Re-granting to the current holder refreshes the lease. Granting a
    /// build whose lease is held (and unexpired) by another worker is
    /// [`LeaseError::WrongWorker`]; an expired, uncollected lease is replaced.
    pub fn grant(
        &mut self,
        build: BuildId,
        worker: WorkerId,
        now: u64,
        ttl: Option<u64>,
    ) -> Result<&Lease, LeaseError> {
        let ttl = ttl.unwrap_or(DEFAULT_LEASE_TTL_MS);
        if let Some(l) = self.leases.get(&build) {
            if l.worker != worker && now < l.expires_at {
                return Err(LeaseError::WrongWorker { build, holder: l.worker.clone(), worker });
            }
        }
        let lease = Lease { worker, granted_at: now, expires_at: now.saturating_add(ttl), ttl };
        self.leases.insert(build, lease);
        self.leases.get(&build).ok_or(LeaseError::NotLeased(build))
    }

    /// Extend the lease by its ttl from `now`.
    pub fn heartbeat(&mut self, build: BuildId, worker: &WorkerId, now: u64) -> Result<(), LeaseError> {
        let l = self.leases.get_mut(&build).ok_or(LeaseError::NotLeased(build))?;
        if l.worker != *worker {
            return Err(LeaseError::WrongWorker { build, holder: l.worker.clone(), worker: worker.clone() });
        }
        if now >= l.expires_at {
            return Err(LeaseError::Expired { build, expires_at: l.expires_at });
        }
        l.expires_at = now.saturating_add(l.ttl);
        Ok(())
    }

    /// Take back every lease expired at `now`; returns their builds, sorted.
    /// `O(live leases)`.
    pub fn expired(&mut self, now: u64) -> Vec<BuildId> {
        let mut out: Vec<BuildId> =
            self.leases.iter().filter(|(_, l)| now >= l.expires_at).map(|(b, _)| *b).collect();
        for b in &out {
            self.leases.remove(b);
        }
        out.sort_unstable();
        out
    }

    /// The holder gives the lease up (build finished or handed back).
    pub fn release(&mut self, build: BuildId, worker: &WorkerId) -> Result<Lease, LeaseError> {
        let l = self.leases.get(&build).ok_or(LeaseError::NotLeased(build))?;
        if l.worker != *worker {
            return Err(LeaseError::WrongWorker { build, holder: l.worker.clone(), worker: worker.clone() });
        }
        self.leases.remove(&build).ok_or(LeaseError::NotLeased(build))
    }

    /// Current lease on `build`, expired or not.
    pub fn get(&self, build: BuildId) -> Option<&Lease> {
        self.leases.get(&build)
    }

    /// Number of leases held (including expired, uncollected ones).
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// No leases held.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }
}
