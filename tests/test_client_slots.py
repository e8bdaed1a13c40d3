"""MAX_STREAMS_PER_CLIENT: who the client is, and the slots counted for it across processes.

The live side (real gunicorn, 2 workers, both stores, a killed worker) is in
tests/test_client_slots_live.py; nginx's own limits in tests/test_nginx.py.
"""
from __future__ import annotations

import ipaddress
import logging
import multiprocessing
import os
import signal
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder

from app import create_app
from app.config import ConfigError, Settings
from app.delivery import client_slots
from app.delivery.admission import Admission, Refusal, StreamSlots
from app.delivery.client_slots import ClientSlots
from app.edge import messages
from app.edge.clients import address_key
from tests.support.client_slots import records, streams_held, streams_held_in_file, take_as_another_worker
from tests.support.tokens import SECRET, claims, mint

# -- who the client is -----------------------------------------------------------------------------

@pytest.mark.parametrize("address, key", [
    ("192.0.2.7", "ip:192.0.2.7"),
    ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "ip:2001:db8:1:2::/64"),
    ("2001:db8:1:2::1", "ip:2001:db8:1:2::/64"),
    ("2001:DB8:1:2:0:0:0:9", "ip:2001:db8:1:2::/64"),  # any spelling of the same /64
    ("2001:db8:1:3::1", "ip:2001:db8:1:3::/64"),
    ("::1", "ip:::/64"),
    ("::ffff:192.0.2.7", "ip:192.0.2.7"),  # IPv4-mapped: the IPv4 client, not the ::ffff:0:0/64 of everyone
    ("fe80::1%eth0", "ip:fe80::/64"),  # a link-local peer's zone is not part of the address
    ("", "ip:?"),  # a unix socket's peer
    ("192.0.2.1\x00x", "ip:?"),
    ("not-an-address", "ip:?"),  # every unparsable address is one client: no new key per request
    ("not-an-address-either", "ip:?"),
], ids=["ipv4", "ipv6", "ipv6-same-64", "ipv6-spelled-out", "ipv6-next-64", "loopback6", "ipv4-mapped",
        "zone", "empty", "nul", "garbage", "other-garbage"])
def test_the_client_key_of_an_address(address, key):
    assert address_key(address) == key


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.booleans())
def test_the_client_key_agrees_with_the_ipaddress_module(address, exploded):
    text = address.exploded if exploded else str(address)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        expected = f"ip:{address.ipv4_mapped}"
    elif isinstance(address, ipaddress.IPv6Address):
        expected = f"ip:{ipaddress.IPv6Network((address, 64), strict=False)}"
    else:
        expected = f"ip:{address}"
    assert address_key(text) == expected


def _stream(client, address: str = "192.0.2.1", room: str = "r", **headers: str):
    return client.get(f"/messages?room={room}", environ_base={"REMOTE_ADDR": address}, headers=headers,
                      buffered=False)


@pytest.fixture
def make_app(sqlite_path):
    def make(**env: str):
        return create_app({"SQLITE_PATH": sqlite_path, "MAX_STREAMS_PER_CLIENT": "2", **env})
    return make


def _assert_429(reply, limit: int = 2) -> None:
    assert reply.status_code == 429
    assert reply.json == {"code": 429, "status": "Too Many Requests",
                          "message": f"this client holds its maximum of {limit} streams on this server; "
                                     "close one first", "errors": {}}
    assert reply.headers["Retry-After"] == "15"  # HEARTBEAT_SECONDS: a vanished client's stream is noticed by then


def test_a_client_past_its_streams_gets_429_json_with_retry_after_and_others_do_not(make_app):
    client = make_app().test_client()
    held = [_stream(client), _stream(client)]

    _assert_429(_stream(client))
    other = _stream(client, "192.0.2.2")
    assert [reply.status_code for reply in held] == [200, 200] and other.status_code == 200
    for reply in held + [other]:
        reply.close()


def test_a_closed_stream_gives_its_slot_back(make_app):
    app = make_app()
    client = app.test_client()
    first, second = _stream(client), _stream(client)
    assert _stream(client).status_code == 429

    first.close()
    third = _stream(client)
    assert third.status_code == 200
    slots = app.extensions["sse"].admission.client_slots
    assert streams_held(slots, "ip:192.0.2.1") == 2
    second.close()
    third.close()
    assert streams_held(slots, "ip:192.0.2.1") == 0
    assert app.extensions["sse"].slots.open == 0


