"""Run the real Tailer, Hub and MongoStore under gevent, as a gunicorn gevent worker does.

Usage: python -m tests.support.tailer_probe MONGODB_URI ROOM COUNT SECONDS

Patches like the gevent worker, subscribes to ROOM, starts the tailer and
prints one JSON line per live event it receives ({"id", "position"}) until
COUNT have arrived or SECONDS have passed, then {"restarts": N}.
"""
from gevent import monkey

monkey.patch_all()

import json  # noqa: E402 -- everything else is imported after patching
import sys  # noqa: E402
import time  # noqa: E402

from app.delivery.hub import Hub  # noqa: E402
from app.delivery.tailer import Tailer  # noqa: E402
from app.delivery.window import Window  # noqa: E402
from app.stores.mongo import MongoStore  # noqa: E402


def main(uri: str, room: str, count: int, seconds: float) -> None:
    """Print what one room's subscription receives from the tailer."""
    store = MongoStore(uri, "sse", max_bytes=65_536, max_messages=1000, await_ms=200)
    hub = Hub(queue_limit=1000, heartbeat_seconds=0.2)  # wakes the loop below in silence
    subscription = hub.subscribe((room,))
    tailer = Tailer(store, Window(1000, 65_536), hub, backoff_initial=0.05, backoff_max=0.5)
    tailer.ensure_running()
    deadline = time.monotonic() + seconds
    received = 0
    while received < count and time.monotonic() < deadline:
        events = subscription.take(2**20)
        subscription.heartbeat_due = False
        for event in events:
            print(json.dumps({"id": event.id, "position": event.position}), flush=True)
            received += 1
    print(json.dumps({"restarts": tailer.restarts}), flush=True)
    tailer.stop()
    store.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
