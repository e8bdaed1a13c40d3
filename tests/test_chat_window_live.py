"""Issue 15 parts 1, 2 and 7 against real gunicorn (2 gevent workers), on each store (``store_env``).

``backlog=N`` and ``untyped=true`` on streams that both workers hold;
``before=`` scrollback answered by either worker, also for an id published a
moment ago through the other one.
"""
from __future__ import annotations

import json
import time

import pytest
import requests

from tests.support.sse_client import StreamReader
from tests.support.stores import stored_ids_reader
from tests.support.waiting import quiet_period, wait_until
from tests.test_two_nodes import start_a_node_behind_the_store

pytestmark = pytest.mark.slow


def delivery_timeout(store_env: dict[str, str]) -> float:
    # FERRETDB: a waiting getMore re-runs its query every 10 ms (see tests/test_live.py).
    return 5.0 if store_env.get("MONGODB_URI") else 2.0


def test_streams_on_both_workers_start_with_the_newest_n_and_resume_exactly_whatever_n(start_server, store_env):
    server = start_server(**store_env)
    timeout = delivery_timeout(store_env)
    sent = [server.publish(room, f"{room} {n}", event="chat" if n % 4 == 0 else "message")
            for n, room in enumerate("abcab" * 6)]
    followed = [m["id"] for m in sent if m["room"] in "ab"]
    url = server.url + "/messages?room=a&room=b&backlog=5&untyped=true"
    readers: list[StreamReader] = []
    workers: set[int] = set()
    try:
        while len(readers) < 40 and (len(workers) < 2 or len(readers) < 6):
            readers.append(StreamReader(url))
            workers.add(server.worker_holding(readers[-1].sock.getsockname()[1]))
        assert workers == set(server.worker_pids()), "both workers must hold streams"
        for reader in readers:
            assert reader.wait_for(lambda events: [e.id for e in events] == followed[-5:], timeout), (
                len(reader.events), [e.id[-4:] for e in reader.events], [i[-4:] for i in followed], reader.error)
        live = server.publish("b", "live", event="announcement")["id"]
        for reader in readers:
            assert reader.wait_for(lambda events: [e.id for e in events] == [*followed[-5:], live], timeout)
            # untyped: every one is a default event, its type in the JSON.
            assert {e.event for e in reader.events} == {"message"}
            assert json.loads(reader.events[-1].data)["event"] == "announcement"

        resumed = StreamReader(url, last_event_id=followed[2])  # inside the window: backlog ignored
        readers.append(resumed)
        assert resumed.wait_for(lambda events: [e.id for e in events] == [*followed[3:], live], timeout)
        reset = StreamReader(url.replace("backlog=5", "backlog=2"), last_event_id="evicted-or-unknown")
        readers.append(reset)
        assert reset.wait_for(lambda events: [e.id or e.event for e in events] == ["reset", followed[-1], live],
                              timeout)
        # Live only: what is committed after the join. Its response starts before the join (with
        # retry:), so wait for the join itself -- its room's presence, on whichever worker -- then publish.
        live_only = StreamReader(url.replace("backlog=5", "backlog=0") + "&room=solo")
        readers.append(live_only)
        wait_until(lambda: requests.get(server.url + "/rooms/solo", timeout=5).json()["subscribers"] == 1, 5.0,
                   "the live-only stream did not join")
        another = server.publish("a", "for the live-only one")["id"]
        assert live_only.wait_for(lambda events: [e.id for e in events] == [another], timeout)
        quiet_period(0.3)  # a duplicate or an older one would arrive now
        assert [e.id for e in live_only.events] == [another]
        assert [e.id for e in resumed.events] == [*followed[3:], live, another]
        assert not any(reader.error for reader in readers)
    finally:
        for reader in readers:
            reader.close()


