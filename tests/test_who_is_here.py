"""Who is here, in one process (issue 16): identities in the hub and in a worker's entry, GET /rooms/R/subscribers,
and the join/leave events a worker works out for its presence=1 streams (app/delivery/announcer.py).

The stores' side (identities written and summed, both stores) is in tests/test_store_contract.py; real
workers and nodes, with the lag measured, in tests/test_who_is_here_live.py.
"""
from __future__ import annotations

import json
import time

import gevent
import pytest

from app import create_app
from app.delivery.announcer import Announcer, presence_event
from app.delivery.hub import Hub, Notice
from app.delivery.presence import Presence, busiest_rooms
from app.delivery.streaming import _next_chunk
from app.delivery.window import Entry
from app.stores.base import MAX_SUBJECT_BYTES, PresenceReport, StoreUnavailable
from tests.support.tokens import SECRET, claims, mint
from tests.support.waiting import wait_until

# -- the hub keeps who follows each room --------------------------------------------------------


def test_the_hub_counts_each_rooms_identities_and_anonymous_streams_as_streams_come_and_go():
    hub = Hub(queue_limit=10)
    first = hub.subscribe(("lobby", "dev"), subject="alice")
    hub.subscribe(("lobby",), subject="alice")
    hub.subscribe(("lobby",), subject="bob")
    anonymous = hub.subscribe(("lobby",))
    assert hub.identities("lobby") == {"alice": 2, "bob": 1} and hub.identities("dev") == {"alice": 1}
    assert hub.anonymous("lobby") == 1 and hub.anonymous("dev") == 0
    hub.unsubscribe(first)
    hub.unsubscribe(anonymous)
    hub.unsubscribe(anonymous)  # twice: harmless
    assert hub.room_identities() == {"lobby": {"alice": 1, "bob": 1}} and hub.room_anonymous() == {}
    assert hub.noticed_rooms() == []


def test_only_presence_streams_of_the_room_get_its_notices_and_they_carry_no_id():
    hub = Hub(queue_limit=10)
    noticed = hub.subscribe(("lobby", "dev"), subject="alice", notices=True)
    plain = hub.subscribe(("lobby",), subject="bob")
    elsewhere = hub.subscribe(("ops",), notices=True)
    assert sorted(hub.noticed_rooms()) == ["dev", "lobby", "ops"]
    hub.announce("lobby", presence_event("join", "lobby", "carol", 3))
    assert [item.payload for item in noticed._items] == [
        b'event: join\ndata: {"room":"lobby","sub":"carol","subscribers":3}\n\n']
    assert plain._items == [] and elsewhere._items == []


def test_a_notice_leaves_the_streams_last_id_at_the_last_message():
    """A join after a message must not become the Last-Event-ID the stream resumes from (it has no id)."""
    hub = Hub(queue_limit=10)
    subscription = hub.subscribe(("lobby",), notices=True)
    message = Entry(1, "m-1", "lobby", b"id: m-1\ndata: {}\n\n", 10, "", 0.0)
    subscription.offer(message)
    subscription.offer(Notice("lobby", presence_event("join", "lobby", "a", 1)))
    chunk, count, last_id = _next_chunk(subscription, "m-0", 16_384, untyped=True)
    assert last_id == "m-1" and count == 2 and chunk.endswith(b"event: join\ndata: " + b'{"room":"lobby","sub":"a",'
                                                                                       b'"subscribers":1}\n\n')
    subscription.offer(Notice("lobby", presence_event("leave", "lobby", "a", 0)))
    assert _next_chunk(subscription, last_id, 16_384)[2] == "m-1"  # a notice alone: the id stays


# -- a worker's entry names who follows its named rooms, bounded -------------------------------


