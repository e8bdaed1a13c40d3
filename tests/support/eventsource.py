"""An EventSource-like client for fault tests: many streams in one asyncio loop.

It behaves as a browser's EventSource does where the tests need it to: it
parses the stream with the WHATWG rules, remembers the last event id (an
empty ``id:`` clears it) and the ``retry:`` delay, and when a stream ends or
breaks it waits that delay and reconnects with ``Last-Event-ID``.

It speaks HTTP/1.0 on a raw socket, so the body is the event stream itself
(no chunked framing) and the test controls every read: a test can also stop
reading, or vanish, which no library client lets it do.
"""
from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field

_LINE = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True)
class Event:
    type: str
    data: str
    id: str


class EventStreamParser:
    """Incremental parser of text/event-stream bytes (WHATWG "event stream interpretation")."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._type = ""
        self._id_buffer = ""  # becomes last_event_id only when an event is dispatched
        self.last_event_id = ""
        self.retry_ms: int | None = None
        self.retry_lines: list[int] = []
        self.comments = 0  # heartbeats, among others

    def new_connection(self) -> None:
        """Forget a half-received event: a new connection is parsed afresh (the ids stay)."""
        self._buffer = b""
        self._data, self._type = [], ""
        self._id_buffer = self.last_event_id

    def feed(self, chunk: bytes) -> list[Event]:
        """Return the events completed by ``chunk``."""
        self._buffer += chunk
        events = []
        while True:
            match = _LINE.search(self._buffer)
            # A CR at the very end may be the first half of CRLF: wait for more.
            if match is None or (match.group() == b"\r" and match.end() == len(self._buffer)):
                return events
            line = self._buffer[:match.start()].decode("utf-8", errors="replace")
            self._buffer = self._buffer[match.end():]
            event = self._line(line)
            if event is not None:
                events.append(event)

    def _line(self, line: str) -> Event | None:
        if line == "":
            self.last_event_id = self._id_buffer
            if not self._data:
                self._type = ""
                return None
            event = Event(self._type or "message", "\n".join(self._data), self.last_event_id)
            self._data, self._type = [], ""
            return event
        if line.startswith(":"):
            self.comments += 1
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id" and "\0" not in value:
            self._id_buffer = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
            self.retry_lines.append(int(value))
        return None


@dataclass
class Connection:
    """What one HTTP exchange of a client looked like."""

    status: int
    headers: dict[str, str]
    last_event_id_sent: str
    opened_at: float
    closed_at: float | None = None
    tail: bytes = b""  # the last bytes received before the stream ended


@dataclass
class EventSourceClient:
    """Follows one room, reconnecting like EventSource, until ``stop()``."""

    host: str
    port: int
    room: str
    reconnect: bool = True
    default_retry_ms: int = 3000
    events: list[Event] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # time.monotonic() each event was parsed
    connections: list[Connection] = field(default_factory=list)
    parser: EventStreamParser = field(default_factory=EventStreamParser)

    def __post_init__(self) -> None:
        self._stopped = asyncio.Event()
        self.connected = asyncio.Event()  # the first 200 response arrived
        self.local_port: int | None = None  # of the current connection

    @property
    def messages(self) -> list[Event]:
        return [event for event in self.events if event.type != "reset"]

    @property
    def resets(self) -> list[Event]:
        return [event for event in self.events if event.type == "reset"]

    def stop(self) -> None:
        self._stopped.set()

    async def run(self) -> None:
        """Connect, read, and reconnect after the retry delay, until stopped."""
        while not self._stopped.is_set():
            try:
                await self._connect_once()
            except (OSError, asyncio.IncompleteReadError):
                pass  # a reset or refused connection: EventSource retries too
            if not self.reconnect or self._stopped.is_set():
                return
            delay = (self.parser.retry_ms if self.parser.retry_ms is not None else self.default_retry_ms) / 1000
            try:
                await asyncio.wait_for(self._stopped.wait(), delay)
            except TimeoutError:
                pass

    async def _connect_once(self) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self.local_port = writer.get_extra_info("sockname")[1]  # to find which worker holds it
        try:
            last_id = self.parser.last_event_id
            request = f"GET /messages?room={self.room} HTTP/1.0\r\nHost: {self.host}\r\nAccept: text/event-stream\r\n"
            if last_id:
                request += f"Last-Event-ID: {last_id}\r\n"
            writer.write((request + "\r\n").encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in header_lines:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            connection = Connection(int(status_line.split()[1]), headers, last_id, time.monotonic())
            self.connections.append(connection)
            self.parser.new_connection()
            if connection.status != 200:
                connection.tail = await reader.read()
                connection.closed_at = time.monotonic()
                return
            self.connected.set()
            stop = asyncio.ensure_future(self._stopped.wait())
            try:
                while True:
                    read = asyncio.ensure_future(reader.read(65536))
                    done, _ = await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
                    if read not in done:
                        read.cancel()
                        return
                    chunk = read.result()
                    if not chunk:
                        return
                    connection.tail = (connection.tail + chunk)[-256:]
                    events = self.parser.feed(chunk)
                    self.events.extend(events)
                    self.arrivals.extend([time.monotonic()] * len(events))
            finally:
                stop.cancel()
                connection.closed_at = time.monotonic()
        finally:
            writer.close()


async def follow_all(clients: list[EventSourceClient]) -> list[asyncio.Task]:
    """Start every client and return their tasks."""
    return [asyncio.ensure_future(client.run()) for client in clients]
