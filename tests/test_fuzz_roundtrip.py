"""Property: whatever text and event name a client publishes, every reader gets exactly that, once.

Each example publishes into a fresh room on real gunicorn, reads the stream
with an independent SSE parser (sseclient-py), and checks that the first
event is the message, field for field, and that the next one is a sentinel
published after it: so nothing was injected, split off or merged. Examples
are independent of each other, so hypothesis can shrink a failure to the
smallest text that breaks.
"""
from __future__ import annotations

import itertools
import json

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sseclient import SSEClient

from app.edge.schemas import EVENT_PATTERN, RESERVED_EVENTS

ROUND_TRIP_EXAMPLES = 150
SURROGATE_EXAMPLES = 60
READ_TIMEOUT = 10

# Pieces that break naive SSE encoders or parsers: the three line breaks,
# NUL, the Unicode line separators str.splitlines() splits on, a BOM, and
# text that looks like SSE fields and event boundaries.
HOSTILE_PIECES = st.sampled_from([
    "\r", "\n", "\r\n", "\n\n", "\r\r", "\x00", "\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\ufeff",
    "data: forged", "\n\nevent: forged\ndata: x\n\n", "id: 1", "retry: 1", ":", " ", "é", "😀", "\U0010ffff",
])
ANY_CHARACTER = st.characters(exclude_categories=("Cs",))  # lone surrogates: see the test below
TEXTS = (st.lists(st.one_of(st.text(ANY_CHARACTER, min_size=1), HOSTILE_PIECES), min_size=1, max_size=12)
         .map("".join).filter(str.strip))
EVENT_NAMES = st.none() | st.from_regex(EVENT_PATTERN, fullmatch=True).filter(lambda name: name not in RESERVED_EVENTS)

_rooms = itertools.count()


def _publish(url: str, body: dict) -> requests.Response:
    return requests.post(url + "/messages", json=body, timeout=5)


@pytest.mark.slow
def test_any_text_and_event_name_arrive_as_exactly_one_identical_event(live_server):
    url = live_server.url
    examples = []

    @given(text=TEXTS, event=EVENT_NAMES)
    @settings(max_examples=ROUND_TRIP_EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    def round_trip(text: str, event: str | None) -> None:
        room = f"rt-{next(_rooms)}"
        with requests.get(f"{url}/messages?room={room}", stream=True, timeout=READ_TIMEOUT) as stream:
            events = SSEClient(stream.iter_content(chunk_size=None)).events()
            body = {"room": room, "text": text} | ({} if event is None else {"event": event})
            reply = _publish(url, body)
            assert reply.status_code == 201, reply.text
            sent = reply.json()
            sentinel = _publish(url, {"room": room, "text": "sentinel"}).json()

            received = next(events)
            assert (received.id, received.event) == (sent["id"], event or "message")
            assert json.loads(received.data) == sent
            assert sent["text"] == text
            assert next(events).id == sentinel["id"], "an extra event arrived between the message and the sentinel"
        examples.append(text)

    round_trip()
    assert len(examples) >= ROUND_TRIP_EXAMPLES // 2
    assert any("\n" in text for text in examples) and any("\u2028" in text for text in examples)


@pytest.mark.slow
def test_text_with_a_lone_surrogate_is_refused_and_not_stored(live_server):
    refused = []

    @given(before=st.text(ANY_CHARACTER, max_size=20), surrogate=st.characters(categories=("Cs",)),
           after=st.text(ANY_CHARACTER, max_size=20))
    @settings(max_examples=SURROGATE_EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    def refused_cleanly(before: str, surrogate: str, after: str) -> None:
        # requests writes the surrogate as a \\udXXX escape: valid JSON, invalid text.
        reply = _publish(live_server.url, {"room": "surrogates", "text": before + surrogate + after})
        assert reply.status_code == 422, reply.text
        assert "surrogate" in reply.json()["errors"]["text"][0]
        refused.append(reply)

    refused_cleanly()
    history = requests.get(live_server.url + "/messages/history?room=surrogates", timeout=5).json()
    assert history["messages"] == [] and len(refused) >= SURROGATE_EXAMPLES // 2
