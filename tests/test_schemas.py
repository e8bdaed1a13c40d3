"""The POST /messages payload: what is accepted and what is rejected, and why."""
import pytest
from marshmallow import ValidationError

from app.edge.schemas import MessageIn

schema = MessageIn(max_text_chars=10)

ACCEPTED = [
    ({"room": "developers", "text": "hi"}, {"room": "developers", "text": "hi", "event": "message"}),
    ({"room": "a", "text": "x", "event": "chat"}, {"room": "a", "text": "x", "event": "chat"}),
    ({"room": "A-z_0.9", "text": "line\nline"}, {"room": "A-z_0.9", "text": "line\nline", "event": "message"}),
    ({"room": "r" * 64, "text": "1234567890"}, {"room": "r" * 64, "text": "1234567890", "event": "message"}),
    ({"room": "r", "text": "🎉\u2028\x00", "event": "ns:type.v1-x_y"},
     {"room": "r", "text": "🎉\u2028\x00", "event": "ns:type.v1-x_y"}),
]


@pytest.mark.parametrize("payload, loaded", ACCEPTED, ids=["minimal", "event", "multiline", "limits", "unicode"])
def test_accepts(payload, loaded):
    assert schema.load(payload) == loaded


REJECTED = [
    ({"text": "x"}, "room"),
    ({"room": "r"}, "text"),
    ({"room": "", "text": "x"}, "room"),
    ({"room": "r" * 65, "text": "x"}, "room"),
    ({"room": "a b", "text": "x"}, "room"),
    ({"room": "a\nb", "text": "x"}, "room"),
    ({"room": "a/b", "text": "x"}, "room"),
    ({"room": "ä", "text": "x"}, "room"),
    ({"room": 5, "text": "x"}, "room"),
    ({"room": "r", "text": ""}, "text"),
    ({"room": "r", "text": " \n\t"}, "text"),
    ({"room": "r", "text": "x" * 11}, "text"),
    ({"room": "r", "text": ["x"]}, "text"),
    ({"room": "r", "text": "\ud800"}, "text"),
    ({"room": "r", "text": "x", "event": ""}, "event"),
    ({"room": "r", "text": "x", "event": "a b"}, "event"),
    ({"room": "r", "text": "x", "event": "a\nb"}, "event"),
    ({"room": "r", "text": "x", "event": "e" * 65}, "event"),
    ({"room": "r", "text": "x", "event": None}, "event"),
    ({"room": "r", "text": "x", "id": "forged"}, "id"),
    ({"room": "r", "text": "x", "createdAt": "2020"}, "createdAt"),
]


@pytest.mark.parametrize("payload, field", REJECTED, ids=[
    "no-room", "no-text", "empty-room", "long-room", "space-in-room", "newline-in-room", "slash-in-room",
    "non-ascii-room", "room-not-string", "empty-text", "whitespace-text", "long-text", "text-not-string",
    "lone-surrogate", "empty-event", "space-in-event", "newline-in-event", "long-event", "null-event",
    "unknown-field-id", "unknown-field-createdAt",
])
def test_rejects_with_a_message_for_the_field(payload, field):
    with pytest.raises(ValidationError) as info:
        schema.load(payload)
    assert field in info.value.normalized_messages()


def test_rejects_a_json_array():
    with pytest.raises(ValidationError):
        schema.load([{"room": "r", "text": "x"}])
