//! `kiln`: the command-line front end. Thin: it parses flags, loads the
//! workflow, sets up the engine and renders its events.
//!
//! Exit status: 0 all jobs succeeded, 1 a job failed, 2 invalid input,
//! 3 kiln itself could not run (missing runtime, unusable state store),
//! 130 cancelled.

mod bench;
mod cli;
mod client;
mod doctor;
mod exit;
mod image;
mod render;
mod run;
mod serve;
mod serve_bench;
mod zero;

use std::process::ExitCode;

use clap::Parser;

/// Output to a reader that went away (`kiln logs latest | head`) ends the
/// command quietly, whatever command it is: Rust ignores SIGPIPE, so a
/// write to a closed pipe fails, and `println!` panics on it.
fn exit_quietly_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.contains("Broken pipe") {
            std::process::exit(i32::from(exit::Exit::BrokenPipe.code()));
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    exit_quietly_on_broken_pipe();
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("KILN_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let code = match cli.command {
        cli::Command::Run(args) => run::run(args),
        cli::Command::Build(args) => zero::build(args),
        cli::Command::Reproduce(args) => zero::reproduce(args),
        cli::Command::Validate(args) => run::validate(args),
        cli::Command::Builds(args) => run::builds(args),
        cli::Command::Logs(args) if client::server_configured() => client::logs(args),
        cli::Command::Logs(args) => run::logs(args),
        cli::Command::Audit(args) => run::audit(args),
        cli::Command::Artifacts(args) => run::artifacts(args),
        cli::Command::Artifact(cli::ArtifactCommand::Get { id, out, .. }) if client::server_configured() => {
            client::artifact_get(&id, &out)
        }
        cli::Command::Artifact(cmd) => run::artifact(cmd),
        cli::Command::Verify(args) => run::verify(args),
        cli::Command::Key(args) => run::key(args),
        cli::Command::Gc(args) => run::gc(args),
        cli::Command::Image(cmd) => image::image(cmd),
        cli::Command::Bench(args) => bench::bench(args),
        cli::Command::Doctor(args) => doctor::doctor(args),
        // `kiln serve` and its clients.
        cli::Command::Serve(args) => serve::serve(args),
        cli::Command::Worker(args) => serve::worker(args),
        cli::Command::Admin(cmd) => serve::admin(cmd),
        cli::Command::Submit(args) => client::submit(args),
        cli::Command::Status(args) => client::status(args),
        cli::Command::Cancel(args) => client::cancel(args),
        cli::Command::BenchServe(args) => serve_bench::bench_serve(args),
    };
    code.into()
}