def test_one_ipv6_64_is_one_client(make_app):
    client = make_app().test_client()
    held = [_stream(client, "2001:db8:1:2::1"), _stream(client, "2001:db8:1:2::2")]

    _assert_429(_stream(client, "2001:db8:1:2:ffff:ffff:ffff:ffff"))
    assert _stream(client, "2001:db8:1:3::1").status_code == 200
    for reply in held:
        reply.close()


def test_forwarded_for_names_the_client_only_behind_trusted_proxies(make_app):
    direct = make_app().test_client()
    # Forged headers buy no fresh slots: the socket's peer is the client.
    held = [_stream(direct, "192.0.2.1", **{"X-Forwarded-For": f"198.51.100.{n}"}) for n in range(2)]
    assert _stream(direct, "192.0.2.1", **{"X-Forwarded-For": "198.51.100.9"}).status_code == 429

    proxied = make_app(TRUSTED_PROXIES="1").test_client()
    # Behind one trusted proxy every client comes from its address: the one it put in the header.
    behind = [_stream(proxied, "127.0.0.1", **{"X-Forwarded-For": "198.51.100.1"}) for _ in range(2)]
    assert _stream(proxied, "127.0.0.1", **{"X-Forwarded-For": "198.51.100.1"}).status_code == 429
    assert _stream(proxied, "127.0.0.1", **{"X-Forwarded-For": "198.51.100.2"}).status_code == 200
    # The hop before the proxy is the client's own to write: only the last one is believed.
    assert _stream(proxied, "127.0.0.1", **{"X-Forwarded-For": "203.0.113.5, 198.51.100.1"}).status_code == 429
    for reply in held + behind:
        reply.close()


def test_with_private_rooms_the_tokens_subject_is_the_client(make_app):
    client = make_app(AUTH_JWT_SECRET=SECRET, PUBLIC_ROOMS="lobby").test_client()

    def as_user(subject: str, address: str):
        token = mint(claims(["team-*"], sub=subject))
        return _stream(client, address, room="team-red", Authorization=f"Bearer {token}")

    # Alice from two addresses is one client; Bob behind Alice's NAT is another.
    alice = [as_user("alice", "192.0.2.1"), as_user("alice", "192.0.2.2")]
    _assert_429(as_user("alice", "198.51.100.3"))
    bob = as_user("bob", "192.0.2.1")
    # A public room's stream sends no token: its address is the client, whoever reads it.
    public = [_stream(client, "192.0.2.1", room="lobby"), _stream(client, "192.0.2.1", room="lobby")]
    _assert_429(_stream(client, "192.0.2.1", room="lobby"))

    assert [reply.status_code for reply in alice + [bob] + public] == [200] * 5
    for reply in alice + [bob] + public:
        reply.close()


def test_a_failure_before_the_response_exists_gives_the_slots_back(make_app, monkeypatch):
    app = make_app()
    client = app.test_client()

    def broken(*args, **kwargs):
        raise RuntimeError("the stream could not be set up")

    monkeypatch.setattr(messages, "message_stream", broken)
    assert [_stream(client).status_code for _ in range(3)] == [500] * 3
    assert streams_held(app.extensions["sse"].admission.client_slots, "ip:192.0.2.1") == 0
    assert app.extensions["sse"].slots.open == 0


def test_a_stream_that_fails_before_its_first_byte_gives_the_slots_back(make_app, monkeypatch):
    app = make_app()

    def fails_at_start(*args, **kwargs):
        raise RuntimeError("failed before the first byte")
        yield b""  # a generator, like message_stream

    monkeypatch.setattr(messages, "message_stream", fails_at_start)
    for _ in range(3):
        # As gunicorn serves a response: iterate, and close it in ``finally`` whatever happened.
        environ = EnvironBuilder(path="/messages", query_string="room=r",
                                 environ_base={"REMOTE_ADDR": "192.0.2.1"}).get_environ()
        body = app(environ, lambda status, headers, exc_info=None: None)
        try:
            with pytest.raises(RuntimeError):
                for _chunk in body:
                    pass
        finally:
            body.close()
    assert streams_held(app.extensions["sse"].admission.client_slots, "ip:192.0.2.1") == 0
    assert app.extensions["sse"].slots.open == 0


