"""History pages are bounded in bytes as well as messages; ``hasMore`` pages on, on both read paths.

Regression (issue 18): ``GET /messages/history?limit=1000`` answered 24.7 MB on a
window of text that JSON escapes six-fold.
"""
from __future__ import annotations

import pytest

from app import create_app

PAGE_BYTES = 20_000
TEXT = "\x01" * 1000  # 6,000 bytes as \u0001 in the response


@pytest.fixture(params=["window", "store"])
def client(request, sqlite_path, monkeypatch):
    if request.param == "store":
        # The window is not caught up: history reads the store instead.
        monkeypatch.setattr("app.delivery.reading.window_has_everything", lambda window, store: False)
    app = create_app({"SQLITE_PATH": sqlite_path, "HEARTBEAT_SECONDS": "1", "HISTORY_MAX_BYTES": str(PAGE_BYTES)})
    return app.test_client()


def test_history_pages_stop_at_the_byte_bound_and_page_on_to_everything(client):
    sent = [client.post("/messages", json={"room": "r", "text": TEXT}).get_json()["id"] for _ in range(12)]
    received, pages, after = [], [], None
    while True:
        reply = client.get("/messages/history", query_string={"room": "r", "limit": 1000, "after": after or ""})
        assert reply.status_code == 200
        page = reply.get_json()
        pages.append((len(reply.data), len(page["messages"]), page["hasMore"]))
        received += [message["id"] for message in page["messages"]]
        if not page["hasMore"]:
            break
        after = received[-1]
        assert len(pages) < 20
    assert received == sent
    assert [count for _, count, _ in pages] == [3, 3, 3, 3]  # ~6 KB a message, 20 KB a page
    assert all(size <= PAGE_BYTES + 200 for size, _, _ in pages)
    assert [more for _, _, more in pages] == [True, True, True, False]


def test_a_message_larger_than_the_bound_still_comes_alone(client):
    big = client.post("/messages", json={"room": "r", "text": "\x01" * 4000}).get_json()["id"]  # 24 KB
    small = client.post("/messages", json={"room": "r", "text": "small"}).get_json()["id"]
    page = client.get("/messages/history?room=r&limit=10").get_json()
    assert [m["id"] for m in page["messages"]] == [big] and page["hasMore"] is True
    page = client.get(f"/messages/history?room=r&limit=10&after={big}").get_json()
    assert [m["id"] for m in page["messages"]] == [small] and page["hasMore"] is False


def test_the_limit_still_bounds_small_messages(client):
    sent = [client.post("/messages", json={"room": "r", "text": f"m{n}"}).get_json()["id"] for n in range(5)]
    page = client.get("/messages/history?room=r&limit=2").get_json()
    assert [m["id"] for m in page["messages"]] == sent[:2] and page["hasMore"] is True
