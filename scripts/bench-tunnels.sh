#!/usr/bin/env bash
# Reverse-tunnel scale benchmark (issues 4 and 13): builds the release binaries, then runs
# `tunnel-scale` (crate bench/): one real and N-1 simulated leaf clusters on one root proxy.
# Prints a table and refreshes its section of docs/benchmarks.md.
#
#   bash scripts/bench-tunnels.sh                       # 500 leaves, the tunnel-scale section
#   bash scripts/bench-tunnels.sh --leaves 5000         # issue 13: per idle tunnel <= 64 KiB, tsh
#                                                       # median growth 1 -> 5000 <= 10 %, all
#                                                       # leaves online <= 10 s after a restart
#   bash scripts/bench-tunnels.sh --soak 30m --leaves 500   # idle soak: proxy RSS every 10 s,
#                                                       # least-squares slope (KiB/min), written
#                                                       # to its own section (tunnel-soak)
#   bash scripts/bench-tunnels.sh --leaves 100 --no-doc
#   bash scripts/bench-tunnels.sh --help                # every option
#
# 500 leaves take about 5 minutes after the build, 5000 about 15 (the first release build takes
# ~15 minutes on 2 cores); a soak takes its duration plus ~2 minutes. Run it on an otherwise
# idle machine: the figures include latency and CPU. BENCH_NO_BUILD=1 uses target/release as is.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
if [ -z "${BENCH_NO_BUILD:-}" ]; then
  echo "[bench-tunnels] building the release binaries..." >&2
  cargo build --release --workspace --bins
fi
# Thousands of tunnels need more descriptors than 1024 in the benchmark (about 3 per simulated
# leaf) and in the proxy: raise the soft limit to the hard one, and the hard one where allowed
# (tunnel-scale raises them too, as far as it may; children inherit them).
ulimit -Hn 1048576 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec "$target/release/tunnel-scale" --bin-dir "$target/release" "$@"
