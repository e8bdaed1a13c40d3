"""A request body refused as too large is never read to its end: the connection closes instead.

Flask enforces MAX_CONTENT_LENGTH on a chunked body (no Content-Length) only
when something reads past it, so ``read_body`` asks for one byte more than the
limit allows: a longer body is answered 413, as one with a large
Content-Length is, instead of being cut at the limit and parsed as broken JSON.

gunicorn, though, reads whatever is left of a request's body before it reads
the next request on a keep-alive connection, with no bound. A client that
sends an endless chunked body after its 413 kept the worker's loop busy
throwing bytes away (488 MB in 8 s from one socket, and every other client
of that worker waited: issue 18's hostile test). So a 413 tells gunicorn to
close the connection rather than drain it. gunicorn ignores a ``Connection:
close`` from the app (a WSGI app must not set hop-by-hop headers); its
response object is what ``start_response`` is bound to, and its
``force_close`` is what gunicorn's own code calls to the same end. Under
another WSGI server this does nothing, and that server's own rule applies.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, request
from werkzeug.exceptions import RequestEntityTooLarge

CLOSE_AFTER = ("413",)  # statuses whose request body may still be unread


def read_body() -> bytes:
    """Return the request body, raising 413 if it is longer than MAX_CONTENT_LENGTH, however it is sent."""
    raw = request.get_data(cache=False)  # stops at MAX_CONTENT_LENGTH
    limit = request.max_content_length
    # At the limit, ask the server's own stream whether anything follows: werkzeug's
    # limited stream would raise 413 for a body of exactly the limit, too.
    if limit is not None and len(raw) >= limit and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()
    return raw


def close_after_refused_bodies(app: Flask) -> None:
    """Make gunicorn close the connection after a 413 instead of reading the rest of the body."""
    wsgi_app = app.wsgi_app

    def closing_wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if status.startswith(CLOSE_AFTER):
                force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
                if force_close is not None:
                    force_close()
            return start_response(status, headers, exc_info)
        return wsgi_app(environ, start)

    app.wsgi_app = closing_wsgi_app
