"""Read an SSE response line by line on a thread, noting when each line arrived.

Plain http.client and no SSE library: timing tests must see each line the
moment the socket delivers it, with no client-side buffering in between.
"""
from __future__ import annotations

import http.client
import queue
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

EOF = None


class StreamReader:
    """One open ``GET /messages?room=`` and the lines read from it so far."""

    def __init__(self, base_url: str, room: str, timeout: float = 30.0) -> None:
        parts = urlsplit(base_url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        # Ask for gzip on purpose: the stream must come back uncompressed anyway.
        self.connection.request("GET", f"/messages?room={room}",
                                headers={"Accept": "text/event-stream", "Accept-Encoding": "gzip"})
        # Kept here: a stream's response says "Connection: close", so http.client
        # lets go of the socket once the response has begun.
        self.sock = self.connection.sock
        self.response = self.connection.getresponse()
        self._lines: queue.Queue[tuple[float, bytes | None]] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while line := self.response.readline():
                self._lines.put((time.monotonic(), line))
        except (OSError, http.client.HTTPException):
            pass  # a cut connection ends the stream like an EOF does
        finally:
            self._lines.put((time.monotonic(), EOF))

    def next_line(self, timeout: float) -> tuple[float, bytes | None]:
        """Return (arrival time, line), or (time, None) at the end of the stream; raise queue.Empty on timeout."""
        return self._lines.get(timeout=timeout)

    def wait_for(self, wanted: Callable[[bytes], bool], timeout: float) -> tuple[float, bytes]:
        """Return the first line (and its arrival time) that ``wanted`` accepts."""
        deadline = time.monotonic() + timeout
        while True:
            arrived, line = self.next_line(max(0.0, deadline - time.monotonic()))
            if line is EOF:
                raise AssertionError("the stream ended before the expected line arrived")
            if wanted(line):
                return arrived, line

    def close(self) -> None:
        """Cut the connection, let the reading thread see its end, then release everything."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        # Closing the response under the reading thread would fail inside http.client.
        self._thread.join(timeout=5)
        self.response.close()
        self.connection.close()
