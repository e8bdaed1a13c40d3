"""Schemathesis against real gunicorn, driven by the server's own /openapi.json.

Every operation is fuzzed with valid data (positive mode: must be accepted
and answered as documented) and invalid data (negative mode: must be
rejected with a documented 4xx), with all of schemathesis's built-in checks:
no 5xx, documented status codes, content types, headers and bodies, the
token actually enforced (ignored_auth), wrong methods answered 405.

A second run does the same with private rooms on (AUTH_JWT_SECRET): the
document then declares the JWT in a header, a cookie or the query, and
``ignored_auth`` checks that every operation refuses a request without it.
A third with the subscribe hook alone (AUTH_SUBSCRIBE_URL, tests/support/hook_app.py):
the document's 401/403/503 for reads, and the hook asked for every read.

The SSE endpoint never ends. Schemathesis reads an event stream only until
the request timeout passes, then judges the head it got (status, content
type, headers), so the stream stays in the run; the timeout is kept short
and heartbeats frequent so that each stream case costs well under a second.
"""
from __future__ import annotations

import sqlite3

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

from tests.support.tokens import SECRET, claims, mint

TOKEN = "fuzz-token-0123456789abcdef"
# Examples per operation and mode; six operations, two modes.
MAX_EXAMPLES = 40
STREAM_READ_SECONDS = 0.4
# Invalid input may also be refused for its size: 413 (body) and 414 (query
# string) are rejections as good as 400/422, and both are documented.
CONFIG = schemathesis.Config.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": [
    "400", "401", "405", "413", "414", "415", "422", "429"]}}})


def unique_idempotency_key(case, number: int) -> None:
    """Make a generated Idempotency-Key unique to its case, still schema-valid (visible ASCII, at most 255).

    A valid request is refused with 422 when an earlier case used its key for
    another message -- right for the server, but hypothesis reuses short keys
    ("0") all the time, and the positive check would call it a rejection.
    """
    if case.headers and "Idempotency-Key" in case.headers:
        case.headers["Idempotency-Key"] = f"{case.headers['Idempotency-Key'][:240]}.{number}"


def _fuzz(operation, mode: GenerationMode, base_url: str, counts: dict[str, int], token: str = TOKEN) -> None:
    raw = operation.definition.raw
    if mode is GenerationMode.NEGATIVE and not (raw.get("parameters") or raw.get("requestBody")):
        return  # nothing to make invalid
    key = f"{operation.method.upper()} {operation.path} {mode.value}"
    counts[key] = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=False,
              phases=[Phase.explicit, Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck))
    def run(case) -> None:
        counts[key] += 1
        headers = {"Authorization": f"Bearer {token}"}
        if mode is GenerationMode.POSITIVE:
            unique_idempotency_key(case, counts[key])
        if mode is GenerationMode.POSITIVE and _pages_both_ways(case):
            # OpenAPI 3.0 cannot say "not both" of two query parameters (the
            # document says it in words: a 400): hold the server to that here.
            response = case.call(base_url=base_url, headers=headers, timeout=STREAM_READ_SECONDS)
            assert response.status_code == 400 and set(response.json()["errors"]) == {"after", "before"}, \
                response.text
            return
        case.call_and_validate(base_url=base_url, headers=headers, timeout=STREAM_READ_SECONDS)

    run()


def _pages_both_ways(case) -> bool:
    """Say whether a history case names both ``after`` and ``before`` (each non-empty: empty is absent)."""
    query = case.query or {}
    return case.operation.path == "/messages/history" and all(query.get(name) for name in ("after", "before"))


@pytest.mark.slow
def test_schemathesis_finds_no_5xx_and_no_departure_from_the_spec(start_server, sqlite_path, capsys):
    server = start_server(PUBLISH_TOKEN=TOKEN, PUBLISH_RATE="100000/minute", HEARTBEAT_SECONDS="0.1",
                          MAX_TEXT_CHARS="200")
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json", config=CONFIG)
    operations = [result.ok() for result in schema.get_all_operations()]
    # Schemathesis leaves out the document's own path; tests/test_openapi.py covers it.
    assert {f"{op.method.upper()} {op.path}" for op in operations} == {
        "POST /messages", "GET /messages", "GET /messages/history", "GET /rooms", "GET /rooms/{room}",
        "GET /rooms/{room}/subscribers"}

    counts: dict[str, int] = {}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(operation, mode, server.url, counts)

    with capsys.disabled():
        print("\nschemathesis examples:", counts)
    assert counts["POST /messages positive"] >= MAX_EXAMPLES // 2
    assert counts["POST /messages negative"] >= MAX_EXAMPLES // 2
    stored = sqlite3.connect(sqlite_path).execute("SELECT count(*) FROM messages").fetchone()[0]
    assert stored > 0, "positive POST cases must have been stored"


@pytest.mark.slow
def test_schemathesis_with_private_rooms_finds_no_5xx_and_no_ignored_auth(start_server, sqlite_path, capsys):
    server = start_server(AUTH_JWT_SECRET=SECRET, PUBLISH_RATE="100000/minute", HEARTBEAT_SECONDS="0.1",
                          MAX_TEXT_CHARS="200")
    token = mint(claims(["*"], ["*"], expires_in=3600))
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json", config=CONFIG)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert all(operation.definition.raw.get("security") for operation in operations
               if operation.path.startswith("/messages"))

    counts: dict[str, int] = {}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(operation, mode, server.url, counts, token)

    with capsys.disabled():
        print("\nschemathesis examples, private rooms:", counts)
    assert counts["POST /messages positive"] >= MAX_EXAMPLES // 2
    stored = sqlite3.connect(sqlite_path).execute("SELECT count(*) FROM messages").fetchone()[0]
    assert stored > 0, "positive POST cases with the token must have been stored"


@pytest.mark.slow
def test_schemathesis_with_the_subscribe_hook_finds_no_5xx_and_no_departure_from_the_spec(
        start_server, sqlite_path, capsys):
    from tests.support.hook_app import HookApp

    hook = HookApp().start()
    hook.bearer_users[TOKEN] = "service"  # the application's own token; PUBLISH_TOKEN is the same string
    try:
        server = start_server(AUTH_SUBSCRIBE_URL=hook.hook_url, PUBLISH_TOKEN=TOKEN, PUBLISH_RATE="100000/minute",
                              HEARTBEAT_SECONDS="0.1", MAX_TEXT_CHARS="200")
        hook.calls.clear()
        schema = schemathesis.openapi.from_url(server.url + "/openapi.json", config=CONFIG)
        operations = [result.ok() for result in schema.get_all_operations()]
        counts: dict[str, int] = {}
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _fuzz(operation, mode, server.url, counts)
        with capsys.disabled():
            print("\nschemathesis examples, subscribe hook:", counts, f"hook calls: {len(hook.calls)}")
        assert len(hook.calls) >= MAX_EXAMPLES  # the reads were decided by the hook
        assert all(call["authorization"] == f"Bearer {TOKEN}" for call in hook.calls)
    finally:
        hook.stop()
