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
from urllib.parse import unquote

REDACTED = "***"
TOKEN_PARAMETER = "access_token"
# A query parameter as sent: the app decodes its name, so "%61ccess_token" is the
# token parameter as much as "access_token" and "access%5Ftoken" are.
_PARAMETER = re.compile(r"([A-Za-z0-9%_.~+-]+)=([^&\s'\"]*)")
# A JWT anywhere: base64url header starting {" (eyJ), payload, optional signature.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*)?")


def _hide_token_value(match: re.Match[str]) -> str:
    name = match.group(1)
    return f"{name}={REDACTED}" if unquote(name) == TOKEN_PARAMETER else match.group(0)


def redact(text: str) -> str:
    """Return ``text`` with query-string tokens and JWT-shaped strings replaced by ***.

    A JWT hidden by percent-encoding ("%65yJ…", in a request line gunicorn
    logs as it came) is found in the decoded text, and the line is then
    logged decoded: a token must not survive because it was spelled oddly.
    """
    # The checks before each pass only skip work that would change nothing (a
    # stream's end line is one per stream closed, and has four "name=value"s):
    # without a "%" no name decodes to the token parameter unless it is spelled
    # out, and a JWT starts with "eyJ".
    if "=" in text and ("%" in text or TOKEN_PARAMETER in text):
        text = _PARAMETER.sub(_hide_token_value, text)
    if "eyJ" in text:
        text = _JWT.sub(REDACTED, text)
    if "%" in text:
        decoded = unquote(text)
        if _JWT.search(decoded):
            text = _JWT.sub(REDACTED, decoded)
    return text
