"""Each stream's opening ``retry:`` drawn around RETRY_MS (RETRY_JITTER): a dead worker's clients come back spread.

Issue 15 part 5: after a worker died, all its clients came back after the same
``retry:``, in one wave.
"""
from __future__ import annotations

import http.client
import random
import statistics

import pytest

from app import create_app
from app.config import ConfigError, Settings
from app.delivery.events import spread_retry_ms
from tests.support.live import LiveServer

STREAMS = 40


def _bounds(retry_ms: int, jitter: float) -> tuple[int, int]:
    return round(retry_ms * (1 - jitter)), round(retry_ms * (1 + jitter))


def _assert_spread_and_bounded(values: list[int], retry_ms: int, jitter: float) -> None:
    low, high = _bounds(retry_ms, jitter)
    assert all(low <= value <= high for value in values), (low, high, sorted(values))
    # Drawn evenly over [low, high]: 40 draws all in one tenth of it would be a 1-in-10^38 event.
    assert max(values) - min(values) > (high - low) / 10, sorted(values)
    assert len(set(values)) > len(values) // 2, sorted(values)


# -- the draw ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("retry_ms, jitter, draw, expected", [
    (3000, 0.25, 0.0, 2250),
    (3000, 0.25, 0.5, 3000),
    (3000, 0.25, 1 - 2**-53, 3750),  # random.random()'s largest value
    (3000, 0.0, 0.0, 3000),
    (3000, 0.0, 0.99, 3000),
    (3000, 1.0, 0.0, 0),
    (3000, 1.0, 1 - 2**-53, 6000),
    (0, 0.25, 0.9, 0),
], ids=["lowest", "middle", "highest", "off-low", "off-high", "full-low", "full-high", "retry-0"])
def test_the_drawn_retry_is_retry_ms_times_one_plus_or_minus_the_jitter(retry_ms, jitter, draw, expected):
    assert spread_retry_ms(retry_ms, jitter, lambda: draw) == expected


def test_drawn_retries_cover_the_whole_range_evenly():
    generator = random.Random(15)
    drawn = [spread_retry_ms(3000, 0.25, generator.random) for _ in range(4000)]
    assert min(drawn) >= 2250 and max(drawn) <= 3750
    assert min(drawn) < 2300 and max(drawn) > 3700
    # Even: each quarter of the range holds about a quarter of the draws.
    quarters = [sum(1 for value in drawn if 2250 + 375 * q <= value < 2250 + 375 * (q + 1)) for q in range(4)]
    assert all(850 < count < 1150 for count in quarters), quarters
    assert abs(statistics.mean(drawn) - 3000) < 30


# -- the setting ------------------------------------------------------------------------------------

def test_retry_jitter_defaults_to_a_quarter_and_reads_a_fraction():
    assert Settings().retry_jitter == 0.25
    assert Settings.from_env({"RETRY_JITTER": "0"}).retry_jitter == 0.0
    assert Settings.from_env({"RETRY_JITTER": "1"}).retry_jitter == 1.0
    assert Settings.from_env({"RETRY_JITTER": " 0.1 "}).retry_jitter == 0.1


@pytest.mark.parametrize("value", ["-0.1", "1.01", "25%", "nan", "inf", "a quarter"])
def test_a_bad_retry_jitter_stops_start_up_with_a_sentence_naming_it(value):
    with pytest.raises(ConfigError, match=r"^RETRY_JITTER=.* is not valid: must be a fraction from 0 to 1"):
        Settings.from_env({"RETRY_JITTER": value})


# -- the stream (Flask's test client) -----------------------------------------------------------------

def _opening_retry(client) -> int:
    reply = client.get("/messages?room=r")
    assert reply.status_code == 200
    first = next(reply.response)
    reply.close()
    assert first.startswith(b"retry: ") and first.endswith(b"\n\n"), first
    return int(first[len(b"retry: "):-2])


def test_each_streams_opening_retry_is_drawn_around_retry_ms(sqlite_path):
    client = create_app({"SQLITE_PATH": sqlite_path, "RETRY_MS": "2000", "RETRY_JITTER": "0.5"}).test_client()
    _assert_spread_and_bounded([_opening_retry(client) for _ in range(STREAMS)], 2000, 0.5)


def test_with_retry_jitter_0_every_stream_gets_exactly_retry_ms(sqlite_path):
    """The control: the spread above comes from the setting."""
    client = create_app({"SQLITE_PATH": sqlite_path, "RETRY_MS": "2000", "RETRY_JITTER": "0"}).test_client()
    assert {_opening_retry(client) for _ in range(STREAMS)} == {2000}


# -- real gunicorn, both stores ---------------------------------------------------------------------

def _opening_retry_live(server: LiveServer) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", "/messages?room=jitter", headers={"Accept": "text/event-stream"})
        response = connection.getresponse()
        assert response.status == 200
        line = response.readline()
        assert line.startswith(b"retry: "), line
        return int(line[len(b"retry: "):])
    finally:
        connection.close()


@pytest.mark.slow
def test_streams_on_real_gunicorn_get_spread_and_bounded_retries(start_server, store_env):
    server = start_server(RETRY_MS="3000", **store_env)  # RETRY_JITTER: its default, 0.25
    _assert_spread_and_bounded([_opening_retry_live(server) for _ in range(STREAMS)], 3000, 0.25)


@pytest.mark.slow
def test_on_real_gunicorn_retry_jitter_0_turns_the_spread_off(start_server, store_env):
    server = start_server(RETRY_MS="3000", RETRY_JITTER="0", **store_env)
    assert {_opening_retry_live(server) for _ in range(STREAMS)} == {3000}
