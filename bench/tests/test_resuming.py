"""The benchmark's resuming client follows Centrifugo's position and asks to recover from it.

bench/ssebench counts a peer's lost messages in the reconnect storm only if its
client resumes the way that peer's protocol says; for Centrifugo (no SSE `id:`)
that is the epoch and offset in `cf_connect`. resuming.py and sserequest.py need
only the standard library, so these run in the server's venv too (`make test`).
"""

import asyncio
import json
from urllib.parse import parse_qs, urlsplit

from ssebench.resuming import (
    DEFAULT_RETRY_MS,
    Connection,
    ResumingClients,
    ResumingStream,
    centrifugo_resume_path,
    follow_centrifugo_position,
)
from ssebench.sserequest import sse_request

FIRST_PATH = "/connection/uni_sse?cf_connect=%7B%22subs%22%3A%7B%22room-1%22%3A%7B%7D%7D%7D"


def _connect_request(path: str) -> dict:
    return json.loads(parse_qs(urlsplit(path).query)["cf_connect"][0])


def test_position_follows_publications_and_recovered_batches():
    stream = ResumingStream(0, FIRST_PATH)
    follow_centrifugo_position(stream, b'data: {"connect":{"subs":{"room-1":{"recoverable":true,"epoch":"E1"}}}}')
    assert (stream.epoch, stream.offset) == ("E1", 0)
    follow_centrifugo_position(stream, b'data: {"channel":"room-1","pub":{"data":{},"offset":7}}')
    # A reconnect's reply carries the recovered publications: the highest offset wins.
    follow_centrifugo_position(
        stream,
        b'data: {"connect":{"subs":{"room-1":{"epoch":"E1","recovered":true,'
        b'"publications":[{"offset":8},{"offset":9}],"offset":9}}}}',
    )
    assert (stream.epoch, stream.offset) == ("E1", 9)


def test_a_new_epoch_starts_the_count_again():
    stream = ResumingStream(0, FIRST_PATH)
    follow_centrifugo_position(stream, b'data: {"channel":"room-1","pub":{"offset":40,"epoch":"E1"}}')
    follow_centrifugo_position(stream, b'data: {"connect":{"subs":{"room-1":{"epoch":"E2","offset":3}}}}')
    assert (stream.epoch, stream.offset) == ("E2", 3)


def test_resume_path_asks_to_recover_from_the_position():
    path = centrifugo_resume_path(FIRST_PATH, "E1", 9)
    assert path.startswith("/connection/uni_sse?cf_connect=")
    assert _connect_request(path) == {"subs": {"room-1": {"recover": True, "epoch": "E1", "offset": 9}}}


def test_without_an_epoch_the_first_request_is_sent_again():
    assert _connect_request(centrifugo_resume_path(FIRST_PATH, None, 0)) == {"subs": {"room-1": {}}}


def _resuming_clients(resume: str) -> ResumingClients:
    clients = ResumingClients(asyncio.new_event_loop())
    clients.host, clients.port, clients.resume = "127.0.0.1", 8080, resume
    return clients


def test_a_stream_sends_last_event_id_once_it_has_an_id_and_only_in_that_style():
    stream = ResumingStream(0, "/messages?room=r")
    clients = _resuming_clients("last-event-id")
    assert b"Last-Event-ID" not in clients.request_for(stream)
    stream.last_id = "7-12"
    assert clients.request_for(stream) == (
        b"GET /messages?room=r HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAccept: text/event-stream\r\n"
        b"Cache-Control: no-cache\r\nLast-Event-ID: 7-12\r\n\r\n"
    )
    # Centrifugo's position goes in cf_connect, never in a header.
    assert b"Last-Event-ID" not in _resuming_clients("centrifugo").request_for(stream)


def test_the_hostile_readers_request_carries_the_headers_it_is_given():
    request = sse_request("127.0.0.1", 9, "/.well-known/mercure?topic=r", {"Last-Event-ID": "earliest"})
    assert request.startswith(b"GET /.well-known/mercure?topic=r HTTP/1.1\r\nHost: 127.0.0.1:9\r\n")
    assert request.endswith(b"\r\nLast-Event-ID: earliest\r\n\r\n")


def _fed(clients: ResumingClients, stream: ResumingStream, body: bytes) -> None:
    """Give a connection of ``stream`` a 200 head and ``body`` (not chunked), as the server would."""
    connection = Connection(clients, stream, b"", reconnect=False)
    connection.data_received(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + body)


def test_with_honour_retry_a_dropped_stream_waits_its_last_retry_as_eventsource_does():
    """The storm-retry scenario: the wave a server's retry: lines shape (RETRY_JITTER, issue 15)."""
    clients = _resuming_clients("last-event-id")
    stream = ResumingStream(0, "/messages?room=r")
    clients.honour_retry = True
    assert clients.reconnect_delay(stream) == DEFAULT_RETRY_MS / 1000  # nothing sent yet: the browsers' 3 s
    _fed(clients, stream, b"retry: 2817\n\nid: 1-1\ndata: {}\n\n")
    assert (stream.retry_ms, stream.last_id) == (2817, "1-1")
    assert clients.reconnect_delay(stream) == 2.817
    _fed(clients, stream, b"retry: 100\n\n")  # a later one replaces it
    assert clients.reconnect_delay(stream) == 0.1


def test_without_honour_retry_a_dropped_stream_comes_back_at_once():
    clients = _resuming_clients("last-event-id")
    stream = ResumingStream(0, "/messages?room=r")
    _fed(clients, stream, b"retry: 2817\n\n")
    assert stream.retry_ms == 2817
    assert clients.reconnect_delay(stream) == 0.0
