"""Publish token, CORS allowlist, trusted proxies, security headers and the settings behind them."""
from __future__ import annotations

import pytest

from app import create_app
from app.config import ConfigError, Settings
from app.edge.access import bearer_token_matches
from app.edge.security import SECURITY_HEADERS

TOKEN = "s3cret-token-0123456789"
ALLOWED = "https://chat.example.com"


@pytest.fixture
def make_client(sqlite_path):
    def make(**env: str):
        return create_app({"SQLITE_PATH": sqlite_path, **env}).test_client()
    return make


def _publish(client, headers=None, **body):
    return client.post("/messages", json={"room": "r", "text": "hi", **body}, headers=headers or {})


# -- publish token ---------------------------------------------------------------------------------

@pytest.mark.parametrize("header, challenge", [
    (None, 'Bearer realm="publish"'),
    ("Bearer wrong-token-0123456789", 'Bearer realm="publish", error="invalid_token"'),
    (f"Basic {TOKEN}", 'Bearer realm="publish", error="invalid_token"'),
    (f"Bearer {TOKEN}x", 'Bearer realm="publish", error="invalid_token"'),
    (f"Bearer {TOKEN[:-1]}", 'Bearer realm="publish", error="invalid_token"'),
], ids=["missing", "wrong", "wrong scheme", "longer", "prefix"])
def test_publish_without_the_token_is_401_with_a_bearer_challenge(make_client, header, challenge):
    client = make_client(PUBLISH_TOKEN=TOKEN)
    reply = _publish(client, {"Authorization": header} if header else None)

    assert reply.status_code == 401
    assert reply.headers["WWW-Authenticate"] == challenge
    assert reply.json["code"] == 401 and TOKEN not in reply.get_data(as_text=True)
    assert client.get("/messages/history?room=r").json["messages"] == []


def test_publish_with_the_token_is_stored(make_client):
    client = make_client(PUBLISH_TOKEN=TOKEN)

    assert _publish(client, {"Authorization": f"Bearer {TOKEN}"}).status_code == 201
    assert _publish(client, {"Authorization": f"bearer  {TOKEN} "}).status_code == 201  # scheme is case-insensitive


def test_the_token_guards_publishing_only(make_client):
    client = make_client(PUBLISH_TOKEN=TOKEN)

    assert client.get("/messages/history?room=r").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_a_bad_body_without_the_token_is_401_not_a_validation_hint(make_client):
    reply = make_client(PUBLISH_TOKEN=TOKEN).post("/messages", data="{", content_type="application/json")

    assert reply.status_code == 401


def test_bearer_token_matches_only_the_exact_token():
    assert bearer_token_matches(f"Bearer {TOKEN}", TOKEN)
    assert not bearer_token_matches(None, TOKEN)
    assert not bearer_token_matches("Bearer", TOKEN)
    assert not bearer_token_matches(f"Bearer {TOKEN} extra", TOKEN)
    assert not bearer_token_matches("Bearer \udcff", TOKEN)


# -- CORS ------------------------------------------------------------------------------------------

def test_allowed_origin_gets_its_own_origin_and_credentials_on_the_stream(make_client):
    client = make_client(CORS_ORIGINS=f"{ALLOWED}, http://localhost:3000")
    reply = client.get("/messages?room=r", headers={"Origin": ALLOWED}, buffered=False)
    try:
        assert reply.status_code == 200
        assert reply.headers["Access-Control-Allow-Origin"] == ALLOWED
        assert reply.headers["Access-Control-Allow-Credentials"] == "true"
        assert "Origin" in reply.headers["Vary"]
    finally:
        reply.close()


@pytest.mark.parametrize("origin", [
    "https://evil.example", "https://chat.example.com.evil.example", "https://evilchat.example.com",
    "http://chat.example.com", "https://chat.example.com:8443", "null",
])
def test_other_origins_are_never_reflected(make_client, origin):
    client = make_client(CORS_ORIGINS=ALLOWED)

    for reply in (client.get("/messages/history?room=r", headers={"Origin": origin}),
                  client.options("/messages", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})):
        assert "Access-Control-Allow-Origin" not in reply.headers
        assert "Access-Control-Allow-Credentials" not in reply.headers


