"""A test SSE subscriber: real HTTP, parsed by sseclient-py (not our own code)."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import requests
import sseclient

from tests.support.waiting import wait_until


class StreamReader:
    """Follow one SSE stream in a background thread, collecting parsed events."""

    def __init__(self, url: str, last_event_id: str | None = None, headers: dict[str, str] | None = None) -> None:
        headers = {"Accept": "text/event-stream", **(headers or {})}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self.response = requests.get(url, headers=headers, stream=True, timeout=(5, 30))
        self.response.raise_for_status()
        # The stream's socket. The connection object lets go of it at once: a stream's
        # response says "Connection: close", so http.client hands the socket to the response.
        self.sock: socket.socket = self.response.raw._fp.fp.raw._sock
        self.events: list[sseclient.Event] = []
        self.received_at: list[float] = []
        self.error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in sseclient.SSEClient(self.response.iter_content(chunk_size=None)).events():
                self.received_at.append(time.monotonic())
                self.events.append(event)
        except Exception as exc:  # closed by us, or the server went away
            if not self._closed:
                self.error = exc

    def ended(self) -> bool:
        """Say whether the server ended the stream (the reader saw its end)."""
        return not self._thread.is_alive()

    @property
    def messages(self) -> list[sseclient.Event]:
        return [event for event in self.events if event.event != "reset"]

    @property
    def last_id(self) -> str | None:
        ids = [event.id for event in self.events if event.id is not None]
        return ids[-1] if ids else None

    def wait_for(self, predicate: Callable[[list[sseclient.Event]], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate(events)`` holds; return whether it did (the caller asserts)."""
        try:
            wait_until(lambda: predicate(self.events), timeout, interval=0.01)
        except AssertionError:
            return False
        return True

    def close(self) -> None:
        """Drop the connection abruptly, as a browser tab that goes away would."""
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except (AttributeError, OSError):
            pass
        try:
            self.response.close()
        except (AttributeError, OSError):
            # urllib3 may trip over its own half-closed state while the reader
            # thread is inside a read on the same connection; it is closed anyway.
            pass
        self._thread.join(5)
