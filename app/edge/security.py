"""Hardening every request and response: security headers and a query-size guard.

The headers go on *every* response (JSON, errors, the SSE stream, the demo
page): a browser that is tricked into rendering one of our JSON bodies as
HTML still runs no script, sniffs no type and leaks no referrer.

CSP allows scripts, styles and connections from our own origin only, and no
inline script at all. ``connect-src 'self'`` is all the demo page needs: the
sites listed in CORS_ORIGINS connect *to* us under their own CSP, not ours.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, request

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
_SECURITY_HEADER_ITEMS = tuple((name.lower(), (name, value)) for name, value in SECURITY_HEADERS.items())
# Our query strings are a room, a limit and an id: a few hundred bytes at
# most. Longer ones get a JSON 414 from us; beyond gunicorn's request-line
# limit (4094 bytes) gunicorn itself answers 400 before the app sees it.
MAX_QUERY_STRING_BYTES = 2048


def send_security_headers(app: Flask) -> None:
    """Add the security headers to every response's header list as it starts (kept if a view set its own).

    At the WSGI level, on the plain list the server gets, rather than in an
    ``after_request`` hook on werkzeug's ``Headers``: a fraction of the work on
    every request, stream opens included, and responses that never reach the
    hooks get them too.
    """
    wsgi_app = app.wsgi_app

    def secured_wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            present = {name.lower() for name, _ in headers}
            headers.extend(item for lowered, item in _SECURITY_HEADER_ITEMS if lowered not in present)
            return start_response(status, headers, exc_info)
        return wsgi_app(environ, start)

    app.wsgi_app = secured_wsgi_app


def reject_huge_query_string() -> None:
    """Answer 414 to a query string far longer than any of ours."""
    if len(request.query_string) > MAX_QUERY_STRING_BYTES:
        raise ApiError(414, f"the query string must be at most {MAX_QUERY_STRING_BYTES} bytes")


def init_security(app: Flask) -> None:
    """Register the query guard and the security headers on the app."""
    app.before_request(reject_huge_query_string)
    send_security_headers(app)
