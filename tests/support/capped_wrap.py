"""The capped-wrap scenario (fault 6), the same on both stores."""
from __future__ import annotations

import asyncio
from collections.abc import Callable

from tests.support.eventsource import EventSourceClient, EventStreamParser
from tests.support.faults import wait_until
from tests.support.live import LiveServer

ROOM = "wrap"


def resume_after_wrap(server: LiveServer, capped_max: int,
                      stored: Callable[[str], list[str]]) -> tuple[EventSourceClient, list[str]]:
    """Resume from an id the capped window has dropped; return the client and the ids it should have."""
    first = server.publish(ROOM, "the resume point")["id"]
    for number in range(capped_max + 2):  # push the resume point out of the window
        server.publish(ROOM, f"after {number}")
    assert first not in stored(ROOM)
    parser = EventStreamParser()
    parser.last_event_id = first  # as a browser that last saw `first` would send it
    client = EventSourceClient("127.0.0.1", server.port, ROOM, parser=parser)

    window = stored(ROOM)

    async def scenario() -> str:
        task = asyncio.ensure_future(client.run())
        await asyncio.to_thread(wait_until, lambda: len(client.messages) >= len(window), 10)
        live = await asyncio.to_thread(server.publish, ROOM, "live after the reset")
        await asyncio.to_thread(wait_until, lambda: len(client.messages) >= len(window) + 1, 10)
        await asyncio.sleep(0.3)  # a duplicate, if any, would arrive now
        client.stop()
        await task
        return live["id"]

    live_id = asyncio.run(scenario())
    assert len(window) == capped_max
    return client, window + [live_id]


def assert_reset_then_window(client: EventSourceClient, expected: list[str]) -> None:
    """The client got one reset, then exactly the stored window, then the live message."""
    assert client.connections[0].last_event_id_sent  # it did ask to resume
    assert client.events[0].type == "reset"
    assert "evicted" in client.events[0].data or "not in the stored window" in client.events[0].data
    assert len(client.resets) == 1
    assert [event.id for event in client.messages] == expected
