"""The capped-wrap scenario (fault 6), the same on both stores."""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from app.stores.base import UNKNOWN_ID_REASON
from tests.support.eventsource import EventSourceClient, EventStreamParser
from tests.support.live import LiveServer
from tests.support.waiting import wait_until

ROOM = "wrap"


def resume_after_wrap(server: LiveServer, capped_max: int,
                      stored: Callable[[str], list[str]]) -> tuple[EventSourceClient, list[str], list[str]]:
    """Resume from an id the capped window has dropped.

    Return the client, the ids it should have after a reset (the stored
    window, then the live one), and the ids it should have if the worker's
    in-memory window still held the resume point (everything after it).
    """
    first = server.publish(ROOM, "the resume point")["id"]
    published = [server.publish(ROOM, f"after {number}")["id"]  # push the resume point out of the window
                 for number in range(capped_max + 2)]
    assert first not in stored(ROOM)
    # Let the workers' tailers read the wrap, so their windows have dropped the
    # resume point too (if one has not, assert_reset_then_window checks the
    # exact resume it then gives instead).
    time.sleep(0.5)
    parser = EventStreamParser()
    parser.last_event_id = first  # as a browser that last saw `first` would send it
    client = EventSourceClient("127.0.0.1", server.port, ROOM, parser=parser)

    window = stored(ROOM)

    async def scenario() -> str:
        task = asyncio.ensure_future(client.run())
        await asyncio.to_thread(wait_until, lambda: len(client.messages) >= len(window), 10)
        live = await asyncio.to_thread(server.publish, ROOM, "live after the reset")
        await asyncio.to_thread(wait_until, lambda: len(client.messages) >= len(window) + 1, 10)
        await asyncio.sleep(0.3)  # a quiet period: a duplicate, if any, would arrive now
        client.stop()
        await task
        return live["id"]

    live_id = asyncio.run(scenario())
    assert len(window) == capped_max
    return client, window + [live_id], published + [live_id]


def assert_reset_then_window(client: EventSourceClient, expected: list[str], exact: list[str]) -> None:
    """The client got one reset, then exactly the stored window, then the live message.

    Or, where the worker's window still held the resume point when the client
    came (its tailer had not yet read the wrap), no reset and exactly every
    message after the resume point: nothing lost, so nothing to reset.
    """
    assert client.connections[0].last_event_id_sent  # it did ask to resume
    if not client.resets:
        assert [event.id for event in client.messages] == exact
        return
    assert client.events[0].type == "reset"
    assert json.loads(client.events[0].data) == {"reason": UNKNOWN_ID_REASON}
    assert len(client.resets) == 1
    assert [event.id for event in client.messages] == expected
