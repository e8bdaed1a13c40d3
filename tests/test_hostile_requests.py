"""A table of hostile requests against real gunicorn: each gets its documented 4xx, and nothing is stored.

Rows whose request gunicorn itself refuses before the app sees it (a request
line or a header past gunicorn's limits) are marked: gunicorn answers them
with its own small HTML 414/431, not our JSON shape. Nothing from them can reach
the store either.

The table runs once per store (``[sqlite-...]``, ``[mongodb-...]``): after each
request the store itself is counted, the SQLite file or the capped collection.

A second table sends hostile tokens to a server with private rooms on
(an RS256 public key): each is a 401 with the ``invalid_token`` challenge,
reads nothing, stores nothing and is never echoed.
"""
from __future__ import annotations

import socket
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import requests
from pymongo import MongoClient

from app.edge.security import SECURITY_HEADERS
from tests.conftest import FILLER_ROOM, prefill_capped
from tests.support.tokens import claims, ec_keys, garbage, hs256_signed_with, mint, other_rsa_key, rsa_keys, unsigned

MAX_TEXT_CHARS = 100
JSON = {"Content-Type": "application/json"}


@dataclass
class Hostile:
    method: str
    path: str
    status: int
    message: str  # a piece of the error message ("" for gunicorn's own answers)
    data: bytes | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    by_gunicorn: bool = False


def post(body: bytes | str, status: int, message: str, headers: dict[str, str] | None = None) -> Hostile:
    return Hostile("POST", "/messages", status, message, body, JSON if headers is None else headers)


