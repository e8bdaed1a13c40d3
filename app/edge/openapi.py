"""``GET /openapi.json``: an OpenAPI 3 document built by apispec from our marshmallow schemas.

The document is built once per app from its settings, so it states the limits
and the access rules this server actually runs with (text length, body size,
whether publishing needs a token or is rate limited, whether rooms are
private and where the JWT may travel). The schemathesis tests hold the server
to it.
"""
from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Flask, Response, current_app, jsonify

from ..config import Settings
from .authorization import TOKEN_COOKIE, TOKEN_QUERY_PARAMETER
from .idempotency import HEADER as IDEMPOTENCY_HEADER
from .idempotency import MAX_KEY_CHARS, REPLAYED_HEADER
from .schemas import (
    ROOM_PATTERN,
    SUBSCRIBERS_MAX_AFTER_CHARS,
    SUBSCRIBERS_MAX_LIMIT,
    ErrorOut,
    HistoryOut,
    HistoryQuery,
    MessageIn,
    MessageOut,
    RoomOut,
    RoomsOut,
    RoomsQuery,
    StreamQuery,
    SubscribersOut,
    SubscribersQuery,
    json_schema_pattern,
)

bp = Blueprint("openapi", __name__)

OPENAPI_VERSION = "3.0.3"
SSE_DESCRIPTION = """\
An endless `text/event-stream` (Server-Sent Events). It opens with a `retry:` line (RETRY_MS,
drawn for each stream within +-RETRY_JITTER of it so that clients of a worker that died come back spread out),
then the rooms' stored messages after the resume point, then live ones, all in one store order. Each message
is one event: `id:` is the message id, `event:` its type (left out for `message`),
and a single `data:` line holds the message JSON (as in the POST reply). A resume id
that is unknown, evicted, from another room or not an id at all gives `event: reset` (data
`{"reason": ...}`, one reason for all of them) followed by the whole stored window (or the newest `backlog`).
With `untyped=true` no message has an `event:` line. With MESSAGE_TTL_SECONDS set, expired messages are never
sent, and a resume that missed one gets `event: reset` with `{"reason": "expired"}`, then the unexpired window.
With `presence=1`, `event: join` and `event: leave` (no `id:`) tell who starts or stops following the rooms.
Comment lines (`:`) are heartbeats."""


def _error(description: str, **headers: str) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description,
                                "content": {"application/json": {"schema": "ErrorOut"}}}
    if headers:
        response["headers"] = {name: {"description": text, "schema": {"type": "string"}}
                               for name, text in headers.items()}
    return response


_UNAVAILABLE = _error("The message store is unavailable", **{"Retry-After": "Seconds to wait"})
# Our JSON up to the request-line limit; past gunicorn's (4094 bytes) its own small page, before the app.
_QUERY_TOO_LONG = _error("The query string is too long (past 4094 bytes of request line: gunicorn's own page)")
_QUERY_TOO_LONG["content"]["text/html"] = {"schema": {"type": "string"}}

# Private rooms (AUTH_JWT_*): one JWT, taken from the first of these a request carries.
JWT_SCHEMES: dict[str, dict[str, Any]] = {
    "bearerJWT": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                  "description": "A JWT in Authorization: Bearer; looked at first"},
    "cookieJWT": {"type": "apiKey", "in": "cookie", "name": TOKEN_COOKIE,
                  "description": "The same JWT in a cookie (a same-site EventSource sends it); "
                                 "looked at when there is no Authorization header"},
    "queryJWT": {"type": "apiKey", "in": "query", "name": TOKEN_QUERY_PARAMETER,
                 "description": "The same JWT in the query string (EventSource cannot set headers); "
                                "looked at last"},
}
_UNAUTHORIZED = _error("No token, or an invalid, expired or not yet valid one",
                       **{"WWW-Authenticate": "The Bearer challenge"})
_FORBIDDEN = _error("The token does not allow this room",
                    **{"WWW-Authenticate": 'The Bearer challenge, error="insufficient_scope"'})


# The subscribe hook (AUTH_SUBSCRIBE_URL): the application's own login, which no security scheme here can name.
_HOOK_UNAUTHORIZED = _error("The application's subscribe hook answered 401 (no login it recognises)" + (
                            "; or a JWT was sent and is invalid, expired or not yet valid"),
                            **{"WWW-Authenticate": "The Bearer challenge"})
