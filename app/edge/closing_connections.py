"""Which responses close their connection: a refused or unread body, and every event stream.

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

Any other answer to a request whose body the app did not read (a GET with a
body, a 415, a 401 or 429 given before the body is looked at): gunicorn would
drain the rest just the same, with no bound -- 256 MB in 8 s from one socket
for ``GET /healthz``, and three such sockets stalled the worker's other
clients for 10 s (issue 18's second hostile review). So what is left is read
here, up to MAX_CONTENT_LENGTH: a body that ends within it keeps the
connection alive (closing with unread bytes would send a reset that can
destroy the answer before the client reads it); a longer one, or one that
cannot be read, closes it.

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
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .errors import ApiError

REFUSED_BODY = "413"  # the status whose request body may still be unread
EVENT_STREAM = "text/event-stream"
BODY_READ = "sse_rooms.body_read"  # environ key: the app read the whole body
_DRAIN_CHUNK = 65536


def read_body() -> bytes:
    """Return the request body, raising 413 if it is longer than MAX_CONTENT_LENGTH, however it is sent."""
    try:
        raw = request.get_data(cache=False)  # stops at MAX_CONTENT_LENGTH
        limit = request.max_content_length
        # At the limit, ask the server's own stream whether anything follows: werkzeug's
        # limited stream would raise 413 for a body of exactly the limit, too.
        if limit is not None and len(raw) >= limit and request.environ["wsgi.input"].read(1):
            raise RequestEntityTooLarge()
    except HTTPException:
        raise
    except Exception:  # noqa: BLE001 -- malformed chunks, a client gone mid-body: the server's reader says which
        raise ApiError(400, "the request body could not be read: it ended early or its chunked framing is "
                            "malformed") from None
    request.environ[BODY_READ] = True
    return raw


def closes_its_connection(status: str, headers: list[tuple[str, str]]) -> bool:
    """Say whether a response's connection must close once it is sent."""
    if status.startswith(REFUSED_BODY):
        return True
    return any(name.lower() == "content-type" and value.startswith(EVENT_STREAM) for name, value in headers)


def _announces_a_body(environ: dict[str, Any]) -> bool:
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return True
    length = environ.get("CONTENT_LENGTH") or "0"
    return not (length.isascii() and length.isdigit() and int(length) == 0)


def _rest_of_body_ends(environ: dict[str, Any], limit: int) -> bool:
    """Read what is left of the request body, up to ``limit`` bytes; say whether it ended within them."""
    stream, left = environ["wsgi.input"], limit + 1
    try:
        while left > 0:
            data = stream.read(min(left, _DRAIN_CHUNK))
            if not data:
                return True
            left -= len(data)
    except Exception:  # noqa: BLE001 -- malformed or cut off: either way the connection cannot go on
        return False
    return False


def close_connections_after(app: Flask) -> None:
    """Make gunicorn close the connection after a refused or unread body and after an event stream."""
    wsgi_app = app.wsgi_app
    limit = app.config["MAX_CONTENT_LENGTH"]

    def closing_wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if closes_its_connection(status, headers) or (
                    not environ.get(BODY_READ) and _announces_a_body(environ)
                    and not _rest_of_body_ends(environ, limit)):
                force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
                if force_close is not None:
                    force_close()
            return start_response(status, headers, exc_info)
        return wsgi_app(environ, start)

    app.wsgi_app = closing_wsgi_app