# -- the proxy warning -----------------------------------------------------------------------------

def test_one_warning_per_worker_when_a_proxy_is_in_front_but_not_trusted(make_app, caplog):
    client = make_app().test_client()
    with caplog.at_level(logging.WARNING, logger="app.edge.access"):
        client.get("/messages/history?room=r")
        assert not caplog.records
        for _ in range(3):
            client.get("/messages/history?room=r", headers={"X-Forwarded-For": "198.51.100.1 FORGED"})
    [record] = caplog.records
    assert "carries X-Forwarded-For but TRUSTED_PROXIES=0" in record.getMessage()
    assert "FORGED" not in record.getMessage()  # the header's value is never logged


def test_no_proxy_warning_when_proxies_are_trusted(make_app, caplog):
    client = make_app(TRUSTED_PROXIES="1").test_client()
    with caplog.at_level(logging.WARNING, logger="app.edge.access"):
        client.get("/messages/history?room=r", headers={"X-Forwarded-For": "198.51.100.1"})
    assert not caplog.records


# -- the publish rate limit: the same client ---------------------------------------------------------

def test_the_publish_rate_limit_counts_an_ipv6_64_as_one_client(sqlite_path):
    client = create_app({"SQLITE_PATH": sqlite_path, "PUBLISH_RATE": "2/minute"}).test_client()

    def publish(address: str) -> int:
        return client.post("/messages", json={"room": "r", "text": "x"},
                           environ_base={"REMOTE_ADDR": address}).status_code

    assert [publish(f"2001:db8:1:2::{n}") for n in range(1, 4)] == [201, 201, 429]
    assert publish("2001:db8:1:3::1") == 201


# -- the slots file, shared by processes ----------------------------------------------------------

def test_slots_are_counted_per_client_and_given_back_exactly(tmp_path):
    slots = ClientSlots(str(tmp_path / "slots.lmdb"), limit=3)

    assert [slots.take("a") for _ in range(4)] == [True, True, True, False]
    assert slots.take("b")
    slots.give_back("a")
    assert streams_held(slots, "a") == 2 and slots.take("a") and not slots.take("a")
    for _ in range(3):
        slots.give_back("a")
    slots.give_back("b")
    assert streams_held(slots, "a") == streams_held(slots, "b") == 0
    assert records(slots) == 0  # no empty records


def test_a_ticket_gives_its_slots_back_once_however_often_it_is_closed():
    admission = Admission(StreamSlots(10), ClientSlots(None, limit=2))
    first, second = admission.admit("c"), admission.admit("c")
    assert admission.admit("c") is Refusal.CLIENT_FULL

    for _ in range(3):
        first.give_back()  # closed by the server, then again by someone else: counted once
    assert streams_held(admission.client_slots, "c") == 1 and admission.worker_slots.open == 1
    second.give_back()
    assert streams_held(admission.client_slots, "c") == 0 and admission.worker_slots.open == 0


def test_a_stopping_worker_gives_every_client_slot_back_at_once_and_each_only_once(tmp_path):
    path = str(tmp_path / "slots.lmdb")
    admission = Admission(StreamSlots(10), ClientSlots(path, limit=5))
    tickets = [admission.admit(client) for client in ("a", "a", "b")]
    take_as_another_worker(admission.client_slots, "a", os.getpid() + 1)

    admission.close()  # SIGTERM
    # The other's stays.
    assert streams_held(admission.client_slots, "a") == 1 and streams_held(admission.client_slots, "b") == 0
    late = admission.admit("a")  # in flight as the worker stopped: admitted, not counted
    assert not isinstance(late, Refusal) and streams_held(admission.client_slots, "a") == 1
    for ticket in tickets + [late]:
        ticket.give_back()
    assert streams_held(admission.client_slots, "a") == 1  # nothing given back twice
    assert admission.worker_slots.open == 0


def test_a_full_worker_is_refused_before_the_client_is_counted():
    admission = Admission(StreamSlots(1), ClientSlots(None, limit=5))
    ticket = admission.admit("c")

    assert admission.admit("d") is Refusal.WORKER_FULL
    assert streams_held(admission.client_slots, "d") == 0
    ticket.give_back()


