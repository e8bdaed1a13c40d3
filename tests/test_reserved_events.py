"""Regression: a client could publish under ``error``/``open``, the events EventSource fires itself.

(``reset`` was fixed on main, tests/test_reserved_event_names.py.)"""
import pytest

from app.edge.schemas import RESERVED_EVENTS


@pytest.mark.parametrize("event", sorted(RESERVED_EVENTS))
def test_published_event_cannot_impersonate_server_or_eventsource_events(client, event):
    reply = client.post("/messages", json={"room": "r", "text": "you were reset", "event": event})

    assert reply.status_code == 422
    assert "reserved" in reply.json["errors"]["event"][0]
    assert client.get("/messages/history?room=r").json["messages"] == []