def test_the_entry_names_identities_of_named_rooms_and_counts_the_rest():
    counts = {"lobby": 4, "dev": 2, "quiet": 1}
    subs = {"lobby": {"alice": 2, "bob": 1}, "dev": {"alice": 1, "carol": 1}, "quiet": {"dave": 1}}
    report = busiest_rooms(counts, 2, subs, {"lobby": 1, "quiet": 0}, max_identities=3)
    assert report.rooms == {"lobby": 4, "dev": 2}
    # Most streams first, then by room and sub: alice 2 in lobby, then the ones: dev/alice, dev/carol.
    assert report.subs == {"lobby": {"alice": 2}, "dev": {"alice": 1, "carol": 1}}
    assert report.anonymous == {"lobby": 1}
    assert report.other_subs == 2  # lobby/bob (past the bound), quiet/dave (its room not named)
    assert report.unnamed_streams("lobby") == 1  # bob's stream: counted, not named


def test_past_the_bound_an_identity_named_stays_named_when_others_come():
    """Regression (hostile, live): newcomers whose subs sort first pushed named ones out: false leaves elsewhere."""
    subs = {"lobby": {f"m{n}": 1 for n in range(5)}}
    first = busiest_rooms({"lobby": 5}, 10, subs, {}, max_identities=3)
    assert first.subs == {"lobby": {"m0": 1, "m1": 1, "m2": 1}}
    subs["lobby"] |= {"a0": 1, "a1": 1}  # they sort first
    later = busiest_rooms({"lobby": 7}, 10, subs, {}, max_identities=3, named_before=first.subs)
    assert later.subs == first.subs and later.unnamed_streams("lobby") == 4
    del subs["lobby"]["m1"]  # one named leaves: its place goes to the best of the rest
    last = busiest_rooms({"lobby": 6}, 10, subs, {}, max_identities=3, named_before=later.subs)
    assert last.subs == {"lobby": {"m0": 1, "m2": 1, "a0": 1}}


def test_past_the_room_bound_a_room_with_someone_named_stays_named_when_busier_rooms_come():
    """Regression (hostile, live): anonymous streams on made-up rooms pushed a quiet room's users out: false leaves."""
    first = busiest_rooms({"quiet": 1, "busy": 3}, 2, {"quiet": {"dave": 1}}, {})
    assert first.rooms == {"quiet": 1, "busy": 3} and first.subs == {"quiet": {"dave": 1}}
    counts = {"quiet": 1, "busy": 3} | {f"junk{n}": 2 for n in range(5)}  # busier, and their names sort first
    later = busiest_rooms(counts, 2, {"quiet": {"dave": 1}}, {}, named_before=first.subs)
    assert later.rooms == {"quiet": 1, "busy": 3} and later.subs == first.subs
    assert (later.other_rooms, later.other_streams) == (5, 10)
    # Once dave has gone, the quiet room is a room like any other: the busiest are named.
    last = busiest_rooms(counts, 2, {}, {"quiet": 1}, named_before=later.subs)
    assert last.rooms == {"busy": 3, "junk0": 2}
    again = busiest_rooms(counts, 2, {}, {"quiet": 1}, named_before=last.subs)
    assert again.rooms == {"busy": 3, "junk0": 2}


def test_past_the_room_bound_a_room_with_someone_to_name_is_named_before_busier_anonymous_ones():
    """Regression (hostile, live): a user whose stream moved to a worker whose entry made-up rooms had filled
    (anonymous streams, each room busier than hers) was named by no entry, and the others told her as a leave."""
    counts = {"quiet": 1} | {f"junk{n}": 3 for n in range(5)}  # busier, and their names sort first
    arrived = busiest_rooms(counts, 2, {"quiet": {"mover": 1}}, {f"junk{n}": 3 for n in range(5)})
    assert arrived.rooms == {"quiet": 1, "junk0": 3} and arrived.subs == {"quiet": {"mover": 1}}
    assert (arrived.other_rooms, arrived.other_streams) == (4, 12)
    # Rooms with someone to name, past the bound themselves: the busiest of them, then no anonymous one.
    crowded = busiest_rooms(counts | {"a": 2, "b": 1}, 2, {"quiet": {"x": 1}, "a": {"y": 1}, "b": {"z": 1}}, {})
    assert crowded.rooms == {"a": 2, "b": 1}
    # With PRESENCE_MAX_IDENTITIES=0 nobody is named: the busiest rooms are.
    assert busiest_rooms(counts, 2, {"quiet": {"mover": 1}}, {}, max_identities=0).rooms == {"junk0": 3, "junk1": 3}


