#!/usr/bin/env bash
# The test command: builds everything once, then runs every test (unit and end-to-end).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The e2e tests start the real binaries, so build them first, once, with the tests.
cargo build --workspace --bins --tests --locked 2>&1 | tail -n 20
bash scripts/k8s-validate.sh
cargo test --workspace --locked -- --test-threads="${TEST_THREADS:-2}"
