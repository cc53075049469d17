//! The actions kiln has built in, one module each. Each adds the
//! `JobRun` method its step calls; [`super::job`] dispatches on the
//! step's [`kiln_workflow::StepAction`].

mod artifact;
mod cache;
mod checkout;
mod composite;
mod detect;
mod node_dist;
mod package;
mod setup;
mod uv_dist;

pub(crate) use artifact::*;
pub(crate) use package::*;
pub(crate) use setup::RUSTUP_SHIM;
