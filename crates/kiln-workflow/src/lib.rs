//! The workflow model: a GitHub Actions workflow file parsed, validated and
//! expanded into a [`Plan`], a DAG of jobs (matrix legs are jobs of their own).
//!
//! This crate owns everything that can be decided from the file alone: syntax,
//! the keys kiln accepts, expressions (`${{ }}`), matrix expansion, the job
//! graph and its cycles, and the Kahn scheduler state machine that the engine
//! drives. It does no I/O at all, so every entry point can be fuzzed and
//! property-tested; the engine owns time, processes and sandboxes.
//!
//! Errors carry the file, line and column of the node they are about
//! ([`Diagnostic`]); the engine prints them and exits with status 2 before any
//! sandbox starts.

mod action;
mod call;
mod checks;
mod diagnostic;
pub mod expr;
mod matrix;
mod model;
mod parse;
mod plan;
mod runners;
mod scheduler;
mod secrets_check;
mod service;
mod yaml;

pub use action::{parse_action, ActionInput, CompositeAction};
pub use call::{CallInput, CallSecrets, InputType, WorkflowCall, MAX_CALL_DEPTH};
pub use diagnostic::{Diagnostic, Diagnostics, Location};
pub use expr::{Contexts, Expr, ExprError, FileHasher, StatusFns, Template, Value};
pub use model::*;
pub use parse::{check_relative_path, parse_size, OUTPUT_TYPES};
pub use plan::{load, load_with, MatrixGroup, Plan, PlannedJob};
pub use runners::{label_matches, RunnerLabels};
pub use scheduler::{JobResult, Scheduler};
