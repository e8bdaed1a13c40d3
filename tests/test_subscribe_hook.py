"""The subscribe hook (AUTH_SUBSCRIBE_URL): settings, answers, cache, and beside JWTs.

The app runs under Flask's test client; the hook is tests/support/hook_app.py
on a real loopback server, so every call goes over HTTP through urllib3.
The live tests (real gunicorn, both stores, a browser) are in
tests/test_subscribe_hook_live.py; the hostile rows in tests/test_hostile_hook.py.
"""
from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Iterator

import pytest

from app import create_app
from app.config import ConfigError, Settings
from app.edge.subscribe_hook import CACHE_MAX_BYTES, Allowed, Answer, AnswerCache, NotTheShape, _refusal, parse_allowed
from tests.support.hook_app import HookApp
from tests.support.tokens import SECRET, claims, mint


@pytest.fixture(scope="module")
def hook() -> Iterator[HookApp]:
    app = HookApp().start()
    yield app
    app.stop()


@pytest.fixture(autouse=True)
def normal_hook(hook):
    hook.behaviour, hook.expires_in, hook.garbage_body = "normal", None, b"not json"
    hook.calls.clear()


def make_client(tmp_path, hook, **env):
    app = create_app({"SQLITE_PATH": str(tmp_path / "m.sqlite3"), "AUTH_SUBSCRIBE_URL": hook.hook_url, **env})
    return app.test_client(use_cookies=False)  # the Cookie header as each test sends it


def history(client, *rooms, cookie=None, **headers):
    if cookie:
        headers["Cookie"] = cookie
    return client.get("/messages/history?" + "&".join(f"room={room}" for room in rooms), headers=headers)


# -- settings -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, says", [
    ("127.0.0.1:5000/auth", "must start with http:// or https://"),
    ("ftp://127.0.0.1/auth", "must start with http:// or https://"),
    ("http:///auth", "has no host"),
    ("http://127.0.0.1:99999/auth", "is not a URL"),
    ("http://127.0.0.1:0/auth", "names port 0"),
    ("http://user:secret@127.0.0.1/auth", "user:password@"),
    ("http://127.0.0.1/auth#part", "#fragment"),
    ("http://127.0.0.1/a uth", "spaces or control characters"),
], ids=["no-scheme", "ftp", "no-host", "port-too-big", "port-0", "userinfo", "fragment", "space"])
def test_a_bad_hook_url_stops_start_up_with_a_sentence(value, says):
    with pytest.raises(ConfigError, match=f"AUTH_SUBSCRIBE_URL=.*{says}") as refused:
        Settings.from_env({"AUTH_SUBSCRIBE_URL": value})
    assert "secret" not in str(refused.value) or "user:password@" in says


