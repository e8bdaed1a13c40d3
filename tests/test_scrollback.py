"""``before=ID`` on the history: the page just before an id, oldest first (issue 15, part 2)."""
from __future__ import annotations

import pytest

from app.delivery.reading import read_history_before
from app.delivery.window import Window
from app.stores.base import UNKNOWN_ID_REASON
from app.stores.sqlite import SQLiteStore
from tests.test_window import feed


def ids(backlog) -> list[str]:
    return [entry.id for entry in backlog.entries]


def test_the_window_gives_the_entries_just_before_an_id_of_these_rooms_oldest_first():
    window = Window(max_messages=100, max_bytes=10**6)
    sent = feed(window, [(room, f"m{n}") for n, room in enumerate("abcabcabcab")])
    followed = [m.id for m in sent if m.room in "ab"]
    for cut in range(len(followed)):
        for limit in (1, 3, 100):
            page = window.before(("b", "a"), followed[cut], limit)
            assert page.reset_reason is None
            assert ids(page) == followed[max(0, cut - limit):cut], (cut, limit)
    assert ids(window.before(("a",), sent[3].id, 10)) == [sent[0].id]


@pytest.mark.parametrize("before", ["nowhere", "id3"], ids=["unknown-id", "id-of-another-room"])
def test_an_id_it_does_not_hold_for_the_rooms_gives_reset_and_the_newest_page(before):
    window = Window(max_messages=100, max_bytes=10**6)
    sent = feed(window, [(room, f"m{n}") for n, room in enumerate("abcab")])
    page = window.before(("a", "b"), before, 3)
    assert page.reset_reason == UNKNOWN_ID_REASON
    assert ids(page) == [sent[1].id, sent[3].id, sent[4].id]
    assert window.before(("none",), before, 3).entries == []


def test_an_evicted_id_gives_reset():
    window = Window(max_messages=3, max_bytes=10**6)
    sent = feed(window, [("a", f"m{n}") for n in range(5)])
    page = window.before(("a",), sent[0].id, 10)
    assert page.reset_reason == UNKNOWN_ID_REASON and ids(page) == [m.id for m in sent[2:]]


def test_a_window_that_has_not_caught_up_is_not_asked_the_store_is(tmp_path):
    """An id the worker's tailer has not read yet (published through another worker): the store answers."""
    store = SQLiteStore(str(tmp_path / "s.sqlite3"), max_bytes=10**7, max_messages=100)
    sent = [store.append("a", f"m{n}", "message").id for n in range(5)]
    window = Window(100, 10**7)  # never warmed: no tailer runs
    found = read_history_before(("a",), sent[3], 2, window=window, store=store)
    assert [message.id for message in found.messages] == sent[1:3] and found.reset_reason is None
    store.close()


# -- through the HTTP edge ------------------------------------------------------

def post(client, room, text):
    return client.post("/messages", json={"room": room, "text": text}).get_json()


def texts(page) -> list[str]:
    return [message["text"] for message in page["messages"]]


def test_history_pages_back_with_before_until_has_more_is_false(client):
    sent = [post(client, "h", f"m{n}") for n in range(7)]
    page = client.get(f"/messages/history?room=h&before={sent[6]['id']}&limit=3").get_json()
    assert texts(page) == ["m3", "m4", "m5"] and page["hasMore"] and page["reset"] is None
    page = client.get(f"/messages/history?room=h&before={page['messages'][0]['id']}&limit=3").get_json()
    assert texts(page) == ["m0", "m1", "m2"] and not page["hasMore"]
    page = client.get(f"/messages/history?room=h&before={sent[0]['id']}").get_json()
    assert texts(page) == [] and not page["hasMore"] and page["reset"] is None


def test_history_before_an_unknown_id_says_reset_and_gives_the_newest_page(client):
    for n in range(4):
        post(client, "h", f"m{n}")
    page = client.get("/messages/history?room=h&before=bogus&limit=2").get_json()
    assert page["reset"] == UNKNOWN_ID_REASON and texts(page) == ["m2", "m3"] and page["hasMore"]


def test_history_before_of_several_rooms_merges_them_in_store_order(client):
    sent = [post(client, room, f"{room}{n}") for n, room in enumerate("abcab")]
    page = client.get(f"/messages/history?room=a&room=b&before={sent[4]['id']}").get_json()
    assert texts(page) == ["a0", "b1", "a3"]


def test_a_page_cut_by_history_max_bytes_keeps_the_messages_next_to_before(sqlite_path):
    from app import create_app

    client = create_app({"SQLITE_PATH": sqlite_path, "HISTORY_MAX_BYTES": "1024"}).test_client()
    sent = [post(client, "h", f"m{n} " + "x" * 300) for n in range(6)]
    page = client.get(f"/messages/history?room=h&before={sent[5]['id']}").get_json()
    assert 1 <= len(page["messages"]) < 5 and page["hasMore"]
    assert page["messages"][-1]["id"] == sent[4]["id"]  # the newest before it, not the oldest


def test_before_and_after_together_are_400(client):
    sent = [post(client, "h", f"m{n}") for n in range(3)]
    reply = client.get(f"/messages/history?room=h&before={sent[2]['id']}&after={sent[0]['id']}")
    assert reply.status_code == 400 and set(reply.get_json()["errors"]) == {"after", "before"}


def test_an_oversize_before_is_400(client):
    reply = client.get("/messages/history?room=h&before=" + "x" * 257)
    assert reply.status_code == 400 and "before" in reply.get_json()["errors"]