TABLE = {
    # -- the body of POST /messages --------------------------------------------------------------
    "invalid JSON": post('{"room": "a", "text": ', 400, "not valid JSON"),
    "JSON with trailing garbage": post('{"room": "a", "text": "x"} x', 400, "not valid JSON"),
    "empty body": post("", 400, "not valid JSON"),
    "JSON array, not an object": post('["room", "text"]', 422, "invalid"),
    "JSON string, not an object": post('"hello"', 422, "invalid"),
    "JSON null": post("null", 422, "invalid"),
    "room is a number": post('{"room": 5, "text": "x"}', 422, "invalid"),
    "text is a list": post('{"room": "a", "text": ["x"]}', 422, "invalid"),
    "event is an object": post('{"room": "a", "text": "x", "event": {}}', 422, "invalid"),
    "unknown field": post('{"room": "a", "text": "x", "admin": true}', 422, "invalid"),
    "missing text": post('{"room": "a"}', 422, "invalid"),
    "empty text": post('{"room": "a", "text": ""}', 422, "invalid"),
    "whitespace-only text": post('{"room": "a", "text": " \\t\\r\\n\\u2028\\u3000"}', 422, "invalid"),
    "text one character too long": post('{"room": "a", "text": "%s"}' % ("x" * (MAX_TEXT_CHARS + 1)), 422, "invalid"),
    "lone surrogate in text": post('{"room": "a", "text": "x\\ud800"}', 422, "invalid"),
    "body over MAX_BODY_BYTES": post('{"room": "a", "text": "%s"}' % ("x" * 7000), 413, ""),
    "invalid UTF-8 bytes": post(b'{"room": "a", "text": "\xff\xfe"}', 400, "UTF-8"),
    "UTF-8 encoded surrogate (CESU)": post(b'{"room": "a", "text": "\xed\xa0\x80"}', 400, "UTF-8"),
    "room with CR LF": post('{"room": "a\\r\\nevent: x", "text": "x"}', 422, "invalid"),
    "room with NUL": post('{"room": "a\\u0000", "text": "x"}', 422, "invalid"),
    "room with a space": post('{"room": "a b", "text": "x"}', 422, "invalid"),
    "room too long": post('{"room": "%s", "text": "x"}' % ("r" * 65), 422, "invalid"),
    "event with LF (field injection)": post('{"room": "a", "text": "x", "event": "x\\ndata: forged"}', 422, "invalid"),
    "event with CR": post('{"room": "a", "text": "x", "event": "x\\rid: 1"}', 422, "invalid"),
    "event with NUL": post('{"room": "a", "text": "x", "event": "x\\u0000"}', 422, "invalid"),
    "event with a space": post('{"room": "a", "text": "x", "event": "x y"}', 422, "invalid"),
    "event named reset (forged control event)": post('{"room": "a", "text": "x", "event": "reset"}', 422, "invalid"),
    "Content-Type text/plain": post('{"room": "a", "text": "x"}', 415, "application/json",
                                    {"Content-Type": "text/plain"}),
    "Content-Type form": post("room=a&text=x", 415, "application/json",
                              {"Content-Type": "application/x-www-form-urlencoded"}),
    "no Content-Type": post('{"room": "a", "text": "x"}', 415, "application/json", {}),
    # -- Idempotency-Key: 1-255 visible ASCII, else 400 before the body is read ------------------
    "Idempotency-Key empty": post('{"room": "a", "text": "x"}', 400, "Idempotency-Key",
                                  {**JSON, "Idempotency-Key": ""}),
    "Idempotency-Key with a space": post('{"room": "a", "text": "x"}', 400, "Idempotency-Key",
                                         {**JSON, "Idempotency-Key": "a b"}),
    "Idempotency-Key of 256 characters": post('{"room": "a", "text": "x"}', 400, "Idempotency-Key",
                                              {**JSON, "Idempotency-Key": "k" * 256}),
    "Idempotency-Key not ASCII (latin-1 byte)": post('{"room": "a", "text": "x"}', 400, "Idempotency-Key",
                                                     {**JSON, "Idempotency-Key": "caf\xe9"}),
    "Idempotency-Key with a comma (two keys)": post('{"room": "a", "text": "x"}', 400, "Idempotency-Key",
                                                    {**JSON, "Idempotency-Key": "k1,k2"}),
    # -- wrong methods ---------------------------------------------------------------------------
    "PUT /messages": Hostile("PUT", "/messages", 405, "not allowed"),
    "DELETE /messages": Hostile("DELETE", "/messages?room=a", 405, "not allowed"),
    "PATCH /messages": Hostile("PATCH", "/messages", 405, "not allowed"),
    "POST /messages/history": Hostile("POST", "/messages/history?room=a", 405, "not allowed"),
    "DELETE /openapi.json": Hostile("DELETE", "/openapi.json", 405, "not allowed"),
    # -- query strings -----------------------------------------------------------------------------
    "stream without room": Hostile("GET", "/messages", 400, "room"),
    "stream room with CR LF": Hostile("GET", "/messages?room=a%0d%0aevent:%20x", 400, "room"),
    "stream room with NUL": Hostile("GET", "/messages?room=a%00", 400, "room"),
    "stream room with a space": Hostile("GET", "/messages?room=a%20b", 400, "room"),
    "stream room with invalid UTF-8": Hostile("GET", "/messages?room=%ff%fe", 400, "room"),
    "history limit not a number": Hostile("GET", "/messages/history?room=a&limit=ten", 400, "limit"),
    "history limit zero": Hostile("GET", "/messages/history?room=a&limit=0", 400, "limit"),
    "history limit huge": Hostile("GET", "/messages/history?room=a&limit=99999999999999999999", 400, "limit"),
    "history limit with a plus sign": Hostile("GET", "/messages/history?room=a&limit=%2B5", 400, "limit"),
    "history limit with spaces": Hostile("GET", "/messages/history?room=a&limit=%205%20", 400, "limit"),
    "history limit with an underscore": Hostile("GET", "/messages/history?room=a&limit=1_0", 400, "limit"),
    "history limit in Arabic-Indic digits": Hostile("GET", "/messages/history?room=a&limit=%D9%A1%D9%A0", 400, "limit"),
    "history after too long": Hostile("GET", "/messages/history?room=a&after=" + "9" * 257, 400, "after"),
    "history before too long": Hostile("GET", "/messages/history?room=a&before=" + "9" * 257, 400, "before"),
    "history before and after": Hostile("GET", "/messages/history?room=a&before=x&after=y", 400, "before"),
    "stream backlog negative": Hostile("GET", "/messages?room=a&backlog=-1", 400, "backlog"),
    "stream backlog past 10000": Hostile("GET", "/messages?room=a&backlog=10001", 400, "backlog"),
    "stream backlog of 40 digits": Hostile("GET", "/messages?room=a&backlog=" + "9" * 40, 400, "backlog"),
    "stream backlog in Arabic-Indic digits": Hostile("GET", "/messages?room=a&backlog=%D9%A1%D9%A0", 400, "backlog"),
    "stream untyped not a boolean": Hostile("GET", "/messages?room=a&untyped=yes", 400, "untyped"),
    # A parameter given twice means two things (werkzeug reads the first, a proxy may read the last): 400.
    "stream backlog twice": Hostile("GET", "/messages?room=a&backlog=1&backlog=10000", 400, "backlog"),
    "stream backlog twice, the second bad": Hostile("GET", "/messages?room=a&backlog=2&backlog=x", 400, "backlog"),
    "stream untyped twice": Hostile("GET", "/messages?room=a&untyped=true&untyped=false", 400, "untyped"),
    "stream lastEventId twice": Hostile("GET", "/messages?room=a&lastEventId=x&lastEventId=y", 400, "lastEventId"),
    "history limit twice": Hostile("GET", "/messages/history?room=a&limit=2&limit=1000", 400, "limit"),
    "history before twice": Hostile("GET", "/messages/history?room=a&before=x&before=y", 400, "before"),
    "history after twice": Hostile("GET", "/messages/history?room=a&after=x&after=", 400, "after"),
    # GET /rooms pages (presence): a bad page is a 400 naming the parameter, never a long answer.
    "rooms limit over 1000": Hostile("GET", "/rooms?limit=1001", 400, "limit"),
    "rooms limit huge": Hostile("GET", "/rooms?limit=99999999999999999999", 400, "limit"),
    "rooms limit with a unicode digit": Hostile("GET", "/rooms?limit=%EF%BC%95", 400, "limit"),
    "rooms after with CR LF": Hostile("GET", "/rooms?after=a%0d%0aFORGED", 400, "after"),
    "rooms after too long": Hostile("GET", "/rooms?after=" + "r" * 65, 400, "after"),
    # GET /rooms/R/subscribers (who is here) and the stream's presence=1 (issue 16).
    "subscribers limit over 1000": Hostile("GET", "/rooms/a/subscribers?limit=1001", 400, "limit"),
    "subscribers limit twice": Hostile("GET", "/rooms/a/subscribers?limit=1&limit=x", 400, "limit"),
    "subscribers after too long": Hostile("GET", "/rooms/a/subscribers?after=" + "s" * 1025, 400, "after"),
    "subscribers after twice": Hostile("GET", "/rooms/a/subscribers?after=a&after=b", 400, "after"),
    "subscribers room with a line feed": Hostile("GET", "/rooms/x%0AFORGED/subscribers", 400, "room"),
    "stream presence neither 1 nor 0": Hostile("GET", "/messages?room=a&presence=yes", 400, "presence"),
    "stream presence twice": Hostile("GET", "/messages?room=a&presence=1&presence=0", 400, "presence"),
    "huge query string": Hostile("GET", "/messages?room=a&pad=" + "x" * 3000, 414, "query string"),
    "query string past gunicorn's request line limit": Hostile(
        "GET", "/messages?room=a&pad=" + "x" * 5000, 414, "", by_gunicorn=True),
    # -- Last-Event-ID -----------------------------------------------------------------------------
    "Last-Event-ID over 256 characters": Hostile("GET", "/messages?room=a", 400, "Last-Event-ID",
                                                 headers={"Last-Event-ID": "1" * 257}),
    "lastEventId query over 256 characters": Hostile("GET", "/messages?room=a&lastEventId=" + "1" * 257, 400,
                                                     "Last-Event-ID"),
    "Last-Event-ID past gunicorn's header limit": Hostile("GET", "/messages?room=a", 431, "",
                                                          headers={"Last-Event-ID": "1" * 9000}, by_gunicorn=True),
    # -- ids, paths and headers with control characters (tests/test_hostile_ids.py: what the log shows) ------
    "Last-Event-ID with a NUL": Hostile("GET", "/messages?room=a", 400, "", headers={"Last-Event-ID": "1\x00x"},
                                        by_gunicorn=True),
    "Last-Event-ID with an escape character": Hostile("GET", "/messages?room=a", 400, "",
                                                      headers={"Last-Event-ID": "1\x1b[2K"}, by_gunicorn=True),
    "room path with a line feed": Hostile("GET", "/rooms/x%0AFORGED", 400, "room"),
    "room path with a NUL": Hostile("GET", "/rooms/x%00", 400, "room"),
    "stream room with a line feed": Hostile("GET", "/messages?room=a%0AFORGED", 400, "room"),
    "history room with a line separator": Hostile("GET", "/messages/history?room=a%E2%80%A8b", 400, "room"),
}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("mongodb", marks=pytest.mark.mongodb)])
def hostile_server(request, tmp_path_factory):
    """Real gunicorn on one store, shared by the module's tests on that store."""
    yield from _server_on_store(request, tmp_path_factory)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("mongodb", marks=pytest.mark.mongodb)])
