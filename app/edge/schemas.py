"""Validation at the edge: one marshmallow schema per payload."""
from __future__ import annotations

import re

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates

ROOM_PATTERN = r"\A[A-Za-z0-9_.-]{1,64}\Z"
EVENT_PATTERN = r"\A[A-Za-z0-9_.:-]{1,64}\Z"
ROOM_RULE = "1-64 characters from A-Z a-z 0-9 _ . -"
EVENT_RULE = "1-64 characters from A-Z a-z 0-9 _ . : -"
# Event types the server sends on its own; a message of such a type would be
# indistinguishable from them to every EventSource listening on the room.
# ``error`` and ``open`` are the events EventSource itself fires: a published
# one would run other clients' connection-state handlers.
RESERVED_EVENTS = frozenset({"reset", "error", "open"})


def _contains_non_whitespace_pattern() -> str:
    """Return a pattern for "has a character that str.strip() keeps", valid in Python and ECMA-262."""
    # \S differs between the two (Python counts U+001C-U+001F and U+0085 as
    # whitespace, ECMA counts U+FEFF), so the class lists Python's own set.
    # U+3000 is the last code point Python calls whitespace.
    spaces = "".join(f"\\u{ord(char):04x}" for char in map(chr, range(0x3001)) if char.isspace())
    return f"[^{spaces}]"


TEXT_PATTERN = _contains_non_whitespace_pattern()


def json_schema_pattern(python_pattern: str) -> str:
    """Return a \\A...\\Z pattern as the ^...$ that JSON Schema (ECMA-262) understands."""
    # Without the m flag, ECMA's ^ and $ match only at the very ends, as \A and \Z do in Python.
    return "^" + python_pattern.removeprefix(r"\A").removesuffix(r"\Z") + "$"


def valid_room(room: str | None) -> bool:
    """Tell whether a room name from a query string is acceptable."""
    return room is not None and re.match(ROOM_PATTERN, room) is not None