def test_preflight_for_a_cross_origin_publish(make_client):
    client = make_client(CORS_ORIGINS=ALLOWED, PUBLISH_TOKEN=TOKEN)
    reply = client.options("/messages", headers={
        "Origin": ALLOWED, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})

    assert reply.status_code == 200
    assert reply.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "POST" in reply.headers["Access-Control-Allow-Methods"]
    assert "PUT" not in reply.headers["Access-Control-Allow-Methods"]
    assert set(reply.headers["Access-Control-Allow-Headers"].split(", ")) == {"authorization", "content-type"}
    assert reply.headers["Access-Control-Allow-Credentials"] == "true"


def test_no_cors_headers_at_all_without_cors_origins(make_client):
    reply = make_client().get("/messages/history?room=r", headers={"Origin": ALLOWED})

    assert not [name for name in reply.headers.keys() if name.startswith("Access-Control-")]


# -- client address --------------------------------------------------------------------------------

def _hits_until_limited(client, forwarded_for: str) -> int:
    for hit in range(1, 10):
        if _publish(client, {"X-Forwarded-For": forwarded_for}).status_code == 429:
            return hit
    return 0


def test_forwarded_for_is_ignored_unless_proxies_are_trusted(make_client):
    client = make_client(PUBLISH_RATE="2/minute")

    assert _hits_until_limited(client, "198.51.100.1") == 3
    assert _hits_until_limited(client, "198.51.100.2") == 1  # a forged header buys no fresh budget


def test_forwarded_for_names_the_client_behind_trusted_proxies(make_client):
    client = make_client(PUBLISH_RATE="2/minute", TRUSTED_PROXIES="1")

    assert _hits_until_limited(client, "198.51.100.1") == 3
    assert _hits_until_limited(client, "198.51.100.2") == 3


# -- security headers ------------------------------------------------------------------------------

def test_every_kind_of_response_carries_the_security_headers(make_client, sqlite_path):
    app = create_app({"SQLITE_PATH": sqlite_path})

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals at /srv/app.py line 12")

    client = app.test_client()
    stream = client.get("/messages?room=r", buffered=False)
    stream.close()
    replies = {
        "json": client.get("/messages/history?room=r"), "stream": stream, "openapi": client.get("/openapi.json"),
        "400": client.get("/messages"), "404": client.get("/nowhere"), "405": client.put("/messages"),
        "414": client.get("/messages?room=r&x=" + "x" * 3000), "500": client.get("/boom"),
    }
    for kind, reply in replies.items():
        for name, value in SECURITY_HEADERS.items():
            assert reply.headers.get(name) == value, (kind, name)
    body = replies["500"].get_data(as_text=True)
    assert replies["500"].status_code == 500
    assert "secret" not in body and "Traceback" not in body and "app.py" not in body


def test_csp_forbids_inline_script_and_foreign_connections():
    policy = dict(part.split(" ", 1) for part in SECURITY_HEADERS["Content-Security-Policy"].split("; "))

    assert policy["script-src"] == "'self'" and "unsafe-inline" not in SECURITY_HEADERS["Content-Security-Policy"]
    assert policy["connect-src"] == "'self'"
    assert policy["default-src"] == "'none'" and policy["frame-ancestors"] == "'none'"


def test_the_demo_page_keeps_a_policy_without_inline_script(client):
    policy = client.get("/").headers["Content-Security-Policy"]

    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert client.get("/").headers["X-Content-Type-Options"] == "nosniff"


# -- settings --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, value, complaint", [
    ("PUBLISH_TOKEN", "short", "16 to 512"),
    ("PUBLISH_TOKEN", "has a space in it, long enough", "visible ASCII"),
    ("PUBLISH_RATE", "lots", "20/second"),
    ("CORS_ORIGINS", "*", "not allowed"),
    ("CORS_ORIGINS", "https://a.example/path", "no path"),
    ("CORS_ORIGINS", "chat.example.com", "origin like"),
    ("TRUSTED_PROXIES", "-1", "between"),
])
def test_bad_security_settings_stop_start_up_with_a_sentence(name, value, complaint):
    with pytest.raises(ConfigError, match=name) as error:
        Settings.from_env({name: value})
    assert complaint in str(error.value)


def test_the_token_is_never_echoed():
    with pytest.raises(ConfigError) as error:
        Settings.from_env({"PUBLISH_TOKEN": "tiny secret"})
    assert "tiny secret" not in str(error.value)
    assert Settings.from_env({"PUBLISH_TOKEN": TOKEN}).public_summary()["publish_token"] == "***"
