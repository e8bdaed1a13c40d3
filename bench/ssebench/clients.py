"""The orchestrator's handle on the load-generator processes.

Each process gets its own loopback source address (127.0.0.2, .3, ...) so no
single address runs out of its ~28k ephemeral ports, and holds at most
`MAX_STREAMS_PER_PROCESS` streams so it stays well under the 20,000
descriptors a process may have.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
from array import array
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import psutil

from .processes import pin_process
from .subscriber import run_subscriber_process

MAX_STREAMS_PER_PROCESS = 6000
RPC_GRACE_SECONDS = 30.0


@dataclass
class Receipts:
    """Receipts of one scenario, merged over all load-generator processes."""

    live_at_begin: int = 0
    unique: int = 0
    duplicates: int = 0
    dropped: int = 0
    first_ns: int = 0
    last_ns: int = 0
    latencies_ns: array = field(default_factory=lambda: array("q"))

    def add(self, part: dict[str, Any]) -> None:
        self.live_at_begin += part["live_at_begin"]
        self.unique += part["unique"]
        self.duplicates += part["duplicates"]
        self.dropped += part["dropped"]
        if part["first_ns"] and (not self.first_ns or part["first_ns"] < self.first_ns):
            self.first_ns = part["first_ns"]
        self.last_ns = max(self.last_ns, part["last_ns"])
        if "latencies_ns" in part:
            self.latencies_ns.frombytes(part["latencies_ns"])


class ClientPool:
    """Starts, commands and stops the subscriber processes."""

    def __init__(self, max_streams: int, first_source_octet: int = 2) -> None:
        count = max(2, math.ceil(max_streams / MAX_STREAMS_PER_PROCESS))
        self.source_ips = [f"127.0.0.{first_source_octet + i}" for i in range(count)]
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        for _ in range(count):
            ours, theirs = context.Pipe()
            process = context.Process(target=run_subscriber_process, args=(theirs,), daemon=True)
            process.start()
            self.pipes.append(ours)
            self.processes.append(process)
        self.locks = [asyncio.Lock() for _ in range(count)]

    def _rpc(self, index: int, command: tuple, timeout: float) -> dict[str, Any]:
        pipe = self.pipes[index]
        pipe.send(command)
        if not pipe.poll(timeout):
            raise TimeoutError(f"load generator {index} did not answer {command[0]!r}")
        reply = pipe.recv()
        if "error" in reply:
            raise RuntimeError(f"load generator {index}: {reply['error']}")
        return reply

    async def call(self, index: int, command: tuple, timeout: float = RPC_GRACE_SECONDS) -> dict:
        async with self.locks[index]:
            return await asyncio.to_thread(self._rpc, index, command, timeout)

    async def call_all(self, command: tuple, timeout: float = RPC_GRACE_SECONDS) -> list[dict]:
        return await asyncio.gather(
            *(self.call(i, command, timeout) for i in range(len(self.pipes)))
        )

    async def live_per_process(self) -> list[int]:
        return [reply["live"] for reply in await self.call_all(("status",))]

    async def live(self) -> int:
        return sum(await self.live_per_process())

    async def open_streams(
        self, count: int, host: str, port: int, path: str, timeout: float, wait_for_head: bool
    ) -> dict[str, Any]:
        """Open `count` more streams, spread so every process ends up even."""
        live = await self.live_per_process()
        shares = _fill_evenly(live, count)
        replies = await asyncio.gather(
            *(
                self.call(
                    i,
                    ("open", host, port, path, share, self.source_ips[i], timeout, wait_for_head),
                    timeout + RPC_GRACE_SECONDS,
                )
                for i, share in enumerate(shares)
                if share
            )
        )
        errors: dict[str, int] = {}
        for reply in replies:
            for reason, number in reply["errors"].items():
                errors[reason] = errors.get(reason, 0) + number
        return {
            "opened": sum(reply["opened"] for reply in replies),
            "failed": sum(reply["failed"] for reply in replies),
            "errors": errors,
        }

    async def close_streams(self, count: int) -> int:
        """Close `count` streams, taking them from the fullest processes first."""
        live = await self.live_per_process()
        shares = _take_evenly(live, count)
        replies = await asyncio.gather(
            *(self.call(i, ("close", share)) for i, share in enumerate(shares) if share)
        )
        return sum(reply["closed"] for reply in replies)

    async def begin(self, tag: int) -> int:
        """Start counting receipts of scenario `tag`; return the streams that count."""
        return sum(reply["live"] for reply in await self.call_all(("begin", tag)))

    async def wait_for(self, tag: int, messages: int, timeout: float) -> Receipts:
        """Wait until every counted stream has `messages` messages, or `timeout`."""
        receipts = Receipts()
        for part in await self.call_all(("wait", tag, messages, timeout), timeout + 30):
            receipts.add(part)
        return receipts

    async def collect(self, tag: int) -> Receipts:
        receipts = Receipts()
        for part in await self.call_all(("collect", tag)):
            receipts.add(part)
        return receipts

    # -- the reconnect storm's resuming streams (resuming.py) ------------------
    async def storm_open(
        self, tag: int, host: str, port: int, paths: list[tuple[int, str]], timeout: float,
        resume: str = "last-event-id", honour_retry: bool = False,
    ) -> dict[str, Any]:
        """Open one resuming stream per (room index, path), dealt round the processes."""
        count = len(self.pipes)
        replies = await asyncio.gather(
            *(
                self.call(
                    i,
                    ("storm_open", tag, host, port, self.source_ips[i], paths[i::count], timeout, resume,
                     honour_retry),
                    timeout + RPC_GRACE_SECONDS,
                )
                for i in range(count)
                if paths[i::count]
            )
        )
        errors: dict[str, int] = {}
        for reply in replies:
            for reason, number in reply["errors"].items():
                errors[reason] = errors.get(reason, 0) + number
        return {
            "opened": sum(reply["opened"] for reply in replies),
            "failed": sum(reply["failed"] for reply in replies),
            "errors": errors,
        }

    async def storm_status(self, expected: dict[int, int] | None = None) -> dict[str, int]:
        """Progress counts summed over processes (`expected`: messages per room index)."""
        total: dict[str, int] = {}
        for reply in await self.call_all(("storm_status", expected)):
            for key, value in reply.items():
                total[key] = total.get(key, 0) + value
        return total

    async def storm_mark(self) -> int:
        """Restart every stream's resume bookkeeping (just before the kill); return the live streams."""
        return sum(reply["live"] for reply in await self.call_all(("storm_mark",)))

    async def storm_collect(self) -> list[dict[str, Any]]:
        """Every resuming stream's record (resuming.ResumingStream.record)."""
        records: list[dict[str, Any]] = []
        for reply in await self.call_all(("storm_collect",), 120):
            records.extend(reply["streams"])
        return records

    async def storm_close(self) -> int:
        return sum(reply["closed"] for reply in await self.call_all(("storm_close",)))

    # -- the soak's clients that come and go (churning.py) ------------------------
    async def churn_start(self, host: str, port: int, paths: list[str], clients: int,
                          read_seconds: tuple[float, float], seed: int) -> int:
        """Start `clients` churning clients over `paths`, dealt round the processes."""
        count = len(self.pipes)
        replies = await asyncio.gather(*(
            self.call(i, ("churn_start", host, port, self.source_ips[i], paths, len(range(i, clients, count)),
                          read_seconds, seed + i))
            for i in range(count)
        ))
        return sum(reply["clients"] for reply in replies)

    async def churn_status(self, stop: bool = False) -> dict[str, Any]:
        """Opened, closed, bytes and errors summed over processes (`stop`: end the clients first)."""
        total: dict[str, Any] = {"opened": 0, "closed": 0, "received_bytes": 0, "errors": {}, "not_stopped": 0}
        for reply in await self.call_all(("churn_stop" if stop else "churn_status",)):
            for key in ("opened", "closed", "received_bytes", "not_stopped"):
                total[key] += reply.get(key, 0)
            for reason, number in reply["errors"].items():
                total["errors"][reason] = total["errors"].get(reason, 0) + number
        return total

    def pin(self, cpus: set[int] | None) -> None:
        """Run every load-generator process on `cpus` (None: on every core again)."""
        for process in self.processes:
            pin_process(process.pid, cpus)

    def cpu_seconds(self) -> float:
        """CPU time used so far by all load-generator processes."""
        total = 0.0
        for process in self.processes:
            try:
                times = psutil.Process(process.pid).cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def stop(self) -> None:
        for index in range(len(self.pipes)):
            try:
                self._rpc(index, ("quit",), 10)
            except (OSError, EOFError, TimeoutError, RuntimeError):
                pass
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)


def _fill_evenly(live: list[int], extra: int) -> list[int]:
    """Split `extra` new streams so the emptiest processes get them first."""
    shares = [0] * len(live)
    for _ in range(extra):
        index = min(range(len(live)), key=lambda i: live[i] + shares[i])
        shares[index] += 1
    return shares


def _take_evenly(live: list[int], count: int) -> list[int]:
    """Split `count` closes so the fullest processes lose streams first."""
    shares = [0] * len(live)
    for _ in range(min(count, sum(live))):
        index = max(range(len(live)), key=lambda i: live[i] - shares[i])
        shares[index] += 1
    return shares
