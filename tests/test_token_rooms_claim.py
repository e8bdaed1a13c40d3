"""A token's ``rooms`` claim may leave ``subscribe`` or ``publish`` out: it then opens only the other side.

docs/security.md once said such a token was invalid, while the server read a
subscribe-only token (the ES256 example there mints one) and published with a
publish-only one; these hold what the docs now say.
"""
from __future__ import annotations

import pytest

from app import create_app
from tests.support.tokens import SECRET, claims, mint

ROOM = "team-red"


@pytest.fixture
def client(sqlite_path):
    return create_app({"SQLITE_PATH": sqlite_path, "AUTH_JWT_SECRET": SECRET}).test_client()


def read(client, token: str):
    return client.get(f"/messages/history?room={ROOM}", headers={"Authorization": f"Bearer {token}"})


def publish(client, token: str):
    return client.post("/messages", json={"room": ROOM, "text": "hi"}, headers={"Authorization": f"Bearer {token}"})


# Payloads are made when the test runs, not at collection: their exp is minutes away, and a whole-suite
# run reaches these tests later than that.
@pytest.mark.parametrize("make_payload, reads, publishes", [
    (lambda: claims(subscribe=["team-*"]), 200, 403),
    (lambda: claims(publish=["team-*"]), 403, 201),
    (lambda: claims(subscribe=["team-*"], publish=["team-*"]), 200, 201),
    (lambda: claims(), 403, 403),  # "rooms": {}
    (lambda: claims() | {"rooms": {"subscribe": ["team-*"], "moderate": ["*"]}}, 200, 403),  # other keys ignored
    (lambda: {key: value for key, value in claims().items() if key != "rooms"}, 403, 403),  # no rooms claim
], ids=["subscribe-only", "publish-only", "both", "empty-rooms", "unknown-key-ignored", "no-rooms-claim"])
def test_a_rooms_claim_opens_only_the_sides_it_names(client, make_payload, reads, publishes):
    token = mint(make_payload())
    assert read(client, token).status_code == reads
    assert publish(client, token).status_code == publishes


@pytest.mark.parametrize("rooms", [["*"], {"subscribe": "*"}, {"publish": [""]}, {"subscribe": ["*"] * 257}],
                         ids=["not-an-object", "not-a-list", "empty-pattern", "over-256-patterns"])
def test_a_malformed_rooms_claim_makes_the_token_invalid(client, rooms):
    token = mint(claims() | {"rooms": rooms})
    for reply in (read(client, token), publish(client, token)):
        assert reply.status_code == 401
        assert 'error="invalid_token"' in reply.headers["WWW-Authenticate"]