@pytest.mark.parametrize("name, value", [
    ("AUTH_SUBSCRIBE_TIMEOUT_MS", "0"), ("AUTH_SUBSCRIBE_TIMEOUT_MS", "2s"),
    ("AUTH_SUBSCRIBE_CACHE_SECONDS", "-1"), ("AUTH_SUBSCRIBE_CACHE_SECONDS", "soon"),
    ("AUTH_SUBSCRIBE_MAX_CONCURRENT", "0"),
])
def test_bad_hook_settings_stop_start_up(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({"AUTH_SUBSCRIBE_URL": "http://127.0.0.1:5000/auth", name: value})


@pytest.mark.parametrize("name", ["AUTH_SUBSCRIBE_TIMEOUT_MS", "AUTH_SUBSCRIBE_CACHE_SECONDS",
                                  "AUTH_SUBSCRIBE_MAX_CONCURRENT"])
def test_hook_settings_without_the_hook_stop_start_up(name):
    with pytest.raises(ConfigError, match=f"{name} is set but AUTH_SUBSCRIBE_URL is not"):
        Settings.from_env({name: "5"})


def test_the_hook_alone_makes_rooms_private_and_public_rooms_allowed():
    settings = Settings.from_env({"AUTH_SUBSCRIBE_URL": "https://app.example/auth?key=k3y", "PUBLIC_ROOMS": "lobby"})
    assert settings.private_rooms and not settings.authorization
    assert settings.public_summary()["auth_subscribe_url"] == "https://app.example/auth?***"


# -- what a 2xx body must be ---------------------------------------------------------------------------------

@pytest.mark.parametrize("body, says", [
    (b"", "not JSON"), (b"\xff", "not JSON"), (b"[1]", "not a JSON object"), (b"null", "not a JSON object"),
    (b'{"rooms": "team-*"}', '"rooms"'), (b'{"rooms": null}', '"rooms"'),
    (b'{"rooms": [1]}', '"rooms"'), (b'{"rooms": [""]}', '"rooms"'),
    (b'{"rooms": [' + b'"a",' * 256 + b'"a"]}', '"rooms"'),
    (b'{"expiresIn": "60"}', '"expiresIn"'), (b'{"expiresIn": true}', '"expiresIn"'),
    (b'{"expiresIn": 0}', '"expiresIn"'), (b'{"expiresIn": -5}', '"expiresIn"'),
    (b'{"expiresIn": 1e309}', '"expiresIn"'), (b'{"expiresIn": NaN}', '"expiresIn"'),
    (b'{"sub": 7}', '"sub"'), (b'{"sub": ""}', '"sub"'), (b'{"sub": "a\\nb"}', '"sub"'),
    (b'{"sub": "' + b"x" * 257 + b'"}', '"sub"'),
    (b"[" * 5000, "not JSON"),
], ids=lambda value: value[:20] if isinstance(value, bytes) else value)
def test_a_2xx_that_is_not_the_answer_is_not_the_shape(body, says):
    with pytest.raises(NotTheShape, match=says):
        parse_allowed(body, ("team-red",), 1000.0)


def test_an_answer_is_read_with_its_defaults():
    assert parse_allowed(b"{}", ("team-red", "a.b"), 1000.0) == Allowed(("team-red", "a.b"), None, None)
    assert parse_allowed(b'{"sub": "ada", "rooms": ["team-*"], "expiresIn": 60, "other": 1}', ("team-red",),
                         1000.0) == Allowed(("team-*",), 1060.0, "ada")


# -- the cache ------------------------------------------------------------------------------------------------

def test_the_cache_keeps_answers_for_its_seconds_never_past_their_expiry_and_bounded():
    allowed = Answer(allowed=Allowed(("a",), None, None))
    cache = AnswerCache(10, max_entries=3)
    cache.put(b"k", allowed, now=100)
    assert cache.get(b"k", 109.9) is allowed and cache.get(b"k", 110) is None
    cache.put(b"short", Answer(allowed=Allowed(("a",), 102.0, None)), now=100)
    assert cache.get(b"short", 101.9) is not None and cache.get(b"short", 102) is None
    cache.put(b"failed", Answer(cacheable=False), now=100)
    assert cache.get(b"failed", 100) is None
    for n in range(5):
        cache.put(bytes([n]), allowed, now=100)
    assert len(cache) == 3 and cache.get(bytes([0]), 100) is None and cache.get(bytes([4]), 100) is allowed
    assert AnswerCache(0).put(b"k", allowed, now=1) is None and len(AnswerCache(0)) == 0


def test_the_cache_is_bounded_in_memory_whatever_the_answers_hold():
    """Big answers (256 globs of 250 characters: ~78 kB kept each) and many refusals stay within CACHE_MAX_BYTES.

    Counted entries alone let 10,000 of the big ones take 750 MB of a worker (a hostile pass measured it), and
    10,000 refusals (random cookies) 28 MB.
    """
    big = json.dumps({"sub": "x" * 256, "rooms": [f"r{n:03}-" + "y" * 245 for n in range(256)]}).encode()
    for count, answer in ((400, lambda: Answer(allowed=parse_allowed(big, ("team-red",), 100.0))),
                          (10_000, lambda: Answer(refusal=_refusal(401, ("team-red",))))):
        tracemalloc.start()
        try:
            cache = AnswerCache(60)
            before = tracemalloc.get_traced_memory()[0]
            for n in range(count):  # each answer made here, as each call makes its own
                cache.put(n.to_bytes(32, "big"), answer(), now=100)
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert held < CACHE_MAX_BYTES * 1.25, f"{held / 2**20:.1f} MiB held"
        assert cache.bytes <= CACHE_MAX_BYTES
        newest, oldest = (count - 1).to_bytes(32, "big"), bytes(32)
        assert cache.get(newest, 100) is not None and cache.get(oldest, 100) is None


# -- the hook on its own ---------------------------------------------------------------------------------------

def test_the_hook_is_asked_with_the_rooms_method_path_and_the_clients_credentials(tmp_path, hook):
    client = make_client(tmp_path, hook, PUBLIC_ROOMS="lobby")
    cookie = hook.login_cookie("ada")
    reply = history(client, "team-red", "lobby", "team-blue", cookie=cookie, Authorization="Bearer app-token")
    assert reply.status_code == 200, reply.json
    (call,) = hook.calls
    assert call["json"] == {"rooms": ["team-red", "team-blue"], "method": "GET", "path": "/messages/history"}
    assert call["cookie"] == cookie and call["authorization"] == "Bearer app-token"
    assert call["content_type"] == "application/json"


def test_public_rooms_alone_do_not_ask_the_hook(tmp_path, hook):
    client = make_client(tmp_path, hook, PUBLIC_ROOMS="lobby")
    assert history(client, "lobby").status_code == 200 and hook.calls == []


@pytest.mark.parametrize("user, rooms, status", [
    (None, ["team-red"], 401),
    ("bob", ["team-red"], 403),  # the hook allows team-blue only: its answer does not cover team-red
    ("bob", ["team-blue", "team-red"], 403),
    ("ada", ["team-red", "team-blue"], 200),
], ids=["logged-out", "not-covered", "one-of-two-not-covered", "covered"])
def test_the_hooks_answer_decides(tmp_path, hook, user, rooms, status):
    client = make_client(tmp_path, hook)
    reply = history(client, *rooms, cookie=hook.login_cookie(user) if user else None)
    assert reply.status_code == status, reply.json
    if status != 200:
        assert set(reply.json) == {"code", "status", "message", "errors"}
        assert "WWW-Authenticate" in reply.headers
        assert "team-red" in reply.json["message"] or status == 401


def test_the_hooks_own_403_is_passed_on(tmp_path, hook, monkeypatch):
    client = make_client(tmp_path, hook)
    monkeypatch.setattr(hook, "behaviour", "error")
    monkeypatch.setattr(hook, "_answer", lambda: ({"error": "no"}, 403))
    reply = history(client, "team-red", cookie=hook.login_cookie("ada"))
    assert reply.status_code == 403 and "subscribe hook answered 403" in reply.json["message"]


def test_the_hooks_sub_is_the_grants_subject_and_expires_in_its_end(tmp_path, hook):
    client = make_client(tmp_path, hook)
    hook.expires_in = 30
    with client.application.test_request_context("/messages?room=team-red",
                                                 headers={"Cookie": hook.login_cookie("ada")}):
        from app.edge.authorization import reading_grant

        before = time.time()
        grant = reading_grant(("team-red",))
    assert grant.subject == "ada" and grant.subscribe == ("team-*",) and grant.publish == ()
    assert before + 30 <= grant.expires_at <= time.time() + 30


def test_publishing_is_not_the_hooks_to_decide(tmp_path, hook):
    """Without a JWT key, publishing is PUBLISH_TOKEN's as before: the hook is never asked about it."""
    client = make_client(tmp_path, hook, PUBLISH_TOKEN="p" * 32)
    assert client.post("/messages", json={"room": "team-red", "text": "x"}).status_code == 401
    assert client.post("/messages", json={"room": "team-red", "text": "x"},
                       headers={"Authorization": "Bearer " + "p" * 32}).status_code == 201
    assert hook.calls == []


def test_answers_are_cached_per_credentials_and_rooms(tmp_path, hook):
    client = make_client(tmp_path, hook, AUTH_SUBSCRIBE_CACHE_SECONDS="60")
    ada, bob = hook.login_cookie("ada"), hook.login_cookie("bob")
    for _ in range(3):
        assert history(client, "team-red", cookie=ada).status_code == 200
        assert history(client, "team-red", cookie=bob).status_code == 403
        assert history(client, "team-red").status_code == 401  # a refusal is an answer: cached too
    assert len(hook.calls) == 3
    assert history(client, "team-red", "team-blue", cookie=ada).status_code == 200  # other rooms: asked
    assert len(hook.calls) == 4


def test_without_a_cache_every_read_asks(tmp_path, hook):
    client = make_client(tmp_path, hook)
    cookie = hook.login_cookie("ada")
    for _ in range(3):
        assert history(client, "team-red", cookie=cookie).status_code == 200
    assert len(hook.calls) == 3


def test_a_failure_is_never_cached(tmp_path, hook):
    client = make_client(tmp_path, hook, AUTH_SUBSCRIBE_CACHE_SECONDS="60")
    cookie = hook.login_cookie("ada")
    hook.behaviour = "error"
    assert history(client, "team-red", cookie=cookie).status_code == 503
    hook.behaviour = "normal"
    assert history(client, "team-red", cookie=cookie).status_code == 200


def test_room_presence_asks_the_hook_and_the_room_list_shows_public_rooms_only(tmp_path, hook):
    client = make_client(tmp_path, hook, PUBLIC_ROOMS="lobby")
    cookie = hook.login_cookie("ada")
    assert client.get("/rooms/team-red").status_code == 401
    assert client.get("/rooms/team-red", headers={"Cookie": cookie}).status_code == 200
    asked = len(hook.calls)
    assert client.get("/rooms", headers={"Cookie": cookie}).status_code == 200
    assert len(hook.calls) == asked  # not asked room by room


# -- beside JWTs -----------------------------------------------------------------------------------------------

@pytest.fixture
def both(tmp_path, hook):
    return make_client(tmp_path, hook, AUTH_JWT_SECRET=SECRET)


def test_a_valid_token_decides_without_the_hook(both, hook):
    token = mint(claims(["team-red"]))
    assert history(both, "team-red", Authorization=f"Bearer {token}").status_code == 200
    assert history(both, "team-blue", Authorization=f"Bearer {token}").status_code == 403  # the token's scope
    assert hook.calls == []


def test_an_invalid_token_is_401_and_the_hook_is_not_asked(both, hook):
    """A client that sent a token meant to be someone: an expired one is renewed, not swapped for a session."""
    cookie = hook.login_cookie("ada")
    expired = mint(claims(["team-red"], expires_in=-10))
    reply = history(both, "team-red", cookie=cookie, Authorization=f"Bearer {expired}")
    assert reply.status_code == 401 and reply.json["message"] == "the token has expired"
    assert hook.calls == []


def test_without_a_token_the_hook_decides_and_publishing_still_needs_a_token(both, hook):
    cookie = hook.login_cookie("ada")
    assert history(both, "team-red", cookie=cookie).status_code == 200
    assert history(both, "team-red").status_code == 401
    assert len(hook.calls) == 2
    assert both.post("/messages", json={"room": "team-red", "text": "x"},
                     headers={"Cookie": cookie}).status_code == 401


# -- the OpenAPI document ------------------------------------------------------------------------------------

@pytest.mark.parametrize("jwt", [False, True], ids=["hook-alone", "hook-beside-jwts"])
def test_the_document_states_the_hooks_answers(tmp_path, hook, jwt):
    import schemathesis

    client = make_client(tmp_path, hook, **({"AUTH_JWT_SECRET": SECRET} if jwt else {}))
    spec = client.get("/openapi.json").json
    for path in ("/messages", "/messages/history", "/rooms/{room}", "/rooms/{room}/subscribers"):
        read = spec["paths"][path]["get"]
        assert {} in read["security"] and (("bearerJWT" in str(read["security"])) == jwt)
        assert "subscribe hook answered 401" in read["responses"]["401"]["description"]
        assert "cover every private room" in read["responses"]["403"]["description"]
        assert "subscribe hook did not answer" in read["responses"]["503"]["description"]
        assert "Retry-After" in read["responses"]["503"]["headers"]
    post = spec["paths"]["/messages"]["post"]
    assert ("security" in post) == jwt  # the hook never decides publishing
    assert len(list(schemathesis.openapi.from_dict(spec).get_all_operations())) == 7


def test_a_kept_refusal_is_raised_afresh_each_time():
    """Re-raising one kept exception would chain every raise's frames onto it for as long as the cache kept it."""
    from app.edge.errors import ApiError

    answer = Answer(refusal=ApiError(403, "no", headers={"WWW-Authenticate": "Bearer"}))
    raised = []
    for _ in range(2):
        with pytest.raises(ApiError) as refused:
            answer.result()
        raised.append(refused.value)
    assert raised[0] is not raised[1] and answer.refusal.__traceback__ is None
    assert (raised[1].code, raised[1].message, raised[1].headers) == (403, "no", {"WWW-Authenticate": "Bearer"})


def test_the_hook_alone_without_a_publish_token_warns_that_anyone_may_publish(tmp_path, hook, caplog):
    with caplog.at_level("WARNING", logger="app.edge.authorization"):
        make_client(tmp_path, hook)
    assert "anyone who reaches the server may publish" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="app.edge.authorization"):
        make_client(tmp_path, hook, PUBLISH_TOKEN="p" * 32)
    assert caplog.text == ""
