//! `kiln-init`: PID 1 inside every sandbox (see `kiln_sandbox::init`).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(kiln_sandbox::init::main(&args));
}
