"""Run the SSE benchmark: every system, every scenario, then write the report.

Usage (bench/run.sh does this for `make bench`):
  python -m ssebench [--quick] [--systems ours,ours-mongodb,centrifugo,mercure,nchan,pushpin,sse-starlette,flask-sse]
                     [--scenarios classic,storm,storm-retry,hostile,soak] [--root REPO] [--repeats N] [--scale F]
                     [--budget-minutes M]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .clients import ClientPool
from .hostile import HostileReaders
from .machine import describe_machine
from .plan import Plan, choose_plan
from .report import write_report
from .scenarios import Repetition
from .soak import Soak
from .storm import Storm
from .subscriber import raise_fd_limit
from .systems import BENCH_DIR, all_systems

LOG_DIR = BENCH_DIR / "out" / "logs"
# The environment settings of run.sh, quoted in the report as the command that made it.
RUN_SETTINGS = (
    "BENCH_QUICK", "BENCH_ROOT", "BENCH_SYSTEMS", "BENCH_SCENARIOS", "BENCH_SCALE", "BENCH_REPEATS",
    "BENCH_SNAPSHOT", "BENCH_REPETITION_BUDGET", "BENCH_BUDGET_MINUTES", "BENCH_SOAK_MINUTES",
)
DEFAULT_SYSTEMS = "ours,ours-mongodb,centrifugo,mercure,nchan,pushpin,sse-starlette,flask-sse"
# classic: idle, broadcast, fan-out, cross-worker (scenarios.py, one flow);
# storm: the reconnect storm (storm.py), for the systems that can resume;
# storm-retry: the storm again with clients that wait their `retry:` as EventSource
# does, ours only, once with RETRY_JITTER=0 and once with its default (issue 15);
# hostile: streams that ask for a big backlog and never read (hostile.py),
# for the systems that keep history;
# soak: clients that come and go for minutes, the workers' RSS (soak.py), ours only.
SCENARIOS = ("classic", "storm", "storm-retry", "hostile", "soak")
# The soak measures what our server keeps per stream opened; the peers are not its subject.
SOAK_SYSTEMS = ("ours", "ours-mongodb")
# RETRY_JITTER is our setting: the peers have nothing to turn off and on.
RETRY_STORM_SYSTEMS = ("ours", "ours-mongodb")
# (label, server settings) of the storm-retry runs, in the order they run.
RETRY_STORM_VARIANTS = (
    ("without jitter (RETRY_JITTER=0)", {"RETRY_JITTER": "0"}),
    ("with jitter (RETRY_JITTER=0.25, the default)", {"RETRY_JITTER": "0.25"}),
)
# Minutes of classic scenarios per system and repetition, for the default budget.
CLASSIC_MINUTES = {"full": 2.0, "quick": 0.75}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ssebench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small and short: ~3-4 minutes")
    parser.add_argument("--systems", default=DEFAULT_SYSTEMS)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma list of: classic (idle, broadcast, fan-out, cross-worker), storm, storm-retry,"
                             " hostile, soak")
    parser.add_argument("--root", type=Path, default=BENCH_DIR.parent,
                        help="repo whose server is 'ours' (default: this repo)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every stream count (development runs: 0.05)")
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="stop starting repetitions after this long (default: by mode)")
    parser.add_argument("--repetition-budget", type=float, default=None,
                        help="seconds one repetition of one system may take (default: by mode)")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--stem", default=None, help="report file name without extension")
    parser.add_argument("--render", type=Path, default=None,
                        help="only write the report again from a run's saved .json")
    return parser.parse_args(argv)


def scaled(plan: Plan, scale: float) -> Plan:
    if scale == 1.0:
        return plan

    def shrink(count: int) -> int:
        return max(10, int(count * scale))

    streams = shrink(plan.storm_streams)
    return dataclasses.replace(
        plan,
        idle_steps=tuple(shrink(n) for n in plan.idle_steps),
        broadcast_sizes=tuple(shrink(n) for n in plan.broadcast_sizes),
        fanout_subscribers=shrink(plan.fanout_subscribers),
        storm_streams=streams,
        storm_rooms=min(plan.storm_rooms, streams),
        # The window stays big enough that the storm's own messages never evict each other.
        storm_fill=max(2000, int(plan.storm_fill * scale)),
        # The fill stays: it is what makes the backlog big.
        hostile_streams=shrink(plan.hostile_streams),
        soak_clients=shrink(plan.soak_clients),
    )


def wanted_scenarios(text: str) -> list[str]:
    wanted = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in SCENARIOS]
    if unknown or not wanted:
        raise SystemExit(f"ssebench: unknown scenarios {unknown or text!r}; choose from {', '.join(SCENARIOS)}")
    return wanted


Outcome = tuple[
    dict[str, list], dict[str, dict], dict[str, dict], dict[str, str], dict[str, tuple[str, tuple[str, ...]]],
    dict[str, dict], dict[str, dict],
]


async def run_all(args: argparse.Namespace, plan: Plan) -> Outcome:
    wanted = [name.strip() for name in args.systems.split(",") if name.strip()]
    scenarios = wanted_scenarios(args.scenarios)
    systems = [s for s in all_systems(args.root.resolve()) if s.name in wanted]
    skipped: dict[str, str] = {}
    runnable = []
    for system in systems:
        reason = system.unavailable()
        if reason:
            skipped[system.name] = reason
            print(f"skip {system.name}: {reason}", flush=True)
        else:
            runnable.append(system)
    per_run = CLASSIC_MINUTES[plan.mode] * plan.repeats * max(1, len(runnable))
    budget_s = 60 * (args.budget_minutes or per_run)
    deadline = time.monotonic() + budget_s
    results: dict[str, list[dict[str, Any]]] = {}
    storms: dict[str, dict[str, Any]] = {}
    hostile: dict[str, dict[str, Any]] = {}
    soaks: dict[str, dict[str, Any]] = {}
    retry_storms: dict[str, dict[str, dict[str, Any]]] = {}
    sizes = [plan.storm_streams] if {"storm", "storm-retry"} & set(scenarios) else []
    if "hostile" in scenarios:
        sizes.append(1)  # its fresh reader; the hostile sockets are the orchestrator's own
    if "soak" in scenarios:
        sizes.append(plan.soak_clients + plan.soak_kept)
    if "classic" in scenarios:
        sizes += [*plan.idle_steps, *plan.broadcast_sizes, plan.fanout_subscribers]
    pool = ClientPool(max(sizes))
    try:
        # Systems take turns within each repetition, so a noisy minute on the
        # shared machine spreads over all of them instead of hitting one.
        for repeat in range(plan.repeats if "classic" in scenarios else 0):
            for system in runnable:
                results.setdefault(system.name, [])
                if time.monotonic() > deadline:
                    print(f"time budget spent: {system.name} repetition {repeat + 1} not run", flush=True)
                    results[system.name].append({"notes": [f"repetition {repeat + 1} not run: time budget spent"]})
                    continue
                print(f"== {system.name}, repetition {repeat + 1}/{plan.repeats}", flush=True)
                with tempfile.TemporaryDirectory(prefix=f"ssebench-{system.name}-") as workdir:
                    repetition = Repetition(system, plan, pool, Path(workdir))
                    results[system.name].append(await repetition.run())
                    _keep_logs(Path(workdir), LOG_DIR / f"{system.name}-{repeat + 1}")
        # The storm runs once per system: it is long, and each run is its own
        # 10,000-stream sample. Each storm bounds its own time (plan.storm_*).
        for system in runnable if "storm" in scenarios else []:
            if not system.resumable:
                storms[system.name] = {"skipped": "cannot resume a stream from a Last-Event-ID"}
                continue
            print(f"== {system.name}, reconnect storm", flush=True)
            with tempfile.TemporaryDirectory(prefix=f"ssebench-{system.name}-storm-") as workdir:
                storms[system.name] = await Storm(system, plan, pool, Path(workdir)).run()
                _keep_logs(Path(workdir), LOG_DIR / f"{system.name}-storm")
        # Twice per store of ours: the same storm with clients that honour `retry:`,
        # without and with RETRY_JITTER.
        for system in runnable if "storm-retry" in scenarios else []:
            if system.name not in RETRY_STORM_SYSTEMS:
                continue
            retry_storms[system.name] = {}
            for label, env in RETRY_STORM_VARIANTS:
                print(f"== {system.name}, reconnect storm, clients wait their retry:, {label}", flush=True)
                with tempfile.TemporaryDirectory(prefix=f"ssebench-{system.name}-storm-retry-") as workdir:
                    storm = Storm(system, plan, pool, Path(workdir), env=env, honour_retry=True)
                    retry_storms[system.name][label] = await storm.run()
                    _keep_logs(Path(workdir), LOG_DIR / f"{system.name}-storm-retry-{env['RETRY_JITTER']}")
        # Once per system that keeps history; each run bounds its own time and memory.
        for system in runnable if "hostile" in scenarios else []:
            if not system.resumable:
                hostile[system.name] = {"skipped": "keeps no history, so it has no backlog to ask for"}
                continue
            print(f"== {system.name}, hostile readers", flush=True)
            with tempfile.TemporaryDirectory(prefix=f"ssebench-{system.name}-hostile-") as workdir:
                hostile[system.name] = await HostileReaders(system, plan, pool, Path(workdir)).run()
                _keep_logs(Path(workdir), LOG_DIR / f"{system.name}-hostile")
        # Once per store of ours; each run is bounded by its plan (BENCH_SOAK_MINUTES lengthens it).
        for system in runnable if "soak" in scenarios else []:
            if system.name not in SOAK_SYSTEMS:
                continue
            print(f"== {system.name}, soak", flush=True)
            with tempfile.TemporaryDirectory(prefix=f"ssebench-{system.name}-soak-") as workdir:
                soaks[system.name] = await Soak(system, plan, pool, Path(workdir)).run()
                _keep_logs(Path(workdir), LOG_DIR / f"{system.name}-soak")
    finally:
        await asyncio.to_thread(pool.stop)
    described = {s.name: (s.description, s.caveats) for s in runnable}
    return results, storms, hostile, skipped, described, soaks, retry_storms


def _keep_logs(workdir: Path, destination: Path) -> None:
    """Copy the servers' logs out of the temp dir before it goes (bench/out is git-ignored)."""
    shutil.rmtree(destination, ignore_errors=True)
    destination.mkdir(parents=True, exist_ok=True)
    for log in workdir.rglob("*.log"):
        shutil.copy(log, destination / log.name)


