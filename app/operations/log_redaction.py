"""Keep tokens out of the log, whoever writes the line.

The app never logs a token (it logs paths, not query strings), but gunicorn
does: a malformed request line is logged whole -- ``Invalid request from
ip=...: Invalid HTTP request line: 'GET /messages?room=a&access_token=eyJ...'``
-- and an error before a response starts is logged with the request's URI.
So every line through gunicorn's error-log handlers (the app's lines go
through the same handlers) has its ``access_token`` values and anything
shaped like a JWT replaced by ``***``.
"""
from __future__ import annotations

import logging
import re

REDACTED = "***"
# access_token=..., its name percent-encoded too (the app decodes it the same way).
_QUERY_TOKEN = re.compile(r"(access(?:_|%5[fF])token=)[^&\s'\"]*")
# A JWT anywhere: base64url header starting {" (eyJ), payload, optional signature.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*)?")


def redact(text: str) -> str:
    """Return ``text`` with query-string tokens and JWT-shaped strings replaced by ***."""
    return _JWT.sub(REDACTED, _QUERY_TOKEN.sub(r"\g<1>" + REDACTED, text))


class RedactTokens(logging.Filter):
    """A handler filter that redacts each record's message and traceback before it is formatted."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info:
            # Another handler may have formatted (and cached) the traceback already.
            record.exc_text = redact(record.exc_text or logging.Formatter().formatException(record.exc_info))
        return True


def install(logger: logging.Logger) -> None:
    """Add the filter to every handler of ``logger`` (once)."""
    for handler in logger.handlers:
        if not any(isinstance(existing, RedactTokens) for existing in handler.filters):
            handler.addFilter(RedactTokens())