class MessageIn(Schema):
    """The body of ``POST /messages``."""

    class Meta:
        unknown = RAISE

    room = fields.String(required=True, validate=validate.Regexp(ROOM_PATTERN, error=f"room must be {ROOM_RULE}"),
                         metadata={"pattern": json_schema_pattern(ROOM_PATTERN)})
    text = fields.String(required=True, metadata={
        "minLength": 1, "pattern": TEXT_PATTERN,
        "description": "Any Unicode text with at least one non-whitespace character (no lone surrogates)",
    })
    event = fields.String(
        load_default="message",
        validate=validate.Regexp(EVENT_PATTERN, error=f"event must be {EVENT_RULE}"),
        metadata={"pattern": json_schema_pattern(EVENT_PATTERN), "not": {"enum": sorted(RESERVED_EVENTS)}},
    )

    @validates("event")
    def _check_event(self, event: str, **_: object) -> None:
        if event in RESERVED_EVENTS:
            raise ValidationError(f"event {event!r} is reserved for the server's own events")

    def __init__(self, *, max_text_chars: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_text_chars = max_text_chars
        # Per instance: the OpenAPI document states the limit this server runs with.
        self.fields["text"].metadata["maxLength"] = max_text_chars

    @validates("text")
    def _check_text(self, text: str, **_: object) -> None:
        if not text.strip():
            raise ValidationError("text must contain at least one non-whitespace character")
        if len(text) > self.max_text_chars:
            raise ValidationError(f"text must be at most {self.max_text_chars} characters, got {len(text)}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError("text must be valid Unicode (it contains a lone surrogate)") from None


class MessageOut(Schema):
    """A stored message as returned by the API (documentation of the shape)."""

    id = fields.String(dump_only=True, required=True)
    room = fields.String(dump_only=True, required=True)
    text = fields.String(dump_only=True, required=True)
    event = fields.String(dump_only=True, required=True)
    createdAt = fields.String(dump_only=True, required=True, metadata={"format": "date-time"})


# -- Documentation schemas: the shapes /openapi.json describes (the views build these by hand) --

class ErrorOut(Schema):
    """Every 4xx/5xx body (app.edge.errors)."""

    code = fields.Integer(required=True, metadata={"example": 422})
    status = fields.String(required=True, metadata={"example": "Unprocessable Entity"})
    message = fields.String(required=True)
    errors = fields.Dict(required=True, metadata={"description": "Field name to list of problems; may be empty"})


class HistoryOut(Schema):
    """The body of ``GET /messages/history``."""

    room = fields.String(required=True, metadata={"description": "The first room asked for"})
    rooms = fields.List(fields.String(), required=True, metadata={"description": "Every room asked for"})
    messages = fields.List(fields.Nested(MessageOut), required=True)
    reset = fields.String(required=True, allow_none=True, metadata={
        "description": "Why `after` or `before` was not found (the page starts at the oldest, or is the newest), "
                       "or `expired` (MESSAGE_TTL_SECONDS) when a message after `after` has expired"})
    hasMore = fields.Boolean(required=True, metadata={
        "description": "More messages follow (the page stopped at `limit` or at HISTORY_MAX_BYTES): "
                       "ask again with `after` set to the last id; with `before`: older ones remain, "
                       "ask again with `before` set to the first id"})


class RoomOut(Schema):
    """One room's presence: ``GET /rooms/<room>``, and each item of ``GET /rooms``."""

    room = fields.String(required=True, metadata={"pattern": json_schema_pattern(ROOM_PATTERN)})
    subscribers = fields.Integer(required=True, metadata={
        "minimum": 0, "description": "Open streams following the room, on every worker of every node "
                                     "(each counts once however many rooms it follows); up to ~2 s old"})
    messages = fields.Integer(required=True, metadata={
        "minimum": 0, "description": "The room's messages in the stored window"})
    lastMessageAt = fields.String(required=True, allow_none=True, metadata={
        "format": "date-time", "description": "createdAt of the room's newest message in the window; "
                                              "null when it has none"})


class OtherRoomsOut(Schema):
    """The rooms of ``GET /rooms`` that are counted but not named."""

    rooms = fields.Integer(required=True, metadata={
        "minimum": 0, "description": "Rooms with subscribers that a worker counted without naming them (each "
                                     "names PRESENCE_MAX_ROOMS: those in which it names someone already, then those "
                                     "with someone to name, then its busiest); one counted on two workers counts "
                                     "twice"})
    subscribers = fields.Integer(required=True, metadata={
        "minimum": 0, "description": "Their open streams, summed (a stream following several counts in each)"})


class RoomsOut(Schema):
    """The body of ``GET /rooms``: one page of rooms, by name."""

    rooms = fields.List(fields.Nested(RoomOut), required=True, metadata={
        "description": "The rooms with subscribers or messages in the window, by name, after `after`"})
    hasMore = fields.Boolean(required=True, metadata={"description": "More rooms follow: ask again with `after=next`"})
    next = fields.String(required=True, allow_none=True, metadata={
        "pattern": json_schema_pattern(ROOM_PATTERN),
        "description": "The `after` of the next page (this page's last room); null on the last page"})
    otherRooms = fields.Nested(OtherRoomsOut, required=True, metadata={
        "description": "Subscribers of rooms no worker's presence names: counted, not listed (the same on every page)"})


ROOMS_MAX_LIMIT = 1000


class SubscriberOut(Schema):
    """One identity following a room."""

    sub = fields.String(required=True, metadata={
        "description": "The identity: the token's `sub` (or the one the subscribe hook named)"})
    streams = fields.Integer(required=True, metadata={
        "minimum": 1, "description": "Its open streams following the room, on every worker of every node"})


# A page of GET /rooms/R/subscribers; ``after`` is bounded only so that it is bounded.
SUBSCRIBERS_MAX_LIMIT = 1000
SUBSCRIBERS_MAX_AFTER_CHARS = 1024


class SubscribersOut(Schema):
    """The body of ``GET /rooms/<room>/subscribers``: who follows the room, by ``sub``, a page at a time."""

    room = fields.String(required=True, metadata={"pattern": json_schema_pattern(ROOM_PATTERN)})
    subscribers = fields.List(fields.Nested(SubscriberOut), required=True, metadata={
        "description": "The distinct identities following the room, by `sub`, after `after`; up to ~2 s old"})
    anonymous = fields.Integer(required=True, metadata={
        "minimum": 0, "description": "Open streams following the room with no identity (counted, never listed)"})
    unnamed = fields.Integer(required=True, metadata={
        "minimum": 0, "description": "Open streams of identities counted but not named: each worker's presence "
                                     "entry names at most PRESENCE_MAX_IDENTITIES (room, identity) pairs, "
                                     "those with the most streams, and identities of at most 256 bytes"})
    hasMore = fields.Boolean(required=True, metadata={"description": "More identities follow: ask again with "
                                                                     "`after=next`"})
    next = fields.String(required=True, allow_none=True, metadata={
        "description": "The `after` of the next page (this page's last `sub`); null on the last page"})


class SubscribersQuery(Schema):
    """The query string of ``GET /rooms/<room>/subscribers``."""

    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=SUBSCRIBERS_MAX_LIMIT),
                           metadata={"description": "Identities per page"})
    after = fields.String(validate=validate.Length(min=1, max=SUBSCRIBERS_MAX_AFTER_CHARS), metadata={
        "description": "Start after this `sub`: the `next` of the previous page"})