def render_again(saved: Path) -> int:
    """Write the report of an earlier run again from its .json (after a report change)."""
    import json

    data = json.loads(saved.read_text())
    plan = Plan(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["plan"].items()})
    meta = data["meta"]
    systems = {name: (d, tuple(c)) for name, (d, c) in meta["systems"].items()}
    path = write_report(
        data["results"], data.get("storms", {}), data["skipped"], systems, plan, saved.parent, saved.stem,
        meta["started"], meta["elapsed_s"], meta["command"], Path(meta["server_root"]),
        meta.get("machine"), data.get("hostile", {}), data.get("soaks", {}), data.get("retry_storms", {}),
    )
    print(f"ssebench: report written to {path}", flush=True)
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.render:
        return render_again(args.render)
    plan = scaled(choose_plan(args.quick, args.repeats), args.scale)
    if args.repetition_budget:
        plan = dataclasses.replace(plan, repetition_budget_seconds=args.repetition_budget)
    wanted_scenarios(args.scenarios)  # a typo stops the run before anything starts
    raise_fd_limit()
    started = datetime.datetime.now().astimezone()
    alone = wanted_scenarios(args.scenarios)
    # A run of the storm or the hostile readers alone says so in its name.
    stem = args.stem or (
        started.strftime("%Y-%m-%d-%H%M") + ("-quick" if args.quick else "")
        + (f"-{alone[0]}" if alone in (["storm"], ["storm-retry"], ["hostile"], ["soak"]) else "")
    )
    # Described before anything runs: it names the server commit measured, and
    # the work tree may move on while the bench runs.
    machine = describe_machine(args.root.resolve())
    print(f"ssebench: {plan.mode} mode, {plan.repeats} repetition(s), systems {args.systems},"
          f" scenarios {args.scenarios}", flush=True)
    began = time.monotonic()

    async def guarded() -> Outcome:
        # TERM (run.sh's trap, a timeout) cancels the run, so every `finally`
        # stops its servers before the process exits.
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)  # type: ignore[union-attr]
        return await run_all(args, plan)

    import uvloop

    try:
        results, storms, hostile, skipped, described, soaks, retry_storms = uvloop.run(guarded())
    except asyncio.CancelledError:
        print("ssebench: interrupted; servers stopped, no report written", flush=True)
        return 130
    settings = [f"{name}={os.environ[name]}" for name in RUN_SETTINGS if os.environ.get(name)]
    command = " ".join([*settings, "bash bench/run.sh"])
    path = write_report(
        results, storms, skipped, described, plan, args.results_dir, stem,
        started.strftime("%Y-%m-%d %H:%M %Z"), time.monotonic() - began, command, args.root.resolve(),
        machine, hostile, soaks, retry_storms,
    )
    print(f"ssebench: report written to {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
