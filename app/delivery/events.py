"""The events this server sends, built on the generic SSE encoder.

Each stored message becomes one event whose ``data`` is the message's compact
JSON; JSON escapes CR and LF, so the data is always a single line whatever the
text holds. ``event:`` is left out for the default type so that plain
``EventSource.onmessage`` handlers see it.
"""
from __future__ import annotations

import json
import random
from collections.abc import Callable

from .sse import ServerSentEvent

DEFAULT_EVENT = "message"
HEARTBEAT = ServerSentEvent(comment="keep-alive").encode()


def to_json_text(value: object) -> str:
    """Return compact JSON; non-ASCII stays as is (the stream is UTF-8)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def message_event(body: dict[str, str]) -> bytes:
    """Encode a stored message once, from its public JSON (``Message.to_json()``); every subscriber shares the bytes."""
    return ServerSentEvent(
        id=body["id"],
        event=None if body["event"] == DEFAULT_EVENT else body["event"],
        data=to_json_text(body),
    ).encode()


def as_default_event(payload: bytes) -> bytes:
    """Return a message event's bytes without its ``event:`` line: every message as the default ``message`` event.

    For an ``untyped`` stream, whose EventSource hears every message through
    ``onmessage`` (the type is still in the JSON's ``event``). The window
    keeps one encoding; this cuts the line out per write, and only for typed
    messages: a default one is returned as it is, no copy.
    """
    # message_event writes the id line first, then the event line, if any.
    start = payload.index(b"\n") + 1
    if not payload.startswith(b"event:", start):
        return payload
    return payload[:start] + payload[payload.index(b"\n", start) + 1:]


def reset_event(reason: str) -> bytes:
    """Tell the client its resume point is gone and a full replay follows.

    The empty ``id`` clears the browser's last event id, so a reconnect before
    the replay arrives asks for the whole window again rather than the lost id.
    """
    return ServerSentEvent(event="reset", id="", data=to_json_text({"reason": reason})).encode()


def retry_line(milliseconds: int) -> bytes:
    """Tell EventSource how long to wait before reconnecting."""
    return ServerSentEvent(retry=milliseconds).encode()


def spread_retry_ms(retry_ms: int, jitter: float, draw: Callable[[], float] = random.random) -> int:
    """Return a reconnect delay drawn evenly from ``retry_ms`` x (1 - jitter) to x (1 + jitter).

    Every client of a worker that dies loses its stream at the same moment; with
    one ``retry:`` for all they would all come back in the same instant. ``draw``
    is [0, 1) as ``random.random`` gives it (a test passes its own).
    """
    return round(retry_ms * (1 + jitter * (2 * draw() - 1)))
