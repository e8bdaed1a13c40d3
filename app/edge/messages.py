"""``/messages``: publish, stream (SSE) and history (JSON)."""
from __future__ import annotations

import json
import logging
import math
import socket
import time
from collections.abc import Callable, Iterator, Sequence

from flask import Blueprint, Response, current_app, jsonify, request
from marshmallow import ValidationError

from ..delivery.admission import Refusal
from ..delivery.reading import read_history, read_history_before
from ..delivery.streaming import StreamSettings, message_stream
from ..operations.metrics import MESSAGES_PUBLISHED, PUBLISH_LATENCY, STORE_ERRORS
from ..services import services
from ..stores.base import StoreUnavailable, WriteOutcomeUnknown
from .authorization import authorize_publishing, authorize_reading, public_rooms, reading_grant
from .clients import client_key
from .closing_connections import read_body
from .errors import STORE_UNAVAILABLE, ApiError, unavailable
from .idempotency import HEADER, REPLAYED_HEADER, idempotency_key, refuse_if_different, stored_key
from .schemas import MAX_ROOMS_PER_REQUEST, ROOM_RULE, STREAM_MAX_BACKLOG, MessageIn, valid_room

bp = Blueprint("messages", __name__)
log = logging.getLogger(__name__)

MAX_LAST_EVENT_ID = 256
HISTORY_DEFAULT_LIMIT = 100
HISTORY_MAX_LIMIT = 1000


def _store_unavailable(exc: StoreUnavailable, operation: str) -> ApiError:
    STORE_ERRORS.labels(operation).inc()
    # The cause (locked, full, read-only, unreachable) is for the operator; the client is told to come back.
    log.warning("%s: store unavailable: %s", operation, exc)
    return unavailable(STORE_UNAVAILABLE)


def _read_json_object() -> object:
    """Return the parsed JSON body, or raise the 415/400 the request deserves."""
    if not request.is_json:
        raise ApiError(415, "Content-Type must be application/json")
    raw = read_body()  # 413 beyond MAX_CONTENT_LENGTH, chunked or not
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not valid UTF-8") from None
    except ValueError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:  # "[[[[…" a few thousand deep: well within MAX_BODY_BYTES
        raise ApiError(400, "request body is not valid JSON: nested too deeply") from None


def _single(name: str) -> str | None:
    """Return the query parameter ``name`` (None when absent), or raise the 400 for one given more than once.

    ``?backlog=1&backlog=10000`` means two things: werkzeug reads the first,
    a proxy or cache in front may read the last. One meaning or a 400.
    """
    given = request.args.getlist(name)
    if len(given) > 1:
        raise ApiError(400, f"{name} must be given at most once, got {len(given)}", {name: ["repeated"]})
    return given[0] if given else None


def _whole_number(name: str, low: int, high: int, default: int | None) -> int | None:
    """Return the query parameter ``name`` as a whole number from ``low`` to ``high``, or raise the 400."""
    raw = _single(name)
    if raw is None:
        return default
    # ASCII digits only: int() also takes "+5", " 5", "1_0" and other scripts' digits ("١٠").
    # (and a bound on the digits: int() of thousands of them is slow, and refused past 4300.)
    value = int(raw) if raw.isascii() and raw.isdigit() and len(raw.lstrip("0")) <= 9 else -1
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be a whole number from {low} to {high}", {name: ["invalid"]})
    return value


def _flag(name: str) -> bool:
    """Return the query parameter ``name`` as a boolean (absent: false), or raise the 400."""
    raw = _single(name)
    if raw is None:
        return False
    if raw not in ("true", "false"):
        raise ApiError(400, f"{name} must be true or false", {name: ["invalid"]})
    return raw == "true"


def _presence_flag() -> bool:
    """Return ``presence`` (absent: false): 1 or true for join and leave events, 0 or false for none; else 400."""
    raw = _single("presence")
    if raw is None:
        return False
    if raw not in ("1", "true", "0", "false"):
        raise ApiError(400, "presence must be 1 or 0 (or true or false)", {"presence": ["invalid"]})
    return raw in ("1", "true")


def _query_rooms() -> tuple[str, ...]:
    """Return the distinct rooms of the repeated ``room`` parameter, in the order given."""
    given = request.args.getlist("room")
    rooms = tuple(dict.fromkeys(given))
    if not rooms or not all(map(valid_room, rooms)):
        raise ApiError(400, f"query parameter room must be {ROOM_RULE} (repeat it for several rooms)",
                       {"room": ["invalid or missing"]})
    # Repeats count: the document's maxItems counts parameters, and schemathesis holds us to it.
    if len(given) > MAX_ROOMS_PER_REQUEST:
        raise ApiError(400, f"at most {MAX_ROOMS_PER_REQUEST} room parameters per request, got {len(given)}",
                       {"room": ["too many"]})
    return rooms


