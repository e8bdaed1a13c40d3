"""``untyped=true`` on the stream: every message as the default event, its type in the JSON (issue 15, part 7).

An EventSource hears a named event only through a listener registered for
that name: a page that does not know a room's types misses their messages.
"""
from __future__ import annotations

import json

import pytest
import sseclient

from app.delivery.events import as_default_event, message_event


@pytest.mark.parametrize("body, expected", [
    ({"id": "a-1", "room": "r", "text": "hi", "event": "message", "createdAt": "t"},
     b'id: a-1\ndata: {"id":"a-1","room":"r","text":"hi","event":"message","createdAt":"t"}\n\n'),
    ({"id": "a-2", "room": "r", "text": "deploy done", "event": "announcement", "createdAt": "t"},
     b'id: a-2\ndata: {"id":"a-2","room":"r","text":"deploy done","event":"announcement","createdAt":"t"}\n\n'),
    ({"id": "a-3", "room": "r", "text": "event: x\ndata: y", "event": "event:data", "createdAt": "t"},
     b'id: a-3\ndata: {"id":"a-3","room":"r","text":"event: x\\ndata: y","event":"event:data","createdAt":"t"}\n\n'),
], ids=["default-type-unchanged", "typed", "type-and-text-that-look-like-fields"])
def test_as_default_event_cuts_only_the_event_line(body, expected):
    assert as_default_event(message_event(body)) == expected


def test_a_default_event_is_returned_as_it_is_not_copied():
    payload = message_event({"id": "a-1", "room": "r", "text": "hi", "event": "message", "createdAt": "t"})
    assert as_default_event(payload) is payload


def read(client, url, chunks):
    reply = client.get(url)
    assert reply.status_code == 200
    body = b"".join(next(reply.response) for _ in range(chunks))
    reply.close()
    return list(sseclient.SSEClient([body]).events())


def test_an_untyped_stream_sends_every_type_as_message_in_the_backlog_and_live(client):
    client.post("/messages", json={"room": "ops", "text": "deploy done", "event": "announcement"})
    client.post("/messages", json={"room": "ops", "text": "hi"})
    reply = client.get("/messages?room=ops&untyped=true")
    body = b"".join(next(reply.response) for _ in range(2))  # retry:, the backlog
    client.post("/messages", json={"room": "ops", "text": "rolled back", "event": "alert"})
    body += next(reply.response)
    reply.close()
    events = list(sseclient.SSEClient([body]).events())
    assert [(e.event, json.loads(e.data)["event"], json.loads(e.data)["text"]) for e in events] == [
        ("message", "announcement", "deploy done"), ("message", "message", "hi"), ("message", "alert", "rolled back")]
    assert b"event:" not in body


def test_without_untyped_the_types_stay_named_events(client):
    client.post("/messages", json={"room": "ops", "text": "deploy done", "event": "announcement"})
    assert [e.event for e in read(client, "/messages?room=ops&untyped=false", 2)] == ["announcement"]
    assert [e.event for e in read(client, "/messages?room=ops", 2)] == ["announcement"]


@pytest.mark.parametrize("value", ["1", "yes", "", "TRUE"])
def test_a_bad_untyped_is_400_json(client, value):
    reply = client.get("/messages", query_string={"room": "r", "untyped": value})
    assert reply.status_code == 400 and reply.get_json()["errors"] == {"untyped": ["invalid"]}