def private_server(request, tmp_path_factory):
    """The same with private rooms on: tokens verified with an RS256 public key, no public room."""
    yield from _server_on_store(request, tmp_path_factory, AUTH_JWT_PUBLIC_KEY=rsa_keys()[1])


def _server_on_store(request, tmp_path_factory, **extra_env: str):
    from tests.support.live import LiveServer

    directory = tmp_path_factory.mktemp("hostile")
    env = {"SQLITE_PATH": str(directory / "messages.sqlite3"), "MAX_TEXT_CHARS": str(MAX_TEXT_CHARS),
           "MONGODB_URI": "", **extra_env}  # SQLite, even where MONGODB_URI is set for the whole run
    database = None
    if request.param == "mongodb":
        uri = request.getfixturevalue("mongodb_uri")
        database = f"sse_hostile_{uuid.uuid4().hex[:12]}"
        if request.getfixturevalue("mongodb_kind") == "ferretdb":
            prefill_capped(uri, database)  # FerretDB's tailable cursors need a full first batch (conftest.py)
        env.update(MONGODB_URI=uri, MONGODB_DATABASE=database)
    server = LiveServer(env, directory / "gunicorn.log").start()
    yield server
    server.kill()
    if database is not None:
        with MongoClient(env["MONGODB_URI"], serverSelectionTimeoutMS=5000) as client:
            client.drop_database(database)