@bp.post("/messages")
def publish() -> tuple[Response, int]:
    svc = services()
    key = idempotency_key()  # a malformed one is refused before the body is read
    body = _read_json_object()
    try:
        fields = MessageIn(max_text_chars=svc.settings.max_text_chars).load(body)
    except ValidationError as exc:
        raise ApiError(422, "the message is invalid", exc.normalized_messages()) from None
    room, text, event = fields["room"], fields["text"], fields["event"]
    authorize_publishing(room)  # the token itself was checked before the body was read
    started = time.perf_counter()
    replayed = False
    try:
        if key is None:
            message = svc.store.append(room, text, event)
        else:
            publication = svc.store.append_once(room, text, event, stored_key(key))
            message, replayed = publication.message, publication.replayed
    except WriteOutcomeUnknown as exc:
        STORE_ERRORS.labels("publish").inc()
        # The store may hold it: say so, and how to find out, rather than a
        # plain 503 that a client would read as "not stored".
        advice = (f"retry with the same {HEADER}: it is stored at most once" if key is not None else
                  "look for that id in GET /messages/history before publishing again")
        raise unavailable(f"the message store did not confirm the write: it may have been stored as "
                          f"{exc.message_id}; {advice}", {"id": [exc.message_id]}) from None
    except StoreUnavailable as exc:
        raise _store_unavailable(exc, "publish") from None
    finally:
        PUBLISH_LATENCY.observe(time.perf_counter() - started)
    if replayed:
        refuse_if_different(message, room, text, event)
        # Stored by an earlier request, which counted and announced it.
        return jsonify(message.to_json()), 201, {REPLAYED_HEADER: "true"}
    MESSAGES_PUBLISHED.inc()
    svc.tailer.poke()  # streams of this worker see it now, not at the next poll
    return jsonify(message.to_json()), 201


@bp.get("/messages")
def stream() -> Response:
    svc = services()
    rooms = _query_rooms()
    grant = reading_grant(rooms)
    # The header wins: EventSource sends it on reconnect with the original URL,
    # whose lastEventId query parameter is older.
    # From the environ: werkzeug's headers object raises (and builds) an exception for an absent header.
    header, query = request.environ.get("HTTP_LAST_EVENT_ID"), _single("lastEventId")
    # Both are checked: an invalid parameter is an error even when the header wins.
    if any(value is not None and len(value) > MAX_LAST_EVENT_ID for value in (header, query)):
        raise ApiError(400, f"Last-Event-ID (header or lastEventId parameter) must be at most "
                            f"{MAX_LAST_EVENT_ID} characters")
    last_id = header or query or None
    backlog = _whole_number("backlog", 0, STREAM_MAX_BACKLOG, None)
    untyped = _flag("untyped")
    notices = _presence_flag()
    anonymous_in = public_rooms(rooms) if grant.subject is not None else frozenset()
    svc.tailer.ensure_running()  # normally running since the worker started: this is cheap
    if notices:
        svc.presence.announcer.ensure_running()
    # Taken last: from here on, only closing the response gives the slots back.
    ticket = svc.admission.admit(client_key(grant.subject))
    if ticket is Refusal.WORKER_FULL:
        raise unavailable("this worker holds its maximum number of streams, try again shortly")
    if ticket is Refusal.CLIENT_FULL:
        # A stream of a client that vanished is noticed by its next heartbeat write:
        # by then a slot may be free.
        raise ApiError(429, f"this client holds its maximum of {svc.settings.max_streams_per_client} streams "
                            f"on this server; close one first",
                       headers={"Retry-After": str(math.ceil(svc.settings.heartbeat_seconds))})
    try:
        if notices:
            # Who is there already: not announced to it.
            svc.presence.announcer.watch(rooms, grant.subject, anonymous_in)
        client_socket = request.environ.get("gunicorn.socket")
        _bound_send_buffer(client_socket, svc.settings.stream_send_buffer_bytes)
        body = message_stream(
            rooms, last_id, window=svc.window, hub=svc.hub, store=svc.store,
            settings=StreamSettings(retry_ms=svc.settings.retry_ms, retry_jitter=svc.settings.retry_jitter,
                                    chunk_bytes=svc.settings.stream_chunk_bytes,
                                    backlog_max_bytes=svc.settings.stream_backlog_max_bytes),
            client_socket=client_socket,  # to notice a client that leaves
            expires_at=grant.expires_at,  # the token's exp: the stream ends then
            backlog=backlog, untyped=untyped,
            subject=grant.subject, notices=notices,  # who is here (issue 16): GET /rooms/R/subscribers
            anonymous_in=anonymous_in,
        )
        return Response(StreamBody(body, ticket.give_back), content_type="text/event-stream; charset=utf-8",
                        headers={
                            "Cache-Control": "no-cache",
                            "X-Accel-Buffering": "no",  # tells nginx not to buffer this response
                        }, direct_passthrough=True)
    except BaseException:
        ticket.give_back()  # no response will be closed for it
        raise


