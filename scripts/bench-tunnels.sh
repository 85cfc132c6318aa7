#!/usr/bin/env bash
# Reverse-tunnel scale benchmark (issue 4): builds the release binaries, then runs
# `tunnel-scale` (crate bench/) with one real and 499 simulated leaf clusters on one root
# proxy. Prints a table and refreshes the tunnel-scale section of docs/benchmarks.md.
#
#   bash scripts/bench-tunnels.sh                 # 500 leaves, figures into docs/benchmarks.md
#   bash scripts/bench-tunnels.sh --leaves 100 --no-doc
#   bash scripts/bench-tunnels.sh --help          # every option
#
# Takes about 5 minutes after the build (the first release build takes ~15 minutes on
# 2 cores). Run it on an otherwise idle machine: the figures include latency and CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
echo "[bench-tunnels] building the release binaries..." >&2
cargo build --release --workspace --bins
# Hundreds of tunnels need more than 1024 descriptors in the benchmark and in the proxy
# (tunnel-scale raises its soft limit too; children inherit it).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec "$target/release/tunnel-scale" --bin-dir "$target/release" "$@"
