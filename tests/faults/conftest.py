"""The fault tests in this folder check the SQLite file itself, so they run on SQLite everywhere."""
from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.live import LiveServer


@pytest.fixture
def start_server(start_server) -> Callable[..., LiveServer]:
    """Start real gunicorn on SQLite, even where MONGODB_URI is set (the CI workflow sets it job-wide)."""
    return lambda **env: start_server(**{"MONGODB_URI": "", **env})