def test_a_room_named_with_someone_is_named_before_busier_ones_even_when_the_bound_is_lowered():
    before = {"a": {"x": 1}, "b": {"y": 1}, "c": {"z": 1}}
    report = busiest_rooms({"a": 1, "b": 3, "c": 2, "d": 9}, 2, before, {}, named_before=before)
    assert report.rooms == {"b": 3, "c": 2}


def test_the_worker_keeps_naming_whom_it_named(app):
    svc = app.extensions["sse"]
    presence, hub = svc.presence, svc.hub
    presence.max_identities = 2
    for sub in ("m0", "m1", "m2"):
        hub.subscribe(("lobby",), subject=sub)
    assert presence.own_report().subs == {"lobby": {"m0": 1, "m1": 1}}
    hub.subscribe(("lobby",), subject="a0")
    assert presence.own_report().subs == {"lobby": {"m0": 1, "m1": 1}}


def test_an_identity_too_long_to_name_is_counted_not_named():
    long_sub = "é" * (MAX_SUBJECT_BYTES // 2 + 1)  # within the characters, past the bytes
    report = busiest_rooms({"lobby": 2}, 10, {"lobby": {long_sub: 1, "ok": 1}}, {})
    assert report.subs == {"lobby": {"ok": 1}} and report.other_subs == 1 and report.unnamed_streams("lobby") == 1


def test_an_identity_too_long_to_name_is_not_announced_by_its_own_worker_either(watched):
    """Regression (hostile, live): a 300-byte sub was announced by its own worker's watchers, no other's."""
    hub, others, announcer, watcher = watched
    announcer.check(0.0)
    long_sub = "s" * (MAX_SUBJECT_BYTES + 1)
    announcer.watch(("lobby",), long_sub)  # its own presence=1 stream opening: no leave for it later
    hub.subscribe(("lobby",), subject=long_sub, notices=True)
    hub.subscribe(("lobby",), subject="alice")
    for moment in (0.25, 2.0, 4.0):
        announcer.check(moment)
    assert events(watcher) == [("join", {"room": "lobby", "sub": "alice", "subscribers": 3})]


def test_the_same_counts_always_name_the_same_identities():
    """A quiet worker's entry does not change, so it is not rewritten for nothing."""
    subs = {"lobby": {f"u{n:03d}": 1 for n in range(50)}}
    first = busiest_rooms({"lobby": 50}, 10, subs, {}, max_identities=7)
    again = busiest_rooms({"lobby": 50}, 10, dict(reversed(list(subs.items()))), {}, max_identities=7)
    assert first == again and sorted(first.subs["lobby"]) == [f"u{n:03d}" for n in range(7)]


def test_reports_add_up_identities_and_anonymous_streams():
    one = PresenceReport({"lobby": 3}, subs={"lobby": {"alice": 1, "bob": 1}}, anonymous={"lobby": 1})
    two = PresenceReport({"lobby": 2, "dev": 1}, subs={"lobby": {"alice": 2}, "dev": {"bob": 1}}, other_subs=4)
    total = one.plus(two)
    assert total.subs == {"lobby": {"alice": 3, "bob": 1}, "dev": {"bob": 1}}
    assert total.anonymous == {"lobby": 1} and total.other_subs == 4 and total.rooms == {"lobby": 5, "dev": 1}
    assert one.subs == {"lobby": {"alice": 1, "bob": 1}}  # the sum copies, it does not change its parts


# -- join and leave, worked out from the summed entries -----------------------------------------


class OtherWorkers:
    """Stands in for Presence: what the other workers' entries say, or a failing read."""

    def __init__(self) -> None:
        self.report = PresenceReport()
        self.fail = False

    def others(self) -> PresenceReport:
        if self.fail:
            raise StoreUnavailable("interrupted (9)")
        return self.report

    def say(self, **subs: int) -> None:
        """The other workers hold these identities' streams in the lobby."""
        self.report = PresenceReport({"lobby": sum(subs.values())}, subs={"lobby": dict(subs)} if subs else {})


def events(subscription) -> list[tuple[str, dict]]:
    """Take the notices queued for a subscription: (kind, data)."""
    taken, subscription._items = subscription._items, []
    out = []
    for item in taken:
        assert item.id is None
        for block in item.payload.decode().split("\n\n")[:-1]:  # a look's events of a room share one item
            kind_line, data_line = block.split("\n")
            out.append((kind_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))))
    return out


