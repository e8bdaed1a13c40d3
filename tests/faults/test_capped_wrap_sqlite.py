"""Fault 6 (SQLite): a subscriber whose resume point was overwritten gets reset and the backlog."""
from __future__ import annotations

import pytest

from tests.support.capped_wrap import assert_reset_then_window, resume_after_wrap
from tests.support.faults import metric, stored_ids

CAPPED_MAX = 5


@pytest.mark.slow
def test_resume_point_evicted_from_sqlite_window_gets_reset_and_backlog(start_server, sqlite_path):
    server = start_server(CAPPED_MAX_MESSAGES=str(CAPPED_MAX), HEARTBEAT_SECONDS="1")
    client, expected, exact = resume_after_wrap(server, CAPPED_MAX, lambda room: stored_ids(sqlite_path, room))
    assert_reset_then_window(client, expected, exact)
    assert metric(server.url, "sse_resets_sent_total") == 1
