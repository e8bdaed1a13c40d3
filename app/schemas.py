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
RESERVED_EVENTS = frozenset({"reset"})


def valid_room(room: str | None) -> bool:
    """Tell whether a room name from a query string is acceptable."""
    return room is not None and re.match(ROOM_PATTERN, room) is not None


class MessageIn(Schema):
    """The body of ``POST /messages``."""

    class Meta:
        unknown = RAISE

    room = fields.String(required=True, validate=validate.Regexp(ROOM_PATTERN, error=f"room must be {ROOM_RULE}"))
    text = fields.String(required=True)
    event = fields.String(
        load_default="message", validate=validate.Regexp(EVENT_PATTERN, error=f"event must be {EVENT_RULE}")
    )

    @validates("event")
    def _check_event(self, event: str, **_: object) -> None:
        if event in RESERVED_EVENTS:
            raise ValidationError(f"event {event!r} is reserved for the server's own events")

    def __init__(self, *, max_text_chars: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_text_chars = max_text_chars

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

    id = fields.String(dump_only=True)
    room = fields.String(dump_only=True)
    text = fields.String(dump_only=True)
    event = fields.String(dump_only=True)
    createdAt = fields.String(dump_only=True)