@pytest.fixture
def watched():
    hub = Hub(queue_limit=100)
    others = OtherWorkers()
    announcer = Announcer(others, hub, leave_grace=1.5)
    watcher = hub.subscribe(("lobby",), subject="watcher", notices=True)
    return hub, others, announcer, watcher


def test_who_is_there_when_watching_starts_is_not_announced(watched):
    hub, others, announcer, watcher = watched
    others.say(alice=1, bob=2)
    announcer.check(0.0)
    announcer.check(0.25)
    assert events(watcher) == []


def test_who_comes_between_a_stream_opening_and_the_first_look_is_announced():
    """Regression (live, FerretDB): the baseline was taken at the loop's first look, after the open."""
    hub, others = Hub(queue_limit=100), OtherWorkers()
    announcer = Announcer(others, hub, leave_grace=1.5)
    others.say(alice=1)
    announcer.watch(("lobby",), "watcher")  # as the view does, before the stream is answered
    watcher = hub.subscribe(("lobby",), subject="watcher", notices=True)
    others.say(alice=1, bob=1)  # bob opens on another worker before the first look
    announcer.check(time.monotonic())
    assert [(kind, data["sub"]) for kind, data in events(watcher)] == [("join", "bob")]


def test_a_room_watched_for_a_stream_that_never_came_is_forgotten_later():
    hub, others = Hub(queue_limit=100), OtherWorkers()
    announcer = Announcer(others, hub, leave_grace=1.5)
    announcer.watch(("lobby",))
    announcer.check(time.monotonic())
    assert "lobby" in announcer._watched  # its stream may still be opening
    announcer.check(time.monotonic() + 11)
    assert announcer._watched == {}


def test_a_first_stream_is_a_join_with_the_rooms_count_and_a_second_one_is_nothing(watched):
    hub, others, announcer, watcher = watched
    announcer.check(0.0)
    others.say(alice=1)
    hub.subscribe(("lobby",))  # anonymous: counted, never announced
    announcer.check(0.25)
    assert events(watcher) == [("join", {"room": "lobby", "sub": "alice", "subscribers": 3})]
    others.say(alice=2)
    hub.subscribe(("lobby",), subject="alice")  # and a third, here
    announcer.check(0.5)
    assert events(watcher) == []


def test_a_burst_of_joins_past_the_queue_limit_does_not_end_a_stream_that_reads():
    """Regression (hostile, live): 100 identities on 32-room streams cut every presence=1 stream as 'slow'."""
    hub, others = Hub(queue_limit=10), OtherWorkers()
    announcer = Announcer(others, hub, leave_grace=1.5)
    watcher = hub.subscribe(("lobby",), subject="watcher", notices=True)
    announcer.check(0.0)
    others.say(**{f"user-{n:03d}": 1 for n in range(100)})  # ten times the queue, in one look
    announcer.check(0.25)
    assert watcher.ended_by is None
    kinds = [block for item in watcher._items for block in item.payload.decode().split("\n\n") if block]
    assert len(kinds) == 100 and all(block.startswith("event: join\ndata: {") for block in kinds)


def test_a_leave_is_told_once_the_identity_was_gone_for_the_grace(watched):
    hub, others, announcer, watcher = watched
    others.say(alice=1)
    announcer.check(0.0)
    others.say()
    announcer.check(0.25)
    announcer.check(1.5)
    assert events(watcher) == []
    announcer.check(1.75)
    assert events(watcher) == [("leave", {"room": "lobby", "sub": "alice", "subscribers": 1})]
    announcer.check(5.0)
    assert events(watcher) == []


