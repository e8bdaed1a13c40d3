"""Real gunicorn (gevent workers, real PyMongo) against the fake capped collection."""
from __future__ import annotations

import asyncio
from collections.abc import Callable

from tests.support.eventsource import EventSourceClient
from tests.support.live import LiveServer
from tests.support.waiting import wait_until
from tests.support.wire_capped import FakeCappedCollection


def stored_ids(fake: FakeCappedCollection, room: str) -> list[str]:
    """Return the fake collection's ids for a room, in natural order."""
    with fake.lock:
        return [str(doc["_id"]) for _, doc in fake.docs if doc["room"] == room]


def has_everything_stored(fake: FakeCappedCollection) -> Callable[[EventSourceClient], bool]:
    """Return a test: the client holds as many messages as its room has stored."""
    return lambda client: len(client.messages) >= len(stored_ids(fake, client.room))


def follow_while(server: LiveServer, rooms: list[str], streams: int,
                 action: Callable[[list[EventSourceClient]], None],
                 done: Callable[[EventSourceClient], bool], settle: float = 0.5) -> list[EventSourceClient]:
    """Open streams, run ``action(clients)`` (in a thread), and wait until ``done`` holds for every client."""
    clients = [EventSourceClient("127.0.0.1", server.port, rooms[n % len(rooms)]) for n in range(streams)]

    async def scenario() -> None:
        tasks = [asyncio.ensure_future(client.run()) for client in clients]
        await asyncio.wait_for(asyncio.gather(*(client.connected.wait() for client in clients)), 20)
        await asyncio.to_thread(action, clients)
        await asyncio.to_thread(wait_until, lambda: all(done(client) for client in clients), 20)
        await asyncio.sleep(settle)  # a quiet period: a duplicate, if any, would arrive now
        for client in clients:
            client.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)

    asyncio.run(scenario())
    return clients