RESUME_ROOM = "garbage-resume"  # the one room the resume tests below publish to


def _stored_messages(server) -> int:
    """Count what the server's store holds outside the rooms the tests themselves fill."""
    if server.env["MONGODB_URI"]:
        with MongoClient(server.env["MONGODB_URI"], serverSelectionTimeoutMS=5000) as client:
            messages = client[server.env["MONGODB_DATABASE"]].messages
            return messages.count_documents({"room": {"$nin": [RESUME_ROOM, FILLER_ROOM]}})
    with sqlite3.connect(server.env["SQLITE_PATH"]) as conn:
        return conn.execute("SELECT count(*) FROM messages WHERE room != ?", (RESUME_ROOM,)).fetchone()[0]


@pytest.mark.slow
@pytest.mark.parametrize("row", TABLE.values(), ids=TABLE.keys())
def test_hostile_request_gets_its_error_and_stores_nothing(hostile_server, row: Hostile):
    reply = requests.request(row.method, hostile_server.url + row.path, data=row.data,
                             headers={"Connection": "close", **row.headers}, timeout=5, stream=True)
    try:
        assert reply.status_code == row.status, reply.text[:300]
        body = reply.text
    finally:
        reply.close()
    assert "Traceback" not in body and 'File "' not in body
    if row.by_gunicorn:
        return  # gunicorn's own HTML refusal: the app never saw the request
    assert reply.headers["Content-Type"] == "application/json"
    error = reply.json()
    assert set(error) == {"code", "status", "message", "errors"}
    assert error["code"] == row.status
    assert row.message in error["message"] + str(error["errors"]), error
    for name, value in SECURITY_HEADERS.items():
        assert reply.headers[name] == value
    if row.status == 405:
        assert "Allow" in reply.headers
    assert _stored_messages(hostile_server) == 0


