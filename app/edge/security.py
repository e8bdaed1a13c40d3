"""Hardening every request and response: security headers and a query-size guard.

The headers go on *every* response (JSON, errors, the SSE stream, the demo
page): a browser that is tricked into rendering one of our JSON bodies as
HTML still runs no script, sniffs no type and leaks no referrer.

CSP allows scripts, styles and connections from our own origin only, and no
inline script at all. ``connect-src 'self'`` is all the demo page needs: the
sites listed in CORS_ORIGINS connect *to* us under their own CSP, not ours.
"""
from __future__ import annotations

from flask import Flask, Response, request

from .errors import ApiError

# Nothing by default; same-origin scripts, styles, images and connections (all
# the demo page needs); no inline script; no framing.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "connect-src 'self'",
    "form-action 'self'",
    "base-uri 'none'",
    "frame-ancestors 'none'",
])
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# Our query strings are a room, a limit and an id: a few hundred bytes at
# most. Longer ones get a JSON 414 from us; beyond gunicorn's request-line
# limit (4094 bytes) gunicorn itself answers 400 before the app sees it.
MAX_QUERY_STRING_BYTES = 2048


def add_security_headers(response: Response) -> Response:
    """Set the security headers on a response (kept if a view set its own)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def reject_huge_query_string() -> None:
    """Answer 414 to a query string far longer than any of ours."""
    if len(request.query_string) > MAX_QUERY_STRING_BYTES:
        raise ApiError(414, f"the query string must be at most {MAX_QUERY_STRING_BYTES} bytes")


def init_security(app: Flask) -> None:
    """Register the query guard and the headers hook on the app."""
    app.before_request(reject_huge_query_string)
    app.after_request(add_security_headers)
