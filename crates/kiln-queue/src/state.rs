//! The lifecycle of one build.
//!
//! ```text
//!            Lease            Started          StepsDone          Extracted
//!   Queued ─────────▶ Provisioning ───▶ Running ─────────▶ Extracting ─────────▶ Succeeded
//!     ▲                  │    │            │   │               │    │
//!     └── Retry ─────────┘    │   ◀────────┘   │               │    │
//!   (InfraFailure/LeaseExpired while retries remain)           │    │
//!                             ▼                ▼               ▼    ▼
//!                  Failed(Infrastructure)   Failed(User)    (Cancel from any non-terminal → Cancelled)
//! ```
//!
//! # Rules
//!
//! * `UserFailure` in `Provisioning`, `Running` or `Extracting` → `Failed(User)`,
//!   never retried (re-running a broken build gives the same answer).
//! * `InfraFailure` or `LeaseExpired` in `Provisioning` or `Running` → back to
//!   `Queued` with [`Effect::Retry`] while `retries_used < max_retries`, else
//!   `Failed(Infrastructure)`. With the default of 2 retries a build is run at
//!   most 3 times.
//! * `InfraFailure` or `LeaseExpired` in `Extracting` → `Failed(Infrastructure)`
//!   without retry: the steps already ran to completion and may have had side
//!   effects, so re-running them is left to a human.
//! * `Cancel` from any non-terminal state → `Cancelled`.
//! * Terminal states (`Succeeded`, `Failed(_)`, `Cancelled`) absorb every
//!   event: `Ok((same state, Effect::None))`. Late messages from workers about
//!   finished builds are normal and must not be errors.
//!
//! # Idempotency
//!
//! Re-applying the event that *produced* the current state is `Ok` with
//! [`Effect::None`] and no state change:
//!
//! | state          | idempotent duplicates              |
//! |----------------|------------------------------------|
//! | `Queued`       | `InfraFailure`, `LeaseExpired` (a retry already happened) |
//! | `Provisioning` | `Lease`                            |
//! | `Running`      | `Started`                          |
//! | `Extracting`   | `StepsDone`                        |
//! | terminal       | everything (absorbing)             |
//!
//! Everything else that does not match a rule is a [`TransitionError`] and
//! leaves the state untouched, e.g. `Extracted` while `Queued`, `Started`
//! while `Queued` (never leased), `Lease` while `Running` (a second worker
//! claiming a build that is already running), `StepsDone` while
//! `Provisioning`, `UserFailure` while `Queued`.
//!
//! Note the `Queued` row: a late `LeaseExpired` for an attempt that was
//! already retried is absorbed. This crate cannot tell it apart from a bogus
//! `LeaseExpired` for a never-leased build; both are harmless.

use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;

/// Default number of automatic retries after infrastructure failures.
pub const DEFAULT_MAX_RETRIES: u32 = 2;

/// Why a build failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureClass {
    /// The build itself failed (non-zero step, bad workflow). Not retried.
    User,
    /// The platform failed (worker died, provisioning failed) and retries ran out.
    Infrastructure,
}

/// Where a build is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BuildState {
    /// Waiting for a worker.
    Queued,
    /// Leased by a worker that is preparing the sandbox.
    Provisioning,
    /// Steps are executing.
    Running,
    /// Steps are done; outputs/artifacts/cache are being extracted.
    Extracting,
    /// Terminal: success.
    Succeeded,
    /// Terminal: failure.
    Failed(FailureClass),
    /// Terminal: cancelled by a user or the system.
    Cancelled,
}

impl BuildState {
    /// `Succeeded`, `Failed(_)` and `Cancelled` are terminal.
    pub fn is_terminal(self) -> bool {
        matches!(self, BuildState::Succeeded | BuildState::Failed(_) | BuildState::Cancelled)
    }

    /// The names a state is stored and shown under: the state, and for a
    /// failure its class (`failed`, `user`). The only place they are spelt.
    pub fn names(self) -> (&'static str, Option<&'static str>) {
        match self {
            BuildState::Queued => ("queued", None),
            BuildState::Provisioning => ("provisioning", None),
            BuildState::Running => ("running", None),
            BuildState::Extracting => ("extracting", None),
            BuildState::Succeeded => ("succeeded", None),
            BuildState::Failed(FailureClass::User) => ("failed", Some("user")),
            BuildState::Failed(FailureClass::Infrastructure) => ("failed", Some("infrastructure")),
            BuildState::Cancelled => ("cancelled", None),
        }
    }

