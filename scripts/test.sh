#!/usr/bin/env bash
# The test command: builds everything once, then runs every test (unit and end-to-end).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The e2e tests start the real binaries, so build them first, once, with the tests.
cargo build --workspace --bins --tests --locked 2>&1 | tail -n 20
bash scripts/k8s-validate.sh
cargo test --workspace --locked -- --test-threads="${TEST_THREADS:-2}"
# The fuzz targets (fuzz/, a workspace of its own): built without libFuzzer into the shared
# target dir, reusing the workspace's compiled dependencies (only the project's own crates
# compile again, ~35 s), and their seed corpus replayed. Fuzzing itself is scripts/fuzz.sh.
# Not --locked: fuzz/Cargo.lock follows the root lock file and cargo adds what the root gained.
cargo test --manifest-path fuzz/Cargo.toml --target-dir target --no-default-features
