#!/usr/bin/env bash
# `make bench`: install what is missing, run every system through every
# scenario, write bench/results/<date>.md with plots, print its path.
#   BENCH_QUICK=1        small and short instead of full
#   BENCH_SYSTEMS=...    comma list, default: all eight (see ssebench/__main__.py)
#   BENCH_SCENARIOS=...  comma list, default classic,storm,storm-retry,hostile,soak (storm: the reconnect storm alone;
#                        storm-retry: ours' storm with clients that wait their retry:, RETRY_JITTER=0 then 0.25;
#                        hostile: non-reading streams on a big backlog, alone; soak: clients that come and go, ours only)
#   BENCH_SOAK_MINUTES=M measured minutes of the soak per store (full: 6, quick: 0.7)
#   BENCH_ROOT=/path     repo whose server is measured (default: this repo)
#   BENCH_SCALE=0.05     shrink every stream count (development runs)
#   BENCH_REPETITION_BUDGET=S  seconds one system's repetition may take (full: 120)
#   BENCH_BUDGET_MINUTES=M     stop starting classic repetitions after M minutes
#   BENCH_SKIP_INSTALL=1 trust that bench/install.sh already ran
#   BENCH_SNAPSHOT=1     measure the server as committed (`git archive HEAD` of the
#                        root into a temp dir), not the files in the work tree: a
#                        respawned worker imports the app again, mid-run
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$BENCH_DIR/.." && pwd)"

# Each stream is a descriptor; servers and load generators inherit this.
ulimit -n 20000

if [[ "${BENCH_SKIP_INSTALL:-0}" != 1 ]]; then
    bash "$BENCH_DIR/install.sh"
fi

server_root="${BENCH_ROOT:-$REPO_ROOT}"
snapshot=""
if [[ "${BENCH_SNAPSHOT:-0}" == 1 ]]; then
    snapshot="$(mktemp -d "${TMPDIR:-/tmp}/ssebench-snapshot.XXXXXX")"
    git -C "$server_root" archive HEAD | tar -x -C "$snapshot"
    ln -s "$server_root/.venv" "$snapshot/.venv"
    # Named in the report: the snapshot has no .git of its own.
    export BENCH_COMMIT
    BENCH_COMMIT="$(git -C "$server_root" log -1 --format='%h %s')"
    server_root="$snapshot"
fi

args=(--root "$server_root"
      --systems "${BENCH_SYSTEMS:-ours,ours-mongodb,centrifugo,mercure,nchan,pushpin,sse-starlette,flask-sse}"
      --scenarios "${BENCH_SCENARIOS:-classic,storm,storm-retry,hostile,soak}")
[[ "${BENCH_QUICK:-0}" == 1 ]] && args+=(--quick)
[[ -n "${BENCH_SCALE:-}" ]] && args+=(--scale "$BENCH_SCALE")
[[ -n "${BENCH_REPEATS:-}" ]] && args+=(--repeats "$BENCH_REPEATS")
[[ -n "${BENCH_REPETITION_BUDGET:-}" ]] && args+=(--repetition-budget "$BENCH_REPETITION_BUDGET")
[[ -n "${BENCH_BUDGET_MINUTES:-}" ]] && args+=(--budget-minutes "$BENCH_BUDGET_MINUTES")

# Hard stop well past the planned time: the run must end by itself. Each
# storm bounds its phases (at most ~9 min, usually 1-3); the classic
# scenarios stop starting repetitions when their budget is spent.
if [[ "${BENCH_QUICK:-0}" == 1 ]]; then limit=2400; else limit=7200; fi

bench_pid=""
stop_bench() {
    # The bench stops its own servers when told to; TERM it, wait, then KILL.
    if [[ -n "$bench_pid" ]] && kill -0 "$bench_pid" 2>/dev/null; then
        kill -TERM "$bench_pid" 2>/dev/null || true
        for _ in $(seq 1 30); do kill -0 "$bench_pid" 2>/dev/null || break; sleep 1; done
        kill -KILL "$bench_pid" 2>/dev/null || true
    fi
    if [[ -n "$snapshot" ]]; then rm -rf "$snapshot"; fi
}
trap stop_bench EXIT INT TERM

cd "$BENCH_DIR"
timeout --signal=TERM --kill-after=60 "$limit" \
    "$BENCH_DIR/.venv/bin/python" -m ssebench "${args[@]}" &
bench_pid=$!
wait "$bench_pid"
