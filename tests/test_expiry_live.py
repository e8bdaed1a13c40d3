"""MESSAGE_TTL_SECONDS on real gunicorn, on both stores, one node and two: an expired message is sent by none.

The story each test tells: a client reads ``seen``; ``missed`` comes after it;
both expire; ``fresh`` is published. Then, on every worker asked: a join gets
``fresh`` alone; a resume from ``seen`` (which missed ``missed``) gets
``reset`` with reason ``expired``, then ``fresh``; a resume from ``missed``
(nothing after it expired) is exact, no reset; history and ``/rooms`` count
``fresh`` alone. Once ``fresh`` expires too, nobody sends anything.

Ages are real seconds here (the unit tests move a clock instead:
``tests/test_expiry.py``), so the TTL leaves time for every check while
``fresh`` is young: on FerretDB a history read took 0.3-0.8 s and a delivery
can take seconds on this loaded machine (``tests/test_live.py``
``delivery_timeout``); and finding a stream on each worker can take a dozen
tries when one worker accepts most connections. The checks of one node took
up to ~11 s here (either store, load average 10-20). A check that fails says
how old ``fresh`` was then.
"""
from __future__ import annotations

import json
import time

import pytest
import requests

from tests.support.live import LiveServer
from tests.support.sse_client import StreamReader
from tests.support.stores import stored_ids_reader
from tests.support.waiting import wait_until
from tests.test_live import delivery_timeout, worker_of
from tests.test_two_nodes import start_two_nodes

pytestmark = pytest.mark.slow

ROOM = "expiring"


def ttl_seconds(kind: str) -> float:
    """Return a TTL that outlasts every check made while ``fresh`` must still be young."""
    return 30.0 if kind == "ferretdb" else 20.0


@pytest.fixture
def kind(request, store_env: dict[str, str]) -> str:
    """Return "sqlite", or the MongoDB server's kind: "mongod" or "ferretdb"."""
    return request.getfixturevalue("mongodb_kind") if store_env.get("MONGODB_URI") else "sqlite"


def on_every_worker(node: LiveServer, last_id: str | None, also: str | None = None) -> list[StreamReader]:
    """Open streams of the room (and ``also``) after ``last_id`` until every worker holds one; return one each."""
    kept: dict[int, StreamReader] = {}
    query = f"room={ROOM}" + (f"&room={also}" if also else "")
    for _ in range(100):
        reader = StreamReader(node.url + f"/messages?{query}", last_event_id=last_id)
        worker = worker_of(node, reader)
        if worker in kept:
            reader.close()
        else:
            kept[worker] = reader
        if set(kept) == set(node.worker_pids()):
            return list(kept.values())
    raise AssertionError(f"no stream reached every worker of {node.url}: {set(kept)}")


def received(reader: StreamReader, until_id: str, timeout: float) -> list[tuple[str | None, str]]:
    """Wait until the stream has sent ``until_id``; return every event up to it as (event type, id or reason)."""
    assert reader.wait_for(lambda events: any(event.id == until_id for event in events), timeout), \
        f"{until_id} did not arrive within {timeout} s: {[(e.event, e.id) for e in reader.events]}"
    events = []
    for event in reader.events:
        if event.event == "reset":
            events.append(("reset", json.loads(event.data)["reason"]))
        else:
            events.append((event.event, event.id))
        if event.id == until_id:
            return events
    raise AssertionError("unreachable")


# FERRETDB: it refuses a read or a write now and then under load, and in storms of several
# seconds in which nearly every query fails ("interrupted (9)": 5 s and more in one CI run,
# docs/testing.md), which the app answers 503 with Retry-After. These requests ask again, as a
# client would, for up to REFUSED_FOR_SECONDS; on SQLite and mongod none is ever refused here.
REFUSED_FOR_SECONDS = 10.0
PAUSE_AFTER_503 = 0.2  # a retry's pause, not a wait for a condition


