#!/usr/bin/env bash
# The whole test suite: installs what the tests need (as install.sh does),
# checks formatting, lints and the dependency tree's licenses and sources,
# then runs every unit and integration test.
# Integration tests run real sandboxes on both tiers and need root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
# The servers tests run on loopback (S3, Azure), from PyPI and npm.
./scripts/test-deps.sh
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
# Licenses, banned crates and sources of the dependency tree (deny.toml).
# The advisory database cannot be fetched here: `cargo deny check
# advisories` is for machines that can reach it.
if ! command -v cargo-deny >/dev/null 2>&1; then
    cargo install --locked cargo-deny --version 0.20.2
fi
cargo deny --offline check licenses bans sources
cargo test --locked --workspace -- --test-threads=2
# Fuzzing (fuzz/, its own workspace; docs/testing.md): every target for 15 s
# on a scratch copy of its seed corpus, on stable Rust (no sanitizer); a
# crash, hang or out-of-memory fails the run.
if ! cargo fuzz --version 2>/dev/null | grep -qx 'cargo-fuzz 0.13.2'; then
    cargo install --locked cargo-fuzz --version 0.13.2
fi
./fuzz/run.sh 15
