"""One load-generator process: holds thousands of SSE streams on one event loop.

The orchestrator drives it through a multiprocessing pipe with small command
tuples (see `CommandServer`). Streams are raw asyncio protocols on uvloop with
no HTTP library: a stream costs a socket, one small object and a bitmap, and a
received chunk costs one regex scan, so one process can follow many thousand
streams without becoming the bottleneck it is meant to measure.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from array import array
from multiprocessing.connection import Connection
from typing import Any

from .churning import ChurningClients
from .marker import MARKER_PATTERN
from .resuming import ResumingClients
from .sserequest import sse_request

# A stream whose tail grows past this without a newline is not SSE we understand.
MAX_TAIL_BYTES = 1 << 16
# Subscribe requests in flight per process: a steady reconnect wave, not a
# SYN flood (Pushpin answers 500/502 to part of a 1,000-wide storm).
CONNECT_CONCURRENCY = 64


class TagRecord:
    """Receipts of one scenario (one tag) in this process."""

    def __init__(self, tag: int, live_at_begin: int) -> None:
        self.tag = tag
        self.live_at_begin = live_at_begin
        self.unique = 0
        self.duplicates = 0
        self.first_ns = 0
        self.last_ns = 0
        self.dropped = 0
        self.latencies_ns = array("q")
        self.target = -1
        self.target_reached: asyncio.Event | None = None

    def summary(self, with_latencies: bool) -> dict[str, Any]:
        summary = {
            "tag": self.tag,
            "live_at_begin": self.live_at_begin,
            "unique": self.unique,
            "duplicates": self.duplicates,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "dropped": self.dropped,
        }
        if with_latencies:
            summary["latencies_ns"] = self.latencies_ns.tobytes()
        return summary


class StreamProtocol(asyncio.Protocol):
    """One SSE subscription: checks the response head, then scans for markers."""

    def __init__(self, owner: SubscriberProcess, request: bytes) -> None:
        self.owner = owner
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.established: asyncio.Future[str] = owner.loop.create_future()
        self.head_done = False
        self.tail = b""
        self.seen = bytearray()
        self.record: TagRecord | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if self.tail:
            data = self.tail + data
        if not self.head_done:
            end = data.find(b"\r\n\r\n")
            if end == -1:
                self.tail = data
                return
            self.head_done = True
            status_line = data[: data.find(b"\r\n")]
            if b" 200 " not in status_line + b" ":
                self._fail(status_line.decode("latin-1", "replace")[:60])
                return
            if not self.established.done():
                self.established.set_result("ok")
            data = data[end + 4 :]
        # Only whole lines are scanned; the partial last line waits for more bytes,
        # so a marker split across two reads is counted once, when complete.
        cut = data.rfind(b"\n") + 1
        self.tail = data[cut:]
        if len(self.tail) > MAX_TAIL_BYTES:
            self.tail = self.tail[-MAX_TAIL_BYTES:]
        record = self.record
        if record is None or cut == 0:
            return
        tag = record.tag
        for tag_bytes, seq_bytes, sent_bytes in MARKER_PATTERN.findall(data, 0, cut):
            if int(tag_bytes) != tag:
                continue
            seq = int(seq_bytes)
            seen = self.seen
            if seq >= len(seen):
                seen.extend(bytes(seq + 64 - len(seen)))
            if seen[seq]:
                record.duplicates += 1
                continue
            seen[seq] = 1
            record.unique += 1
            record.latencies_ns.append(now - int(sent_bytes))
            if not record.first_ns:
                record.first_ns = now
            record.last_ns = now
        if record.target_reached is not None and record.unique >= record.target:
            record.target_reached.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.streams.discard(self)
        if self.record is not None:
            self.record.dropped += 1
        if not self.established.done():
            self.established.set_result("closed before response head")

    def _fail(self, reason: str) -> None:
        if not self.established.done():
            self.established.set_result(reason)
        if self.transport is not None:
            self.transport.close()


class SubscriberProcess:
    """The state of one load-generator process: its streams and its records."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.streams: set[StreamProtocol] = set()
        self.records: dict[int, TagRecord] = {}
        # The reconnect storm's streams (resuming.py), apart from the ones above.
        self.resuming = ResumingClients(loop)
        # The soak's clients that come and go (churning.py).
        self.churning = ChurningClients(loop)

    async def open_streams(
        self,
        host: str,
        port: int,
        path: str,
        count: int,
        source_ip: str,
        timeout: float,
        wait_for_head: bool,
    ) -> dict[str, Any]:
        request = sse_request(host, port, path)
        limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
        errors: dict[str, int] = {}
        deadline = self.loop.time() + timeout

        async def open_one() -> None:
            async with limit:
                remaining = deadline - self.loop.time()
                if remaining <= 0:
                    reason = "open deadline passed"
                else:
                    reason = await self._open_one(
                        host, port, source_ip, request, remaining, wait_for_head
                    )
                if reason != "ok":
                    errors[reason] = errors.get(reason, 0) + 1

        await asyncio.gather(*(open_one() for _ in range(count)))
        failed = sum(errors.values())
        return {"opened": count - failed, "failed": failed, "errors": errors}

    async def _open_one(
        self,
        host: str,
        port: int,
        source_ip: str,
        request: bytes,
        timeout: float,
        wait_for_head: bool,
    ) -> str:
        protocol = StreamProtocol(self, request)
        try:
            await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: protocol, host, port, local_addr=(source_ip, 0)
                ),
                timeout,
            )
        except (TimeoutError, OSError) as error:
            return f"connect: {type(error).__name__}: {getattr(error, 'strerror', '') or ''}"
        self.streams.add(protocol)
        if not wait_for_head:
            return "ok"
        try:
            reason = await asyncio.wait_for(asyncio.shield(protocol.established), timeout)
        except TimeoutError:
            reason = "no response head in time"
        if reason != "ok" and protocol.transport is not None:
            protocol.transport.close()
        return reason

    def close_streams(self, count: int) -> int:
        victims = list(self.streams)[:count]
        for stream in victims:
            stream.record = None  # a deliberate close is not a drop
            self.streams.discard(stream)
            if stream.transport is not None:
                stream.transport.abort()
        return len(victims)

    def begin(self, tag: int) -> dict[str, Any]:
        record = TagRecord(tag, live_at_begin=len(self.streams))
        self.records = {tag: record}  # only the current scenario is kept
        for stream in self.streams:
            stream.record = record
            stream.seen = bytearray()
        return {"live": record.live_at_begin}

    async def wait_for(self, tag: int, messages: int, timeout: float) -> dict[str, Any]:
        record = self.records[tag]
        record.target = messages * record.live_at_begin
        record.target_reached = asyncio.Event()
        if record.unique < record.target:
            try:
                await asyncio.wait_for(record.target_reached.wait(), timeout)
            except TimeoutError:
                pass
        return record.summary(with_latencies=False)

    def collect(self, tag: int) -> dict[str, Any]:
        record = self.records[tag]
        for stream in self.streams:
            stream.record = None
        return record.summary(with_latencies=True)

    def status(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "live": len(self.streams),
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "pid": os.getpid(),
        }


