"""A message cannot be published under an event name the server or EventSource uses itself.

``reset`` is the server's own control event; ``error`` and ``open`` are the events EventSource fires
itself, so a message under either would impersonate them in the browser.
"""
import pytest

from app.edge.schemas import RESERVED_EVENTS


def test_the_servers_and_eventsources_own_event_names_are_reserved():
    assert {"reset", "error", "open"} <= RESERVED_EVENTS


@pytest.mark.parametrize("event", sorted(RESERVED_EVENTS))
def test_publishing_under_a_reserved_event_name_is_422_and_stores_nothing(client, event):
    reply = client.post("/messages", json={"room": "r", "text": "you were reset", "event": event})

    assert reply.status_code == 422
    assert reply.get_json()["errors"] == {"event": [f"event {event!r} is reserved for the server's own events"]}
    assert client.get("/messages/history?room=r").get_json()["messages"] == []


def test_an_event_name_that_only_contains_a_reserved_word_is_accepted(client):
    reply = client.post("/messages", json={"room": "r", "text": "hi", "event": "reset-password"})

    assert reply.status_code == 201
