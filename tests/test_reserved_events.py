"""Regression: a client could publish under the server's own ``reset`` event name."""
import pytest

from app.schemas import RESERVED_EVENTS


@pytest.mark.parametrize("event", RESERVED_EVENTS)
def test_published_event_cannot_impersonate_server_or_eventsource_events(client, event):
    reply = client.post("/messages", json={"room": "r", "text": "you were reset", "event": event})

    assert reply.status_code == 422
    assert "reserved" in reply.json["errors"]["event"][0]
    assert client.get("/messages/history?room=r").json["messages"] == []


def test_event_names_that_merely_contain_a_reserved_word_are_fine(client):
    reply = client.post("/messages", json={"room": "r", "text": "x", "event": "reset-password"})

    assert reply.status_code == 201
