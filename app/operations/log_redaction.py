"""Keep tokens out of the log, whoever writes the line.

The app never logs a token (it logs paths, not query strings), but gunicorn
does: a malformed request line is logged whole -- ``Invalid request from
ip=...: Invalid HTTP request line: 'GET /messages?room=a&access_token=eyJ...'``
-- and an error before a response starts is logged with the request's URI.
So every line through gunicorn's error-log handlers (the app's lines go
through the same handlers) has its ``access_token`` values and anything
shaped like a JWT replaced by ``***``: ``log_lines.SafeLogLines`` does it.
"""
from __future__ import annotations

import re

REDACTED = "***"
# access_token=..., its name percent-encoded too (the app decodes it the same way).
_QUERY_TOKEN = re.compile(r"(access(?:_|%5[fF])token=)[^&\s'\"]*")
# A JWT anywhere: base64url header starting {" (eyJ), payload, optional signature.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*)?")


def redact(text: str) -> str:
    """Return ``text`` with query-string tokens and JWT-shaped strings replaced by ***."""
    return _JWT.sub(REDACTED, _QUERY_TOKEN.sub(r"\g<1>" + REDACTED, text))
