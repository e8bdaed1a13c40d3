"""Private rooms against real gunicorn (2 gevent workers), on both stores.

401 and 403 on the wire, a stream that ends when its token expires (and the
reconnect that is refused), publishing that needs publish rights, and logs
that never hold a token. The rules themselves, case by case, are in
tests/test_authorization.py.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import requests

from tests.support.sse_client import StreamReader
from tests.support.tokens import OTHER_SECRET, SECRET, claims, mint
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

PUBLISH_TOKEN = "live-publish-token-0123456789"
INVALID = 'Bearer realm="sse-rooms", error="invalid_token"'


@pytest.fixture
def server(start_server, store_env):
    return start_server(**store_env, AUTH_JWT_SECRET=SECRET, PUBLIC_ROOMS="lobby", PUBLISH_TOKEN=PUBLISH_TOKEN,
                        LOG_LEVEL="debug")


def delivery_timeout(store_env: dict[str, str]) -> float:
    """FerretDB's tailable cursors poll (see tests/test_live.py); SQLite delivers in milliseconds."""
    return 5.0 if store_env.get("MONGODB_URI") else 1.0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def publish(server, room: str, text: str, headers: dict[str, str]) -> requests.Response:
    return requests.post(server.url + "/messages", json={"room": room, "text": text}, headers=headers, timeout=5)


def get(server, path: str, **kwargs) -> requests.Response:
    reply = requests.get(server.url + path, stream=True, timeout=5, **kwargs)
    reply.close()  # a 200 would be an endless stream: the head is all we look at
    return reply


def test_reading_a_private_room_needs_a_token_that_covers_every_room(server, store_env):
    token = mint(claims(["team-*"]))
    for path in ("/messages?room=team-red", "/messages/history?room=team-red"):
        refused = requests.get(server.url + path, timeout=5)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == 'Bearer realm="sse-rooms"'
        assert refused.headers["Content-Type"] == "application/json" and refused.json()["code"] == 401
        forged = requests.get(server.url + path, headers=bearer(mint(claims(["*"]), OTHER_SECRET)), timeout=5)
        assert forged.status_code == 401 and forged.headers["WWW-Authenticate"] == INVALID
        partly = requests.get(server.url + path + "&room=ops", headers=bearer(token), timeout=5)
        assert partly.status_code == 403 and partly.json()["code"] == 403
    assert get(server, "/messages?room=lobby").status_code == 200  # public: no token needed
    assert get(server, "/messages?room=team-red&room=team-blue&room=lobby", headers=bearer(token)).status_code == 200

    reader = StreamReader(f"{server.url}/messages?room=team-red&room=lobby&access_token={token}")
    try:
        sent = [publish(server, "team-red", "by a publisher's JWT", bearer(mint(claims(publish=["team-*"])))).json(),
                publish(server, "lobby", "by the server's token", bearer(PUBLISH_TOKEN)).json()]
        assert reader.wait_for(lambda events: len(events) >= 2, delivery_timeout(store_env))
        assert [event.id for event in reader.events] == [message["id"] for message in sent]
    finally:
        reader.close()


def test_publishing_needs_a_token_with_publish_rights(server):
    assert publish(server, "lobby", "anonymous", {}).status_code == 401  # PUBLIC_ROOMS opens reading only
    reader_only = publish(server, "team-red", "x", bearer(mint(claims(["*"]))))
    assert reader_only.status_code == 403
    assert reader_only.headers["WWW-Authenticate"] == 'Bearer realm="sse-rooms", error="insufficient_scope"'
    assert publish(server, "ops", "x", bearer(mint(claims(publish=["team-*"])))).status_code == 403
    assert publish(server, "team-red", "kept", bearer(mint(claims(publish=["team-*"])))).status_code == 201
    assert publish(server, "ops", "kept too", bearer(PUBLISH_TOKEN)).status_code == 201
    expired = publish(server, "team-red", "x", bearer(mint(claims(publish=["*"], expires_in=-1))))
    assert expired.status_code == 401 and expired.headers["WWW-Authenticate"] == INVALID

    stored = requests.get(server.url + "/messages/history?room=team-red&room=ops",
                          headers=bearer(mint(claims(["*"]))), timeout=5).json()["messages"]
    assert [message["text"] for message in stored] == ["kept", "kept too"]


def _read_until_closed(url: str, headers: dict[str, str], into: dict[str, object]) -> None:
    with requests.get(url, headers=headers, stream=True, timeout=(5, 20)) as reply:
        into["status"] = reply.status_code
        body = b""
        for chunk in reply.iter_content(chunk_size=None):
            body += chunk
        into["body"], into["ended_at"] = body, time.time()