class CommandServer:
    """Answers command tuples from the pipe, one dict per command.

    The pipe is read and written only by a helper thread, in blocking mode:
    handing its descriptor to the event loop would make it non-blocking, and
    a large reply (a scenario's latencies) would then fail half-written.
    """

    def __init__(self, pipe: Connection, process: SubscriberProcess) -> None:
        self.pipe = pipe
        self.process = process

    def serve_forever(self) -> None:
        """Run in the helper thread until told to quit or the orchestrator goes away."""
        loop = self.process.loop
        while True:
            try:
                command, *args = self.pipe.recv()
            except (EOFError, OSError):
                command, args = "quit", []
            future = asyncio.run_coroutine_threadsafe(self._answer(command, args), loop)
            reply = future.result()
            try:
                self.pipe.send(reply)
            except OSError:
                pass
            if command == "quit":
                return

    async def _answer(self, command: str, args: list[Any]) -> dict[str, Any]:
        process = self.process
        try:
            if command == "open":
                return await process.open_streams(*args)
            if command == "close":
                return {"closed": process.close_streams(*args)}
            if command == "begin":
                return process.begin(*args)
            if command == "wait":
                return await process.wait_for(*args)
            if command == "collect":
                return process.collect(*args)
            if command == "status":
                return process.status()
            if command == "storm_open":
                return await process.resuming.open(*args)
            if command == "storm_status":
                return process.resuming.status(*args)
            if command == "storm_mark":
                return process.resuming.mark()
            if command == "storm_collect":
                return process.resuming.collect()
            if command == "storm_close":
                return process.resuming.close()
            if command == "churn_start":
                return process.churning.start(*args)
            if command == "churn_status":
                return process.churning.status()
            if command == "churn_stop":
                return await process.churning.stop()
            if command == "quit":
                process.close_streams(len(process.streams))
                process.resuming.close()
                await process.churning.stop()
                return {"quit": True}
            return {"error": f"unknown command {command!r}"}
        except Exception as error:  # noqa: BLE001 - the orchestrator must hear of it
            return {"error": f"{type(error).__name__}: {error}"}


def raise_fd_limit() -> None:
    """Use the whole hard limit: each stream is one descriptor."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_subscriber_process(pipe: Connection) -> None:
    """Entry point of a load-generator process (multiprocessing target)."""
    import uvloop

    raise_fd_limit()

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = CommandServer(pipe, SubscriberProcess(loop))
        await asyncio.to_thread(server.serve_forever)

    uvloop.run(serve())
