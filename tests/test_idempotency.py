"""``Idempotency-Key`` on ``POST /messages``, through Flask's test client on SQLite.

The stores' half (the unique index, races between processes) is in
tests/test_idempotent_store.py; real gunicorn, both stores and two nodes in
tests/test_idempotency_live.py.
"""
from __future__ import annotations

import pytest

from app import create_app
from app.stores.base import WriteOutcomeUnknown
from tests.support.tokens import SECRET, claims, mint

MESSAGE = {"room": "orders", "text": "order 42 shipped", "event": "shipping"}


def publish(client, body: dict, key: str | None = None, **headers: str):
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post("/messages", json=body, headers=headers)


def stored(client, room: str = "orders") -> list[dict]:
    return client.get(f"/messages/history?room={room}").json["messages"]


def test_the_same_key_again_stores_nothing_and_answers_the_same_message(client):
    first = publish(client, MESSAGE, "order-42-shipped")
    again = publish(client, MESSAGE, "order-42-shipped")

    assert first.status_code == again.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json == first.json  # the same id, text, event and createdAt
    assert stored(client) == [first.json]


def test_the_same_message_is_the_same_after_validation_so_a_default_event_matches_an_explicit_one(client):
    first = publish(client, {"room": "orders", "text": "hi"}, "k1")
    again = publish(client, {"text": "hi", "event": "message", "room": "orders"}, "k1")

    assert again.status_code == 201 and again.json == first.json


@pytest.mark.parametrize("change", [{"text": "order 43 shipped"}, {"event": "other"}, {"room": "invoices"}],
                         ids=["text", "event", "room"])
def test_the_same_key_with_a_different_message_is_refused_with_422_and_stores_nothing(client, change):
    first = publish(client, MESSAGE, "order-42")
    refused = publish(client, {**MESSAGE, **change}, "order-42")

    assert refused.status_code == 422
    assert refused.json["errors"] == {"Idempotency-Key": ["reused with a different message"]}
    assert set(refused.json) == {"code", "status", "message", "errors"}
    assert stored(client) == [first.json] and stored(client, "invoices") == []


def test_other_keys_and_no_key_publish_as_usual(client):
    answers = [publish(client, MESSAGE, key) for key in ("a", "b", None, None)]

    assert [answer.status_code for answer in answers] == [201] * 4
    assert len({answer.json["id"] for answer in answers}) == 4
    assert not any("Idempotent-Replayed" in answer.headers for answer in answers)


@pytest.mark.parametrize("key", [
    "", " ", "two words", "tab\there", "x" * 256, "caf\u00e9", "nul\x00", "del\x7f", "line\nbreak", "k1,k2", ",",
], ids=["empty", "space", "inner-space", "tab", "256-chars", "non-ascii", "nul", "del", "newline",
        "comma", "only-comma"])
def test_a_malformed_key_is_refused_with_400_and_stores_nothing(client, key):
    refused = client.post("/messages", json=MESSAGE, environ_overrides={"HTTP_IDEMPOTENCY_KEY": key})

    assert refused.status_code == 400
    assert refused.json["errors"] == {"Idempotency-Key": ["malformed"]}
    assert stored(client) == []


def test_a_malformed_key_is_refused_before_the_body_is_looked_at(client):
    refused = client.post("/messages", data="not json", content_type="application/json",
                          environ_overrides={"HTTP_IDEMPOTENCY_KEY": "a b"})
    assert refused.status_code == 400 and "Idempotency-Key" in refused.json["message"]


@pytest.mark.parametrize("key", ["x" * 255, "!", "~", '"8e03978e-40d5-43e8-bc93-6894a57f9324"', "a;b=c+d-e"],
                         ids=["255-chars", "bang", "tilde", "draft-quoted", "punctuation"])
def test_any_visible_ascii_key_but_a_comma_up_to_255_characters_is_taken_as_sent(client, key):
    first = publish(client, MESSAGE, key)
    again = publish(client, MESSAGE, key)
    assert first.status_code == again.status_code == 201 and again.json["id"] == first.json["id"]


def test_a_quoted_key_and_its_bare_content_are_two_keys(client):
    """The key is the value as sent (see app/edge/idempotency.py): a publisher sends it the same way each time."""
    assert publish(client, MESSAGE, '"k"').json["id"] != publish(client, MESSAGE, "k").json["id"]


