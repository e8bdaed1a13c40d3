"""Streams that resume like EventSource, for the reconnect storm (storm.py).

Unlike the plain streams of subscriber.py, these parse the SSE they receive:
the response's chunked framing is taken off, events are cut at blank lines,
and the last `id:` of each event is kept, so that when the server drops the
connection the stream reconnects at once with that id in a `Last-Event-ID`
header, as a browser's EventSource does (minus the `retry` wait: the storm
is every client of a dead worker coming back together). With `honour_retry`
they wait the last `retry:` they were sent first, as EventSource does: the
storm as a server's `retry:` lines shape it (RETRY_JITTER, issue 15).

Every stream records each marked message it receives (its sequence number
and receipt time, duplicates included, in receipt order) and the timeline of
its first drop: when the connection was lost, when the reconnect request
that succeeded was sent, its first byte, its 200 head. The orchestrator
compares the records with the store's history of each room.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from array import array
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from .marker import MARKER_PATTERN
from .sserequest import sse_request

# Subscribe requests in flight per process while the streams first open; the
# reconnects after the kill are not limited (they come back all at once).
OPEN_CONCURRENCY = 64
# After a refused or failed reconnect (503, connection error), wait this long.
RETRY_PAUSE_SECONDS = 0.25
# EventSource's delay before a stream has sent any `retry:` (browsers pick
# their own; 3 s is Chromium's and Firefox's, and RETRY_MS's default).
DEFAULT_RETRY_MS = 3000
MAX_BUFFER_BYTES = 1 << 20
# How a client tells the server where it stopped, by system:
#   last-event-id  the SSE standard: the last `id:` seen, sent back in a header
#   centrifugo     Centrifugo's uni_sse sends no `id:`; its client keeps the
#                  channel's epoch and the offset of the last publication and
#                  asks for recovery in the `cf_connect` query parameter (the
#                  recovered publications arrive inside the connect reply).
RESUME_STYLES = ("last-event-id", "centrifugo")
CENTRIFUGO_EPOCH = re.compile(rb'"epoch":"([^"]*)"')
CENTRIFUGO_OFFSET = re.compile(rb'"offset":(\d+)')


class ResumingStream:
    """One client: its room, its last event id, and what it received across connections."""

    def __init__(self, room_index: int, path: str) -> None:
        self.room_index = room_index
        self.path = path
        self.last_id: str | None = None
        # Centrifugo's position in its channel: (epoch, offset of the last publication).
        self.epoch: str | None = None
        self.offset = 0
        self.seqs = array("i")
        self.received_ns = array("q")
        self.seen: set[int] = set()  # for the progress checks: len(seen) messages owed are in
        self.resets = 0
        self.retry_ms: int | None = None  # the last `retry:` the server sent
        self.connection: Connection | None = None
        # Counted from the mark (`mark`, sent just before the kill); earlier
        # drops (a server that ends streams while they join) are kept apart.
        self.drops_before_mark = 0
        self.live_at_mark = False
        self.ever_connected = False
        self.drops = 0
        self.lost_ns = 0  # the first drop
        self.attempts = 0  # reconnect attempts after the first drop
        self.reconnect_sent_ns = 0  # the attempt that got a 200
        self.first_byte_ns = 0
        self.head_ns = 0
        self.errors: dict[str, int] = {}
        # (what, CLOCK_MONOTONIC ns) of every drop and reconnect, for diagnosis.
        self.timeline: list[tuple[str, int]] = []

    @property
    def resumed(self) -> bool:
        return self.drops > 0 and self.head_ns > 0

    def mark(self) -> None:
        """Start the resume bookkeeping afresh: what follows is the storm."""
        self.drops_before_mark = self.drops
        self.live_at_mark = self.connection is not None and self.connection.head_ok
        self.drops = self.attempts = 0
        self.lost_ns = self.reconnect_sent_ns = self.first_byte_ns = self.head_ns = 0

    def record(self) -> dict[str, Any]:
        return {
            "room": self.room_index,
            "seqs": self.seqs.tobytes(),
            "received_ns": self.received_ns.tobytes(),
            "resets": self.resets,
            "retry_ms": self.retry_ms,
            "ever_connected": self.ever_connected,
            "drops_before_mark": self.drops_before_mark,
            "live_at_mark": self.live_at_mark,
            "drops": self.drops,
            "lost_ns": self.lost_ns,
            "attempts": self.attempts,
            "reconnect_sent_ns": self.reconnect_sent_ns,
            "first_byte_ns": self.first_byte_ns,
            "head_ns": self.head_ns,
            "errors": self.errors,
            "timeline": self.timeline,
            "live": self.connection is not None and self.connection.head_ok,
        }


class Connection(asyncio.Protocol):
    """One HTTP connection of a ResumingStream: de-chunks, cuts events, reads ids and markers."""

    def __init__(self, owner: ResumingClients, stream: ResumingStream, request: bytes, reconnect: bool) -> None:
        self.owner = owner
        self.stream = stream
        self.request = request
        self.reconnect = reconnect
        self.transport: asyncio.Transport | None = None
        self.head_ok = False
        self.chunked = False
        self.raw = b""  # bytes not yet de-chunked (or the head not yet complete)
        self.chunk_left = 0  # bytes of the current chunk still to come
        self.text = b""  # de-chunked bytes not yet cut into events
        self.closed_by_us = False
        self.ended = False
        self.first_ns = 0
        self.established: asyncio.Future[str] = owner.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if not self.first_ns:
            self.first_ns = now
        self.raw += data
        if not self.head_ok:
            end = self.raw.find(b"\r\n\r\n")
            if end == -1:
                return
            head = self.raw[:end].decode("latin-1")
            status = head.split("\r\n", 1)[0]
            if " 200 " not in status + " ":
                self._fail(status[:60])
                return
            self.head_ok = True
            self.stream.ever_connected = True
            self.chunked = "transfer-encoding: chunked" in head.lower()
            self.raw = self.raw[end + 4 :]
            stream = self.stream
            if self.reconnect and not stream.head_ns:
                stream.first_byte_ns = self.first_ns
                stream.head_ns = now
            if not self.established.done():
                self.established.set_result("ok")
        if self.chunked:
            self._dechunk()
        else:
            self.text += self.raw
            self.raw = b""
        self._cut_events(now)
        if self.ended and self.transport is not None:
            # The server ended the response: EventSource reconnects, and so do we.
            self.transport.close()

    def _dechunk(self) -> None:
        raw = self.raw
        pos = 0
        pieces = []
        while pos < len(raw):
            if self.chunk_left:
                take = min(self.chunk_left, len(raw) - pos)
                pieces.append(raw[pos : pos + take])
                pos += take
                self.chunk_left -= take
                continue
            line_end = raw.find(b"\r\n", pos)
            if line_end == -1:
                break
            size_text = raw[pos:line_end].split(b";", 1)[0].strip()
            if not size_text:  # the CRLF that ends a chunk's data
                pos = line_end + 2
                continue
            size = int(size_text, 16)
            pos = line_end + 2
            if size == 0:  # the last chunk: the server ended the response
                self.ended = True
                break
            self.chunk_left = size
        self.raw = raw[pos:]
        self.text += b"".join(pieces)

    def _cut_events(self, now: int) -> None:
        text = self.text
        hold = b""
        if b"\r" in text:
            # SSE lines may end in CRLF, CR or LF; a CR at the very end may be
            # the first half of a CRLF, so it waits for the next read.
            if text.endswith(b"\r"):
                text, hold = text[:-1], b"\r"
            text = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        cut = text.rfind(b"\n\n")
        if cut == -1:
            self.text = text[-MAX_BUFFER_BYTES:] + hold
            return
        self.text = text[cut + 2 :] + hold
        stream = self.stream
        tag = self.owner.tag
        for event in text[:cut].split(b"\n\n"):
            event_id = None
            for line in event.split(b"\n"):
                if line.startswith(b"id:"):
                    event_id = line[3:].removeprefix(b" ").decode()
                elif line == b"event: reset" or line == b"event:reset":
                    stream.resets += 1
                elif line.startswith(b"retry:") and line[6:].strip().isdigit():
                    # A retry-only block is an event too, as far as cutting goes.
                    stream.retry_ms = int(line[6:].strip())
            for tag_bytes, seq_bytes, _ in MARKER_PATTERN.findall(event):
                if int(tag_bytes) == tag:
                    seq = int(seq_bytes)
                    stream.seqs.append(seq)
                    stream.received_ns.append(now)
                    stream.seen.add(seq)
            if event_id is not None:
                # An event's id becomes the last event id when it is dispatched;
                # an empty one (our reset event) clears it.
                stream.last_id = event_id or None
            elif self.owner.resume == "centrifugo":
                follow_centrifugo_position(stream, event)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.established.done():
            self.established.set_result("closed before response head")
        stream = self.stream
        if stream.connection is self:
            stream.connection = None
        if self.closed_by_us or not self.head_ok:
            return
        stream.drops += 1
        now = time.monotonic_ns()
        stream.timeline.append((f"lost ({'server ended the response' if self.ended else exc or 'closed'})", now))
        if stream.drops == 1:
            stream.lost_ns = now
        self.owner.reconnect_soon(stream, pause=self.owner.reconnect_delay(stream))

    def _fail(self, reason: str) -> None:
        if not self.established.done():
            self.established.set_result(reason)
        if self.transport is not None:
            self.transport.close()


def follow_centrifugo_position(stream: ResumingStream, event: bytes) -> None:
    """Keep the epoch and the highest offset a Centrifugo event carries.

    Each stream follows one channel, so every offset in an event (a
    publication's, or those of the publications recovered inside a connect
    reply) is a position in that channel; a new epoch (the channel's history
    was lost, as on a restart of the memory engine) starts the count again.
    """
    epoch = CENTRIFUGO_EPOCH.search(event)
    if epoch is not None and epoch.group(1).decode() != stream.epoch:
        stream.epoch = epoch.group(1).decode()
        stream.offset = 0
    offsets = CENTRIFUGO_OFFSET.findall(event)
    if offsets:
        stream.offset = max(stream.offset, *(int(offset) for offset in offsets))
        stream.last_id = f"{stream.epoch}:{stream.offset}"  # for the progress counts


def centrifugo_resume_path(path: str, epoch: str | None, offset: int) -> str:
    """The uni_sse path of `path`'s channel, asking to recover from (epoch, offset)."""
    split = urlsplit(path)
    connect = json.loads(parse_qs(split.query)["cf_connect"][0])
    subs = {
        channel: {"recover": True, "epoch": epoch, "offset": offset} if epoch else {}
        for channel in connect.get("subs", {})
    }
    return f"{split.path}?cf_connect={quote(json.dumps({**connect, 'subs': subs}, separators=(',', ':')))}"