@pytest.mark.slow
@pytest.mark.parametrize("second", ["k1", "k2"], ids=["same-key-twice", "two-keys"])
def test_an_idempotency_key_header_sent_twice_is_a_400_storing_nothing(hostile_server, second):
    """gunicorn joined the two as "k1,k2", a third key: stored under it, the message's retry stored it again."""
    body = b'{"room": "a", "text": "x"}'
    with socket.create_connection(("127.0.0.1", hostile_server.port), timeout=5) as conn:
        conn.sendall(b"POST /messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Idempotency-Key: k1\r\nIdempotency-Key: %s\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (second.encode(), len(body), body))
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:300]
    assert b'"Idempotency-Key":["malformed"]' in reply
    assert _stored_messages(hostile_server) == 0


@pytest.mark.slow
@pytest.mark.parametrize("last_id", ["garbage", "../../etc/passwd", "0-1", "ffffffff-1", "1' OR '1'='1",
                                     "ffffffff-9999999999999999999", "-1", "+1", "١٢٣", "ABCDEF0123456789ABCDEF01",
                                     "9" * 256])
def test_garbage_last_event_id_resets_rather_than_skipping(hostile_server, last_id):
    """More shapes, made from the server's own ids, in tests/test_hostile_ids.py."""
    hostile_server.publish(RESUME_ROOM, "kept")
    with requests.get(hostile_server.url + f"/messages?room={RESUME_ROOM}",
                      headers={"Last-Event-ID": last_id.encode()},  # UTF-8, as a browser would send it
                      stream=True, timeout=5) as reply:
        assert reply.status_code == 200
        head = b""
        deadline = time.monotonic() + 5
        for chunk in reply.iter_content(chunk_size=None):
            head += chunk
            if b'"text":"kept"' in head or time.monotonic() > deadline:
                break
    assert b"event: reset\n" in head
    assert head.index(b"event: reset") < head.index(b'"text":"kept"')


# -- hostile tokens (private rooms on, RS256) ------------------------------------------------------

PRIVATE_ROOM = "private"
INVALID_TOKEN = 'Bearer realm="sse-rooms", error="invalid_token"'


def _good() -> str:
    return mint(claims(["*"], ["*"]), rsa_keys()[0], "RS256")


@dataclass
class HostileToken:
    make: Callable[[], str]
    where: str = "header"  # or "cookie", "query"
    status: int = 401
    message: str = "token"
    by_gunicorn: bool = False


