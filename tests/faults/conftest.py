"""Most fault tests in this folder check the SQLite file itself, so they run on SQLite everywhere.

A test that takes ``store_env`` (tests/conftest.py) runs once per store instead:
its ``MONGODB_URI`` (empty for SQLite, the server's for MongoDB) is passed on
and wins over the SQLite default set here.
"""
from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.live import LiveServer


@pytest.fixture
def start_server(start_server) -> Callable[..., LiveServer]:
    """Start real gunicorn on SQLite unless the test passes a MONGODB_URI of its own (store_env does).

    SQLite is forced even where MONGODB_URI is set in the environment (the CI
    workflow sets it job-wide), since ``LiveServer`` inherits the environment.
    """
    return lambda **env: start_server(**{"MONGODB_URI": "", **env})