def test_a_stream_ends_when_its_token_expires_and_the_reconnect_gets_401(server, store_env):
    expires_at = int(time.time()) + 4
    token = mint(claims(["team-*"], expires_in=None, exp=expires_at))
    # Eight streams, so both workers hold some: each worker's sweeper ends its own. Two ways to send the token.
    streams = [dict() for _ in range(8)]
    threads = [threading.Thread(target=_read_until_closed, daemon=True, args=(
        f"{server.url}/messages?room=team-red" + (f"&access_token={token}" if n % 2 else ""),
        {} if n % 2 else {"Cookie": f"__Host-sse_token={token}"}, streams[n])) for n in range(8)]
    for thread in threads:
        thread.start()
    wait_until(lambda: all("status" in stream for stream in streams), 10, "the streams did not open")
    sent = publish(server, "team-red", "before the end", bearer(PUBLISH_TOKEN)).json()
    for thread in threads:
        thread.join(expires_at - time.time() + 5)
    assert not any(thread.is_alive() for thread in threads), "a stream outlived its token by 5 s"

    lateness = [stream["ended_at"] - expires_at for stream in streams]
    print(f"streams ended {min(lateness):.2f}-{max(lateness):.2f} s after exp")
    for stream in streams:
        assert stream["status"] == 200
        assert f"id: {sent['id']}\n".encode() in stream["body"]
        assert stream["body"].endswith(b": token expired\n\n")
    assert all(-0.05 <= late <= 1.5 for late in lateness), lateness  # the sweeper visits every second
    again = requests.get(f"{server.url}/messages?room=team-red&access_token={token}", timeout=5)
    assert again.status_code == 401 and again.headers["WWW-Authenticate"] == INVALID
    assert "expired" in again.json()["message"]


def test_the_header_wins_over_the_cookie_and_the_cookie_over_the_query(server):
    good, bad = mint(claims(["team-*"])), mint(claims(["team-*"]), OTHER_SECRET)
    path = "/messages/history?room=team-red&access_token="
    cookie = "__Host-sse_token"
    assert get(server, path + bad, headers={**bearer(good), "Cookie": f"{cookie}={bad}"}).status_code == 200
    assert get(server, path + good, headers={**bearer(bad), "Cookie": f"{cookie}={good}"}).status_code == 401
    assert get(server, path + bad, headers={"Cookie": f"{cookie}={good}"}).status_code == 200
    assert get(server, path + good, headers={"Cookie": f"{cookie}={bad}"}).status_code == 401
    assert get(server, path + good).status_code == 200
    # The old name, still read for one release, after the new one.
    assert get(server, path + bad, headers={"Cookie": f"sse_token={good}"}).status_code == 200
    assert get(server, path + good, headers={"Cookie": f"{cookie}={bad}; sse_token={good}"}).status_code == 401


def test_audience_issuer_and_lifetime_are_checked_on_the_wire(start_server, store_env):
    """Issue 18: AUTH_JWT_AUDIENCE, AUTH_JWT_ISSUER, a required exp and a bounded lifetime, through gunicorn."""
    audience, issuer = "https://sse.example.com", "https://login.example.com"
    server = start_server(**store_env, AUTH_JWT_SECRET=SECRET, AUTH_JWT_AUDIENCE=audience, AUTH_JWT_ISSUER=issuer,
                          AUTH_JWT_MAX_LIFETIME_SECONDS="600")
    path = "/messages/history?room=team-red"
    good = claims(["team-*"], aud=audience, iss=issuer)
    assert get(server, path, headers=bearer(mint(good))).status_code == 200
    refused = {
        "another audience": good | {"aud": "https://elsewhere.example.com"},
        "another issuer": good | {"iss": "https://evil.example.com"},
        "no exp": {name: value for name, value in good.items() if name != "exp"},
        "an hour long": good | {"exp": int(time.time()) + 3600},
    }
    for name, payload in refused.items():
        token = mint(payload)
        reply = get(server, path, headers=bearer(token))
        assert reply.status_code == 401 and reply.headers["WWW-Authenticate"] == INVALID, name
        assert token not in reply.text


def test_tokens_are_never_logged_not_even_at_debug_level(server):
    tokens = [mint(claims(["team-*"], publish=["team-*"])), mint(claims(["*"]), OTHER_SECRET),
              mint(claims(["*"], expires_in=-1)), "garbage-token-that-is-not-a-jwt", PUBLISH_TOKEN]
    for token in tokens:
        for path in ("/messages?room=team-red", "/messages/history?room=team-red", "/messages?room=ops"):
            get(server, path, headers=bearer(token))
            get(server, path, headers={"Cookie": f"__Host-sse_token={token}"})
            get(server, path, headers={"Cookie": f"sse_token={token}"})
            get(server, f"{path}&access_token={token}")
        publish(server, "team-red", "x", bearer(token))
        requests.post(f"{server.url}/messages?access_token={token}", json={"room": "team-red", "text": "x"},
                      timeout=5)
    time.sleep(0.5)  # the streams' end lines
    log = Path(server.log_path).read_text(errors="replace")
    assert "stream end" in log and "team-red" in log, "the log is not being written"
    for token in tokens:
        for piece in token.split("."):
            assert piece not in log, f"a piece of a token is in the log: {piece[:12]}..."


def test_malformed_request_lines_with_tokens_are_logged_without_them(server):
    """Issue 18: gunicorn logs a malformed request line whole, access_token and all."""
    import socket

    token = mint(claims(["team-*"]))
    lines = [f"GET /messages?room=team-red&access_token={token}\r\n\r\n",  # no HTTP version
             f"GET  /messages?room=team-red&access_token={token} HTTP/1.1\r\n\r\n",  # two spaces
             f"GET /messages?room=team-red&access%5Ftoken={token}\x00 HTTP/1.1\r\n\r\n"]  # a NUL
    for line in lines:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as connection:
            connection.sendall(line.encode())
            assert connection.recv(100).startswith(b"HTTP/1.1 400")
    log = Path(server.log_path)
    wait_until(lambda: log.read_text(errors="replace").count("Invalid HTTP request line") >= len(lines), 5,
               "gunicorn did not log the malformed request lines")
    text = log.read_text(errors="replace")
    assert "access_token=***" in text and "access%5Ftoken=***" in text
    for piece in token.split("."):
        assert piece not in text