def asking_again_on_503(ask, stop_early=lambda reply: False) -> requests.Response:
    """Return ``ask()``'s first answer that is not a 503 (or that ``stop_early`` keeps), or the 503 after the budget."""
    deadline = time.monotonic() + REFUSED_FOR_SECONDS
    while True:
        reply = ask()
        if reply.status_code != 503 or stop_early(reply) or time.monotonic() >= deadline:
            return reply
        time.sleep(PAUSE_AFTER_503)


def get_json(node: LiveServer, path: str, **params) -> dict:
    """GET a JSON answer, asking again while the server answers 503."""
    reply = asking_again_on_503(lambda: requests.get(node.url + path, params=params, timeout=10))
    reply.raise_for_status()
    return reply.json()


def publish(node: LiveServer, text: str, room: str = ROOM) -> dict:
    """POST a message, asking again after a plain 503 (nothing stored), never after an unconfirmed write."""
    reply = asking_again_on_503(
        lambda: requests.post(node.url + "/messages", json={"room": room, "text": text}, timeout=10),
        stop_early=lambda reply: "did not confirm" in reply.json()["message"])
    reply.raise_for_status()
    return reply.json()


def history(node: LiveServer, after: str | None = None) -> dict:
    return get_json(node, "/messages/history", room=ROOM, limit=100, **({"after": after} if after else {}))


def wait_until_expired(nodes: tuple[LiveServer, ...], message_ids: list[str], ttl: float) -> None:
    """Wait until no node lists these messages in the room's history any more."""
    def gone() -> bool:
        return all(not set(message_ids) & {m["id"] for m in history(node)["messages"]} for node in nodes)

    wait_until(gone, ttl + 15, f"{message_ids} still listed {ttl + 15} s after they were published")


def check_after_expiry(node: LiveServer, seen: dict, missed: dict, fresh: dict, patience: float,
                       fresh_since: float, ttl: float) -> None:
    """Check, on every worker of the node, that only ``fresh`` is sent, and how each resume begins.

    ``fresh_since``: when ``fresh`` was published (monotonic). Every check
    must run while it is young, else "fresh alone" proves less: the last
    assertion holds the test to that, and a failure says how old it was.
    """
    def age() -> str:
        return f"(fresh was {time.monotonic() - fresh_since:.1f} s old, TTL {ttl} s)"

    streams = {"join": on_every_worker(node, None), "after seen": on_every_worker(node, seen["id"]),
               "after missed": on_every_worker(node, missed["id"])}
    try:
        for reader in streams["join"]:
            assert received(reader, fresh["id"], patience) == [("message", fresh["id"])], age()
        for reader in streams["after seen"]:
            assert received(reader, fresh["id"], patience) == [("reset", "expired"), ("message", fresh["id"])], age()
        for reader in streams["after missed"]:
            assert received(reader, fresh["id"], patience) == [("message", fresh["id"])], age()
    finally:
        for readers in streams.values():
            for reader in readers:
                reader.close()
    for _ in range(3):  # each lands on either worker
        assert [m["id"] for m in history(node)["messages"]] == [fresh["id"]], age()
        page = history(node, after=seen["id"])
        assert (page["reset"], [m["id"] for m in page["messages"]]) == ("expired", [fresh["id"]]), age()
        page = history(node, after=missed["id"])
        assert (page["reset"], [m["id"] for m in page["messages"]]) == (None, [fresh["id"]]), age()
        room = get_json(node, f"/rooms/{ROOM}")
        assert (room["messages"], room["lastMessageAt"]) == (1, fresh["createdAt"]), age()
    elapsed = time.monotonic() - fresh_since
    assert elapsed < ttl, f"the checks outlasted the TTL ({elapsed:.1f} s > {ttl} s): make it longer"
    print(f"\n[{node.url}] the checks took {elapsed:.1f} s of fresh's {ttl} s")


