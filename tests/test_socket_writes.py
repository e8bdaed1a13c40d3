"""single_send_sendall: every byte, in order, once -- whether the buffer takes it all, part or none."""
from __future__ import annotations

import socket

import gevent
import pytest
from gevent import socket as gevent_socket

from app.operations.socket_writes import single_send_sendall


def _pair(sndbuf: int | None = None):
    a, b = gevent_socket.socketpair()
    if sndbuf is not None:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
    return a, b


def _read_all(sock, size: int, pause: float = 0.0) -> bytes:
    received = bytearray()
    while len(received) < size:
        if pause:
            gevent.sleep(pause)  # a slow reader: the writer meets a full buffer
        piece = sock.recv(4096)
        if not piece:
            break
        received += piece
    return bytes(received)


class RecordingSocket:
    """Stands in for the gevent socket's underlying socket and records the calls made to it."""

    def __init__(self, real):
        self.real = real
        self.calls: list[str] = []

    def __getattr__(self, name):
        self.calls.append(name)
        return getattr(self.real, name)


def test_a_chunk_that_fits_is_one_send_and_nothing_else():
    a, b = _pair()
    recording = RecordingSocket(a._sock)
    a._sock = recording
    try:
        single_send_sendall(a, b"data: hello\n\n")
    finally:
        a._sock = recording.real
    assert recording.calls == ["send"]  # gevent's own sendall also asks getsockopt(SO_SNDBUF)
    assert b.recv(100) == b"data: hello\n\n"


@pytest.mark.parametrize("size", [200_000, 2_000_000])
def test_what_the_buffer_cannot_take_is_sent_once_the_reader_reads(size):
    a, b = _pair(sndbuf=4096)
    data = bytes(range(256)) * (size // 256)
    reader = gevent.spawn(_read_all, b, len(data), 0.001)
    single_send_sendall(a, data)
    assert reader.get(timeout=30) == data  # every byte, in order, once


def test_a_full_buffer_waits_instead_of_failing():
    a, b = _pair(sndbuf=4096)
    filler = b"x" * 1_000_000
    # Fill the buffer with a plain non-blocking send until it refuses.
    with pytest.raises(BlockingIOError):
        while True:
            a._sock.send(filler)
    reader = gevent.spawn(_read_all, b, 1 << 30)  # reads until the writer closes
    single_send_sendall(a, b"tail")
    a.close()
    received = reader.get(timeout=30)
    assert len(received) > len(b"tail") and received.endswith(b"tail")


def test_a_client_gone_raises_as_before():
    a, b = _pair()
    b.close()
    with pytest.raises(OSError):
        for _ in range(3):  # the first write may still be accepted by the kernel
            single_send_sendall(a, b"data: x\n\n")


def test_a_tls_socket_keeps_encrypting_once_installed(monkeypatch, tmp_path):
    """It sent plaintext on gevent's TLS sockets (their sendall calls this one): TLS to MongoDB failed (issue 18)."""
    from gevent import ssl as gevent_ssl

    from app.operations import socket_writes
    from tests.support.ferretdb_tls import make_certificates

    monkeypatch.setattr(gevent_socket.socket, "sendall", gevent_socket.socket.sendall)  # restored afterwards
    socket_writes.install()
    certificates = make_certificates(tmp_path)
    server_context = gevent_ssl.SSLContext(gevent_ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(certificates.cert_file, certificates.key_file)
    client_context = gevent_ssl.SSLContext(gevent_ssl.PROTOCOL_TLS_CLIENT)  # gevent's, so the handshake yields
    client_context.load_verify_locations(cafile=str(certificates.ca_file))
    a, b = _pair()
    server = gevent.spawn(lambda: server_context.wrap_socket(b, server_side=True))
    client = client_context.wrap_socket(a, server_hostname="localhost")
    server_side = server.get(timeout=10)
    data = b"data: over TLS\n\n" * 10_000  # more than one TLS record and one socket buffer
    reader = gevent.spawn(_read_all, server_side, len(data))
    client.sendall(data)
    assert reader.get(timeout=30) == data


def test_gunicorn_workers_install_it(monkeypatch, tmp_path):
    """gunicorn.conf.py's post_fork puts single_send_sendall on the worker's gevent sockets."""
    import importlib.util
    import logging
    from pathlib import Path
    from types import SimpleNamespace

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    # post_fork changes these process-wide: each is restored afterwards.
    monkeypatch.setattr(gevent_socket.socket, "sendall", gevent_socket.socket.sendall)
    app_logger = logging.getLogger("app")
    for attribute in ("handlers", "level", "propagate"):
        monkeypatch.setattr(app_logger, attribute, getattr(app_logger, attribute))
    spec = importlib.util.spec_from_file_location(
        "gunicorn_conf_under_test", Path(__file__).resolve().parent.parent / "gunicorn.conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    error_log = logging.getLogger("gunicorn-under-test")
    conf.post_fork(SimpleNamespace(log=SimpleNamespace(error_log=error_log)),
                   SimpleNamespace(handle_quit=lambda signum, frame: None))
    assert gevent_socket.socket.sendall is single_send_sendall