def test_moving_from_one_worker_to_another_is_neither_a_leave_nor_a_second_join(watched):
    """Her old worker's entry drops her before her new worker's entry names her: a gap, not a leave."""
    hub, others, announcer, watcher = watched
    others.say(alice=1)
    announcer.check(0.0)
    others.say()  # the old worker wrote first
    announcer.check(0.25)
    announcer.check(1.0)
    here = hub.subscribe(("lobby",), subject="alice")  # she came back on this worker
    announcer.check(1.25)
    announcer.check(3.0)
    assert events(watcher) == []
    hub.unsubscribe(here)
    others.say(alice=1)  # and on to another node, seen in the same look
    announcer.check(3.25)
    announcer.check(6.0)
    assert events(watcher) == []


def test_a_failed_read_of_the_store_is_no_news_not_everybody_leaving(watched):
    """FerretDB interrupts a read now and then ('interrupted (9)'): no leave and join for it."""
    hub, others, announcer, watcher = watched
    others.say(alice=1, bob=1)
    announcer.check(0.0)
    others.fail = True
    for tick in range(1, 20):
        announcer.check(tick * 0.25)
    others.fail = False
    announcer.check(5.0)
    assert events(watcher) == []


def test_a_room_no_presence_stream_follows_any_more_is_forgotten_then_watched_anew(watched):
    hub, others, announcer, watcher = watched
    others.say(alice=1)
    announcer.check(0.0)
    hub.unsubscribe(watcher)
    announcer.check(0.25)
    others.say(alice=1, bob=1)
    again = hub.subscribe(("lobby",), notices=True)
    announcer.check(0.5)  # bob was there when watching began again: listed, not announced
    announcer.check(0.75)
    assert events(again) == []


def test_the_leave_grace_is_a_setting(sqlite_path):
    app = create_app({"SQLITE_PATH": sqlite_path, "PRESENCE_LEAVE_GRACE_SECONDS": "5",
                      "PRESENCE_MAX_IDENTITIES": "7"})
    presence = app.extensions["sse"].presence
    assert presence.announcer.leave_grace == 5.0 and presence.max_identities == 7


# -- GET /rooms/R/subscribers -------------------------------------------------------------------


def subscribers(client, path="/rooms/lobby/subscribers", **headers):
    reply = client.get(path, headers=headers)
    assert reply.status_code == 200, reply.get_json()
    return reply.get_json()


def test_nobody_here_is_an_empty_list_not_a_404(client):
    assert subscribers(client) == {"room": "lobby", "subscribers": [], "anonymous": 0, "unnamed": 0,
                                   "hasMore": False, "next": None}


def test_subscribers_adds_this_workers_streams_to_the_other_workers_entries(app, client):
    svc = app.extensions["sse"]
    svc.hub.subscribe(("lobby",), subject="bob")
    svc.hub.subscribe(("lobby", "dev"), subject="alice")
    svc.hub.subscribe(("lobby",))
    other = PresenceReport({"lobby": 5}, subs={"lobby": {"alice": 1, "carol": 2}}, anonymous={"lobby": 1},
                           other_subs=1)
    svc.store.publish_presence("another-worker", other, ttl=30)
    assert subscribers(client) == {
        "room": "lobby",
        "subscribers": [{"sub": "alice", "streams": 2}, {"sub": "bob", "streams": 1}, {"sub": "carol", "streams": 2}],
        "anonymous": 2, "unnamed": 1, "hasMore": False, "next": None}
    assert client.get("/rooms/lobby").get_json()["subscribers"] == 8  # 5 there, 3 here


