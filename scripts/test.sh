#!/usr/bin/env bash
# The whole test suite: installs what the tests need (as install.sh does),
# checks formatting, lints and the dependency tree's licenses and sources,
# then runs every unit and integration test.
# Integration tests run real sandboxes on both tiers and need root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
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
