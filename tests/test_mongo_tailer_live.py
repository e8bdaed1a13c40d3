"""Streams on the MongoDB store get live messages from the tailer, which never crashes or restarts.

Real gunicorn and real PyMongo against a capped collection served by MockupDB
(tests/support/wire_capped.py). Once, the tailer crashed on every start
(``find(..., max_await_time_ms=...)`` is no PyMongo argument, and a PyMongo
cursor has no ``try_next()``) and restarted for ever: MongoDB streams got
their backlog and heartbeats, and nothing live.
"""
from __future__ import annotations

import pytest

from tests.support.faults import metric
from tests.support.mongo_live import follow_while, has_everything_stored, stored_ids
from tests.support.wire_capped import FakeCappedCollection


@pytest.mark.slow
def test_mongo_tailable_cursor_follows_new_messages(start_server):
    fake = FakeCappedCollection(max_messages=1000)
    fake.start()
    try:
        server = start_server(MONGODB_URI=fake.uri(), HEARTBEAT_SECONDS="1")
        clients = follow_while(server, ["live"], 4, lambda _: [server.publish("live", f"m{n}") for n in range(5)],
                               has_everything_stored(fake))
        for client in clients:
            assert [event.id for event in client.messages] == stored_ids(fake, "live")
        assert len(stored_ids(fake, "live")) == 5
        assert metric(server.url, "sse_tailer_restarts_total") == 0
        assert "tailer crashed" not in server.log_path.read_text()
    finally:
        fake.stop()
