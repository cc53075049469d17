//! Retries through the state machine: whatever events arrive, a build runs
//! at most three times and always reaches a terminal state.

use kiln_queue::{transition, BuildState, Event, History};
use proptest::prelude::*;

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
}
