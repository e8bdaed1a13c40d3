"""Scenario 7, the soak: what a stream open leaves behind, under clients that come and go.

One run against one freshly started system, server on core 0, load generator
(churning clients, kept streams, and this orchestrator, which publishes) on
core 1, as in the storm:

  fill     a full window of messages to *other* rooms (the store and each
           worker's window start full, as in production)
  kept     `soak_kept` resuming streams, one per room, held throughout
  churn    `soak_clients` clients, each opening a stream on one of
           `soak_rooms` rooms, reading for 0.1-3 s, dropping it, again;
           `soak_rate` messages/s round the rooms (one request per room in
           flight, so each room's store order is its send order)
  warm-up  `soak_warmup_seconds` of that; then the workers' RSS is the baseline
  measure  `soak_measure_seconds` more (BENCH_SOAK_MINUTES overrides), the
           workers' RSS sampled every `soak_sample_seconds`
  check    the churn stops, the publisher stops, the kept streams drain; each
           must hold its room's acknowledged messages exactly once, in order

Target: RSS at the end within `soak_target_bytes` of RSS after the warm-up.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import psutil

from .clients import ClientPool
from .cores import LOADGEN_CPUS, SERVER_CPUS, can_split, client_bound
from .measure import own_cpu_seconds
from .plan import Plan
from .publisher import RoomsPublisher, Sent
from .running import run_on_started_system
from .soakcheck import kept_exactness, rss_figures
from .systems import System

SOAK_TAG = 7
KEPT_OPEN_TIMEOUT_SECONDS = 30.0
DRAIN_TIMEOUT_SECONDS = 30.0
POLL_SECONDS = 0.2


def measure_seconds(plan: Plan) -> float:
    """The measured part's length: the plan's, or BENCH_SOAK_MINUTES when set."""
    minutes = os.environ.get("BENCH_SOAK_MINUTES")
    return float(minutes) * 60 if minutes else plan.soak_measure_seconds


class Soak:
    """The soak against one system."""

    def __init__(self, system: System, plan: Plan, pool: ClientPool, workdir: Path) -> None:
        self.system = system
        self.plan = plan
        self.pool = pool
        self.workdir = workdir
        stamp = f"{os.getpid()}-{int(time.time())}"
        self.rooms = [f"soak-{stamp}-{index}" for index in range(plan.soak_rooms)]
        self.other_rooms = [f"other-{stamp}-{index}" for index in range(50)]
        self.sent: list[Sent] = []
        self.result: dict[str, Any] = {"notes": [], "samples": []}
        self.began_ns = 0

    def log(self, line: str) -> None:
        print(f"  [{self.system.name} soak] {line}", flush=True)

    def note(self, line: str) -> None:
        self.result["notes"].append(line)
        self.log(line)

    async def run(self) -> dict[str, Any]:
        plan, result = self.plan, self.result
        result.update(
            clients=plan.soak_clients, rooms=plan.soak_rooms, kept_streams=plan.soak_kept, rate=plan.soak_rate,
            read_seconds=list(plan.soak_read_seconds), window=plan.soak_fill,
            warmup_seconds=plan.soak_warmup_seconds, measure_seconds=measure_seconds(plan),
            target_bytes=plan.soak_target_bytes, server_cpus=SERVER_CPUS, loadgen_cpus=sorted(LOADGEN_CPUS),
        )
        if not can_split():
            self.note("one core only: server and load generator share it (no split)")
        env = {"CAPPED_MAX_MESSAGES": str(plan.soak_fill)}
        await run_on_started_system(self, env, self._soak, before_stop=[self._close_streams])
        return result

    async def _close_streams(self) -> None:
        try:
            await self.pool.churn_status(stop=True)
            await self.pool.storm_close()
        except (OSError, EOFError, RuntimeError, TimeoutError) as error:
            self.log(f"could not close streams: {type(error).__name__}")

    async def _soak(self, publisher: RoomsPublisher) -> None:
        plan, result = self.plan, self.result
        fill = await publisher.fill(self.other_rooms, plan.soak_fill, plan.storm_fill_timeout_seconds)
        result["fill"] = fill
        self.log(f"filled the window: {fill['published']:,} messages to other rooms in {fill['seconds']:.1f}s"
                 + (f", {fill['failed']} failed ({fill['error']})" if fill["failed"] else ""))

        kept = [(index, self.system.subscribe_path(self.rooms[index])) for index in range(plan.soak_kept)]
        opening = await self.pool.storm_open(SOAK_TAG, "127.0.0.1", self.system.port, kept,
                                             KEPT_OPEN_TIMEOUT_SECONDS, self.system.resume_style)
        result["kept_open"] = opening
        if opening["opened"] != plan.soak_kept:
            raise RuntimeError(f"only {opening['opened']} of {plan.soak_kept} kept streams opened: {opening['errors']}")

        total = plan.soak_warmup_seconds + measure_seconds(plan)
        stop = asyncio.Event()
        steady = asyncio.create_task(publisher.steady(
            SOAK_TAG, self.rooms, plan.soak_rate, 0, int(plan.soak_rate * (total + 60)), stop, self.sent))
        paths = [self.system.subscribe_path(room) for room in self.rooms]
        started = await self.pool.churn_start("127.0.0.1", self.system.port, paths, plan.soak_clients,
                                              plan.soak_read_seconds, seed=SOAK_TAG)
        self.log(f"{opening['opened']} kept streams, {started} clients coming and going,"
                 f" {plan.soak_rate:.0f} messages/s; warm-up {plan.soak_warmup_seconds:.0f}s,"
                 f" then {measure_seconds(plan):.0f}s measured")
        self.began_ns = time.monotonic_ns()
        try:
            await self._sample("start")
            await self._sample_until(plan.soak_warmup_seconds, "warm-up")
            await self._sample("after warm-up")
            await self._sample_until(total, "measure")
            await self._sample("end")
            result["churn"] = await self.pool.churn_status(stop=True)
        finally:
            stop.set()
            await steady
        result["published"] = {"sent": len(self.sent), "acknowledged": sum(1 for s in self.sent if s.ack_ns),
                               "errors": sorted({s.error for s in self.sent if s.error})[:5]}
        truth = self._truth()
        expected = {index: len(seqs) for index, seqs in truth.items()}
        deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if (await self.pool.storm_status(expected))["incomplete"] == 0:
                break
            await asyncio.sleep(POLL_SECONDS)
        result["kept"] = kept_exactness(await self.pool.storm_collect(), truth)
        result.update(rss_figures(result["samples"], plan.soak_target_bytes))
        cores = result["core_pct"]
        result["client_bound"] = client_bound(cores[-1] if len(cores) > 1 else None)
        self._log_figures()

    async def _sample_until(self, at_seconds: float, phase: str) -> None:
        """Sample every soak_sample_seconds until `at_seconds` after the churn began."""
        end_ns = self.began_ns + int(at_seconds * 1e9)
        while True:
            left = (end_ns - time.monotonic_ns()) / 1e9
            if left <= 0:
                return
            await asyncio.sleep(min(left, self.plan.soak_sample_seconds))
            if end_ns - time.monotonic_ns() > 1e9:
                await self._sample(phase)

    async def _sample(self, label: str) -> None:
        """The workers' RSS, both cores' busy time, the load generator's CPU, the churn counts."""
        rss, anon = {}, {}
        for pid in self.system.worker_pids():
            try:
                rss[str(pid)] = psutil.Process(pid).memory_info().rss
                anon[str(pid)] = anonymous_rss(pid)
            except (psutil.NoSuchProcess, OSError):
                continue
        cores = psutil.cpu_times(percpu=True)
        sample = {
            "label": label,
            "t_s": round((time.monotonic_ns() - self.began_ns) / 1e9, 1),
            "worker_rss": rss,
            # The heap's share (RssAnon): file-backed pages (code, SQLite files) are apart.
            "worker_anon": anon,
            "cores": [c.user + c.nice + c.system + c.irq + c.softirq + c.steal for c in cores],
            "loadgen_cpu_s": self.pool.cpu_seconds() + own_cpu_seconds(),
            "churn": await self.pool.churn_status(),
        }
        self.result["samples"].append(sample)
        self.log(f"{label} t={sample['t_s']:.0f}s workers' RSS {sum(rss.values()) / 2**20:,.1f} MB"
                 f" ({', '.join(f'{v / 2**20:.1f}' for v in rss.values())}), opened {sample['churn']['opened']:,}"
                 f" closed {sample['churn']['closed']:,} errors {sum(sample['churn']['errors'].values()):,}")

    def _truth(self) -> dict[int, list[int]]:
        """Each kept room's acknowledged messages in send order: its store order (one request per room in flight)."""
        truth: dict[int, list[int]] = {index: [] for index in range(self.plan.soak_kept)}
        for record in sorted(self.sent, key=lambda r: r.seq):
            if record.room_index in truth and record.ack_ns:
                truth[record.room_index].append(record.seq)
        return truth

    def _log_figures(self) -> None:
        r = self.result
        self.log(
            f"RSS after warm-up {_mb(r['rss_after_warmup'])}, end {_mb(r['rss_end'])}"
            f" ({r['rss_growth'] / 2**20:+.1f} MB, target within {r['target_bytes'] / 2**20:.0f} MB:"
            f" {'met' if r['target_met'] else 'NOT met'}); {r['churn']['opened']:,} opened,"
            f" {r['churn']['closed']:,} closed, errors {r['churn']['errors']};"
            f" kept {r['kept']['exact']}/{r['kept']['streams']} exact; core 1 {r['core_pct'][-1]:.0f}%"
        )


def anonymous_rss(pid: int) -> int:
    """RssAnon of /proc/<pid>/status in bytes: the heap and stacks, not mapped files."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def _mb(value: int) -> str:
    return f"{value / 2**20:,.1f} MB"
