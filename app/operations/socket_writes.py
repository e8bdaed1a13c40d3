"""One ``send`` per chunk: gevent's ``sendall`` without its per-call ``getsockopt``.

gunicorn writes every chunk of a stream with the gevent socket's ``sendall``.
gevent's version first asks the kernel for ``SO_SNDBUF`` -- one more system
call per write -- to size a loop that works around slow memoryview slices on
PyPy, then sends through that loop. On CPython a stream's chunk (an event or a
few) nearly always fits in the socket buffer, so this ``sendall`` tries one
non-blocking ``send`` of the whole chunk first and hands whatever is left --
all of it if the buffer is full, the rest after a partial send -- to gevent's
own ``sendall``, which waits for the socket as before. Errors (a client gone)
surface exactly as they did.

Plain sockets only. gevent's TLS socket is a subclass whose ``sendall``
encrypts and then calls this class's ``sendall``; sending to its underlying
socket from here would put plaintext on a TLS connection. That is what broke
every worker's connection to MongoDB over TLS (issue 18: the server saw a
garbage TLS record and answered ``TLSV1_ALERT_PROTOCOL_VERSION``). So any
subclass keeps gevent's own path.

Profile that found it: bench/results/2026-12-01-profile.md (``getsockopt``
before every send; the per-write path is most of a delivery's cost).
"""
from __future__ import annotations

from gevent import socket as gevent_socket

_gevent_sendall = gevent_socket.socket.sendall


def single_send_sendall(sock: gevent_socket.socket, data, flags: int = 0) -> None:
    """Send all of ``data``: one ``send`` when the buffer has room, gevent's loop otherwise."""
    if type(sock) is not gevent_socket.socket:  # a TLS socket (or another wrapper): not ours to shortcut
        return _gevent_sendall(sock, data, flags)
    try:
        sent = sock._sock.send(data, flags)  # the underlying non-blocking socket: never waits
    except BlockingIOError:
        return _gevent_sendall(sock, data, flags)
    if sent < len(data):
        return _gevent_sendall(sock, memoryview(data)[sent:], flags)
    return None


def install() -> None:
    """Use ``single_send_sendall`` for this process's plain gevent sockets (TLS sockets keep gevent's)."""
    gevent_socket.socket.sendall = single_send_sendall