    /// The state stored under `names` (see [`BuildState::names`]). An
    /// unknown name, or a failure without a known class, is an error, never
    /// a guess.
    pub fn from_names(state: &str, failure: Option<&str>) -> Result<BuildState, UnknownState> {
        let unknown = || UnknownState { state: state.to_string(), failure: failure.map(str::to_string) };
        Ok(match state {
            "queued" => BuildState::Queued,
            "provisioning" => BuildState::Provisioning,
            "running" => BuildState::Running,
            "extracting" => BuildState::Extracting,
            "succeeded" => BuildState::Succeeded,
            "cancelled" => BuildState::Cancelled,
            "failed" => BuildState::Failed(match failure {
                Some("user") => FailureClass::User,
                Some("infrastructure") => FailureClass::Infrastructure,
                _ => return Err(unknown()),
            }),
            _ => return Err(unknown()),
        })
    }

    /// Whether the state stored as `state` is terminal (unknown: not).
    pub fn is_terminal_name(state: &str) -> bool {
        matches!(state, "succeeded" | "failed" | "cancelled")
    }
}

/// A stored state this version of kiln does not know.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown build state `{state}`{}", failure.as_deref().map(|f| format!(" (failure `{f}`)")).unwrap_or_default())]
pub struct UnknownState {
    pub state: String,
    pub failure: Option<String>,
}

impl fmt::Display for BuildState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildState::Queued => f.write_str("queued"),
            BuildState::Provisioning => f.write_str("provisioning"),
            BuildState::Running => f.write_str("running"),
            BuildState::Extracting => f.write_str("extracting"),
            BuildState::Succeeded => f.write_str("succeeded"),
            BuildState::Failed(FailureClass::User) => f.write_str("failed (user)"),
            BuildState::Failed(FailureClass::Infrastructure) => f.write_str("failed (infrastructure)"),
            BuildState::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// Something that happened to a build.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Event {
    /// A worker was granted the build.
    Lease,
    /// The sandbox is up and steps began.
    Started,
    /// All steps finished successfully.
    StepsDone,
    /// Outputs were extracted.
    Extracted,
    /// The build failed because of its own content.
    UserFailure,
    /// The platform failed; the reason is for humans.
    InfraFailure(String),
    /// Cancellation was requested.
    Cancel,
    /// The worker stopped heartbeating and its lease was taken back.
    LeaseExpired,
}

impl Event {
    /// Short stable name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Lease => "lease",
            Event::Started => "started",
            Event::StepsDone => "steps-done",
            Event::Extracted => "extracted",
            Event::UserFailure => "user-failure",
            Event::InfraFailure(_) => "infra-failure",
            Event::Cancel => "cancel",
            Event::LeaseExpired => "lease-expired",
        }
    }
}

/// What the caller must do as a consequence of a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Effect {
    /// Nothing: a duplicate (idempotent) event or an event absorbed by a
    /// terminal state. The state did not change.
    None,
    /// The state advanced; nothing else to do.
    Advance,
    /// Put the build back at the front of its tenant's queue
    /// and count one retry used.
    Retry,
    /// The build reached a terminal state: release its lease and slot
    /// and its tenant's slot.
    Finish,
}

/// An event that is not valid in the current state.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("event `{event}` is not valid while the build is {state}")]
pub struct TransitionError {
    /// State the build was (and still is) in.
    pub state: BuildState,
    /// [`Event::name`] of the rejected event.
    pub event: &'static str,
}

/// [`transition_with`] using [`DEFAULT_MAX_RETRIES`].
pub fn transition(
    current: BuildState,
    event: &Event,
    retries_used: u32,
) -> Result<(BuildState, Effect), TransitionError> {
    transition_with(current, event, retries_used, DEFAULT_MAX_RETRIES)
}

