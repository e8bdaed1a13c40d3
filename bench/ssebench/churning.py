"""Clients that come and go, for the soak (soak.py): open a stream, read a while, drop it, again.

Each client is a loop on the load generator's event loop: pick a room at
random, open its stream, wait for the response head, read (and throw away)
for a random 0.1-3 s, close the connection as a browser tab that goes away
would (FIN, no reset), and start over at once. What counts is what the
server keeps of each open once the stream is gone, so the clients only
count: streams opened (a 200 head), streams closed by us after reading, and
everything else by reason (connect errors, refused heads, streams the
server ended while we were still reading).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from .sserequest import sse_request

# As patient as EventSource, which has no head timeout of its own: with 10 s,
# a crowded server core fell behind, its accept queue filled with connections
# whose clients had given up, each still cost a whole open, and no open
# succeeded any more (a collapse of the client's making, not a leak).
HEAD_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0


class ChurnConnection(asyncio.Protocol):
    """One stream of a churning client: waits for a 200 head, then discards what comes."""

    def __init__(self, loop: asyncio.AbstractEventLoop, request: bytes) -> None:
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.established: asyncio.Future[str] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.established.done():
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end == -1:
            return
        status = self.head[:end].split(b"\r\n", 1)[0].decode("latin-1")
        self.head = b""
        self.established.set_result("ok" if " 200 " in status + " " else status[:60])

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.established.done():
            self.established.set_result("closed before response head")
        if not self.lost.done():
            self.lost.set_result(None)


class ChurningClients:
    """The churning clients of one load-generator process."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.tasks: list[asyncio.Task] = []
        self.opened = 0
        self.closed = 0
        self.received_bytes = 0
        self.errors: dict[str, int] = {}

    def start(self, host: str, port: int, source_ip: str, paths: list[str], clients: int,
              read_seconds: tuple[float, float], seed: int) -> dict[str, Any]:
        """Start `clients` loops over `paths`; each reads for a uniform time in `read_seconds`."""
        # Counts start at zero for each system: a soak's figures are its own.
        self.opened = self.closed = self.received_bytes = 0
        self.errors = {}
        requests = [sse_request(host, port, path) for path in paths]
        chooser = random.Random(seed)
        for _ in range(clients):
            task = self.loop.create_task(self._client(host, port, source_ip, requests, read_seconds, chooser))
            self.tasks.append(task)
        return {"clients": len(self.tasks)}

    async def _client(self, host: str, port: int, source_ip: str, requests: list[bytes],
                      read_seconds: tuple[float, float], chooser: random.Random) -> None:
        # Clients start spread over one read time, not all in the same instant.
        await asyncio.sleep(chooser.uniform(0, read_seconds[1]))
        while True:
            reason = await self._one_stream(host, port, source_ip, chooser.choice(requests),
                                            chooser.uniform(*read_seconds))
            if reason != "ok":
                self.errors[reason] = self.errors.get(reason, 0) + 1
                await asyncio.sleep(0.25)  # a refused client does not hammer

    async def _one_stream(self, host: str, port: int, source_ip: str, request: bytes, read_for: float) -> str:
        connection = ChurnConnection(self.loop, request)
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: connection, host, port, local_addr=(source_ip, 0)),
                HEAD_TIMEOUT_SECONDS,
            )
        except (TimeoutError, OSError) as error:
            return f"connect: {type(error).__name__}"
        assert connection.transport is not None
        try:
            try:
                reason = await asyncio.wait_for(asyncio.shield(connection.established), HEAD_TIMEOUT_SECONDS)
            except TimeoutError:
                reason = "no response head in time"
            if reason != "ok":
                return reason
            self.opened += 1
            try:
                await asyncio.wait_for(asyncio.shield(connection.lost), read_for)
            except TimeoutError:
                self.closed += 1
                return "ok"
            return "server ended the stream while the client read"
        finally:
            self.received_bytes += connection.received
            connection.transport.close()

    def status(self) -> dict[str, Any]:
        return {"opened": self.opened, "closed": self.closed, "received_bytes": self.received_bytes,
                "errors": dict(self.errors)}

    async def stop(self) -> dict[str, Any]:
        """End every client loop (its open stream is closed in its `finally`)."""
        for task in self.tasks:
            task.cancel()
        # Bounded: the orchestrator's call must be answered even if a client is wedged.
        _, pending = await asyncio.wait(self.tasks, timeout=STOP_TIMEOUT_SECONDS) if self.tasks else (set(), set())
        self.tasks = []
        return {**self.status(), "not_stopped": len(pending)}
