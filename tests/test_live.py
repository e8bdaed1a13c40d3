"""Live tests: real gunicorn, 2 gevent workers, one SQLite file shared by both."""
from __future__ import annotations

import json
import random
import re
import socket
import statistics
import subprocess
import threading
import time

import pytest
import requests

from tests.support.sse_client import StreamReader

pytestmark = pytest.mark.slow


def worker_of(server, reader: StreamReader) -> int:
    """Return the pid of the worker process that holds this client's connection."""
    local_port = reader.response.raw.connection.sock.getsockname()[1]
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{server.port} )"],
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        if re.search(rf":{local_port}\s", line + " "):
            return int(re.search(r"pid=(\d+)", line).group(1))
    raise AssertionError(f"no server socket for client port {local_port}:\n{out}")


def test_message_posted_to_one_worker_reaches_streams_on_the_other(live_server):
    # Which worker accepts a connection is up to the kernel: open streams
    # until both workers hold some (bounded), so every message is posted to
    # one worker while streams on the other one wait for it.
    readers: list[StreamReader] = []
    held: dict[int, int] = {}
    try:
        while len(readers) < 100 and (len(held) < 2 or min(held.values()) < 3):
            readers.append(StreamReader(live_server.url + "/messages?room=cross"))
            worker = worker_of(live_server, readers[-1])
            held[worker] = held.get(worker, 0) + 1
            time.sleep(0.02)
        assert set(held) == set(live_server.worker_pids()), f"both workers must hold streams: {held}"
        latencies = []
        for i in range(20):
            sent_at = time.monotonic()
            message = live_server.publish("cross", f"m{i}")
            for reader in readers:
                delivered = reader.wait_for(lambda events, wanted=message["id"]: any(e.id == wanted for e in events),
                                            timeout=1.0)
                assert delivered, f"message {i} not delivered within 1 s"
                index = next(k for k, e in enumerate(reader.events) if e.id == message["id"])
                latencies.append(reader.received_at[index] - sent_at)
        print(f"\ncross-worker delivery (POST sent -> event parsed), {len(latencies)} deliveries: "
              f"p50 {statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
        for reader in readers:
            assert [json.loads(e.data)["text"] for e in reader.messages] == [f"m{i}" for i in range(20)]
    finally:
        for reader in readers:
            reader.close()


def test_concurrent_publishers_and_reconnecting_subscribers_lose_and_repeat_nothing(live_server):
    random.seed(11)
    publishers, per_publisher = 3, 100
    url = live_server.url + "/messages?room=busy"
    outcomes: list[list[str]] = [[] for _ in range(5)]
    done = threading.Event()

    def subscribe(index: int) -> None:
        """Follow the room, dropping the connection at random and resuming with Last-Event-ID."""
        received = outcomes[index]
        last_id = None
        while True:
            reader = StreamReader(url, last_event_id=last_id)
            time.sleep(random.uniform(0.05, 0.4))
            finished = done.is_set()
            if finished:  # take everything still coming before the final close
                reader.wait_for(lambda events: False, timeout=1.0)
            reader.close()
            received.extend(e.id for e in reader.messages)
            assert not any(e.event == "reset" for e in reader.events)
            last_id = reader.last_id or last_id
            if finished:
                return

    def publish(writer: int) -> None:
        session = requests.Session()
        for i in range(per_publisher):
            reply = session.post(live_server.url + "/messages", json={"room": "busy", "text": f"p{writer}-{i}"},
                                 timeout=5)
            assert reply.status_code == 201
            time.sleep(random.uniform(0, 0.01))

    subscribers = [threading.Thread(target=subscribe, args=(i,)) for i in range(5)]
    writers = [threading.Thread(target=publish, args=(w,)) for w in range(publishers)]
    for thread in subscribers + writers:
        thread.start()
    for thread in writers:
        thread.join(60)
    done.set()
    for thread in subscribers:
        thread.join(30)

    history = requests.get(live_server.url + "/messages/history?room=busy&limit=1000", timeout=5).json()
    store_order = [m["id"] for m in history["messages"]]
    assert len(store_order) == publishers * per_publisher
    for received in outcomes:
        assert len(received) == len(set(received)), "a message was delivered twice"
        assert received == store_order, "lost messages or out of store order"


def test_heartbeat_comments_arrive_in_silence(start_server):
    server = start_server(HEARTBEAT_SECONDS="1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /messages?room=quiet HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n")
        received = b""
        deadline = time.monotonic() + 2.6
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                received += sock.recv(4096)
            except TimeoutError:
                break
    assert b"200 OK" in received.split(b"\r\n", 1)[0]
    assert received.count(b": keep-alive\n") >= 2, received


def test_closed_clients_release_their_streams_at_once_not_at_the_next_heartbeat(start_server):
    from tests.support.faults import metric, wait_until

    server = start_server(HEARTBEAT_SECONDS="60")  # a heartbeat write would come far too late
    sockets = []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(b"GET /messages?room=leaving HTTP/1.1\r\nHost: test\r\n\r\n")
        head = b""
        while b"retry:" not in head:  # headers and body may come in separate writes
            chunk = sock.recv(4096)
            assert chunk, head
            head += chunk
        sockets.append(sock)
    wait_until(lambda: metric(server.url, "sse_hub_subscriptions") == 20, 5)
    for sock in sockets:
        sock.close()  # a FIN, then nothing: the server only learns of it by watching the socket
    took = wait_until(lambda: metric(server.url, "sse_hub_subscriptions") == 0, 3)
    print(f"\n20 closed streams released in {took * 1000:.0f} ms (heartbeat 60 s)")
    assert metric(server.url, "sse_open_streams") == 0