_HOOK_FORBIDDEN = _error("The application's subscribe hook answered 403, or its answer's rooms do not cover every "
                         "private room asked (or a JWT was sent that does not allow them)",
                         **{"WWW-Authenticate": 'The Bearer challenge, error="insufficient_scope"'})
_HOOK_DOWN = ("; or the application's subscribe hook did not answer usably (down, slower than "
              "AUTH_SUBSCRIBE_TIMEOUT_MS, a 5xx, not its JSON) or has no free call slot")


def _read_access(operation: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """State who may read, when rooms are private."""
    if not settings.private_rooms:
        return operation
    hook = bool(settings.auth_subscribe_url)
    # The public rooms need no credentials; with the hook, the application's own (a cookie, a header of its
    # own) are not a scheme the document can name, so a request without a JWT is a valid alternative too.
    anonymous = [{}] if settings.public_rooms or hook else []
    jwt_schemes = [{name: []} for name in JWT_SCHEMES] if settings.authorization else []
    operation["security"] = jwt_schemes + anonymous
    responses = operation["responses"]
    if hook:
        responses.update({"401": _HOOK_UNAUTHORIZED, "403": _HOOK_FORBIDDEN})
        down = responses.get("503", {}).get("description", "The message store is unavailable")
        responses["503"] = _error(down + _HOOK_DOWN, **{"Retry-After": "Seconds to wait"})
    else:
        responses.update({"401": _UNAUTHORIZED, "403": _FORBIDDEN})
    return operation


IDEMPOTENCY_KEY_PARAMETER: dict[str, Any] = {
    "in": "header", "name": IDEMPOTENCY_HEADER, "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_CHARS, "pattern": "^[!-+\\--~]+$"},
    "description": "Publish exactly once: a key made per message (a UUID, say), sent again with every retry of "
                   "it. While the message is in the window, a request with the key -- on any node -- stores "
                   "nothing and gets the same message back. Keys belong to the token's `sub` when rooms are "
                   "private, else to everyone. Visible ASCII but the comma (a header sent twice arrives joined with "
                   "one), taken as sent (quotes included)",
}


def _publish(settings: Settings) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "201": {"description": "Stored; the reply is the message as streams will carry it. With an "
                               f"`{IDEMPOTENCY_HEADER}` already used for this message: stored before, nothing "
                               f"stored now, the same reply, and `{REPLAYED_HEADER}: true`",
                "content": {"application/json": {"schema": "MessageOut"}},
                "headers": {REPLAYED_HEADER: {
                    "description": f"`true` when the message was stored by an earlier request with this "
                                   f"{IDEMPOTENCY_HEADER}; absent otherwise",
                    "schema": {"type": "string", "enum": ["true"]}}}},
        "400": _error(f"The body is not valid UTF-8 or not valid JSON, or {IDEMPOTENCY_HEADER} is malformed"),
        "413": _error(f"The body is larger than {settings.max_body_bytes} bytes"),
        "414": _QUERY_TOO_LONG,
        "415": _error("Content-Type is not application/json"),
        "422": _error(f"The JSON is not a valid message (see `errors`), or this {IDEMPOTENCY_HEADER} was used "
                      "for a different message"),
        "503": _error("The message store is unavailable, or did not confirm the write (then `errors.id` names "
                      f"the id it may have; retry with the same {IDEMPOTENCY_HEADER})",
                      **{"Retry-After": "Seconds to wait"}),
    }
    operation: dict[str, Any] = {
        "summary": "Publish a message to a room",
        "parameters": [IDEMPOTENCY_KEY_PARAMETER],
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": MessageIn(max_text_chars=settings.max_text_chars)}}},
        "responses": responses,
    }
    if settings.authorization:
        operation["security"] = [{name: []} for name in JWT_SCHEMES]
        if settings.publish_token:
            operation["security"].append({"bearerAuth": []})
        responses.update({"401": _UNAUTHORIZED, "403": _FORBIDDEN})
    elif settings.publish_token:
        operation["security"] = [{"bearerAuth": []}]
        responses["401"] = _error("The bearer token is missing or wrong",
                                  **{"WWW-Authenticate": "The Bearer challenge"})
    if settings.publish_rate:
        responses["429"] = _error(f"Too many publishes from this client (limit {settings.publish_rate})",
                                  **{"Retry-After": "Seconds until the limit resets"})
    return operation


