"""Log lines a client cannot forge: control characters in a message are escaped.

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

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_BYTE_RANGE = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]
_UNICODE_CONTROLS = [0x061C, 0x200E, 0x200F, 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_ESCAPES = {
    **{code: _NAMED.get(chr(code), f"\\x{code:02x}") for code in _BYTE_RANGE},
    **{code: f"\\u{code:04x}" for code in _UNICODE_CONTROLS},
}


def escape_control_characters(text: str) -> str:
    """Return ``text`` on one line, with every control character written as an escape."""
    return text.translate(_ESCAPES)


class EscapeControlCharacters(logging.Filter):
    """Rewrite each record's message so that it is one line with no control characters."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        escaped = escape_control_characters(message)
        if escaped != message:
            record.msg, record.args = escaped, None
        return True


def escape_on(handlers: list[logging.Handler]) -> None:
    """Put the filter on each handler (once)."""
    for handler in handlers:
        if not any(isinstance(existing, EscapeControlCharacters) for existing in handler.filters):
            handler.addFilter(EscapeControlCharacters())