def test_an_unusable_slots_file_admits_uncounted_and_says_so_once(tmp_path, caplog):
    admission = Admission(StreamSlots(10), ClientSlots(str(tmp_path / "missing" / "slots.lmdb"), limit=1))
    with caplog.at_level(logging.WARNING, logger="app.delivery.client_slots"):
        tickets = [admission.admit("c") for _ in range(3)]
    assert not any(isinstance(ticket, Refusal) for ticket in tickets)  # fail open: the worker's limit still holds
    assert admission.worker_slots.open == 3
    assert len(caplog.records) == 1 and "cannot be used" in caplog.records[0].getMessage()
    for ticket in tickets:
        ticket.give_back()
    assert admission.worker_slots.open == 0


def _take_from_own_process(path: str, limit: int, attempts: int, start, results) -> None:
    slots = ClientSlots(path, limit)
    slots.take("warm-up")  # opened before the race starts
    slots.give_back("warm-up")
    start.wait(30)
    results.put((os.getpid(), sum(slots.take("c") for _ in range(attempts))))


def test_no_two_processes_admit_past_the_limit(tmp_path):
    """The issue: the check and the take must be atomic across workers (no two both admitting the 65th)."""
    path = str(tmp_path / "slots.lmdb")
    context = multiprocessing.get_context("spawn")  # fork would copy gevent's hub threads mid-state
    start, results = context.Event(), context.Queue()
    processes = [context.Process(target=_take_from_own_process, args=(path, 64, 100, start, results))
                 for _ in range(4)]
    for process in processes:
        process.start()
    start.set()
    taken = dict(results.get(timeout=60) for _ in processes)
    for process in processes:
        process.join(10)

    assert sum(taken.values()) == 64  # 400 attempts at once, 64 admitted
    assert streams_held(ClientSlots(path, 64), "c") == 64
    # A dead worker's rows: the master drops them by pid (gunicorn.conf.py's child_exit).
    pid, count = next((pid, count) for pid, count in taken.items() if count)
    assert client_slots.drop_worker(path, pid) == count
    assert streams_held(ClientSlots(path, 64), "c") == 64 - count
    assert client_slots.drop_worker(path, pid) == 0


def _die_inside_a_write(path: str, inside) -> None:
    slots = ClientSlots(path, limit=5)
    slots.take("c")
    txn = slots._environment().begin(write=True)  # holds the node's write lock...
    txn.put(b"half-done", b"x")
    inside.set()
    time.sleep(60)  # ...until it is killed


def _take_once(path: str, results) -> None:
    results.put(ClientSlots(path, limit=5).take("c"))


def test_a_worker_killed_inside_a_write_does_not_stop_the_others(tmp_path):
    """LMDB's write lock is a robust mutex: the next writer gets it, and the dead one's half-done write is not there."""
    path = str(tmp_path / "slots.lmdb")
    context = multiprocessing.get_context("spawn")
    inside, results = context.Event(), context.Queue()
    dying = context.Process(target=_die_inside_a_write, args=(path, inside))
    dying.start()
    assert inside.wait(30)
    os.kill(dying.pid, signal.SIGKILL)
    dying.join(10)

    taker = context.Process(target=_take_once, args=(path, results))  # another worker, after the death
    taker.start()
    taker.join(20)
    alive = taker.is_alive()
    if alive:
        taker.kill()
    assert not alive, "a take waited for the dead worker's lock"
    assert results.get(timeout=5) is True
    assert streams_held_in_file(path, "c") == 2  # the dead worker's committed take and the new one
    assert client_slots.drop_worker(path, dying.pid) == 1  # the master gives the dead one's back
    assert streams_held_in_file(path, "c") == 1
    env = client_slots.open_file(path)
    with env.begin() as txn:
        assert txn.get(b"half-done") is None
    env.close()


# -- the setting -------------------------------------------------------------------------------------

def test_max_streams_per_client_defaults_to_2000_and_a_bad_value_names_the_variable():
    assert Settings.from_env({}).max_streams_per_client == 2000
    assert Settings.from_env({"MAX_STREAMS_PER_CLIENT": "64"}).max_streams_per_client == 64
    for bad in ("0", "many", "-1", "1.5"):
        with pytest.raises(ConfigError, match="MAX_STREAMS_PER_CLIENT"):
            Settings.from_env({"MAX_STREAMS_PER_CLIENT": bad})
