"""Who a request comes from, as one key: what per-client limits count against.

* The address is ``request.remote_addr``: the socket's peer, or the one
  TRUSTED_PROXIES hops back in ``X-Forwarded-For`` (werkzeug's ProxyFix,
  ``app/edge/access.py``). Never a header the client picked on its own.
* An IPv6 address counts as its /64: one host is routinely handed a whole
  /64 (SLAAC, privacy addresses) and can take a new address from it for
  every request, so a per-address limit would not bind it. An IPv4-mapped
  IPv6 address (``::ffff:192.0.2.1``, a dual-stack socket) is its IPv4 address.
* With private rooms on, a request that carried a verified token with a
  ``sub`` (or that the subscribe hook answered with a ``sub``) is that
  subject, wherever it connects from: the users of one
  office NAT each get their own limit, and a user cannot escape it by
  changing address. The stream limit uses this; the publish rate limit
  keys on the address alone (it counts before the token is checked, so that
  guessing tokens costs attempts too).

The two kinds are prefixed (``ip:``/``sub:``) so that a subject that looks
like an address never shares an address's bucket.
"""
from __future__ import annotations

import socket

from flask import request

# Every address we cannot parse (a unix socket's peer is "", a proxy could pass
# on anything a client wrote) is one client: were each string its own, a client
# could take a new key per request and no per-client limit would bind it.
UNPARSABLE_KEY = "ip:?"
_IPV4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"
_IPV6_HOST_BITS = bytes(8)  # the last 64 bits: zeroed, leaving the /64


def address_key(address: str | None) -> str:
    """Return the client key of an address: IPv4 as it is, IPv6 as its /64.

    Parsed by the C library (inet_pton/inet_ntop): this runs on every stream
    open and every rate-limited publish, and the ``ipaddress`` module takes
    tens of microseconds for what this does in one or two.
    """
    raw = address or ""
    host = raw.partition("%")[0]  # a link-local peer's zone ("fe80::1%eth0") is not part of the address
    try:
        if ":" not in host:
            return "ip:" + socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, host))
        packed = socket.inet_pton(socket.AF_INET6, host)
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return UNPARSABLE_KEY
    if packed.startswith(_IPV4_MAPPED_PREFIX):
        return "ip:" + socket.inet_ntop(socket.AF_INET, packed[12:])
    return "ip:" + socket.inet_ntop(socket.AF_INET6, packed[:8] + _IPV6_HOST_BITS) + "/64"


def remote_address_key() -> str:
    """Return the current request's address key (Flask-Limiter's ``key_func``)."""
    return address_key(request.remote_addr)


def client_key(subject: str | None = None) -> str:
    """Return the current request's client: the token's subject when there is one, else its address key."""
    if subject:
        return "sub:" + subject
    return remote_address_key()
