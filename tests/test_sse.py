"""SSE wire encoding: exact bytes, and a round trip through sseclient-py."""
import json
from datetime import UTC, datetime

import pytest
import sseclient

from app.delivery.events import message_event, reset_event, retry_line
from app.delivery.sse import ServerSentEvent
from app.stores.base import Message

LARGE = "x" * 100_000

ENCODINGS = [
    (ServerSentEvent(data="hello"), b"data: hello\n\n"),
    (ServerSentEvent(data="a\nb"), b"data: a\ndata: b\n\n"),
    (ServerSentEvent(data="a\rb"), b"data: a\ndata: b\n\n"),
    (ServerSentEvent(data="a\r\nb"), b"data: a\ndata: b\n\n"),
    (ServerSentEvent(data="a\n\nb\n"), b"data: a\ndata:\ndata: b\ndata:\n\n"),
    (ServerSentEvent(data=""), b"data:\n\n"),
    (ServerSentEvent(data=" leading space"), b"data:  leading space\n\n"),
    (ServerSentEvent(data="line\u2028sep\u2029para\x85nel"),
     "data: line\u2028sep\u2029para\x85nel\n\n".encode()),
    (ServerSentEvent(data="grüße 🎉"), "data: grüße 🎉\n\n".encode()),
    (ServerSentEvent(data="x", event="chat"), b"event: chat\ndata: x\n\n"),
    (ServerSentEvent(data="x", event=""), b"event:\ndata: x\n\n"),
    (ServerSentEvent(data="x", id="42"), b"id: 42\ndata: x\n\n"),
    (ServerSentEvent(data="x", id=""), b"id:\ndata: x\n\n"),
    (ServerSentEvent(data="x", id="0"), b"id: 0\ndata: x\n\n"),
    (ServerSentEvent(retry=0), b"retry: 0\n\n"),
    (ServerSentEvent(retry=3000), b"retry: 3000\n\n"),
    (ServerSentEvent(comment="keep-alive"), b": keep-alive\n\n"),
    (ServerSentEvent(comment="a\nb"), b": a\n: b\n\n"),
    (ServerSentEvent(comment=""), b":\n\n"),
    (ServerSentEvent(id="7", event="e", retry=5, data="d"), b"id: 7\nevent: e\nretry: 5\ndata: d\n\n"),
    (ServerSentEvent(data=LARGE), b"data: " + LARGE.encode() + b"\n\n"),
]


@pytest.mark.parametrize("event, wire", ENCODINGS, ids=[
    "plain", "lf", "cr", "crlf", "blank-lines", "empty-data", "leading-space", "u2028-not-a-break",
    "unicode", "event-type", "empty-event-type", "id", "empty-id-clears", "id-zero-kept", "retry-zero",
    "retry", "comment", "multiline-comment", "empty-comment", "all-fields", "large-text",
])
def test_encodes_exact_bytes(event, wire):
    assert event.encode() == wire


@pytest.mark.parametrize("field, value", [
    ("id", "a\nb"), ("id", "a\rb"), ("id", "a\x00b"), ("event", "a\nb"), ("event", "a\r\nb"), ("event", "x\x00"),
], ids=["id-lf", "id-cr", "id-nul", "event-lf", "event-crlf", "event-nul"])
def test_rejects_line_breaks_and_nul_in_id_and_event(field, value):
    with pytest.raises(ValueError, match=field):
        ServerSentEvent(data="x", **{field: value})


@pytest.mark.parametrize("retry", [-1, 1.5, "10"])
def test_rejects_invalid_retry(retry):
    with pytest.raises(ValueError, match="retry"):
        ServerSentEvent(retry=retry)


def parse(wire: bytes) -> list[sseclient.Event]:
    """Parse with an independent implementation, fed in awkward 7-byte chunks."""
    chunks = [wire[i:i + 7] for i in range(0, len(wire), 7)]
    return list(sseclient.SSEClient(chunks).events())


ROUND_TRIP_TEXTS = ["plain", "two\nlines", "crlf\r\nline", "cr\ronly", "u2028\u2028inside", "ünïcödé 🎉",
                    "trailing newline\n", " spaces ", "a" * 5000, "data: fake\n\nevent: injected"]


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS, ids=range(len(ROUND_TRIP_TEXTS)))
def test_message_event_round_trips_through_third_party_parser(text):
    message = Message(id="abc-1", room="r", text=text, event="chat.v1",
                      created_at=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC))
    [event] = parse(message_event(message.to_json()))
    assert event.id == "abc-1"
    assert event.event == "chat.v1"
    assert json.loads(event.data) == message.to_json()
    assert json.loads(event.data)["text"] == text


def test_default_event_type_is_left_out_so_onmessage_sees_it():
    message = Message(id="1", room="r", text="t", event="message", created_at=datetime.now(UTC))
    wire = message_event(message.to_json())
    assert b"event:" not in wire
    assert parse(wire)[0].event == "message"


def test_raw_data_line_breaks_round_trip_as_lf():
    # SSE cannot carry a raw CR: every break arrives as LF. Message events are
    # unaffected because their JSON escapes CR and LF.
    [event] = parse(ServerSentEvent(data="a\r\nb\rc\nd").encode())
    assert event.data == "a\nb\nc\nd"


def test_several_events_in_one_write_stay_separate():
    wire = b"".join(ServerSentEvent(id=str(i), data=f"m{i}").encode() for i in range(5))
    assert [(e.id, e.data) for e in parse(wire)] == [(str(i), f"m{i}") for i in range(5)]


def test_reset_event_clears_last_event_id_and_says_why():
    wire = reset_event("evicted")
    assert wire == b'id:\nevent: reset\ndata: {"reason":"evicted"}\n\n'
    [event] = parse(wire)
    assert event.event == "reset" and json.loads(event.data) == {"reason": "evicted"}


def test_retry_line():
    assert retry_line(2500) == b"retry: 2500\n\n"
