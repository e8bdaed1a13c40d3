"""The four scenarios, run in one repetition against one freshly started system.

Order within a repetition, chosen so each connection is opened once:
  idle      open 1k -> 5k -> 10k -> 20k streams, RSS after each step
  broadcast close down to 10k, then 1k: one message, then a burst
  fan-out   at 1k: publish rate ladder until p99 > budget
  cross     at 1k: 100 msg/s, latency percentiles
Every scenario that publishes counts lost and duplicated deliveries over the
streams that were open when it began (loss = published x streams - unique).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import psutil

from .clients import ClientPool, Receipts
from .cores import LOADGEN_CPUS, client_bound, pin_load_generator, server_cpus
from .measure import machine_busy_seconds, own_cpu_seconds, percentiles_ms
from .plan import Plan
from .processes import ServerGroup
from .publisher import Publisher, PublishResult
from .systems import System

OPEN_PASSES = 2
FLUSH_MESSAGES = 2


class CpuWindow:
    """CPU used by server, load generator and everything else over a span of time."""

    def __init__(self, group: ServerGroup, pool: ClientPool) -> None:
        self.group = group
        self.pool = pool
        self.start = self._sample()

    def _sample(self) -> tuple[float, float, float, float]:
        return (
            time.monotonic(),
            self.group.cpu_seconds(),
            self.pool.cpu_seconds() + own_cpu_seconds(),
            machine_busy_seconds(),
        )

    def close(self) -> dict[str, float]:
        end = self._sample()
        wall = max(1e-6, end[0] - self.start[0])
        server = end[1] - self.start[1]
        loadgen = end[2] - self.start[2]
        machine = end[3] - self.start[3]
        return {
            "wall_s": wall,
            "server_cpu_s": server,
            "server_cpu_pct": 100 * server / wall,
            "loadgen_cpu_pct": 100 * loadgen / wall,
            # Busy time outside server and bench: other jobs on this machine.
            "other_cpu_pct": max(0.0, 100 * (machine - server - loadgen) / wall),
            # The load generator's core was full: the figure is the client's.
            "client_bound": client_bound(100 * loadgen / wall),
        }


class Repetition:
    """One system, started fresh, driven through every scenario once."""

    def __init__(self, system: System, plan: Plan, pool: ClientPool, workdir: Path) -> None:
        self.system = system
        self.plan = plan
        self.pool = pool
        self.workdir = workdir
        self.group: ServerGroup | None = None
        self.room = f"bench-{system.name}-{os.getpid()}-{int(time.time())}"
        self.next_tag = 1
        self.deadline = 0.0
        self.log_lines: list[str] = []

    def log(self, line: str) -> None:
        print(f"  [{self.system.name}] {line}", flush=True)

    def _tag(self) -> int:
        self.next_tag += 1
        return self.next_tag

    def _out_of_time(self) -> bool:
        return time.monotonic() > self.deadline

    async def run(self) -> dict[str, Any]:
        result: dict[str, Any] = {"idle": [], "broadcast": [], "fanout": None, "cross": None}
        self.deadline = time.monotonic() + self.plan.repetition_budget_seconds
        # Servers on core 0, load generator on core 1, for every system alike.
        try:
            self.group = await asyncio.to_thread(self.system.start, self.workdir, server_cpus())
        except (RuntimeError, OSError) as error:
            result["notes"] = [f"did not start: {error}"]
            self.log(f"did not start: {error}")
            if self.system.group is not None:
                await asyncio.to_thread(self.system.group.stop)
            return result
        pin_load_generator(self.pool, LOADGEN_CPUS)
        try:
            async with Publisher(self.system, self.room) as publisher:
                await asyncio.sleep(self.plan.settle_seconds)
                result["idle"] = await self.idle()
                for size in sorted(self.plan.broadcast_sizes, reverse=True):
                    if self._skip("broadcast", result):
                        break
                    result["broadcast"].append(await self.broadcast(publisher, size))
                if not self._skip("fan-out", result):
                    await self.resize(self.plan.fanout_subscribers)
                    result["fanout"] = await self.fanout(publisher)
                if not self._skip("cross-worker", result):
                    result["cross"] = await self.cross_worker(publisher)
        except Exception as error:  # noqa: BLE001 - one broken system must not end the run
            result.setdefault("notes", []).append(f"aborted: {type(error).__name__}: {error}")
            self.log(f"aborted: {type(error).__name__}: {error}")
        finally:
            dead = self.group.dead()
            if dead:
                result.setdefault("notes", []).append(f"server died: {dead}")
            await asyncio.to_thread(self.group.stop)
            try:
                await self.pool.close_streams(await self.pool.live())
            except (OSError, EOFError, RuntimeError, TimeoutError) as error:
                # The load generators are gone (interrupted run): nothing to close.
                self.log(f"could not close streams: {type(error).__name__}")
            pin_load_generator(self.pool, None)
        return result

    def _skip(self, scenario: str, result: dict[str, Any]) -> bool:
        assert self.group is not None
        reason = ""
        if self.group.dead():
            reason = f"server died ({self.group.dead()})"
        elif self._out_of_time():
            reason = "repetition time budget spent"
        if reason:
            result.setdefault("notes", []).append(f"{scenario} skipped: {reason}")
            self.log(f"{scenario} skipped: {reason}")
        return bool(reason)

    async def resize(self, streams: int) -> dict[str, Any]:
        """Open or close streams until `streams` are live (or opening keeps failing).

        Streams that fail to open are retried once more (a reconnecting
        browser would too); the errors of every pass are reported.
        """
        live = await self.pool.live()
        report: dict[str, Any] = {"opened": 0, "failed": 0, "errors": {}}
        if live > streams:
            await self.pool.close_streams(live - streams)
        for _ in range(OPEN_PASSES):
            missing = streams - await self.pool.live()
            if missing <= 0 or self._out_of_time():
                break
            attempt = await self.pool.open_streams(
                missing,
                "127.0.0.1",
                self.system.port,
                self.system.subscribe_path(self.room),
                self.plan.open_timeout_seconds,
                self.system.head_before_first_event,
            )
            report["opened"] += attempt["opened"]
            report["failed"] += attempt["failed"]
            for reason, count in attempt["errors"].items():
                report["errors"][reason] = report["errors"].get(reason, 0) + count
        await asyncio.sleep(self.plan.settle_seconds)
        return report

    async def idle(self) -> list[dict[str, Any]]:
        assert self.group is not None
        baseline = self.group.rss_bytes()
        steps = []
        for streams in self.plan.idle_steps:
            if self._out_of_time():
                break
            started = time.monotonic()
            opening = await self.resize(streams)
            open_seconds = time.monotonic() - started - self.plan.settle_seconds
            held = await self.pool.live()
            rss = self.group.rss_bytes()
            step = {
                "streams": streams,
                "held": held,
                "rss_mb": rss / 2**20,
                "rss_per_stream_kb": (rss - baseline) / held / 1024 if held else None,
                "open_seconds": open_seconds,
                "open_errors": opening["errors"],
            }
            steps.append(step)
            self.log(
                f"idle {streams}: held {held}, {step['rss_per_stream_kb'] or 0:.1f} KB/stream,"
                f" opened in {open_seconds:.1f}s {opening['errors'] or ''}"
            )
            if held < streams:
                break  # a bigger step cannot do better; spare the time
        return steps

    async def _deliver(
        self, publish: Any, tag: int, timeout: float
    ) -> tuple[int, PublishResult, Receipts, Receipts]:
        """Publish with `publish(tag)`, wait for every delivery, collect the receipts."""
        live = await self.pool.begin(tag)
        published = await publish(tag)
        waited = await self.pool.wait_for(tag, published.ok, timeout)
        receipts = await self.pool.collect(tag)
        receipts.last_ns = max(receipts.last_ns, waited.last_ns)
        return live, published, waited, receipts

    @staticmethod
    def _loss(live: int, published: PublishResult, receipts: Receipts) -> dict[str, Any]:
        expected = published.ok * live
        return {
            "subscribers": live,
            "published": published.ok,
            "publish_failed": published.failed,
            "publish_error": published.error,
            "delivered": receipts.unique,
            "lost": max(0, expected - receipts.unique),
            "duplicated": receipts.duplicates,
            "dropped_streams": receipts.dropped,
        }

    async def broadcast(self, publisher: Publisher, size: int) -> dict[str, Any]:
        assert self.group is not None
        closing = await self.pool.live() > size
        await self.resize(size)
        # Streams we closed that the server still holds: a server that only
        # notices a gone client when a write fails keeps them until it writes.
        # The first write to a half-closed socket still succeeds (the peer
        # answers it with RST), the second fails, so two untimed messages
        # flush them out and the timed one measures N live subscribers only.
        lingering = self._server_sockets("CLOSE_WAIT") if closing else 0
        if closing:
            for _ in range(FLUSH_MESSAGES):
                await publisher.burst(0, 1)
                await asyncio.sleep(0.5)
            await asyncio.sleep(self.plan.settle_seconds)
        timeout = self.plan.broadcast_timeout_seconds
        cpu = CpuWindow(self.group, self.pool)
        live, one, _, one_receipts = await self._deliver(
            lambda tag: publisher.burst(tag, 1), self._tag(), timeout
        )
        await asyncio.sleep(0.5)
        burst_live, burst, _, burst_receipts = await self._deliver(
            lambda tag: publisher.burst(tag, self.plan.burst_size), self._tag(), timeout
        )
        usage = cpu.close()
        single = self._loss(live, one, one_receipts)
        burst_loss = self._loss(burst_live, burst, burst_receipts)
        result = {
            "target": size,
            "lingering_closed_streams": lingering,
            "subscribers": live,
            "one_last_ms": _since_ms(one.first_send_ns, one_receipts.last_ns),
            "one_first_ms": _since_ms(one.first_send_ns, one_receipts.first_ns),
            "burst_size": burst.ok,
            "burst_all_ms": _since_ms(burst.first_send_ns, burst_receipts.last_ns),
            "burst_publish_ms": burst.duration_s * 1000,
            **{f"burst_{k}": v for k, v in percentiles_ms(burst_receipts.latencies_ns).items()},
            "lost": single["lost"] + burst_loss["lost"],
            "duplicated": single["duplicated"] + burst_loss["duplicated"],
            "publish_failed": single["publish_failed"] + burst_loss["publish_failed"],
            "publish_error": burst_loss["publish_error"] or single["publish_error"],
            "dropped_streams": burst_loss["dropped_streams"] + single["dropped_streams"],
            **usage,
        }
        self.log(
            f"broadcast {live}: one message last at {result['one_last_ms'] or -1:.1f} ms,"
            f" burst of {burst.ok} all at {result['burst_all_ms'] or -1:.0f} ms,"
            f" lost {result['lost']} dup {result['duplicated']},"
            f" server {usage['server_cpu_pct']:.0f}% loadgen {usage['loadgen_cpu_pct']:.0f}% CPU;"
            f" {lingering} closed streams still held by the server before it"
        )
        return result

    async def _steady(self, publisher: Publisher, rate: float, seconds: float) -> dict[str, Any]:
        """Publish at `rate` for `seconds`; latency, throughput, loss and CPU of it."""
        assert self.group is not None
        cpu = CpuWindow(self.group, self.pool)
        live, published, _, receipts = await self._deliver(
            lambda tag: publisher.at_rate(tag, rate, seconds),
            self._tag(),
            self.plan.drain_timeout_seconds,
        )
        usage = cpu.close()
        loss = self._loss(live, published, receipts)
        span_s = max(published.duration_s, (receipts.last_ns - published.first_send_ns) / 1e9)
        deliveries = receipts.unique
        point = {
            "rate": rate,
            "achieved_rate": published.achieved_rate,
            **{f"publish_{k}": v for k, v in percentiles_ms([int(ms * 1e6) for ms in published.request_ms]).items()},
            "deliveries_per_s": deliveries / span_s if span_s > 0 else 0.0,
            **percentiles_ms(receipts.latencies_ns),
            **loss,
            **usage,
            "server_cpu_us_per_delivery": (
                usage["server_cpu_s"] * 1e6 / deliveries if deliveries else None
            ),
        }
        p99 = point["p99_ms"]
        point["passed"] = bool(
            p99 is not None
            and p99 <= self.plan.latency_budget_ms
            and point["lost"] == 0
            and point["publish_failed"] == 0
            and point["achieved_rate"] >= 0.9 * rate
        )
        return point

    async def fanout(self, publisher: Publisher) -> dict[str, Any]:
        points: list[dict[str, Any]] = []
        best: dict[str, Any] | None = None
        failed_rate = None
        for rate in self.plan.ladder_rates:
            if self._out_of_time():
                break
            point = await self._steady(publisher, rate, self.plan.ladder_step_seconds)
            points.append(point)
            self._log_point("fan-out", point)
            if not point["passed"]:
                failed_rate = rate
                break
            best = point
            await asyncio.sleep(0.5)
        # One more step halfway between the last pass and the first failure.
        if best and failed_rate and not self._out_of_time():
            await asyncio.sleep(1.0)
            point = await self._steady(
                publisher, (best["rate"] + failed_rate) / 2, self.plan.ladder_step_seconds
            )
            points.append(point)
            self._log_point("fan-out", point)
            if point["passed"] and point["deliveries_per_s"] > best["deliveries_per_s"]:
                best = point
        return {
            "subscribers": points[0]["subscribers"] if points else 0,
            "max_deliveries_per_s": best["deliveries_per_s"] if best else None,
            "best": best,
            "first_failure": next((p for p in points if not p["passed"]), None),
            "points": points,
            "lost": sum(p["lost"] for p in points),
            "duplicated": sum(p["duplicated"] for p in points),
        }

    async def cross_worker(self, publisher: Publisher) -> dict[str, Any]:
        point = await self._steady(publisher, self.plan.cross_rate, self.plan.cross_seconds)
        point["streams_per_worker"] = self._streams_per_worker()
        self._log_point("cross-worker", point)
        return point

    def _server_sockets(self, status: str) -> int:
        """Server-side sockets on the system's port in TCP state `status`."""
        assert self.group is not None
        total = 0
        for pid in self.group.pids():
            try:
                connections = psutil.Process(pid).net_connections(kind="tcp")
            except psutil.Error:
                continue
            total += sum(
                1 for c in connections if c.laddr and c.laddr.port == self.system.port and c.status == status
            )
        return total

    def _streams_per_worker(self) -> list[int]:
        """Subscriber streams held by each worker process, where visible.

        Only connections from the load generator's source addresses count; the
        publisher's keep-alive connections come from 127.0.0.1.
        """
        sources = set(self.pool.source_ips)
        counts = []
        for pid in self.system.worker_pids():
            try:
                connections = psutil.Process(pid).net_connections(kind="tcp")
            except psutil.Error:
                continue
            counts.append(
                sum(
                    1
                    for c in connections
                    if c.laddr
                    and c.laddr.port == self.system.port
                    and c.status == "ESTABLISHED"
                    and c.raddr
                    # A Go server's dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d.
                    and c.raddr.ip.removeprefix("::ffff:") in sources
                )
            )
        return counts

    def _log_point(self, scenario: str, point: dict[str, Any]) -> None:
        self.log(
            f"{scenario} {point['rate']:.0f} msg/s (sent {point['achieved_rate']:.0f}/s):"
            f" {point['deliveries_per_s']:.0f} deliveries/s,"
            f" p50 {_fmt(point['p50_ms'])} p99 {_fmt(point['p99_ms'])} max {_fmt(point['max_ms'])} ms,"
            f" lost {point['lost']} dup {point['duplicated']},"
            f" POST p50 {_fmt(point['publish_p50_ms'])} max {_fmt(point['publish_max_ms'])} ms,"
            f" server {point['server_cpu_pct']:.0f}% loadgen {point['loadgen_cpu_pct']:.0f}%"
            f" other {point['other_cpu_pct']:.0f}% CPU -> {'ok' if point['passed'] else 'FAIL'}"
        )


def _since_ms(start_ns: int, end_ns: int) -> float | None:
    if not start_ns or not end_ns:
        return None
    return (end_ns - start_ns) / 1e6


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