class ResumingClients:
    """All the resuming streams of one load-generator process."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.streams: list[ResumingStream] = []
        self.tag = -1
        self.host = ""
        self.port = 0
        self.source_ip = ""
        self.reconnecting = True
        self.resume = "last-event-id"
        self.honour_retry = False  # wait the server's `retry:` before reconnecting, as EventSource does
        self.tasks: set[asyncio.Task] = set()

    def reconnect_delay(self, stream: ResumingStream) -> float:
        """Seconds a dropped stream waits before it reconnects: none, or its last `retry:`."""
        if not self.honour_retry:
            return 0.0
        return (stream.retry_ms if stream.retry_ms is not None else DEFAULT_RETRY_MS) / 1000

    def request_for(self, stream: ResumingStream) -> bytes:
        path = stream.path
        if self.resume == "centrifugo" and stream.epoch:
            path = centrifugo_resume_path(path, stream.epoch, stream.offset)
        resume_from = stream.last_id if self.resume == "last-event-id" else None
        return sse_request(self.host, self.port, path, {"Last-Event-ID": resume_from} if resume_from else None)

    async def _connect(self, stream: ResumingStream, reconnect: bool, timeout: float) -> str:
        request = self.request_for(stream)
        connection = Connection(self, stream, request, reconnect)
        sent_ns = time.monotonic_ns()
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: connection, self.host, self.port, local_addr=(self.source_ip, 0)),
                timeout,
            )
        except (TimeoutError, OSError) as error:
            return f"connect: {type(error).__name__}: {getattr(error, 'strerror', '') or ''}"
        stream.connection = connection
        try:
            reason = await asyncio.wait_for(asyncio.shield(connection.established), timeout)
        except TimeoutError:
            reason = "no response head in time"
        if reason != "ok":
            connection.closed_by_us = True
            if connection.transport is not None:
                connection.transport.close()
            if stream.connection is connection:
                stream.connection = None
        elif reconnect:
            stream.timeline.append((f"reconnected with Last-Event-ID {stream.last_id}", sent_ns))
            if not stream.reconnect_sent_ns:
                stream.reconnect_sent_ns = sent_ns
        return reason

    async def open(self, tag: int, host: str, port: int, source_ip: str,
                   paths: list[tuple[int, str]], timeout: float, resume: str = "last-event-id",
                   honour_retry: bool = False) -> dict[str, Any]:
        """Open one stream per (room index, path), OPEN_CONCURRENCY at a time."""
        if resume not in RESUME_STYLES:
            raise ValueError(f"unknown resume style {resume!r}")
        self.tag, self.host, self.port, self.source_ip = tag, host, port, source_ip
        self.resume = resume
        self.honour_retry = honour_retry
        self.reconnecting = True
        limit = asyncio.Semaphore(OPEN_CONCURRENCY)
        deadline = self.loop.time() + timeout
        errors: dict[str, int] = {}

        async def open_one(stream: ResumingStream) -> None:
            async with limit:
                remaining = deadline - self.loop.time()
                reason = await self._connect(stream, False, remaining) if remaining > 0 else "open deadline passed"
            if reason != "ok":
                errors[reason] = errors.get(reason, 0) + 1

        fresh = [ResumingStream(room, path) for room, path in paths]
        self.streams.extend(fresh)
        await asyncio.gather(*(open_one(stream) for stream in fresh))
        failed = sum(errors.values())
        return {"opened": len(fresh) - failed, "failed": failed, "errors": errors}

    def reconnect_soon(self, stream: ResumingStream, pause: float) -> None:
        if not self.reconnecting:
            return
        task = self.loop.create_task(self._reconnect(stream, pause))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _reconnect(self, stream: ResumingStream, pause: float) -> None:
        if pause:
            await asyncio.sleep(pause)
        if not self.reconnecting:
            return
        stream.attempts += 1
        reason = await self._connect(stream, True, 30.0)
        if reason != "ok":
            stream.errors[reason] = stream.errors.get(reason, 0) + 1
            self.reconnect_soon(stream, RETRY_PAUSE_SECONDS)

    def status(self, expected: dict[int, int] | None = None) -> dict[str, Any]:
        """Counts for the orchestrator's progress checks; `expected`: messages per room index."""
        dropped = [s for s in self.streams if s.drops]
        status = {
            "streams": len(self.streams),
            "live": sum(1 for s in self.streams if s.connection is not None and s.connection.head_ok),
            "dropped": len(dropped),
            "resumed": sum(1 for s in dropped if s.resumed),
            "with_last_id": sum(1 for s in self.streams if s.last_id),
            "received": sum(len(s.seqs) for s in self.streams),
        }
        if expected is not None:
            status["incomplete"] = sum(
                1 for s in self.streams if len(s.seen) < expected.get(s.room_index, 0)
            )
        return status

    def mark(self) -> dict[str, Any]:
        for stream in self.streams:
            stream.mark()
        return {"live": sum(1 for s in self.streams if s.live_at_mark)}

    def collect(self) -> dict[str, Any]:
        return {"streams": [stream.record() for stream in self.streams]}

    def close(self) -> dict[str, Any]:
        """Close every stream without reconnecting, and forget them."""
        self.reconnecting = False
        for task in list(self.tasks):
            task.cancel()
        closed = 0
        for stream in self.streams:
            connection = stream.connection
            if connection is not None and connection.transport is not None:
                connection.closed_by_us = True
                connection.transport.abort()
                closed += 1
        self.streams = []
        return {"closed": closed}
