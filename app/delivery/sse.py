"""Server-Sent Events wire encoding: pure values in, bytes out, no Flask.

Follows the WHATWG "server-sent events" parsing rules so that what a browser
reads back is exactly what we meant:

* data is split on CRLF, CR and LF -- the three line breaks the spec knows --
  and on nothing else (``str.splitlines`` would also split on U+2028 and
  friends, which the spec treats as ordinary characters);
* ``id`` and ``event`` cannot carry a line break (it would start a new field
  and let one client inject events), and an ``id`` with NUL is ignored by
  browsers, so both are rejected rather than silently altered;
* every check is ``is not None``: ``id=""`` is meaningful (it clears the
  client's last event id) and ``retry=0`` is a valid delay.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_FORBIDDEN_IN_FIELD = re.compile(r"[\r\n\x00]")


def _field(name: str, value: str) -> str:
    # One space after the colon, because a client strips exactly one: a value
    # starting with a space survives. An empty value needs no space at all.
    return f"{name}: {value}\n" if value else f"{name}:\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSentEvent:
    """One event (or comment) as it goes on the wire."""

    data: str | None = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    comment: str | None = None

    def __post_init__(self) -> None:
        for name in ("id", "event"):
            value = getattr(self, name)
            if value is not None and _FORBIDDEN_IN_FIELD.search(value):
                raise ValueError(f"SSE {name} must not contain CR, LF or NUL: {value!r}")
        if self.retry is not None and (not isinstance(self.retry, int) or self.retry < 0):
            raise ValueError(f"SSE retry must be a non-negative integer: {self.retry!r}")

    def encode(self) -> bytes:
        """Return the event as UTF-8 bytes, terminated by the blank line that dispatches it."""
        parts: list[str] = []
        if self.comment is not None:
            parts.extend(f":{' ' if line else ''}{line}\n" for line in _LINE_BREAK.split(self.comment))
        if self.id is not None:
            parts.append(_field("id", self.id))
        if self.event is not None:
            parts.append(_field("event", self.event))
        if self.retry is not None:
            parts.append(_field("retry", str(self.retry)))
        if self.data is not None:
            parts.extend(_field("data", line) for line in _LINE_BREAK.split(self.data))
        parts.append("\n")
        return "".join(parts).encode("utf-8")
