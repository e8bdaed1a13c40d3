"""Fault 3: a reader that stops reading is cut off; memory stays bounded; others are not slowed.

The reader opens a stream with a tiny receive buffer and stops reading while
large messages flow to its room. The server's write to it blocks once the
socket buffers are full; its queue stops at STREAM_QUEUE_LIMIT events; after
STREAM_WRITE_TIMEOUT_SECONDS without finishing a write the server resets the
connection. The reader then drains what reached it and reconnects with
Last-Event-ID: it resumes exactly, or gets ``reset`` and the window when the
store has evicted its resume point meanwhile.
"""
from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
import requests

from tests.support.eventsource import EventSourceClient, EventStreamParser
from tests.support.faults import metric, stored_ids
from tests.support.waiting import wait_until

ROOM = "slow"
MESSAGES = 500
TEXT_CHARS = 50_000
WRITE_TIMEOUT = 4.0  # long enough that an unbounded queue would grow by ~15 MiB before the cut
QUEUE_LIMIT = 50


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _open_stalled_reader(port: int) -> tuple[socket.socket, bytes]:
    """Open a stream with a small receive buffer, read its head, and stop reading."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /messages?room={ROOM} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(1024)
    return sock, received.split(b"\r\n\r\n", 1)[1]


def _drain(sock: socket.socket, body_start: bytes, parser: EventStreamParser, timeout: float = 10) -> list:
    """Read what reached the stalled reader until the server's close, and parse it."""
    sock.settimeout(timeout)
    received = [body_start]
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received.append(chunk)
    sock.close()
    return parser.feed(b"".join(received))


@pytest.mark.slow
@pytest.mark.parametrize("capped_max_messages, expect_reset", [(100_000, False), (100, True)],
                         ids=["resumes-exactly", "evicted-gets-reset"])
def test_stalled_reader_is_cut_and_resumes_without_slowing_others(start_server, sqlite_path,
                                                                  capped_max_messages, expect_reset):
    server = start_server(
        WEB_CONCURRENCY="1", HEARTBEAT_SECONDS="1", RETRY_MS="200", MAX_TEXT_CHARS=str(TEXT_CHARS),
        STREAM_QUEUE_LIMIT=str(QUEUE_LIMIT), STREAM_WRITE_TIMEOUT_SECONDS=str(WRITE_TIMEOUT),
        CAPPED_MAX_MESSAGES=str(capped_max_messages), CAPPED_SIZE_BYTES=str(2**31),
    )
    (worker,) = server.worker_pids()
    text = "x" * (TEXT_CHARS - 10)

    stalled, body_start = _open_stalled_reader(server.port)
    healthy = EventSourceClient("127.0.0.1", server.port, ROOM)
    acked_at: dict[str, float] = {}
    rss = [_rss_bytes(worker)]

    async def publish_while_one_reader_stalls() -> float:
        task = asyncio.ensure_future(healthy.run())
        await asyncio.wait_for(healthy.connected.wait(), 10)
        session = requests.Session()
        for number in range(MESSAGES):
            reply = await asyncio.to_thread(session.post, server.url + "/messages",
                                            json={"room": ROOM, "text": f"{number} {text}"}, timeout=10)
            assert reply.status_code == 201
            acked_at[reply.json()["id"]] = time.monotonic()
            rss.append(_rss_bytes(worker))
        cut_after = await asyncio.to_thread(
            wait_until, lambda: metric(server.url, "sse_open_streams") == 1, WRITE_TIMEOUT + 10)
        await asyncio.to_thread(wait_until, lambda: len(healthy.messages) == MESSAGES, 10)
        healthy.stop()
        await task
        return cut_after

    asyncio.run(publish_while_one_reader_stalls())
    # The worker keeps the store's window in memory by design (bounded by the
    # store's own bound: here up to every message, or the last 100).
    window_bytes = metric(server.url, "sse_window_bytes")
    stalled_drops = metric(server.url, "sse_streams_dropped_total", reason="stalled")
    dropped = stalled_drops + metric(server.url, "sse_streams_dropped_total", reason="slow")

    # The stalled reader drains what reached it, then reconnects like EventSource.
    parser = EventStreamParser()
    before_cut = _drain(stalled, body_start, parser)
    resumed = EventSourceClient("127.0.0.1", server.port, ROOM, parser=parser)

    async def resume() -> None:
        task = asyncio.ensure_future(resumed.run())
        expected = len(stored_ids(sqlite_path, ROOM)) if expect_reset else MESSAGES - len(before_cut)
        await asyncio.to_thread(wait_until, lambda: len(resumed.messages) >= expected, WRITE_TIMEOUT + 10)
        await asyncio.sleep(0.3)  # a quiet period: anything extra (a duplicate) would arrive now
        resumed.stop()
        await task

    asyncio.run(resume())
    stored = stored_ids(sqlite_path, ROOM)
    latencies = [arrival - acked_at[json.loads(event.data)["id"]]
                 for event, arrival in zip(healthy.events, healthy.arrivals, strict=True)]
    print(f"\nstalled reader ({'reset' if expect_reset else 'exact'}): {len(before_cut)} events before the cut, "
          f"{len(resumed.messages)} after reconnect (cut by: {'write deadline' if stalled_drops else 'queue'}); "
          f"healthy reader got {len(healthy.messages)}/{MESSAGES}, "
          f"max lag {max(latencies) * 1000:.0f} ms; "
          f"worker RSS {rss[0] / 2**20:.1f} -> max {max(rss) / 2**20:.1f} MiB "
          f"while {MESSAGES * TEXT_CHARS / 2**20:.1f} MiB were published; "
          f"its window holds {window_bytes / 2**20:.1f} MiB")

    assert dropped == 1
    assert "ended_by=stalled" in server.log_path.read_text() or "ended_by=slow" in server.log_path.read_text()
    # The healthy reader, on the same worker and room, got everything promptly and never reconnected.
    assert [json.loads(event.data)["id"] for event in healthy.events] == [i for i in acked_at]
    assert len(healthy.connections) == 1
    assert max(latencies) < 1.0
    # Memory: the stalled stream's queue is bounded, so the worker does not keep
    # what it could not send beyond what its window holds anyway.
    assert max(rss) - rss[0] < 12 * 2**20 + window_bytes
    got = [event.id for event in before_cut]
    if expect_reset:
        assert [event.type for event in resumed.events[:1]] == ["reset"]
        assert len(resumed.resets) == 1
        assert [event.id for event in resumed.messages] == stored
    else:
        assert not resumed.resets
        assert got + [event.id for event in resumed.messages] == stored
        assert len(stored) == MESSAGES
