//! kiln's exit statuses: one enum, and how an error or a build's end maps
//! onto it. Every command returns an [`Exit`]; `main` turns it into the
//! process's status.

use std::process::ExitCode;

/// How a kiln command ended (docs/cli.md lists the statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It did what was asked (a build that succeeded).
    Ok,
    /// What was checked failed: a build, an artifact's verification, a
    /// host check.
    Failed,
    /// The input was refused: a workflow that does not load, a bad flag
    /// value, a missing file, an unknown build.
    Invalid,
    /// kiln could not do it: the host, a runtime, the store, the network.
    Infra,
    /// A build was cancelled (Ctrl-C, `kiln cancel`).
    Cancelled,
    /// The reader of kiln's output went away (`kiln logs | head`): what a
    /// tool killed by SIGPIPE reports (128 + 13).
    BrokenPipe,
}

impl Exit {
    /// The process's exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Failed => 1,
            Exit::Invalid => 2,
            Exit::Infra => 3,
            Exit::Cancelled => 130,
            Exit::BrokenPipe => 141,
        }
    }

    /// What a finished build's status means.
    pub fn of_build(status: &str) -> Exit {
        match status {
            "succeeded" => Exit::Ok,
            "cancelled" => Exit::Cancelled,
            _ => Exit::Failed,
        }
    }

    /// What an error means, from the typed errors in its chain: a reader
    /// gone is a broken pipe; a workflow that does not load, a build that
    /// does not exist or an input a library refused is invalid input;
    /// anything else is kiln's (the host's) failure.
    pub fn of_error(e: &anyhow::Error) -> Exit {
        for cause in e.chain() {
            if cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return Exit::BrokenPipe;
            }
            if cause.downcast_ref::<kiln_workflow::Diagnostics>().is_some() {
                return Exit::Invalid;
            }
            if let Some(engine) = cause.downcast_ref::<kiln_engine::EngineError>() {
                if matches!(engine, kiln_engine::EngineError::UnknownBuild(_)) {
                    return Exit::Invalid;
                }
            }
            if let Some(sandbox) = cause.downcast_ref::<kiln_sandbox::SandboxError>() {
                if matches!(sandbox, kiln_sandbox::SandboxError::Invalid(_)) {
                    return Exit::Invalid;
                }
            }
        }
        Exit::Infra
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_by_their_type_not_their_text() {
        let pipe: anyhow::Error = std::io::Error::from(std::io::ErrorKind::BrokenPipe).into();
        assert_eq!(Exit::of_error(&pipe.context("writing the log")), Exit::BrokenPipe);
        let unknown: anyhow::Error = kiln_engine::EngineError::UnknownBuild("nope".into()).into();
        assert_eq!(Exit::of_error(&unknown), Exit::Invalid);
        let bad: anyhow::Error = kiln_sandbox::SandboxError::Invalid("bad id".into()).into();
        assert_eq!(Exit::of_error(&bad.context("preparing")), Exit::Invalid);
        assert_eq!(Exit::of_error(&anyhow::anyhow!("invalid-looking text")), Exit::Infra);
    }

    #[test]
    fn statuses_are_the_documented_numbers() {
        let all = [Exit::Ok, Exit::Failed, Exit::Invalid, Exit::Infra, Exit::Cancelled, Exit::BrokenPipe];
        assert_eq!(all.map(Exit::code), [0, 1, 2, 3, 130, 141]);
        assert_eq!(
            ["succeeded", "failed", "cancelled", "interrupted"].map(Exit::of_build),
            [Exit::Ok, Exit::Failed, Exit::Cancelled, Exit::Failed]
        );
    }
}
