#!/usr/bin/env bash
# The fuzz gate: builds every target of fuzz/ (cargo-fuzz, libFuzzer, no
# sanitizer: stable Rust) and runs each for SECONDS (default 15) on a scratch
# copy of its seed corpus, so nothing is written into fuzz/corpus/. Exits
# non-zero when any target finds a crash, a timeout (-timeout, 10 s per
# input) or an out-of-memory (-rss_limit_mb, 2048); the inputs are kept in
# fuzz/artifacts/TARGET/ (not checked in) and printed in hex when short.
#
#   ./fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
shift || true
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Targets that need a scratch directory (the lockfile and repository-file
# readers take a repository root) make it under $TMPDIR: keep it in $work.
mkdir -p "$work/tmp"

start=$(date +%s)
cargo fuzz build --fuzz-dir fuzz --sanitizer none
echo "fuzz: built the targets in $(($(date +%s) - start)) s"

failed=()
for t in "${targets[@]}"; do
    mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
    if [ -d "fuzz/corpus/$t" ]; then
        cp -R "fuzz/corpus/$t/." "$work/corpus/$t/"
    fi
    t0=$(date +%s)
    if TMPDIR="$work/tmp" cargo fuzz run --fuzz-dir fuzz --sanitizer none "$t" "$work/corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$work/artifacts/$t/" -print_final_stats=1 >"$work/$t.log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log")
        echo "fuzz: $t: ok, ${runs:-?} runs in $(($(date +%s) - t0)) s"
    else
        failed+=("$t")
        echo "fuzz: $t: FAILED after $(($(date +%s) - t0)) s" >&2
        # The panic (message on the line after "panicked at"), or libFuzzer's
        # verdict for a hang or an out-of-memory; the whole log is kept.
        grep -A1 -m1 'panicked at' "$work/$t.log" >&2 || true
        grep -E '^==[0-9]+== ERROR: |^SUMMARY: ' "$work/$t.log" >&2 || tail -n 20 "$work/$t.log" >&2
        mkdir -p "fuzz/artifacts/$t"
        cp "$work/$t.log" "fuzz/artifacts/$t/log.txt"
        echo "fuzz: $t: log kept in fuzz/artifacts/$t/log.txt" >&2
        for a in "$work/artifacts/$t"/*; do
            [ -f "$a" ] || continue
            cp "$a" "fuzz/artifacts/$t/"
            echo "fuzz: $t: input kept in fuzz/artifacts/$t/$(basename "$a") ($(wc -c <"$a") bytes)" >&2
            if [ "$(wc -c <"$a")" -le 512 ]; then
                od -A x -t x1z -v "$a" >&2
            fi
        done
    fi
done
echo "fuzz: ${#targets[@]} targets, $secs s each, $(($(date +%s) - start)) s in all with the build"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: failed: ${failed[*]} (reproduce: cargo fuzz run --sanitizer none TARGET FILE)" >&2
fi
# The plain closing line CI reads.
echo "fuzz: $((${#targets[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
[ "${#failed[@]}" -eq 0 ]
