"""Log lines a client cannot forge or read tokens in: one filter on the log's handlers.

Two things are done to every line, by one filter: tokens are redacted (see
``log_redaction``: gunicorn logs malformed request lines whole, query-string
tokens included), then control characters are escaped.

Paths, headers, ids and room names come from clients. Flask hands the view a
percent-decoded path, so ``GET /rooms/x%0AFORGED`` put a line of the client's
choosing into the log (``FORGED ...``, starting a line as ours do). The
filter sits on the log's *handlers* -- gunicorn's error log, to which the
app's logger writes too (``gunicorn.conf.py``) -- so it covers every logger
that reaches them: ours, Flask's, gunicorn's own (its "Invalid request" lines),
whatever the call site remembers to do.

What is escaped: C0 and C1 control characters and DEL (``\\n``, ``\\r``,
``\\t``, else ``\\xNN``), the Unicode line and paragraph separators, and the
bidirectional controls that can make a line read as something else on a
terminal (the "Trojan Source" characters), as ``\\uNNNN``. A traceback
(``exc_info``) is left as it is: it is ours, and multi-line by nature.
"""
from __future__ import annotations

import logging

from .log_redaction import redact

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_BYTE_RANGE = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]
_UNICODE_CONTROLS = [0x061C, 0x200E, 0x200F, 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_ESCAPES = {
    **{code: _NAMED.get(chr(code), f"\\x{code:02x}") for code in _BYTE_RANGE},
    **{code: f"\\u{code:04x}" for code in _UNICODE_CONTROLS},
}


def escape_control_characters(text: str) -> str:
    """Return ``text`` on one line, with every control character written as an escape."""
    # Every character escaped is one str.isprintable() rejects (categories Cc, Cf,
    # Zl, Zp): a printable line -- nearly all of them -- skips the per-character map.
    if text.isprintable():
        return text
    return text.translate(_ESCAPES)


class SafeLogLines(logging.Filter):
    """Redact tokens in each record's message and traceback, then make the message one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        # Kept formatted: the handler's formatter would otherwise format it again.
        record.msg, record.args = escape_control_characters(redact(message)), None
        if record.exc_info:
            # Another handler may have formatted (and cached) the traceback already.
            record.exc_text = redact(record.exc_text or logging.Formatter().formatException(record.exc_info))
        return True


def install_on(handlers: list[logging.Handler]) -> None:
    """Put the filter on each handler (once)."""
    for handler in handlers:
        if not any(isinstance(existing, SafeLogLines) for existing in handler.filters):
            handler.addFilter(SafeLogLines())
