"""Publishes marked messages over HTTP: one at a time, in bursts, or at a set rate.

Each message's marker is stamped right before its request is written, so a
delivery latency is publish request -> receipt, the figure a user would see.
"""

from __future__ import annotations

import asyncio
import json
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


@dataclass
class Sent:
    """One message of the reconnect storm, as the publisher saw it."""

    seq: int
    room_index: int
    sent_ns: int
    ack_ns: int = 0  # 0: no 2xx answer (failed, or lost with the killed worker)
    message_id: str = ""
    error: str = ""


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
                request.url, data=request.body, headers=request.all_headers()
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


class RoomsPublisher:
    """Publishes to many rooms: the reconnect storm's fill and its steady stream.

    At most one request per room is in flight, so each room's messages are
    acknowledged in the order they were sent (per-room order is then known
    even for a system without a history API).
    """

    def __init__(self, system: System) -> None:
        self.system = system
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RoomsPublisher:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=RATE_CONCURRENCY),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.session is not None:
            await self.session.close()

    async def post(self, room: str, text: str) -> tuple[int, bytes, str]:
        """(status, body, error) of one publish; status 0 when no answer came."""
        request = self.system.publish_request(room, text)
        assert self.session is not None
        try:
            async with self.session.post(
                request.url, data=request.body, headers=request.all_headers()
            ) as response:
                return response.status, await response.read(), ""
        except (TimeoutError, aiohttp.ClientError) as error:
            return 0, b"", f"{type(error).__name__}: {error}"[:120]

    async def fill(self, rooms: list[str], count: int, timeout: float, text: str | None = None) -> dict[str, object]:
        """Publish `count` unmarked messages round the `rooms`, BURST_CONCURRENCY at a time.

        Each message is `text`, or by default ~100 bytes, like a chat line.
        """
        limit = asyncio.Semaphore(BURST_CONCURRENCY)
        failed = 0
        error = ""
        started = time.monotonic()
        deadline = started + timeout

        async def send(index: int) -> None:
            nonlocal failed, error
            async with limit:
                if time.monotonic() > deadline:
                    failed += 1
                    error = "fill deadline passed"
                    return
                # No marker, so no stream counts it.
                body = text if text is not None else f"fill {index:06d} " + "x" * 88
                status, _, problem = await self.post(rooms[index % len(rooms)], body)
                if not 200 <= status < 300:
                    failed += 1
                    error = problem or f"HTTP {status}"

        await asyncio.gather(*(send(index) for index in range(count)))
        return {"published": count - failed, "failed": failed, "error": error,
                "seconds": time.monotonic() - started}

    async def one_each(self, tag: int, rooms: list[str], first_seq: int, sent: list[Sent]) -> None:
        """One marked message to every room, BURST_CONCURRENCY at a time."""
        limit = asyncio.Semaphore(BURST_CONCURRENCY)

        async def send(index: int) -> None:
            async with limit:
                await self._send_marked(tag, first_seq + index, index, rooms[index], sent)

        await asyncio.gather(*(send(index) for index in range(len(rooms))))

    async def steady(self, tag: int, rooms: list[str], rate: float, first_seq: int,
                     max_messages: int, stop: asyncio.Event, sent: list[Sent]) -> None:
        """Publish `rate` marked messages/s round the rooms until `stop` or `max_messages`."""
        locks = [asyncio.Lock() for _ in rooms]
        limit = asyncio.Semaphore(RATE_CONCURRENCY)
        tasks: list[asyncio.Task] = []
        started = time.monotonic()

        async def send(seq: int, index: int) -> None:
            try:
                async with locks[index]:
                    await self._send_marked(tag, seq, index, rooms[index], sent)
            finally:
                limit.release()

        for number in range(max_messages):
            delay = started + number / rate - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
            if stop.is_set():
                break
            await limit.acquire()
            index = number % len(rooms)
            tasks.append(asyncio.create_task(send(first_seq + number, index)))
        await asyncio.gather(*tasks)

    async def _send_marked(self, tag: int, seq: int, index: int, room: str, sent: list[Sent]) -> None:
        marker, sent_ns = make_marker(tag, seq)
        record = Sent(seq, index, sent_ns)
        sent.append(record)
        status, body, error = await self.post(room, marker)
        if 200 <= status < 300:
            record.ack_ns = time.monotonic_ns()
            try:
                record.message_id = str(json.loads(body).get("id", ""))
            except (ValueError, AttributeError):
                pass
        else:
            record.error = error or f"HTTP {status}"
