#!/usr/bin/env bash
# `make bench`: install what is missing, run every system through every
# scenario, write bench/results/<date>.md with plots, print its path.
#   BENCH_QUICK=1        small and short (~3-4 min) instead of full (~25 min)
#   BENCH_SYSTEMS=...    comma list, default ours,nchan,pushpin,flask-sse
#   BENCH_ROOT=/path     repo whose server is measured (default: this repo)
#   BENCH_SCALE=0.05     shrink every stream count (development runs)
#   BENCH_SKIP_INSTALL=1 trust that bench/install.sh already ran
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$BENCH_DIR/.." && pwd)"

# Each stream is a descriptor; servers and load generators inherit this.
ulimit -n 20000

if [[ "${BENCH_SKIP_INSTALL:-0}" != 1 ]]; then
    bash "$BENCH_DIR/install.sh"
fi

args=(--root "${BENCH_ROOT:-$REPO_ROOT}" --systems "${BENCH_SYSTEMS:-ours,nchan,pushpin,flask-sse}")
[[ "${BENCH_QUICK:-0}" == 1 ]] && args+=(--quick)
[[ -n "${BENCH_SCALE:-}" ]] && args+=(--scale "$BENCH_SCALE")
[[ -n "${BENCH_REPEATS:-}" ]] && args+=(--repeats "$BENCH_REPEATS")

# Hard stop well past the planned time: the run must end by itself.
if [[ "${BENCH_QUICK:-0}" == 1 ]]; then limit=480; else limit=1800; fi

bench_pid=""
stop_bench() {
    # The bench stops its own servers when told to; TERM it, wait, then KILL.
    if [[ -n "$bench_pid" ]] && kill -0 "$bench_pid" 2>/dev/null; then
        kill -TERM "$bench_pid" 2>/dev/null || true
        for _ in $(seq 1 30); do kill -0 "$bench_pid" 2>/dev/null || break; sleep 1; done
        kill -KILL "$bench_pid" 2>/dev/null || true
    fi
}
trap stop_bench EXIT INT TERM

cd "$BENCH_DIR"
timeout --signal=TERM --kill-after=60 "$limit" \
    "$BENCH_DIR/.venv/bin/python" -m ssebench "${args[@]}" &
bench_pid=$!
wait "$bench_pid"
