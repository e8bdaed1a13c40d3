"""Scenario 5, the reconnect storm: kill a worker under 10,000 streams, watch its clients resume.

One run against one freshly started system, with the server's processes on
core 0 and the load generator (subscriber processes and this orchestrator,
which publishes) on core 1, so each side's CPU is visible and neither steals
from the other:

  fill      a full window (CAPPED_MAX_MESSAGES) of messages to *other* rooms
  open      `storm_streams` resuming streams, dealt round `storm_rooms` rooms
  join      one message to every room; wait until every stream has it (so
            each has a Last-Event-ID)
  baseline  messages keep arriving (storm_rate/s round the rooms, one request
            per room in flight); store queries and CPU with no kill
  kill      SIGKILL the worker holding the most streams; gunicorn (or nginx)
            starts a new one; its clients reconnect at once with Last-Event-ID
  tail      until every dropped stream is back (or the timeout), then a few
            seconds more of messages, then the publisher stops
  drain     read each room's history (the store's order); wait until every
            stream has all of its room's messages (or the timeout)
  check     stormcheck.py: every stream exact? resume times, queries per resume

Every phase has a deadline, and what did not finish in time is reported as
such, so the scenario always ends by itself.

With `honour_retry` the clients wait their last `retry:` before reconnecting,
as EventSource does; `env` adds server settings (the storm-retry scenario runs
ours with RETRY_JITTER=0 and with its default, __main__.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from .clients import ClientPool
from .cores import LOADGEN_CPUS, SERVER_CPUS, can_split
from .plan import Plan
from .processes import ServerGroup, streams_held
from .publisher import RoomsPublisher, Sent
from .replacement import listen_overflows, watch_replacement
from .running import run_on_started_system
from .storequeries import parse_exposition, read_counter_files
from .stormcheck import analyse
from .systems import System

SAMPLE_SECONDS = 0.25
POLL_SECONDS = 0.2
STORM_TAG = 1
HISTORY_TIMEOUT_SECONDS = 60.0
REPLACEMENT_GRACE_SECONDS = 5.0


class Storm:
    """The reconnect storm against one system."""

    def __init__(self, system: System, plan: Plan, pool: ClientPool, workdir: Path, *,
                 env: dict[str, str] | None = None, honour_retry: bool = False) -> None:
        self.system = system
        self.env = env or {}
        self.honour_retry = honour_retry
        self.plan = plan
        self.pool = pool
        self.workdir = workdir
        self.group: ServerGroup | None = None
        stamp = f"{os.getpid()}-{int(time.time())}"
        self.rooms = [f"storm-{stamp}-{index}" for index in range(min(plan.storm_rooms, plan.storm_streams))]
        self.other_rooms = [f"other-{stamp}-{index}" for index in range(50)]
        self.sent: list[Sent] = []
        self.samples: list[dict[str, Any]] = []
        self.result: dict[str, Any] = {"notes": [], "phases": {}}
        self.window = min(plan.storm_fill, system.storm_window or plan.storm_fill)

    def log(self, line: str) -> None:
        print(f"  [{self.system.name} storm] {line}", flush=True)

    def note(self, line: str) -> None:
        self.result["notes"].append(line)
        self.log(line)

    async def run(self) -> dict[str, Any]:
        plan, result = self.plan, self.result
        result.update(
            streams=plan.storm_streams, rooms=len(self.rooms), window=self.window, rate=plan.storm_rate,
            server_cpus=SERVER_CPUS, loadgen_cpus=sorted(LOADGEN_CPUS),
            env=self.env, honour_retry=self.honour_retry,
        )
        if not can_split():
            self.note("one core only: server and load generator share it (no split)")
        if self.window != plan.storm_fill:
            self.note(f"window {self.window:,} messages, not {plan.storm_fill:,}"
                      " (the smaller window this store's row uses; see the caveats)")
        env = {"CAPPED_MAX_MESSAGES": str(self.window), **self.env}
        await run_on_started_system(self, env, self._storm, self._started, after_stop=[self._close_streams])
        return result

    def _started(self, group: ServerGroup) -> None:
        self.group = group

    async def _close_streams(self) -> None:
        try:
            await self.pool.storm_close()
        except (OSError, EOFError, RuntimeError, TimeoutError) as error:
            self.log(f"could not close streams: {type(error).__name__}")

    def _phase(self, name: str, started: float) -> None:
        self.result["phases"][name] = round(time.monotonic() - started, 2)

    async def _storm(self, publisher: RoomsPublisher) -> None:
        plan, result = self.plan, self.result
        began = time.monotonic()
        fill = await publisher.fill(self.other_rooms, self.window, plan.storm_fill_timeout_seconds)
        result["fill"] = fill
        self._phase("fill", began)
        self.log(f"filled the window: {fill['published']:,} messages to other rooms in {fill['seconds']:.1f}s"
                 + (f", {fill['failed']} failed ({fill['error']})" if fill["failed"] else ""))

        began = time.monotonic()
        paths = [(i % len(self.rooms), self.system.subscribe_path(self.rooms[i % len(self.rooms)]))
                 for i in range(plan.storm_streams)]
        opening = await self.pool.storm_open(STORM_TAG, "127.0.0.1", self.system.port, paths,
                                             plan.storm_open_timeout_seconds, self.system.resume_style,
                                             self.honour_retry)
        result["open"] = opening
        self._phase("open", began)
        self.log(f"opened {opening['opened']:,}/{plan.storm_streams:,} streams in {time.monotonic() - began:.1f}s"
                 + (f" {opening['errors']}" if opening["errors"] else ""))
        if not opening["opened"]:
            raise RuntimeError("no stream opened")

        began = time.monotonic()
        await publisher.one_each(STORM_TAG, self.rooms, 0, self.sent)
        status = await self._wait_for(lambda s: s["incomplete"] == 0, plan.storm_join_timeout_seconds,
                                      {index: 1 for index in range(len(self.rooms))})
        result["joined"] = status["streams"] - status["incomplete"]
        self._phase("join", began)
        self.log(f"{result['joined']:,} streams have their room's first message"
                 f" ({time.monotonic() - began:.1f}s)")
        if status["incomplete"]:
            self.note(f"{status['incomplete']:,} streams had not received their room's first message"
                      f" {plan.storm_join_timeout_seconds:.0f}s after it was published (still joining)")

        stop = asyncio.Event()
        budget = max(len(self.rooms), self.window // 2 - len(self.rooms))
        steady = asyncio.create_task(publisher.steady(
            STORM_TAG, self.rooms, plan.storm_rate, len(self.rooms), budget, stop, self.sent))
        # Readings go on through the drain: the last clients may catch up late.
        sampler = asyncio.create_task(self._sample_forever())
        try:
            try:
                await self._kill_and_resume(steady, stop)
            finally:
                stop.set()
                await steady
            if len(self.sent) >= budget + len(self.rooms):
                self.note(f"the publisher stopped at its cap of {budget:,} messages (half the window)")
            began = time.monotonic()
            truth = await self._truth(publisher)
            expected = {index: len(seqs) for index, seqs in truth.items()}
            await self._wait_for(lambda s: s["incomplete"] == 0, plan.storm_drain_timeout_seconds, expected)
            self._phase("drain", began)
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        result["end_metrics"] = await self._scrape()
        result["end_files"] = _jsonable(read_counter_files(self.system.metrics_dir))
        records = await self.pool.storm_collect()
        result.update(analyse(records, truth, self.sent, self.samples, result))
        self._log_figures()

    async def _kill_and_resume(self, steady: asyncio.Task, stop: asyncio.Event) -> None:
        plan, result = self.plan, self.result
        await asyncio.sleep(1.0)  # the steady rate is reached
        baseline_start = self._sample()
        await asyncio.sleep(plan.storm_baseline_seconds)
        baseline_end = self._sample()
        result["baseline"] = {"start": baseline_start, "end": baseline_end}
        spread = self._streams_per_worker()
        result["streams_per_worker"] = list(spread.values())
        if not spread:
            raise RuntimeError("no worker process found to kill")
        victim = max(spread, key=lambda pid: spread[pid])
        status = await self.pool.storm_status()
        result["with_last_id"] = status["with_last_id"]
        result["killed_worker_streams"] = spread[victim]
        result["pre_kill_metrics"] = await self._scrape()
        result["live_at_kill"] = await self.pool.storm_mark()
        before = self._sample()
        workers_before = set(self.system.worker_pids())
        overflows_before = listen_overflows()
        result["kill_ns"] = time.monotonic_ns()
        os.kill(victim, signal.SIGKILL)
        result["replacement"] = replacement = {}
        watching = asyncio.create_task(watch_replacement(
            self.system.worker_pids, self.system.metrics_dir, workers_before, result["kill_ns"],
            plan.storm_timeout_seconds, replacement))
        result["killed_pid"] = victim
        result["pre_kill_sample"] = before
        self.log(f"SIGKILL worker {victim} holding {spread[victim]:,} of {sum(spread.values()):,} streams"
                 f" ({status['with_last_id']:,} streams have a Last-Event-ID)")
        began = time.monotonic()

        def all_back(s: dict[str, int]) -> bool:
            return time.monotonic() - began > 1.0 and s["dropped"] > 0 and s["resumed"] >= s["dropped"]

        status = await self._wait_for(all_back, plan.storm_timeout_seconds, None, every=5.0)
        result["status_after_storm"] = status
        overflows_after = listen_overflows()
        if overflows_before is not None and overflows_after is not None:
            # Machine-wide (other jobs' servers count too): a SYN the accept queue had no room
            # for is dropped and the client retries it a second or more later.
            result["listen_overflows"] = overflows_after - overflows_before
        # The survivor may have taken every reconnect: then the replacement
        # serves its first stream only when one comes; a few seconds more, no longer.
        await asyncio.wait([watching], timeout=REPLACEMENT_GRACE_SECONDS)
        watching.cancel()
        # Who took the reconnects: the survivor's count against its count before the kill.
        result["streams_per_worker_after"] = {str(pid): held for pid, held in self._streams_per_worker().items()}
        result["streams_per_worker_before"] = {str(pid): held for pid, held in spread.items()}
        if status["resumed"] < status["dropped"]:
            self.note(f"{status['dropped'] - status['resumed']:,} of {status['dropped']:,} dropped streams"
                      f" had not reconnected {plan.storm_timeout_seconds:.0f}s after the kill")
        if not steady.done():
            await asyncio.sleep(plan.storm_tail_seconds)
        stop.set()

    async def _wait_for(self, done: Any, timeout: float, expected: dict[int, int] | None,
                        every: float = 10.0) -> dict[str, int]:
        """Poll the load generator until `done(status)` or `timeout`; log progress now and then."""
        deadline = time.monotonic() + timeout
        next_log = time.monotonic() + every
        while True:
            status = await self.pool.storm_status(expected)
            if done(status) or time.monotonic() > deadline:
                return status
            if time.monotonic() > next_log:
                next_log += every
                self.log(f"... {status}")
            await asyncio.sleep(POLL_SECONDS)

    def _sample(self) -> dict[str, Any]:
        """Per-core busy time, CPU of each server process and of the load generator, query counters."""
        assert self.group is not None
        cores = psutil.cpu_times(percpu=True)
        return {
            "t_ns": time.monotonic_ns(),
            "cores": [c.user + c.nice + c.system + c.irq + c.softirq + c.steal for c in cores],
            "server": {str(pid): cpu for pid, cpu in self.group.cpu_by_pid().items()},
            "loadgen": self.pool.cpu_seconds() + _own_cpu_seconds(),
            "queries": _jsonable(read_counter_files(self.system.metrics_dir)),
        }

    async def _sample_forever(self) -> None:
        while True:
            self.samples.append(await asyncio.to_thread(self._sample))
            await asyncio.sleep(SAMPLE_SECONDS)

    async def _scrape(self) -> dict[str, float] | None:
        """Store queries by operation from GET /metrics (summed over workers by the server)."""
        url = f"http://127.0.0.1:{self.system.port}/metrics"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
                async with session.get(url) as response:
                    if response.status != 200:
                        return None
                    return parse_exposition(await response.text())
        except (TimeoutError, aiohttp.ClientError):
            return None

    async def _truth(self, publisher: RoomsPublisher) -> dict[int, list[int]]:
        """Each room's stored marked messages in store order.

        With one publish request per room in flight, a room's next message is
        sent only once the previous request has ended, so the store holds a
        room's messages in the order they were sent: the truth is the sent
        sequence, less the messages that were not stored. A message is stored
        when its publish was acknowledged, or when it shows up in the room's
        GET /messages/history although its request failed (it died with the
        killed worker after the insert). The history itself is checked against
        this: an acknowledged message missing from it, or a room whose history
        order differs, is a server fault and is reported.
        """
        try:
            history = await asyncio.wait_for(self._history(publisher), HISTORY_TIMEOUT_SECONDS)
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError) as error:
            self.note(f"history not read ({type(error).__name__} within {HISTORY_TIMEOUT_SECONDS:.0f}s):"
                      " the truth is the acknowledged messages only")
            history = None
        by_room: dict[int, list[Sent]] = {index: [] for index in range(len(self.rooms))}
        for record in sorted(self.sent, key=lambda r: r.seq):
            by_room[record.room_index].append(record)
        truth: dict[int, list[int]] = {}
        check = {"rooms_order_differs": 0, "acked_missing": 0, "unknown_in_history": 0}
        for index, records in by_room.items():
            listed = history.get(index) if history is not None else None
            listed_set = set(listed or ())
            truth[index] = [r.seq for r in records if r.ack_ns or r.seq in listed_set]
            if listed is not None:
                check["acked_missing"] += sum(1 for r in records if r.ack_ns and r.seq not in listed_set)
                check["unknown_in_history"] += len(listed_set - {r.seq for r in records})
                check["rooms_order_differs"] += listed != [seq for seq in truth[index] if seq in listed_set]
        if history is None:
            self.result["truth"] = "publisher's acknowledged messages, in send order (one request per room in flight)"
        else:
            self.result["truth"] = ("publisher's messages in send order (one request per room in flight) that"
                                    " were acknowledged or are in GET /messages/history")
            self.result["history_check"] = check
            if any(check.values()):
                self.note(f"GET /messages/history disagrees with the publisher: {check}")
        return truth

    async def _history(self, publisher: RoomsPublisher) -> dict[int, list[int]] | None:
        """Marked messages per room from the history API, in its order; None: no such API."""
        if self.system.history_url(self.rooms[0], None) is None:
            return None
        assert publisher.session is not None
        history: dict[int, list[int]] = {}
        for index, room in enumerate(self.rooms):
            seqs: list[int] = []
            after = None
            while True:
                async with publisher.session.get(self.system.history_url(room, after)) as response:
                    page = json.loads(await response.read())
                for message in page["messages"]:
                    parts = message["text"].split(":")
                    if len(parts) >= 3 and parts[0] == "SSEB" and int(parts[1]) == STORM_TAG:
                        seqs.append(int(parts[2]))
                if not page.get("hasMore") or not page["messages"]:
                    break
                after = page["messages"][-1]["id"]
            history[index] = seqs
        return history

    def _streams_per_worker(self) -> dict[int, int]:
        """Client streams held by each worker process (connections from the load generator's addresses)."""
        return streams_held(self.system.worker_pids(), self.system.port, set(self.pool.source_ips))

    def _log_figures(self) -> None:
        r = self.result
        self.log(
            f"{r['dropped']:,} dropped, {r['resumed']:,} resumed; all resumed (first byte) at"
            f" {_ms(r['first_byte']['all_ms'])}, all caught up at {_ms(r['caught_up']['all_ms'])};"
            f" per client p50/p99 caught up {_ms(r['caught_up']['p50_ms'])}/{_ms(r['caught_up']['p99_ms'])};"
            f" lost {r['lost']:,} dup {r['duplicated']:,} out of order {r['out_of_order_streams']:,};"
            f" queries per resume {r['queries']['per_resume_net'] if r['queries'] else 'n/a'};"
            f" core 0 {r['cpu']['core_pct'][0]:.0f}%, core 1 {r['cpu']['core_pct'][-1]:.0f}%"
        )


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} ms"


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _jsonable(per_process: dict[int, dict[str, float]] | None) -> dict[str, dict[str, float]] | None:
    """JSON object keys are strings: pids become text."""
    return None if per_process is None else {str(pid): counts for pid, counts in per_process.items()}