def test_an_invalid_message_with_a_key_is_422_and_does_not_take_the_key(client):
    assert publish(client, {"room": "orders"}, "k").status_code == 422
    assert publish(client, MESSAGE, "k").headers.get("Idempotent-Replayed") is None


# -- scope: per publisher when tokens say who publishes ---------------------------

@pytest.fixture
def private_client(sqlite_path):
    return create_app({"SQLITE_PATH": sqlite_path, "AUTH_JWT_SECRET": SECRET, "PUBLIC_ROOMS": "orders"}).test_client()


def bearer(subject: str | None) -> dict[str, str]:
    payload = claims(["*"], ["*"])
    if subject is None:
        del payload["sub"]
    else:
        payload["sub"] = subject
    return {"Authorization": f"Bearer {mint(payload)}"}


def test_with_private_rooms_a_key_belongs_to_the_tokens_subject(private_client):
    alice = publish(private_client, MESSAGE, "1", **bearer("alice"))
    alice_again = publish(private_client, MESSAGE, "1", **bearer("alice"))
    bob = publish(private_client, MESSAGE, "1", **bearer("bob"))
    bob_other = publish(private_client, {**MESSAGE, "text": "bob's own"}, "2", **bearer("bob"))
    alice_other = publish(private_client, {**MESSAGE, "text": "alice's own"}, "2", **bearer("alice"))

    assert alice_again.json["id"] == alice.json["id"] and alice_again.headers["Idempotent-Replayed"] == "true"
    assert bob.status_code == 201 and bob.json["id"] != alice.json["id"] and "Idempotent-Replayed" not in bob.headers
    # Bob's key "2" neither blocks nor reveals Alice's.
    assert bob_other.status_code == alice_other.status_code == 201
    assert len(stored(private_client)) == 4


def test_tokens_without_a_subject_share_one_scope(private_client):
    first = publish(private_client, MESSAGE, "k", **bearer(None))
    again = publish(private_client, MESSAGE, "k", **bearer(None))
    assert again.headers["Idempotent-Replayed"] == "true" and again.json == first.json


def test_a_subject_with_a_lone_surrogate_is_refused_and_nothing_is_stored(private_client):
    """A JSON sub may hold a lone surrogate, which UTF-8 cannot encode: such a token is refused (issue 16's
    hostile pass: as a stream's identity it broke presence), so the key's digest never meets one."""
    refused = publish(private_client, MESSAGE, "k", **bearer("\ud800"))
    assert refused.status_code == 401 and "lone surrogate" in refused.json["message"]
    assert stored(private_client) == []


# -- the publisher's safe retry --------------------------------------------------

def test_an_unconfirmed_write_with_a_key_tells_the_publisher_to_retry_with_it(app, client, monkeypatch):
    def unconfirmed(*args):
        raise WriteOutcomeUnknown("MongoDB insert unconfirmed", "6b1497e65f4f98d4ed251d38")

    monkeypatch.setattr(app.extensions["sse"].store, "append_once", unconfirmed)
    answer = publish(client, MESSAGE, "k")

    assert answer.status_code == 503 and answer.headers["Retry-After"] == "2"
    assert "retry with the same Idempotency-Key" in answer.json["message"]
    assert answer.json["errors"] == {"id": ["6b1497e65f4f98d4ed251d38"]}


def test_the_document_describes_the_header_the_replay_and_both_refusals(client):
    post = client.get("/openapi.json").json["paths"]["/messages"]["post"]
    [parameter] = [p for p in post["parameters"] if p["name"] == "Idempotency-Key"]

    assert parameter["in"] == "header" and parameter["required"] is False
    assert parameter["schema"] == {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-+\\--~]+$"}
    assert "Idempotent-Replayed" in post["responses"]["201"]["headers"]
    assert "Idempotency-Key" in post["responses"]["400"]["description"]
    assert "Idempotency-Key" in post["responses"]["422"]["description"]


def test_a_page_on_an_allowed_origin_may_send_the_key_and_read_the_replay_header(sqlite_path):
    origin = "https://publisher.example"
    client = create_app({"SQLITE_PATH": sqlite_path, "CORS_ORIGINS": origin}).test_client()
    preflight = client.options("/messages", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, idempotency-key"})
    publish(client, MESSAGE, "k", Origin=origin)
    replay = publish(client, MESSAGE, "k", Origin=origin)

    assert set(preflight.headers["Access-Control-Allow-Headers"].split(", ")) == {"content-type", "idempotency-key"}
    assert "Idempotent-Replayed" in replay.headers["Access-Control-Expose-Headers"]