def _bound_send_buffer(client_socket, size: int) -> None:
    """Cap the kernel's send buffer of a stream's socket (0: leave it to the kernel).

    Linux grows a socket's send buffer up to ``net.ipv4.tcp_wmem``'s maximum
    (4 MiB) whether the client reads or not: a thousand clients that never
    read would park gigabytes of kernel memory that no RSS shows. A stream
    needs little: it writes small chunks, and a far client reading at
    ``size`` per round trip is still served faster than events usually come.
    """
    if client_socket is None or not size:
        return
    try:
        client_socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    except OSError:
        pass  # not a TCP socket we can tune (a test server): nothing to bound


class StreamBody:
    """A stream's generator as the WSGI response body, handed to the server unwrapped.

    Werkzeug would wrap the body in two iterators of its own (``ClosingIterator``
    and ``iter_encoded``): a Python frame each per chunk written, and in every
    parked stream's saved stack. With ``direct_passthrough`` the server gets
    this object: iterating it *is* the generator, and ``close`` -- which the
    server calls on every response it got, started or not -- ends the
    generator and gives the stream's slots back.
    """

    __slots__ = ("_generator", "_on_close")

    def __init__(self, generator: Iterator[bytes], on_close: Callable[[], None]) -> None:
        self._generator = generator
        self._on_close = on_close

    def __iter__(self) -> Iterator[bytes]:
        return self._generator

    def close(self) -> None:
        try:
            self._generator.close()
        finally:
            self._on_close()


@bp.get("/messages/history")
def history() -> Response:
    svc = services()
    rooms = _query_rooms()
    authorize_reading(rooms)
    limit = _whole_number("limit", 1, HISTORY_MAX_LIMIT, HISTORY_DEFAULT_LIMIT)
    after, before = _message_id("after"), _message_id("before")
    if after is not None and before is not None:
        raise ApiError(400, "after and before cannot be used together: page forward with after, back with before",
                       {"after": ["not with before"], "before": ["not with after"]})
    svc.tailer.ensure_running()
    try:
        # One more than a page: whether there are more.
        if before is None:
            found = read_history(rooms, after, limit + 1, window=svc.window, store=svc.store)
        else:
            found = read_history_before(rooms, before, limit + 1, window=svc.window, store=svc.store)
    except StoreUnavailable as exc:
        raise _store_unavailable(exc, "history") from None
    if before is None:
        messages = _page(found.messages, limit, svc.settings.history_max_bytes)
    else:
        # Scrollback keeps the messages next to ``before``: it drops the oldest to fit.
        messages = _page(found.messages[::-1], limit, svc.settings.history_max_bytes)[::-1]
    return jsonify({
        "room": rooms[0],  # the first asked for (the only one, usually)
        "rooms": list(rooms),
        "messages": messages,
        "reset": found.reset_reason,
        "hasMore": len(found.messages) > len(messages),
    })


def _message_id(name: str) -> str | None:
    """Return the message id in the query parameter ``name`` (empty: none), or raise the 400 for a long one."""
    value = _single(name) or None
    if value is not None and len(value) > MAX_LAST_EVENT_ID:
        raise ApiError(400, f"{name} must be at most {MAX_LAST_EVENT_ID} characters", {name: ["too long"]})
    return value


def _page(found: Sequence, limit: int, max_bytes: int) -> list[dict]:
    """Return the public JSON of the first messages found: at most ``limit``, and ``max_bytes`` as sent (at least one).

    Each message is measured as the response will write it (ASCII-escaped
    JSON), so a text that escapes to six bytes a character counts for six.
    """
    page: list[dict] = []
    size = 0
    for message in found[:limit]:
        body = message.to_json()
        size += len(current_app.json.dumps(body)) + 1  # and its comma
        if page and size > max_bytes:
            break
        page.append(body)
    return page