class RoomsQuery(Schema):
    """The query string of ``GET /rooms``."""

    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=ROOMS_MAX_LIMIT),
                           metadata={"description": "Rooms per page"})
    after = fields.String(metadata={"pattern": json_schema_pattern(ROOM_PATTERN),
                                    "description": "Start after this room: the `next` of the previous page"})


# One stream or history read can name this many distinct rooms: enough for a
# chat client's sidebar, few enough that the query string stays far below
# gunicorn's 4 KB request line.
MAX_ROOMS_PER_REQUEST = 32


class RoomQuery(Schema):
    """The rooms every read names in its query string: ``room`` repeated (``?room=a&room=b``)."""

    room = fields.List(
        fields.String(metadata={"pattern": json_schema_pattern(ROOM_PATTERN)}), required=True,
        metadata={"minItems": 1, "maxItems": MAX_ROOMS_PER_REQUEST,
                  "description": f"1 to {MAX_ROOMS_PER_REQUEST} rooms (a repeated one is read once); "
                                 f"messages of all of them arrive in one store order"})


# A stream's ``backlog``: the newest N messages on a join without a usable id
# (Nchan's nchan_subscriber_first_message). Enough for a chat's first screen;
# what it sends is bounded in bytes by STREAM_BACKLOG_MAX_BYTES all the same.
STREAM_MAX_BACKLOG = 10_000


class StreamQuery(RoomQuery):
    """The query string of ``GET /messages`` (the SSE stream)."""

    lastEventId = fields.String(validate=validate.Length(max=256), metadata={
        "description": "Resume after this id; the Last-Event-ID header wins when both are sent"})
    backlog = fields.Integer(validate=validate.Range(min=0, max=STREAM_MAX_BACKLOG), metadata={
        "description": "Without a Last-Event-ID the window holds (none, or an evicted or unknown one: then "
                       "after the `reset`), start with only the rooms' newest `backlog` messages, oldest first; "
                       "0: live messages only. Ignored on an exact resume. Absent: the whole stored window"})
    untyped = fields.Boolean(load_default=False, metadata={
        "description": "`true`: every message arrives as the default `message` event (no `event:` line), its "
                       "type still in the JSON's `event`, so `EventSource.onmessage` hears every type "
                       "(the server's own `reset` stays a named event)"})
    presence = fields.String(validate=validate.OneOf(["1", "0", "true", "false"]), metadata={
        "description": "`1` (or `true`): also receive `join` and `leave` events, with no `id:`, when an identity "
                       "starts following one of the rooms (its first stream on any worker of any node) or stops "
                       "(its last stream closed, or its worker died); data `{\"room\", \"sub\", \"subscribers\"}`, "
                       "`subscribers` being the room's open streams after the change. Anonymous streams are "
                       "counted, never announced"})


class HistoryQuery(RoomQuery):
    """The query string of ``GET /messages/history``."""

    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    after = fields.String(validate=validate.Length(max=256), metadata={
        "description": "Start after this message id; one not stored for these rooms (evicted, unknown, of another "
                       "room, or not an id at all) gives `reset` and the page starts at the oldest"})
    before = fields.String(validate=validate.Length(max=256), metadata={
        "description": "Scrollback: the `limit` messages just before this id (still oldest first); `hasMore` "
                       "says older ones remain. Not with `after` (400). One not stored for these rooms gives "
                       "`reset` and the rooms' newest `limit` messages"})
