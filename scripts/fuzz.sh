#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ under AFL (afl.rs's cargo-afl, stable Rust) for SECONDS each
# (default 600), two at a time, from the committed seed corpus (fuzz/corpus/TARGET). Crashes
# are copied to fuzz/crashes/TARGET/, where the test command replays them; the executions and
# findings of each target are printed at the end. AFL's output: target/fuzz/TARGET/.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frames ipvsadm control state sync)
require_cargo
install_packages clang llvm
command -v cargo-afl >/dev/null || cargo install --locked cargo-afl --version 0.18.2
# AFL++ itself, built once per toolchain by cargo-afl.
ls "$HOME"/.local/share/afl.rs/rustc-*/afl.rs-*/afl/bin/afl-fuzz >/dev/null 2>&1 || cargo afl config --build
(cd fuzz/afl && cargo afl build --release)

export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_QUIET=1
run() {
    local t=$1 out=target/fuzz/$1
    rm -rf "$out"
    mkdir -p "$out"
    cargo afl fuzz -V "$secs" -i "fuzz/corpus/$t" -o "$out" "fuzz/afl/target/release/$t" \
        >"$out.log" 2>&1 || echo "fuzz.sh: afl-fuzz for $t exited with $?" >&2
}
pids=()
for t in "${targets[@]}"; do
    run "$t" &
    pids+=($!)
    if [ ${#pids[@]} -ge 2 ]; then
        wait "${pids[0]}"
        pids=("${pids[@]:1}")
    fi
done
for p in "${pids[@]}"; do wait "$p"; done

status=0
for t in "${targets[@]}"; do
    stats=target/fuzz/$t/default/fuzzer_stats
    if [ ! -f "$stats" ]; then
        echo "$t: no statistics (see target/fuzz/$t.log)"
        status=1
        continue
    fi
    execs=$(awk -F: '/^execs_done/ {gsub(/ /, "", $2); print $2}' "$stats")
    crashes=$(awk -F: '/^saved_crashes/ {gsub(/ /, "", $2); print $2}' "$stats")
    corpus=$(awk -F: '/^corpus_count/ {gsub(/ /, "", $2); print $2}' "$stats")
    echo "$t: $execs executions in ${secs} s, corpus $corpus, crashes $crashes"
    if [ "${crashes:-0}" != 0 ]; then
        mkdir -p "fuzz/crashes/$t"
        for f in target/fuzz/$t/default/crashes/id:*; do
            cp "$f" "fuzz/crashes/$t/$(basename "$f" | tr ':,' '__')"
        done
        status=1
    fi
done
exit $status
