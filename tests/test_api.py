"""The HTTP interface through Flask's test client (one process, SQLite store)."""
import json
import re

import pytest
import sseclient

from app.stores.base import UNKNOWN_ID_REASON


def post(client, body, content_type="application/json"):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post("/messages", data=data, content_type=content_type)


def test_publish_returns_201_with_the_stored_message(client):
    reply = post(client, {"room": "developers", "text": "was geht ab in buxtehude?"})
    assert reply.status_code == 201
    body = reply.get_json()
    assert set(body) == {"id", "room", "text", "event", "createdAt"}
    assert (body["room"], body["text"], body["event"]) == ("developers", "was geht ab in buxtehude?", "message")


ERRORS = [
    (b'{"room": "r", "text": ', "application/json", 400),
    (b'\xff\xfe{"room": "r"}', "application/json", 400),
    ({"room": "r", "text": "x"}, "text/plain", 415),
    ({"room": "r", "text": "x"}, "application/x-www-form-urlencoded", 415),
    ({"room": "r b", "text": "x"}, "application/json", 422),
    ({"room": "r", "text": "x", "extra": 1}, "application/json", 422),
    (b"[1, 2]", "application/json", 422),
    (b'"just a string"', "application/json", 422),
    ({"room": "r", "text": "x" * 5000}, "application/json", 422),
    ({"room": "r", "text": "x" * 30000}, "application/json", 413),
]


@pytest.mark.parametrize("body, content_type, status", ERRORS, ids=[
    "truncated-json", "invalid-utf8", "text-plain", "form", "bad-room", "unknown-field", "array", "string",
    "text-over-limit", "body-over-limit",
])
def test_rejected_requests_get_one_error_shape_and_store_nothing(client, body, content_type, status):
    reply = post(client, body, content_type)
    assert reply.status_code == status
    error = reply.get_json()
    assert set(error) == {"code", "status", "message", "errors"} and error["code"] == status
    assert client.get("/messages/history?room=r").get_json()["messages"] == []


def test_invalid_fields_are_reported_per_field(client):
    error = post(client, {"room": "", "text": "", "event": "a b"}).get_json()
    assert set(error["errors"]) == {"room", "text", "event"}


@pytest.mark.parametrize("query", [
    "", "?room=", "?room=a%20b", "?room=" + "r" * 65, "?room=a&room=b%20c",
    "?" + "&".join(f"room=r{n}" for n in range(33)),
    "?" + "&".join(f"room=r{n % 2}" for n in range(33)),
], ids=["none", "empty", "space", "too-long", "one-of-several-bad", "33-rooms", "33-parameters-2-rooms"])
def test_stream_without_a_valid_room_is_400_json_not_a_stream(client, query):
    reply = client.get("/messages" + query)
    assert reply.status_code == 400
    assert reply.mimetype == "application/json"
    assert "room" in reply.get_json()["errors"]


def read_stream(client, url, headers=None, chunks=2):
    reply = client.get(url, headers=headers or {})
    assert reply.status_code == 200
    body = b"".join(next(reply.response) for _ in range(chunks))
    reply.close()
    return reply, body


def test_stream_headers_retry_then_backlog(client):
    first = post(client, {"room": "r", "text": "one"}).get_json()
    post(client, {"room": "r", "text": "two", "event": "chat"})
    reply, body = read_stream(client, "/messages?room=r")
    assert reply.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert reply.headers["Cache-Control"] == "no-cache"
    assert reply.headers["X-Accel-Buffering"] == "no"
    retry = re.match(rb"retry: (\d+)\n\n", body)
    assert retry and 2250 <= int(retry[1]) <= 3750  # RETRY_MS 3000, +-25 % (RETRY_JITTER's default)
    events = list(sseclient.SSEClient([body]).events())
    assert [(e.event, json.loads(e.data)["text"]) for e in events] == [("message", "one"), ("chat", "two")]
    assert events[0].id == first["id"]


@pytest.mark.parametrize("how", ["header", "query"])
def test_stream_resumes_after_last_event_id(client, how):
    sent = [post(client, {"room": "r", "text": f"m{i}"}).get_json() for i in range(4)]
    if how == "header":
        _, body = read_stream(client, "/messages?room=r", {"Last-Event-ID": sent[1]["id"]})
    else:
        _, body = read_stream(client, f"/messages?room=r&lastEventId={sent[1]['id']}")
    assert [json.loads(e.data)["text"] for e in sseclient.SSEClient([body]).events()] == ["m2", "m3"]