/// Compute the next state. Pure; see the [module docs](self) for the rules.
///
/// `retries_used` is how many times this build has already been sent back to
/// the queue by [`Effect::Retry`]; the caller increments it on every `Retry`.
pub fn transition_with(
    current: BuildState,
    event: &Event,
    retries_used: u32,
    max_retries: u32,
) -> Result<(BuildState, Effect), TransitionError> {
    use BuildState as S;
    use Event as E;

    if current.is_terminal() {
        return Ok((current, Effect::None));
    }
    if *event == E::Cancel {
        return Ok((S::Cancelled, Effect::Finish));
    }
    let infra_or_retry = || {
        if retries_used < max_retries {
            (S::Queued, Effect::Retry)
        } else {
            (S::Failed(FailureClass::Infrastructure), Effect::Finish)
        }
    };
    let next = match (current, event) {
        // Queued
        (S::Queued, E::Lease) => (S::Provisioning, Effect::Advance),
        (S::Queued, E::InfraFailure(_) | E::LeaseExpired) => (S::Queued, Effect::None),

        // Provisioning
        (S::Provisioning, E::Lease) => (S::Provisioning, Effect::None),
        (S::Provisioning, E::Started) => (S::Running, Effect::Advance),

        // Running
        (S::Running, E::Started) => (S::Running, Effect::None),
        (S::Running, E::StepsDone) => (S::Extracting, Effect::Advance),

        // Provisioning / Running: platform trouble
        (S::Provisioning | S::Running, E::InfraFailure(_) | E::LeaseExpired) => infra_or_retry(),

        // Extracting
        (S::Extracting, E::StepsDone) => (S::Extracting, Effect::None),
        (S::Extracting, E::Extracted) => (S::Succeeded, Effect::Finish),
        (S::Extracting, E::InfraFailure(_) | E::LeaseExpired) => {
            (S::Failed(FailureClass::Infrastructure), Effect::Finish)
        }

        // User failure once a worker has it
        (S::Provisioning | S::Running | S::Extracting, E::UserFailure) => {
            (S::Failed(FailureClass::User), Effect::Finish)
        }

        (state, event) => return Err(TransitionError { state, event: event.name() }),
    };
    Ok(next)
}

/// One entry of a build's history: the state entered at `at` (ms) because of `event`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// State after the event.
    pub state: BuildState,
    /// Caller-supplied time in milliseconds.
    pub at: u64,
    /// The event that caused it.
    pub event: Event,
}

/// A build's state plus its history; applies events through [`transition_with`].
///
/// Only events that change the state or request a retry are recorded;
/// idempotent duplicates and rejected events leave the history untouched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    state: BuildState,
    enqueued_at: u64,
    retries_used: u32,
    max_retries: u32,
    records: Vec<Record>,
}

impl History {
    /// A freshly queued build, enqueued at `at`.
    pub fn new(at: u64) -> Self {
        Self::with_max_retries(at, DEFAULT_MAX_RETRIES)
    }

    /// Like [`History::new`] with a custom retry budget.
    pub fn with_max_retries(at: u64, max_retries: u32) -> Self {
        Self { state: BuildState::Queued, enqueued_at: at, retries_used: 0, max_retries, records: Vec::new() }
    }

    /// When the build was first queued.
    pub fn enqueued_at(&self) -> u64 {
        self.enqueued_at
    }

    /// Apply `event` at time `at`.
    pub fn apply(&mut self, event: Event, at: u64) -> Result<Effect, TransitionError> {
        let (state, effect) = transition_with(self.state, &event, self.retries_used, self.max_retries)?;
        if effect == Effect::Retry {
            self.retries_used += 1;
        }
        if effect != Effect::None {
            self.state = state;
            self.records.push(Record { state, at, event });
        }
        Ok(effect)
    }

    /// Current state.
    pub fn state(&self) -> BuildState {
        self.state
    }

    /// Retries consumed so far.
    pub fn retries_used(&self) -> u32 {
        self.retries_used
    }

