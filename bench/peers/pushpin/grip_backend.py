"""GRIP backend for the Pushpin peer: turns every subscribe request into a held stream.

Pushpin forwards `GET /messages?room=r1` here; the answer's `Grip-Hold: stream`
tells Pushpin to keep the client's response open and `Grip-Channel` names the
channel whose published items it appends. Publishing does not come through
here: the bench posts straight to Pushpin's HTTP publish endpoint, the way
Nchan's publisher location is used.
"""

from collections.abc import Callable, Iterable
from urllib.parse import parse_qs

# Pushpin sends an SSE comment line (":\n", written C-string escaped) when a
# stream has been idle 15 s: the same heartbeat as our server's
# HEARTBEAT_SECONDS and the Nchan peer's ping.
KEEP_ALIVE = ":\\n\\n; format=cstring; timeout=15"


def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
    """WSGI entry point: hold the stream on the room's channel."""
    room = parse_qs(environ.get("QUERY_STRING", "")).get("room", [""])[0]
    if not room:
        start_response("400 Bad Request", [("Content-Type", "text/plain")])
        return [b"room is required\n"]
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/event-stream"),
            ("Cache-Control", "no-cache"),
            ("Grip-Hold", "stream"),
            ("Grip-Channel", room),
            ("Grip-Keep-Alive", KEEP_ALIVE),
        ],
    )
    return [b"retry: 1000\n\n"]
