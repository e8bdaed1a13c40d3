"""The SSE server package; ``create_app`` (in ``app/factory.py``) builds the Flask app.

This file imports nothing, on purpose. gunicorn.conf.py reads ``app.config``
in the gunicorn master, and importing a submodule runs this file first. It
used to import the factory -- flask, PyJWT and with them ``ssl`` -- so every
worker inherited modules holding ssl's unpatched classes from before the gevent
worker monkey-patches after fork: gevent warned in each worker that this "may
silently lead to incorrect behaviour" (issue 18). So the factory is imported
when it is called, in the worker, after the patch.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask


def create_app(env: Mapping[str, str] | None = None) -> Flask:
    """Create the app from environment variables (tests pass their own mapping)."""
    from .factory import create_app as build

    return build(env)
