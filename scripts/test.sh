#!/usr/bin/env bash
# The whole test suite: installs what the tests need (as install.sh does),
# checks formatting and lints, then runs every unit and integration test.
# Integration tests run real sandboxes on both tiers and need root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace -- --test-threads=2