def test_header_wins_over_query_parameter(client):
    sent = [post(client, {"room": "r", "text": f"m{i}"}).get_json() for i in range(4)]
    _, body = read_stream(client, f"/messages?room=r&lastEventId={sent[0]['id']}", {"Last-Event-ID": sent[2]["id"]})
    assert [json.loads(e.data)["text"] for e in sseclient.SSEClient([body]).events()] == ["m3"]


def test_unknown_last_event_id_sends_one_reset_then_the_whole_backlog(client):
    post(client, {"room": "r", "text": "m0"})
    _, body = read_stream(client, "/messages?room=r", {"Last-Event-ID": "nonsense"}, chunks=3)  # retry, reset, backlog
    events = list(sseclient.SSEClient([body]).events())
    assert [e.event for e in events] == ["reset", "message"]
    assert json.loads(events[0].data) == {"reason": UNKNOWN_ID_REASON}  # the id is not echoed


def test_oversize_last_event_id_is_400(client):
    assert client.get("/messages?room=r", headers={"Last-Event-ID": "x" * 257}).status_code == 400


def test_heartbeat_comment_in_silence(client):
    _, body = read_stream(client, "/messages?room=quiet", chunks=2)  # HEARTBEAT_SECONDS=1 in the fixture
    assert re.fullmatch(rb"retry: \d+\n\n: keep-alive\n\n", body)


def test_history_pages_forward(client):
    sent = [post(client, {"room": "h", "text": f"m{i}"}).get_json() for i in range(5)]
    page = client.get("/messages/history?room=h&limit=2").get_json()
    assert [m["text"] for m in page["messages"]] == ["m0", "m1"] and page["hasMore"] and page["reset"] is None
    page = client.get(f"/messages/history?room=h&limit=2&after={sent[3]['id']}").get_json()
    assert [m["text"] for m in page["messages"]] == ["m4"] and not page["hasMore"]
    for unknown in ("bogus", sent[0]["id"].rsplit("-", 1)[0] + "-9999999999999999999", "１", f"{sent[3]['id']}\x00"):
        page = client.get("/messages/history", query_string={"room": "h", "after": unknown}).get_json()
        assert page["reset"] == UNKNOWN_ID_REASON and len(page["messages"]) == 5, unknown


@pytest.mark.parametrize("limit", ["0", "1001", "x", "-1", "+5", " 5", "1_0", "١٠", "５", ""])
def test_history_rejects_bad_limits(client, limit):
    assert client.get(f"/messages/history?room=h&limit={limit}").status_code == 400


def test_an_oversize_lasteventid_query_is_400_even_when_the_header_wins(client):
    """Found by schemathesis: a short header hid an over-long query parameter."""
    reply = client.get("/messages?room=r&lastEventId=" + "x" * 257, headers={"Last-Event-ID": "short"})
    assert reply.status_code == 400 and "lastEventId" in reply.get_json()["message"]


def test_stream_of_several_rooms_gets_their_backlog_in_store_order_and_one_id_resumes_all(client):
    sent = [post(client, {"room": room, "text": f"{room}{n}"}).get_json() for n, room in enumerate("abcab")]
    _, body = read_stream(client, "/messages?room=a&room=b&room=a")  # repeated: counted once
    assert [json.loads(e.data)["text"] for e in sseclient.SSEClient([body]).events()] == ["a0", "b1", "a3", "b4"]
    _, body = read_stream(client, "/messages?room=b&room=a", {"Last-Event-ID": sent[1]["id"]})
    assert [json.loads(e.data)["text"] for e in sseclient.SSEClient([body]).events()] == ["a3", "b4"]


def test_32_rooms_are_accepted(client):
    reply = client.get("/messages?" + "&".join(f"room=r{n}" for n in range(32)))
    assert reply.status_code == 200
    reply.close()


def test_history_of_several_rooms(client):
    for n, room in enumerate("abcab"):
        post(client, {"room": room, "text": f"{room}{n}"})
    page = client.get("/messages/history?room=a&room=b&limit=3").get_json()
    assert [m["text"] for m in page["messages"]] == ["a0", "b1", "a3"] and page["hasMore"]
    assert page["rooms"] == ["a", "b"]