def test_scrollback_pages_back_to_the_oldest_on_either_worker_and_reads_its_writes(start_server, store_env):
    server = start_server(**store_env)
    for n, room in enumerate("abc" * 14):
        server.publish(room, f"{room} {n}")
    # The store's own order of each room, merged by the history's order of both (read forward).
    forward = requests.get(server.url + "/messages/history", params={"room": ["a", "b"], "limit": 1000},
                           timeout=10).json()["messages"]
    in_store_order = [message["id"] for message in forward]
    stored = stored_ids_reader(store_env)
    assert [i for i in in_store_order if i in set(stored("a"))] == stored("a") and len(in_store_order) == 28

    def page(before: str, limit: int) -> dict:
        # A new connection each time: either worker answers.
        reply = requests.get(server.url + "/messages/history",
                             params={"room": ["a", "b"], "before": before, "limit": limit}, timeout=10)
        reply.raise_for_status()
        return reply.json()

    newest = server.publish("b", "newest")["id"]
    collected: list[str] = []
    before, has_more = newest, True
    while has_more:
        got = page(before, 6)
        assert got["reset"] is None
        collected[:0] = [message["id"] for message in got["messages"]]
        has_more, before = got["hasMore"], got["messages"][0]["id"] if got["messages"] else before
    assert collected == in_store_order

    # An id published through one worker a moment ago: the other waits for its tailer, never says reset.
    for n in range(10):
        previous = server.publish("a", f"again {n}")["id"]
        latest = server.publish("a", f"latest {n}")["id"]
        got = page(latest, 1)
        assert got["reset"] is None and [message["id"] for message in got["messages"]] == [previous]

    assert page("no-such-id", 3)["reset"] is not None


def test_a_typed_message_published_with_curl_reaches_an_untyped_stream_as_message(start_server, store_env):
    """The issue's new user: {"room": "ops", "text": "deploy done", "event": "announcement"}."""
    server = start_server(**store_env)
    # backlog=1: whether the publish lands before the join or after, it is sent once (backlog or live).
    reader = StreamReader(server.url + "/messages?room=ops&untyped=true&backlog=1")
    try:
        started = time.monotonic()
        sent = server.publish("ops", "deploy done", event="announcement")
        assert reader.wait_for(lambda events: len(events) == 1, delivery_timeout(store_env))
        event = reader.events[0]
        assert (event.event, event.id, json.loads(event.data)) == ("message", sent["id"], sent)
        print(f"\nuntyped delivery in {(time.monotonic() - started) * 1000:.0f} ms")
    finally:
        reader.close()


def test_a_node_behind_the_store_gives_the_newest_n_and_the_page_before_what_the_other_acknowledged(
        start_server, tmp_path):
    """Across nodes: node B's tailers read the SQLite file a second late (SQLITE_POLL_MS, so SQLite only).

    A backlog join on B takes the store's newest N (it waits for its tailer), not
    B's newest; scrollback on B before an id only A has read answers the page, not reset.
    """
    env = {"MONGODB_URI": "", "SQLITE_PATH": str(tmp_path / "two-nodes.sqlite3")}
    node_a = start_server(**env)
    node_b = start_a_node_behind_the_store(start_server, env)
    old = [node_a.publish("chat", f"old {n}")["id"] for n in range(3)]
    time.sleep(1.5)  # node B's windows hold them
    new = [node_a.publish("chat", f"new {n}")["id"] for n in range(3)]  # B reads these within a second
    reader = StreamReader(node_b.url + "/messages?room=chat&backlog=2")
    try:
        assert reader.wait_for(lambda events: len(events) >= 2, 5.0)
        quiet_period(1.5)  # B's tailer has read everything by now: anything more would have arrived
        assert [e.id for e in reader.events] == new[1:]
    finally:
        reader.close()
    newest = node_a.publish("chat", "newest")["id"]
    page = requests.get(node_b.url + "/messages/history", params={"room": "chat", "before": newest, "limit": 4},
                        timeout=5).json()
    assert page["reset"] is None and [m["id"] for m in page["messages"]] == [old[2], *new] and page["hasMore"]
