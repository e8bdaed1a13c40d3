"""How a test waits: for a condition, through ``wait_until``; or for nothing, through ``quiet_period``.

A sleep that stands in for a condition is either too long (slow tests) or too
short on a loaded machine (flaky ones): wait for the condition itself. A quiet
period is the other kind of wait, where the test checks that nothing more
arrives (a duplicate, a late event) and so has no condition to wait for.

Tests whose condition depends on greenlets of their own process (a store's
follower, a presence loop, the app under Flask's test client) pass
``sleep=gevent.sleep``, so those greenlets run while the test waits.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(condition: Callable[[], Any], timeout: float, what: str | Callable[[], str] = "condition not met",
               *, interval: float = 0.05, sleep: Callable[[float], Any] = time.sleep) -> float:
    """Poll ``condition`` until it returns something truthy; return the seconds that took.

    Fail after ``timeout`` seconds with ``what`` (or what it returns, said at
    the time: e.g. what has arrived so far) and the condition's last value.
    """
    started = time.monotonic()
    while True:
        value = condition()
        if value:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what() if callable(what) else what} (waited {timeout:g} s; last value {value!r})")
        sleep(interval)


def quiet_period(seconds: float, *, sleep: Callable[[float], Any] = time.sleep) -> None:
    """Let ``seconds`` pass on purpose: whatever must not arrive (a duplicate, a late event) would arrive now."""
    sleep(seconds)
