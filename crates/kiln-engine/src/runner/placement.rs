//! Where each step of a job runs: the rules, apart from the sandboxes.
//!
//! The job runner asks [`place`] before every step and does what it says;
//! the rules are here so they are tested without root or a runtime:
//!
//! - a step handed secrets never shares a sandbox: the phase sandbox is
//!   ended first, and the step runs in one of its own that ends with it;
//! - steps of one phase and one network share the phase sandbox; a step
//!   with another phase or network ends it and starts the next;
//! - a host-side built-in (it works on the job's files from the host) ends
//!   the phase sandbox first;
//! - with one sandbox per step (the operator's choice) nothing is shared.

/// What a step is, for placing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StepKind<'a> {
    /// A `run:` step: the phase sandbox key (phase and network), whether it
    /// is handed secrets, and whether every step gets a sandbox of its own.
    Script { key: &'a str, phase: &'a str, secrets: bool, per_step: bool },
    /// A built-in that reads or writes the job's files from the host.
    HostBuiltin,
}

/// What the runner does before (and for) the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Run it in the running phase sandbox.
    Shared,
    /// End the running phase sandbox (if `close`, saying why), start one
    /// with `key`, run the step in it.
    Open { close: Option<String>, key: String },
    /// End the running phase sandbox (if `close`), run the step in a
    /// sandbox of its own.
    Alone { close: Option<String> },
    /// A host-side built-in: end the running phase sandbox (if `close`).
    Host { close: Option<String> },
}

/// Decides where a step runs, given the key of the running phase sandbox.
pub(crate) fn place(current: Option<&str>, step: StepKind<'_>) -> Placement {
    match step {
        StepKind::HostBuiltin => Placement::Host {
            close: current.map(|_| "a built-in step works on the job's files from the host".to_string()),
        },
        StepKind::Script { secrets: true, .. } => Placement::Alone {
            close: current.map(|_| "a step handed secrets runs in a sandbox of its own".to_string()),
        },
        StepKind::Script { per_step: true, .. } => Placement::Alone { close: None },
        StepKind::Script { key, phase, .. } => match current {
            Some(c) if c == key => Placement::Shared,
            Some(_) => Placement::Open {
                close: Some(format!("the next step runs in phase {phase}")),
                key: key.to_string(),
            },
            None => Placement::Open { close: None, key: key.to_string() },
        },
    }
}

/// The key of the phase sandbox after the step, as the runner leaves it.
#[cfg(test)]
fn after(current: Option<String>, p: &Placement) -> Option<String> {
    match p {
        Placement::Shared => current,
        Placement::Open { key, .. } => Some(key.clone()),
        Placement::Alone { .. } | Placement::Host { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn script(key: &'static str, secrets: bool) -> StepKind<'static> {
        StepKind::Script { key, phase: key, secrets, per_step: false }
    }

    #[test]
    fn the_rules() {
        assert_eq!(place(None, script("build", false)), Placement::Open { close: None, key: "build".into() });
        assert_eq!(place(Some("build"), script("build", false)), Placement::Shared);
        assert_eq!(
            place(Some("build"), script("deploy", false)),
            Placement::Open {
                close: Some("the next step runs in phase deploy".into()),
                key: "deploy".into()
            }
        );
        assert_eq!(
            place(Some("build"), script("build", true)),
            Placement::Alone { close: Some("a step handed secrets runs in a sandbox of its own".into()) }
        );
        assert_eq!(place(None, script("build", true)), Placement::Alone { close: None });
        assert_eq!(
            place(Some("build"), StepKind::HostBuiltin),
            Placement::Host { close: Some("a built-in step works on the job's files from the host".into()) }
        );
        assert_eq!(place(None, StepKind::HostBuiltin), Placement::Host { close: None });
        let per_step = StepKind::Script { key: "build", phase: "build", secrets: false, per_step: true };
        assert_eq!(place(None, per_step), Placement::Alone { close: None });
    }

    fn kind() -> impl Strategy<Value = (u8, bool, bool)> {
        // (phase key 0..3, secrets, host built-in)
        (0u8..3, prop::bool::weighted(0.25), prop::bool::weighted(0.2))
    }

    proptest! {
        /// Over any sequence of steps: a step handed secrets shares its
        /// sandbox with no other step (before or after it), steps only
        /// share a sandbox of their own key, and no host-side built-in
        /// runs while a phase sandbox is up.
        #[test]
        fn secrets_never_share_a_sandbox(steps in proptest::collection::vec(kind(), 1..40)) {
            const KEYS: [&str; 3] = ["build", "deploy", "build|net"];
            let mut current: Option<String> = None;
            // The sandbox each step ran in: a number per sandbox started.
            let mut sandbox = 0u32;
            let mut ran_in: Vec<(u32, bool)> = Vec::new();
            for (k, secrets, host) in steps {
                let kind = if host { StepKind::HostBuiltin } else { script(KEYS[k as usize], secrets) };
                let p = place(current.as_deref(), kind);
                if let Placement::Host { .. } = p {
                    current = after(current, &p);
                    prop_assert!(current.is_none());
                    continue;
                }
                match &p {
                    Placement::Shared => {
                        prop_assert_eq!(current.as_deref(), Some(KEYS[k as usize]));
                    }
                    Placement::Open { key, close } => {
                        prop_assert_eq!(key.as_str(), KEYS[k as usize]);
                        prop_assert_eq!(close.is_some(), current.is_some());
                        sandbox += 1;
                    }
                    Placement::Alone { close } => {
                        prop_assert!(secrets);
                        prop_assert_eq!(close.is_some(), current.is_some());
                        sandbox += 1;
                    }
                    Placement::Host { .. } => unreachable!(),
                }
                ran_in.push((sandbox, secrets));
                current = after(current, &p);
            }
            for (i, (sb, secrets)) in ran_in.iter().enumerate() {
                if *secrets {
                    let sharing = ran_in.iter().enumerate().filter(|(j, (o, _))| *j != i && o == sb).count();
                    prop_assert_eq!(sharing, 0, "a step with secrets shared sandbox {}", sb);
                }
            }
        }
    }
}