def _json_data(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}


# Before OpenAPI 3.2 (itemSchema) the schema of a text/event-stream describes
# one event as {id, event, data, retry}; the JSON in `data` is described with
# contentMediaType/contentSchema, as OpenAPI 3.2 does.
SSE_EVENT_SCHEMA: dict[str, Any] = {"anyOf": [
    {"description": "A stored message",
     "type": "object", "required": ["id", "data"],
     "properties": {"id": {"type": "string", "minLength": 1},
                    "event": {"type": "string", "not": {"enum": ["reset"]}},
                    "data": _json_data({"$ref": "#/components/schemas/MessageOut"})}},
    {"description": "The resume is not exact: its point was not found, or a message after it expired "
                    "(reason `expired`); the whole stored (unexpired) window follows",
     "type": "object", "required": ["event", "data"],
     "properties": {"id": {"type": "string", "maxLength": 0},
                    "event": {"type": "string", "enum": ["reset"]},
                    "data": _json_data({"type": "object", "required": ["reason"],
                                        "properties": {"reason": {"type": "string", "description":
                                                                  "`expired`, or why the point was not found"}}})}},
    {"description": "With `presence=1`: an identity started (`join`) or stopped (`leave`) following one of the "
                    "rooms; no `id` (the last message's id stays the resume point)",
     "type": "object", "required": ["event", "data"],
     "properties": {"event": {"type": "string", "enum": ["join", "leave"]},
                    "data": _json_data({"type": "object", "required": ["room", "sub", "subscribers"],
                                        "properties": {"room": {"type": "string"}, "sub": {"type": "string"},
                                                       "subscribers": {"type": "integer", "minimum": 0}}})}},
]}