def check_nothing_is_sent(node: LiveServer, patience: float) -> None:
    """Once every message expired: a join of the room sends none, and the room is counted nowhere.

    Each stream follows a second room too, whose one message is published
    last: the stream sends everything of the room before it (one store
    order), so its arrival closes the check without a quiet period.
    """
    marker_room = f"marker-{node.port}"
    readers = on_every_worker(node, None, also=marker_room)
    try:
        marker = publish(node, "after everything else", marker_room)
        for reader in readers:
            assert received(reader, marker["id"], patience) == [("message", marker["id"])]
    finally:
        for reader in readers:
            reader.close()
    assert history(node)["messages"] == []
    room = get_json(node, f"/rooms/{ROOM}")
    assert (room["messages"], room["lastMessageAt"]) == (0, None)
    # Listed while presence still counts the streams just closed (up to 2 s), but with no messages.
    listed = get_json(node, "/rooms", limit=1000)["rooms"]
    assert [(entry["messages"], entry["lastMessageAt"]) for entry in listed if entry["room"] == ROOM] in (
        [], [(0, None)])


def check_live(reader: StreamReader, seen: dict, missed: dict, patience: float) -> None:
    """Check that a stream open before both were published got both, in order (before any expiry)."""
    got = received(reader, missed["id"], patience)
    if got != [("message", seen["id"]), ("message", missed["id"])]:
        # Say whether ``seen`` came late, out of order, or never: the store's tailing, not expiry, at this point.
        reader.wait_for(lambda events: any(event.id == seen["id"] for event in events), patience)
        raise AssertionError(f"expected seen then missed, got {got}; {patience} s later: "
                             f"{[(event.event, event.id) for event in reader.events]}")


def test_an_expired_message_is_never_sent_again_on_either_worker(start_server, store_env, kind):
    ttl = ttl_seconds(kind)
    node = start_server(**store_env, MESSAGE_TTL_SECONDS=str(ttl))
    patience = delivery_timeout(kind)
    live = on_every_worker(node, None)  # both tailers run, and read every message as it comes
    seen = publish(node, "seen")
    missed = publish(node, "missed")
    for reader in live:
        check_live(reader, seen, missed, patience)
        reader.close()
    wait_until_expired((node,), [seen["id"], missed["id"]], ttl)
    fresh_since = time.monotonic()
    fresh = publish(node, "fresh")
    check_after_expiry(node, seen, missed, fresh, patience, fresh_since, ttl)

    stored = stored_ids_reader(store_env)(ROOM)
    if kind == "sqlite":
        assert stored == [fresh["id"]], "SQLite deletes expired rows as it appends"
    else:
        # A capped collection is filtered, not deleted from (docs/mongodb.md#message-expiry).
        assert stored == [seen["id"], missed["id"], fresh["id"]]

    wait_until_expired((node,), [fresh["id"]], ttl)
    check_nothing_is_sent(node, patience)


def test_two_nodes_send_an_expired_message_neither(start_server, store_env, kind):
    ttl = ttl_seconds(kind)
    nodes = start_two_nodes(start_server, {**store_env, "MESSAGE_TTL_SECONDS": str(ttl)})
    patience = 2 * delivery_timeout(kind)
    live = [reader for node in nodes for reader in on_every_worker(node, None)]
    seen = publish(nodes[0], "seen")
    missed = publish(nodes[0], "missed")
    for reader in live:
        check_live(reader, seen, missed, patience)
        reader.close()
    wait_until_expired(nodes, [seen["id"], missed["id"]], ttl)
    fresh_since = time.monotonic()
    fresh = publish(nodes[1], "fresh")
    for node in nodes:
        check_after_expiry(node, seen, missed, fresh, patience, fresh_since, ttl)
    wait_until_expired(nodes, [fresh["id"]], ttl)
    for node in nodes:
        check_nothing_is_sent(node, patience)