    /// Recorded transitions, oldest first.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// How many times the build's steps were started (entries into `Running`).
    pub fn attempts(&self) -> usize {
        self.records.iter().filter(|r| r.state == BuildState::Running).count()
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn every_state_round_trips_through_its_names_and_unknown_names_are_errors() {
        let all = [
            BuildState::Queued,
            BuildState::Provisioning,
            BuildState::Running,
            BuildState::Extracting,
            BuildState::Succeeded,
            BuildState::Failed(FailureClass::User),
            BuildState::Failed(FailureClass::Infrastructure),
            BuildState::Cancelled,
        ];
        for st in all {
            let (name, failure) = st.names();
            assert_eq!(BuildState::from_names(name, failure), Ok(st));
            assert_eq!(BuildState::is_terminal_name(name), st.is_terminal(), "{name}");
        }
        assert!(BuildState::from_names("exploded", None).is_err());
        assert!(BuildState::from_names("failed", None).is_err(), "a failure without a class is not guessed");
        assert!(BuildState::from_names("failed", Some("cosmic")).is_err());
        let e = BuildState::from_names("Running", None).unwrap_err().to_string();
        assert!(e.contains("`Running`"), "{e}");
    }

    use super::*;
    use BuildState as S;
    use Effect as F;

    fn infra() -> Event {
        Event::InfraFailure("worker died".into())
    }

    fn all_events() -> Vec<Event> {
        vec![
            Event::Lease,
            Event::Started,
            Event::StepsDone,
            Event::Extracted,
            Event::UserFailure,
            infra(),
            Event::Cancel,
            Event::LeaseExpired,
        ]
    }

    const USER: S = S::Failed(FailureClass::User);
    const INFRA: S = S::Failed(FailureClass::Infrastructure);

    /// Expected outcome for every (non-terminal state, event) with 0 retries used.
    fn expected(state: S, event: &Event) -> Option<(S, F)> {
        let r = match (state, event.name()) {
            (S::Queued, "lease") => (S::Provisioning, F::Advance),
            (S::Queued, "infra-failure" | "lease-expired") => (S::Queued, F::None),
            (S::Queued, "cancel") => (S::Cancelled, F::Finish),
            (S::Queued, _) => return None,

            (S::Provisioning, "lease") => (S::Provisioning, F::None),
            (S::Provisioning, "started") => (S::Running, F::Advance),
            (S::Provisioning, "user-failure") => (USER, F::Finish),
            (S::Provisioning, "infra-failure" | "lease-expired") => (S::Queued, F::Retry),
            (S::Provisioning, "cancel") => (S::Cancelled, F::Finish),
            (S::Provisioning, _) => return None,

            (S::Running, "started") => (S::Running, F::None),
            (S::Running, "steps-done") => (S::Extracting, F::Advance),
            (S::Running, "user-failure") => (USER, F::Finish),
            (S::Running, "infra-failure" | "lease-expired") => (S::Queued, F::Retry),
            (S::Running, "cancel") => (S::Cancelled, F::Finish),
            (S::Running, _) => return None,

            (S::Extracting, "steps-done") => (S::Extracting, F::None),
            (S::Extracting, "extracted") => (S::Succeeded, F::Finish),
            (S::Extracting, "user-failure") => (USER, F::Finish),
            (S::Extracting, "infra-failure" | "lease-expired") => (INFRA, F::Finish),
            (S::Extracting, "cancel") => (S::Cancelled, F::Finish),
            (S::Extracting, _) => return None,

            (s, _) => (s, F::None),
        };
        Some(r)
    }

    #[test]
    fn full_transition_table() {
        let states =
            [S::Queued, S::Provisioning, S::Running, S::Extracting, S::Succeeded, USER, INFRA, S::Cancelled];
        for s in states {
            for e in all_events() {
                let got = transition(s, &e, 0);
                match expected(s, &e) {
                    Some(want) => assert_eq!(got, Ok(want), "{s:?} + {e:?}"),
                    None => {
                        assert_eq!(got, Err(TransitionError { state: s, event: e.name() }), "{s:?} + {e:?}")
                    }
                }
            }
        }
    }

    #[test]
    fn happy_path() {
        let mut h = History::new(0);
        assert_eq!(h.apply(Event::Lease, 1), Ok(F::Advance));
        assert_eq!(h.apply(Event::Started, 2), Ok(F::Advance));
        assert_eq!(h.apply(Event::StepsDone, 3), Ok(F::Advance));
        assert_eq!(h.apply(Event::Extracted, 4), Ok(F::Finish));
        assert_eq!(h.state(), S::Succeeded);
        let states: Vec<_> = h.records().iter().map(|r| (r.state, r.at)).collect();
        assert_eq!(
            states,
            vec![(S::Provisioning, 1), (S::Running, 2), (S::Extracting, 3), (S::Succeeded, 4)]
        );
        assert_eq!(h.attempts(), 1);
    }

    #[test]
    fn idempotent_duplicates_have_no_effect() {
        assert_eq!(transition(S::Provisioning, &Event::Lease, 0), Ok((S::Provisioning, F::None)));
        assert_eq!(transition(S::Running, &Event::Started, 0), Ok((S::Running, F::None)));
        assert_eq!(transition(S::Extracting, &Event::StepsDone, 0), Ok((S::Extracting, F::None)));
        assert_eq!(transition(S::Succeeded, &Event::Extracted, 0), Ok((S::Succeeded, F::None)));
        assert_eq!(transition(S::Queued, &Event::LeaseExpired, 1), Ok((S::Queued, F::None)));
        assert_eq!(transition(USER, &Event::UserFailure, 0), Ok((USER, F::None)));
        assert_eq!(transition(S::Cancelled, &Event::Cancel, 0), Ok((S::Cancelled, F::None)));
        // Duplicates do not add history.
        let mut h = History::new(0);
        h.apply(Event::Lease, 1).unwrap();
        h.apply(Event::Lease, 2).unwrap();
        h.apply(Event::Started, 3).unwrap();
        h.apply(Event::Started, 4).unwrap();
        assert_eq!(h.records().len(), 2);
        assert_eq!(h.attempts(), 1);
    }

    #[test]
    fn out_of_order_events_are_errors_and_change_nothing() {
        for (s, e) in [
            (S::Queued, Event::Extracted),
            (S::Queued, Event::Started),
            (S::Queued, Event::StepsDone),
            (S::Queued, Event::UserFailure),
            (S::Provisioning, Event::StepsDone),
            (S::Provisioning, Event::Extracted),
            (S::Running, Event::Lease),
            (S::Running, Event::Extracted),
            (S::Extracting, Event::Lease),
            (S::Extracting, Event::Started),
        ] {
            assert!(transition(s, &e, 0).is_err(), "{s:?} + {e:?}");
        }
        let mut h = History::new(0);
        assert!(h.apply(Event::Extracted, 1).is_err());
        assert_eq!(h.state(), S::Queued);
        assert!(h.records().is_empty());
    }

    #[test]
    fn infra_retries_twice_then_fails() {
        for e in [infra(), Event::LeaseExpired] {
            for s in [S::Provisioning, S::Running] {
                assert_eq!(transition(s, &e, 0), Ok((S::Queued, F::Retry)));
                assert_eq!(transition(s, &e, 1), Ok((S::Queued, F::Retry)));
                assert_eq!(transition(s, &e, 2), Ok((INFRA, F::Finish)));
                assert_eq!(transition_with(s, &e, 0, 0), Ok((INFRA, F::Finish)));
            }
        }
        let mut h = History::new(0);
        for _ in 0..2 {
            h.apply(Event::Lease, 1).unwrap();
            h.apply(Event::Started, 2).unwrap();
            assert_eq!(h.apply(infra(), 3), Ok(F::Retry));
        }
        h.apply(Event::Lease, 4).unwrap();
        h.apply(Event::Started, 5).unwrap();
        assert_eq!(h.apply(Event::LeaseExpired, 6), Ok(F::Finish));
        assert_eq!(h.state(), INFRA);
        assert_eq!(h.attempts(), 3);
        assert_eq!(h.retries_used(), 2);
    }

    #[test]
    fn user_failure_is_not_retried() {
        assert_eq!(transition(S::Running, &Event::UserFailure, 0), Ok((USER, F::Finish)));
    }

    #[test]
    fn cancel_from_every_non_terminal_state() {
        for s in [S::Queued, S::Provisioning, S::Running, S::Extracting] {
            assert_eq!(transition(s, &Event::Cancel, 0), Ok((S::Cancelled, F::Finish)));
        }
    }

    #[test]
    fn error_message_names_event_and_state() {
        let e = transition(S::Queued, &Event::Extracted, 0).unwrap_err();
        assert_eq!(e.to_string(), "event `extracted` is not valid while the build is queued");
    }
}