def test_this_workers_identity_too_long_to_name_is_unnamed_here_as_on_the_others(app, client):
    """Regression (hostile, live): a 300-byte sub was listed by its own worker and only counted by the other."""
    hub = app.extensions["sse"].hub
    hub.subscribe(("lobby",), subject="s" * (MAX_SUBJECT_BYTES + 1))
    hub.subscribe(("lobby",), subject="é" * (MAX_SUBJECT_BYTES // 2))  # 256 bytes: named
    body = subscribers(client)
    assert body["subscribers"] == [{"sub": "é" * (MAX_SUBJECT_BYTES // 2), "streams": 1}] and body["unnamed"] == 1


def test_subscribers_pages_by_sub_with_no_one_twice_or_missing(app, client):
    hub = app.extensions["sse"].hub
    subs = [f"user-{n:03d}" for n in range(57)] + ["Zed", "ümlaut", "a b", "a\nb"]
    for sub in subs:
        hub.subscribe(("lobby",), subject=sub)
    for limit in (1, 7, 100):
        seen, after = [], None
        while True:
            query = {"limit": limit} | ({"after": after} if after is not None else {})
            body = client.get("/rooms/lobby/subscribers", query_string=query).get_json()
            seen += [entry["sub"] for entry in body["subscribers"]]
            assert (body["next"] is not None) == body["hasMore"] and len(body["subscribers"]) <= limit
            if not body["hasMore"]:
                break
            after = body["next"]
        assert seen == sorted(subs), limit
    assert subscribers(client)["subscribers"][:1] == [{"sub": "Zed", "streams": 1}]  # by code point, 100 a page


@pytest.mark.parametrize(("query", "field"), [
    ("limit=0", "limit"), ("limit=1001", "limit"), ("limit=abc", "limit"), ("limit=", "limit"),
    ("limit=%2B5", "limit"), ("limit=1&limit=2", "limit"), ("after=", "after"), ("after=" + "a" * 1025, "after"),
    ("after=a&after=b", "after"),
], ids=["zero", "over-max", "word", "empty", "plus", "twice", "after-empty", "after-too-long", "after-twice"])
def test_bad_paging_values_are_400_in_the_one_error_shape(client, query, field):
    reply = client.get(f"/rooms/lobby/subscribers?{query}")
    assert reply.status_code == 400
    body = reply.get_json()
    assert set(body) == {"code", "status", "message", "errors"} and field in body["errors"]


@pytest.mark.parametrize("path", ["/rooms/a%20b/subscribers", "/rooms/" + "r" * 65 + "/subscribers",
                                  "/rooms/a/b/subscribers"], ids=["space", "too-long", "slash"])
def test_a_bad_room_is_400(client, path):
    reply = client.get(path)
    assert reply.status_code == 400 and "room" in reply.get_json()["errors"]


def test_a_room_named_subscribers_is_still_a_room(client):
    assert client.get("/rooms/subscribers").get_json()["room"] == "subscribers"


def test_with_private_rooms_subscribers_needs_the_right_to_read_the_room(sqlite_path):
    app = create_app({"SQLITE_PATH": sqlite_path, "AUTH_JWT_SECRET": SECRET, "PUBLIC_ROOMS": "hall"})
    client = app.test_client()
    app.extensions["sse"].hub.subscribe(("team-red",), subject="alice")
    assert client.get("/rooms/team-red/subscribers").status_code == 401
    other = mint(claims(subscribe=["team-blue"]))
    assert client.get("/rooms/team-red/subscribers", headers={"Authorization": f"Bearer {other}"}).status_code == 403
    good = mint(claims(subscribe=["team-*"]))
    body = subscribers(client, "/rooms/team-red/subscribers", Authorization=f"Bearer {good}")
    assert body["subscribers"] == [{"sub": "alice", "streams": 1}]
    assert subscribers(client, "/rooms/hall/subscribers")["subscribers"] == []  # public: no token needed


def test_a_stream_of_a_private_room_and_a_public_one_is_anonymous_in_the_public_one(sqlite_path):
    """Regression (hostile, live): one stream of team-red and the hall listed its sub in the hall, to anyone."""
    app = create_app({"SQLITE_PATH": sqlite_path, "AUTH_JWT_SECRET": SECRET, "PUBLIC_ROOMS": "hall"})
    client, hub = app.test_client(), app.extensions["sse"].hub
    alice = {"Authorization": f"Bearer {mint(claims(subscribe=['team-red']) | {'sub': 'alice'})}"}
    reply = client.get("/messages?room=hall&room=team-red&presence=1", headers=alice, buffered=False)
    assert reply.status_code == 200
    chunks = iter(reply.response)
    reader = gevent.spawn(lambda: (next(chunks), next(chunks)))  # the retry line, then on to its subscription
    try:
        wait_until(lambda: hub.subscribers("team-red") == 1, 5, "the stream never subscribed", sleep=gevent.sleep)
        hall = subscribers(client, "/rooms/hall/subscribers")  # no token: anyone
        assert (hall["subscribers"], hall["anonymous"]) == ([], 1)
        red = subscribers(client, "/rooms/team-red/subscribers", **alice)
        assert (red["subscribers"], red["anonymous"]) == ([{"sub": "alice", "streams": 1}], 0)
    finally:
        reader.kill()
        reply.close()


def test_a_watcher_anonymous_in_a_room_is_not_told_its_own_leave_there():
    hub, others = Hub(queue_limit=100), OtherWorkers()
    announcer = Announcer(others, hub, leave_grace=1.5)
    announcer.watch(("lobby", "team-red"), "alice", frozenset({"lobby"}))
    watcher = hub.subscribe(("lobby", "team-red"), subject="alice", notices=True, anonymous_in=frozenset({"lobby"}))
    for moment in (0.0, 2.0, 4.0):
        announcer.check(moment)
    assert events(watcher) == [] and hub.identities("lobby") == {} and hub.anonymous("lobby") == 1


def test_a_failed_read_past_the_stale_bound_is_503(app, client, monkeypatch):
    presence: Presence = app.extensions["sse"].presence
    presence.stale_seconds = 0.0

    def down(exclude=None):
        raise StoreUnavailable("down")

    monkeypatch.setattr(app.extensions["sse"].store, "presence_counts", down)
    reply = client.get("/rooms/lobby/subscribers")
    assert reply.status_code == 503 and "Retry-After" in reply.headers


# -- the stream's presence parameter ------------------------------------------------------------


@pytest.mark.parametrize("value", ["2", "yes", "", "TRUE"])
def test_a_bad_presence_value_is_400(client, value):
    reply = client.get(f"/messages?room=lobby&presence={value}")
    assert reply.status_code == 400 and "presence" in reply.get_json()["errors"]


def test_presence_given_twice_is_400(client):
    reply = client.get("/messages?room=lobby&presence=1&presence=0")
    assert reply.status_code == 400 and "presence" in reply.get_json()["errors"]


def test_the_document_describes_subscribers_and_the_join_and_leave_events(client):
    spec = client.get("/openapi.json").get_json()
    operation = spec["paths"]["/rooms/{room}/subscribers"]["get"]
    schema = spec["components"]["schemas"]["SubscribersOut"]
    assert set(schema["required"]) == set(subscribers(client))
    assert [parameter["name"] for parameter in operation["parameters"]] == ["room", "limit", "after"]
    stream = spec["paths"]["/messages"]["get"]
    assert "presence" in [parameter["name"] for parameter in stream["parameters"]]
    kinds = [variant["properties"]["event"].get("enum") for variant in
             stream["responses"]["200"]["content"]["text/event-stream"]["schema"]["anyOf"]]
    assert ["join", "leave"] in kinds


def test_writes_refused_now_and_then_make_no_leave_and_join(sqlite_path):
    """FerretDB refuses a presence write now and then ("database is locked"), and interrupts a read: no flapping.

    Two workers on one store, at a tenth of the real intervals: worker A's
    store refuses every other presence write while bob comes and goes there,
    and worker B's refuses every third read of the others' entries; B's
    presence=1 stream hears bob's join and leave once each, and nothing
    about alice, who stays throughout. (A run of refusals long enough to let
    A's entry expire is what the leave grace is for: the unit tests above.)
    """
    import gevent

    from app.stores.sqlite import SQLiteStore

    def worker(store):
        hub = Hub(queue_limit=100)
        presence = Presence(store, hub, check_interval=0.025, write_interval=0.05, refresh_interval=0.1, ttl=0.3,
                            cache_seconds=0.05, stale_seconds=0.15)
        presence.announcer = Announcer(presence, hub, check_interval=0.025, leave_grace=0.15)
        return hub, presence

    store_a, store_b = (SQLiteStore(sqlite_path, max_bytes=10**6, max_messages=100) for _ in range(2))
    (hub_a, presence_a), (hub_b, presence_b) = worker(store_a), worker(store_b)
    refused = []
    for name in ("publish_presence", "refresh_presence"):
        write = getattr(store_a, name)

        def flaky(*args, write=write):
            refused.append(len(refused) % 2 == 0)
            if refused[-1]:
                raise StoreUnavailable("FerretDB: database is locked (517)")
            return write(*args)

        setattr(store_a, name, flaky)
    reads = []
    read = store_b.presence_counts

    def interrupted(exclude=None):
        reads.append(len(reads) % 3 == 2)
        if reads[-1]:
            raise StoreUnavailable("FerretDB: interrupted (9)")
        return read(exclude)

    store_b.presence_counts = interrupted
    watcher = hub_b.subscribe(("lobby",), subject="watcher", notices=True)
    presence_a.start()
    presence_b.announcer.ensure_running()
    try:
        gevent.sleep(0.1)
        hub_a.subscribe(("lobby",), subject="alice")
        wait_until(lambda: [kind for kind, _ in events_so_far(watcher)] == ["join"], 3, "alice's join",
                   sleep=gevent.sleep)
        gevent.sleep(0.3)
        bob = hub_a.subscribe(("lobby",), subject="bob")
        gevent.sleep(0.6)
        hub_a.unsubscribe(bob)
        gevent.sleep(1.5)  # 5 of these TTLs, 30 writes or refreshes of worker A, half of them refused
    finally:
        presence_a.stop()
        presence_b.stop()
        store_a.close()
        store_b.close()
    told = [(kind, data["sub"]) for kind, data in events_so_far(watcher)]
    assert told == [("join", "alice"), ("join", "bob"), ("leave", "bob")]
    assert refused.count(True) >= 5 and reads.count(True) >= 5


def test_made_up_rooms_past_the_room_bound_make_no_one_leave_on_another_worker(sqlite_path):
    """Regression (hostile, live): ~125 anonymous streams on 32 made-up rooms each pushed a quiet room out of
    its worker's entry, and the other workers' presence=1 streams were told its users left.

    Two workers on one store, at a tenth of the real intervals, PRESENCE_MAX_ROOMS 10: dave follows
    "quiet" on worker A; then 40 anonymous streams there follow made-up rooms (2 streams each, busier
    than quiet). Worker B's presence=1 stream hears dave's join, and no leave.
    """
    from app.stores.sqlite import SQLiteStore

    stores = [SQLiteStore(sqlite_path, max_bytes=10**6, max_messages=100) for _ in range(2)]
    hubs = [Hub(queue_limit=100) for _ in stores]
    workers = []
    for store, hub in zip(stores, hubs, strict=True):
        presence = Presence(store, hub, max_rooms=10, check_interval=0.025, write_interval=0.05,
                            refresh_interval=0.1, ttl=0.3, cache_seconds=0.05, stale_seconds=0.15)
        presence.announcer = Announcer(presence, hub, check_interval=0.025, leave_grace=0.15)
        workers.append(presence)
    hub_a, hub_b = hubs
    watcher = hub_b.subscribe(("quiet",), subject="watcher", notices=True)
    workers[0].start()
    workers[1].announcer.ensure_running()
    try:
        gevent.sleep(0.1)
        hub_a.subscribe(("quiet",), subject="dave")
        wait_until(lambda: [kind for kind, _ in events_so_far(watcher)] == ["join"], 3, "dave's join",
                   sleep=gevent.sleep)
        for n in range(40):
            hub_a.subscribe(tuple(f"aaa-{(n + k) % 20:02d}" for k in range(2)))
        gevent.sleep(1.5)  # 5 TTLs, 10 leave graces
        assert workers[1].identities("quiet").subs == {"dave": 1, "watcher": 1}
    finally:
        for presence in workers:
            presence.stop()
        for store in stores:
            store.close()
    assert [(kind, data["sub"]) for kind, data in events_so_far(watcher)] == [("join", "dave")]


def events_so_far(subscription) -> list[tuple[str, dict]]:
    """The notices queued for a subscription so far, left in place: (kind, data)."""
    out = []
    for item in subscription._items:
        kind_line, data_line = item.payload.decode().split("\n")[:2]
        out.append((kind_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))))
    return out
