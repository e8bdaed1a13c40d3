"""Which responses close their connection: a refused body, and every event stream.

A refused body. Flask enforces MAX_CONTENT_LENGTH on a chunked body (no
Content-Length) only when something reads past it, so ``read_body`` asks for
one byte more than the limit allows: a longer body is answered 413, as one
with a large Content-Length is, instead of being cut at the limit and parsed
as broken JSON. gunicorn, though, reads whatever is left of a request's body
before it reads the next request on a keep-alive connection, with no bound. A
client that sends an endless chunked body after its 413 kept the worker's
loop busy throwing bytes away (488 MB in 8 s from one socket, and every other
client of that worker waited: issue 18's hostile test). So a 413 closes the
connection rather than drain it.

An event stream. When a stream ends (shutdown, a slow reader cut off, an
expired token, its backlog bound), keeping the connection open for another
request helps nobody: EventSource reconnects on a new one, and a client that
holds the idle connection made a worker's graceful stop wait out
``graceful_timeout`` and be killed, while a raw reader never saw the end of
the stream.

gunicorn ignores a ``Connection: close`` from the app (a WSGI app must not
set hop-by-hop headers); its response object is what ``start_response`` is
bound to, and its ``force_close`` is what gunicorn's own code calls to the
same end (it then sends ``Connection: close`` itself). Under another WSGI
server this does nothing, and that server's own rule applies.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, request
from werkzeug.exceptions import RequestEntityTooLarge

REFUSED_BODY = "413"  # the status whose request body may still be unread
EVENT_STREAM = "text/event-stream"


def read_body() -> bytes:
    """Return the request body, raising 413 if it is longer than MAX_CONTENT_LENGTH, however it is sent."""
    raw = request.get_data(cache=False)  # stops at MAX_CONTENT_LENGTH
    limit = request.max_content_length
    # At the limit, ask the server's own stream whether anything follows: werkzeug's
    # limited stream would raise 413 for a body of exactly the limit, too.
    if limit is not None and len(raw) >= limit and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()
    return raw


def closes_its_connection(status: str, headers: list[tuple[str, str]]) -> bool:
    """Say whether a response's connection must close once it is sent."""
    if status.startswith(REFUSED_BODY):
        return True
    return any(name.lower() == "content-type" and value.startswith(EVENT_STREAM) for name, value in headers)


def close_connections_after(app: Flask) -> None:
    """Make gunicorn close the connection after a 413 and after an event stream, instead of keeping it alive."""
    wsgi_app = app.wsgi_app

    def closing_wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if closes_its_connection(status, headers):
                force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
                if force_close is not None:
                    force_close()
            return start_response(status, headers, exc_info)
        return wsgi_app(environ, start)

    app.wsgi_app = closing_wsgi_app
