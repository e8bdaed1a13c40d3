"""The GET request every bench client sends to open an SSE stream (plain, resuming or hostile)."""

from __future__ import annotations


def sse_request(host: str, port: int, path: str, headers: dict[str, str] | None = None) -> bytes:
    """Bytes of `GET path` asking for an event stream, with any extra `headers` (e.g. Last-Event-ID)."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Accept: text/event-stream",
        "Cache-Control: no-cache",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
