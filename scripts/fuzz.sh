#!/usr/bin/env bash
# Runs the fuzz targets in fuzz/ under libFuzzer (cargo-fuzz) for a number of executions each
# and prints executions, speed and findings per target. Not part of CI (scripts/test.sh only
# builds the targets and replays the seeds); see docs/security.md, "Fuzzing".
#
#   bash scripts/fuzz.sh                      # every target, 10,000,000 executions each
#   bash scripts/fuzz.sh -r 200000 labels     # 200k executions of one target
#
# Environment: FUZZ_SANITIZER (none | address, default none: the code under test forbids
# unsafe, and no sanitizer runs several times faster), FUZZ_NICE (default 19),
# FUZZ_TIMEOUT (seconds one input may take before it counts as a hang, default 10),
# FUZZ_MAX_TIME (stop a target after this many seconds even before its executions, default
# none).
# Corpora grow in fuzz/corpus/<target>/ and findings land in fuzz/artifacts/<target>/, both
# kept out of git; the hand-written seeds in fuzz/seeds/<target>/ are read, never written.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=10000000
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        -r|--runs) runs="$2"; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
sanitizer="${FUZZ_SANITIZER:-none}"
niceness="${FUZZ_NICE:-19}"
timeout="${FUZZ_TIMEOUT:-10}"
max_time="${FUZZ_MAX_TIME:-0}"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    nice -n "$niceness" cargo install cargo-fuzz --locked
fi
# cargo-fuzz passes nightly-only flags (-Zsanitizer, ...); the stable compiler accepts them
# when bootstrapping is allowed, so no nightly toolchain is needed.
export RUSTC_BOOTSTRAP=1

if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi

build=(--fuzz-dir fuzz --sanitizer "$sanitizer" --release --debug-assertions)
logs="fuzz/target/logs"
mkdir -p "$logs"
# All targets at once: they share every dependency, so one more costs only its link.
echo "building the fuzz targets (sanitizer: $sanitizer; log: $logs/build.log)"
if ! nice -n "$niceness" cargo fuzz build "${build[@]}" >"$logs/build.log" 2>&1; then
    tail -n 30 "$logs/build.log" >&2
    echo "building the fuzz targets failed" >&2
    exit 1
fi
bin_dir="fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release"
summary=()
failed=0
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    before=$(find "fuzz/artifacts/$t" -type f | wc -l)
    log="$logs/$t.log"
    echo "fuzzing $t for $runs executions (log: $log)"
    start=$(date +%s)
    status=0
    # The binary built above, not `cargo fuzz run`: that would rebuild whenever a source file
    # changed in between, and every target of one invocation must test the same code.
    nice -n "$niceness" "$bin_dir/$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -artifact_prefix="fuzz/artifacts/$t/" \
        -runs="$runs" -max_total_time="$max_time" -timeout="$timeout" -max_len=16384 -print_final_stats=1 >"$log" 2>&1 || status=$?
    secs=$(( $(date +%s) - start ))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    findings=$(( $(find "fuzz/artifacts/$t" -type f | wc -l) - before ))
    if [ "$status" -ne 0 ] && [ "$findings" -eq 0 ]; then
        findings=1 # stopped without an artifact (build or runtime failure): see the log
    fi
    [ "$findings" -gt 0 ] && failed=1
    summary+=("$(printf '%-15s %12s %8s %6s %8s' "$t" "${execs:-?}" "${speed:-?}" "${secs}s" "$findings")")
    if [ "$findings" -gt 0 ]; then
        echo "  FINDING in $t (exit $status); last lines of $log:"
        tail -n 30 "$log" | sed 's/^/    /'
    fi
done

echo
printf '%-15s %12s %8s %6s %8s\n' target executions exec/s time findings
printf '%s\n' "${summary[@]}"
exit "$failed"
