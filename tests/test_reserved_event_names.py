"""Regression: a message could be published with event "reset", the server's own control event."""
import pytest


@pytest.mark.parametrize("event", ["reset"])
def test_publishing_a_message_with_a_reserved_event_type_is_rejected(client, event):
    reply = client.post("/messages", json={"room": "r", "text": "hi", "event": event})

    assert reply.status_code == 422
    assert reply.get_json()["errors"] == {"event": [f"event {event!r} is reserved for the server's own events"]}
    assert client.get("/messages/history?room=r").get_json()["messages"] == []


def test_an_event_type_that_only_contains_a_reserved_word_is_accepted(client):
    reply = client.post("/messages", json={"room": "r", "text": "hi", "event": "reset-password"})

    assert reply.status_code == 201
