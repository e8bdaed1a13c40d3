"""Publishes marked messages over HTTP: one at a time, in bursts, or at a set rate.

Each message's marker is stamped right before its request is written, so a
delivery latency is publish request -> receipt, the figure a user would see.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp

from .marker import make_marker
from .systems import System

# Requests in flight at once: enough to keep a server's accept queue busy
# during a burst without turning the publisher into a load test of its own.
BURST_CONCURRENCY = 16
RATE_CONCURRENCY = 64
REQUEST_TIMEOUT_SECONDS = 30


@dataclass
class PublishResult:
    ok: int = 0
    failed: int = 0
    first_send_ns: int = 0
    last_send_ns: int = 0
    duration_s: float = 0.0
    error: str = ""
    # How long each publish request took to be answered, in ms.
    request_ms: list[float] = field(default_factory=list)

    @property
    def achieved_rate(self) -> float:
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0


class Publisher:
    """An HTTP client bound to one system's publish API."""

    def __init__(self, system: System, room: str) -> None:
        self.system = system
        self.room = room
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Publisher:
        connector = aiohttp.TCPConnector(limit=RATE_CONCURRENCY, force_close=False)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.session is not None:
            await self.session.close()

    async def _send(self, tag: int, sequence: int, result: PublishResult) -> None:
        marker, sent_ns = make_marker(tag, sequence)
        if not result.first_send_ns:
            result.first_send_ns = sent_ns
        result.last_send_ns = max(result.last_send_ns, sent_ns)
        request = self.system.publish_request(self.room, marker)
        assert self.session is not None
        try:
            async with self.session.post(
                request.url, data=request.body, headers={"Content-Type": request.content_type}
            ) as response:
                await response.read()
                result.request_ms.append((time.monotonic_ns() - sent_ns) / 1e6)
                if 200 <= response.status < 300:
                    result.ok += 1
                    return
                result.error = f"HTTP {response.status}"
        except (TimeoutError, aiohttp.ClientError) as error:
            result.error = f"{type(error).__name__}: {error}"[:120]
        result.failed += 1

    async def burst(self, tag: int, count: int) -> PublishResult:
        """Publish `count` messages back to back, BURST_CONCURRENCY in flight."""
        result = PublishResult()
        limit = asyncio.Semaphore(BURST_CONCURRENCY)
        started = time.monotonic()

        async def send(sequence: int) -> None:
            async with limit:
                await self._send(tag, sequence, result)

        await asyncio.gather(*(send(sequence) for sequence in range(count)))
        result.duration_s = time.monotonic() - started
        return result

    async def at_rate(self, tag: int, rate: float, seconds: float) -> PublishResult:
        """Publish `rate` messages a second for `seconds`, on a fixed schedule.

        The schedule is open-loop: a slow response does not delay the next
        message, it only adds to the requests in flight. When RATE_CONCURRENCY
        requests are in flight the schedule slips, which shows up as an
        achieved rate below the target rather than as a hidden queue.
        """
        result = PublishResult()
        total = max(1, round(rate * seconds))
        limit = asyncio.Semaphore(RATE_CONCURRENCY)
        tasks: list[asyncio.Task] = []
        started = time.monotonic()

        async def send(sequence: int) -> None:
            try:
                await self._send(tag, sequence, result)
            finally:
                limit.release()

        for sequence in range(total):
            due = started + sequence / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await limit.acquire()
            tasks.append(asyncio.create_task(send(sequence)))
        # The window ends when the last message was sent, not answered.
        result.duration_s = max(time.monotonic() - started, total / rate)
        await asyncio.gather(*tasks)
        return result