TOKEN_TABLE = {
    "alg none": HostileToken(lambda: unsigned(claims(["*"], ["*"]))),
    "alg none in the cookie": HostileToken(lambda: unsigned(claims(["*"], ["*"])), "cookie"),
    "alg none in the query": HostileToken(lambda: unsigned(claims(["*"], ["*"])), "query"),
    "HS256 signed with the server's public key (key confusion)": HostileToken(
        lambda: hs256_signed_with(rsa_keys()[1].encode(), claims(["*"], ["*"])), message="algorithm"),
    "wrong algorithm: ES256": HostileToken(lambda: mint(claims(["*"], ["*"]), ec_keys()[0], "ES256"),
                                           message="algorithm"),
    "wrong algorithm: RS512 with the right key": HostileToken(
        lambda: mint(claims(["*"], ["*"]), rsa_keys()[0], "RS512"), message="algorithm"),
    "wrong key": HostileToken(lambda: mint(claims(["*"], ["*"]), other_rsa_key(), "RS256"), message="signature"),
    "expired": HostileToken(lambda: mint(claims(["*"], ["*"], expires_in=-1), rsa_keys()[0], "RS256"),
                            message="expired"),
    "expired, in the query": HostileToken(lambda: mint(claims(["*"], ["*"], expires_in=-1), rsa_keys()[0], "RS256"),
                                          "query", message="expired"),
    "not yet valid": HostileToken(lambda: mint(claims(["*"], ["*"], nbf=int(time.time()) + 300), rsa_keys()[0],
                                               "RS256"), message="not valid yet"),
    "4 KB of garbage": HostileToken(lambda: garbage(4000), message="malformed"),
    "just over 4096 characters, in the cookie": HostileToken(lambda: garbage(4097), "cookie", message="longer"),
    "8 KB of garbage in the header (past gunicorn's header limit)": HostileToken(
        lambda: garbage(8192), status=431, message="", by_gunicorn=True),
    "8 KB of garbage in the query (past gunicorn's request line)": HostileToken(
        lambda: garbage(8192), "query", status=414, message="", by_gunicorn=True),
    "1.5 KB of garbage in the query (under our 2048-byte query limit)": HostileToken(
        lambda: garbage(1500), "query", message="malformed"),
    "a bad header beats a good cookie and query (no fallback)": HostileToken(
        lambda: "not-a-jwt", "all three", message="malformed"),
}


def _request_with(base_url: str, row: HostileToken, token: str, method: str, path: str) -> requests.Response:
    """Send the hostile token where the row says; "all three": in the header, with good ones in the others."""
    headers, params = {"Connection": "close"}, {}
    if row.where in ("header", "all three"):
        headers["Authorization"] = f"Bearer {token}"
    if row.where == "cookie":
        headers["Cookie"] = f"sse_token={token}"
    if row.where == "query":
        params["access_token"] = token
    if row.where == "all three":
        headers["Cookie"], params["access_token"] = f"sse_token={_good()}", _good()
    body = {"json": {"room": PRIVATE_ROOM, "text": "forged"}} if method == "POST" else {}
    return requests.request(method, base_url + path, params=params, headers=headers, timeout=5, stream=True,
                            **body)


@pytest.mark.slow
@pytest.mark.parametrize("row", TOKEN_TABLE.values(), ids=TOKEN_TABLE.keys())
def test_hostile_token_gets_401_reads_nothing_and_stores_nothing(private_server, row: HostileToken):
    token = row.make()
    for method, path in [("GET", f"/messages?room={PRIVATE_ROOM}"), ("GET", f"/messages/history?room={PRIVATE_ROOM}"),
                         ("POST", "/messages")]:
        reply = _request_with(private_server.url, row, token, method, path)
        try:
            assert reply.status_code == row.status, (method, path, reply.text[:300])
            body = reply.text
        finally:
            reply.close()
        assert "Traceback" not in body and token not in body and token not in str(reply.headers)
        if row.by_gunicorn:
            continue
        assert reply.headers["Content-Type"] == "application/json"
        assert reply.headers["WWW-Authenticate"] == INVALID_TOKEN
        error = reply.json()
        assert set(error) == {"code", "status", "message", "errors"} and error["code"] == 401
        assert row.message in error["message"], error
        for name, value in SECURITY_HEADERS.items():
            assert reply.headers[name] == value
    assert _stored_messages(private_server) == 0


@pytest.mark.slow
def test_a_good_token_in_the_header_wins_over_bad_ones_in_the_cookie_and_query(private_server):
    headers = {"Authorization": f"Bearer {_good()}", "Cookie": "sse_token=not-a-jwt", "Connection": "close"}
    reply = requests.get(f"{private_server.url}/messages/history?room={PRIVATE_ROOM}&access_token=not-a-jwt",
                         headers=headers, timeout=5)
    assert reply.status_code == 200 and reply.json()["messages"] == []