def _stream(settings: Settings) -> dict[str, Any]:
    return _read_access({
        "summary": "Follow one or more rooms as Server-Sent Events",
        "parameters": [
            {"in": "query", "schema": StreamQuery},
            {"in": "header", "name": "Last-Event-ID", "required": False,
             "schema": {"type": "string", "maxLength": 256},
             "description": "Resume after this id (browsers send it on reconnect)"},
        ],
        "responses": {
            "200": {"description": SSE_DESCRIPTION,
                    "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}}},
            "400": _error("The room is missing or invalid, Last-Event-ID is too long, backlog is not a whole "
                          "number from 0 to 10000, untyped is not true or false, presence is not 1, 0, true or "
                          "false, or one of them (or lastEventId) is given twice"),
            "414": _QUERY_TOO_LONG,
            "429": _error(f"This client holds its maximum of {settings.max_streams_per_client} streams on this "
                          "node (MAX_STREAMS_PER_CLIENT)",
                          **{"Retry-After": "Seconds to wait (HEARTBEAT_SECONDS)"}),
            "503": _error("This worker holds its maximum number of streams",
                          **{"Retry-After": "Seconds to wait"}),
        },
    }, settings)


def _history(settings: Settings) -> dict[str, Any]:
    return _read_access({
        "summary": "Read the stored messages of one or more rooms as JSON, oldest first",
        "parameters": [{"in": "query", "schema": HistoryQuery}],
        "responses": {
            "200": {"description": f"A page of messages: at most `limit`, and at most {settings.history_max_bytes:,} "
                                   "bytes of messages as written (HISTORY_MAX_BYTES; at least one message); "
                                   "`hasMore` says more follow: page on with `after`",
                    "content": {"application/json": {"schema": HistoryOut}}},
            "400": _error("The room, limit, after or before parameter is invalid or given twice, or after and "
                          "before are both given"),
            "414": _QUERY_TOO_LONG,
            "503": _UNAVAILABLE,
        },
    }, settings)


def _room_presence(settings: Settings) -> dict[str, Any]:
    return _read_access({
        "summary": "Presence of one room: its subscribers on every node, its messages in the window",
        "parameters": [{"in": "path", "name": "room", "required": True,
                        "schema": {"type": "string", "pattern": json_schema_pattern(ROOM_PATTERN)},
                        # HTTP clients resolve a bare . or .. segment before sending (/rooms/.. becomes /).
                        "description": "The room; `.` and `..` go percent-encoded (`%2E`, `%2E%2E`)"}],
        "responses": {
            "200": {"description": "The room's presence (all zero and null for a room nobody uses)",
                    "content": {"application/json": {"schema": RoomOut}}},
            "400": _error("The room name is invalid"),
            # The path is over gunicorn's request-line limit (4094 bytes): its own page, before the app.
            "414": {"description": "The request line is too long (gunicorn's answer)",
                    "content": {"text/html": {"schema": {"type": "string"}}}},
            "503": _UNAVAILABLE,
        },
    }, settings)


def _room_subscribers(settings: Settings) -> dict[str, Any]:
    return _read_access({
        "summary": "Who follows one room: its distinct identities on every node, by sub, a page at a time",
        "parameters": [{"in": "path", "name": "room", "required": True,
                        "schema": {"type": "string", "pattern": json_schema_pattern(ROOM_PATTERN)},
                        "description": "The room; `.` and `..` go percent-encoded (`%2E`, `%2E%2E`)"},
                       {"in": "query", "schema": SubscribersQuery}],
        "responses": {
            "200": {"description": "A page of the room's identities (an empty list when nobody is there, "
                                   "never a 404), its anonymous streams and those of identities not named",
                    "content": {"application/json": {"schema": SubscribersOut}}},
            "400": _error(f"The room name is invalid, limit is not a whole number from 1 to "
                          f"{SUBSCRIBERS_MAX_LIMIT}, after is empty or longer than {SUBSCRIBERS_MAX_AFTER_CHARS} "
                          f"characters, or one of them is given twice"),
            "414": _QUERY_TOO_LONG,
            "503": _UNAVAILABLE,
        },
    }, settings)


def _rooms_presence(settings: Settings) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": "Presence of every room with subscribers or messages, a page at a time",
        "parameters": [{"in": "query", "schema": RoomsQuery}],
        "responses": {
            "200": {"description": "A page of rooms, by name" + (
                        "; only those the caller may read (public ones without a token)"
                        if settings.private_rooms else ""),
                    "content": {"application/json": {"schema": RoomsOut}}},
            "400": _error("limit is not a whole number from 1 to 1000, or after is not a room name"),
            "414": _QUERY_TOO_LONG,
            "503": _UNAVAILABLE,
        },
    }
    if settings.authorization:
        # Anyone may ask; a token only widens the list, and a bad one is refused.
        operation["security"] = [{name: []} for name in JWT_SCHEMES] + [{}]
        operation["responses"]["401"] = _UNAUTHORIZED
    return operation


def build_spec(settings: Settings) -> dict[str, Any]:
    """Return the OpenAPI document for a server running with these settings."""
    spec = APISpec(
        title="SSE rooms", version="1", openapi_version=OPENAPI_VERSION, plugins=[MarshmallowPlugin()],
        info={"description": "Publish messages to rooms over HTTP; follow a room live with Server-Sent Events."},
    )
    spec.components.schema("ErrorOut", schema=ErrorOut)
    spec.components.schema("MessageOut", schema=MessageOut)
    if settings.publish_token:
        spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer"})
    if settings.authorization:
        for name, scheme in JWT_SCHEMES.items():
            spec.components.security_scheme(name, scheme)
    spec.path(path="/messages", operations={"post": _publish(settings), "get": _stream(settings)})
    spec.path(path="/messages/history", operations={"get": _history(settings)})
    spec.path(path="/rooms", operations={"get": _rooms_presence(settings)})
    spec.path(path="/rooms/{room}", operations={"get": _room_presence(settings)})
    spec.path(path="/rooms/{room}/subscribers", operations={"get": _room_subscribers(settings)})
    spec.path(path="/openapi.json", operations={"get": {
        "summary": "This document",
        "responses": {"200": {"description": "OpenAPI 3", "content": {"application/json": {"schema": {
            "type": "object"}}}}},
    }})
    return spec.to_dict()


def init_openapi(app: Flask, settings: Settings) -> None:
    """Build the document for this app and serve it."""
    app.extensions["openapi"] = build_spec(settings)
    app.register_blueprint(bp)


@bp.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(current_app.extensions["openapi"])
