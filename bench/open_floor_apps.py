"""The least a stream open can cost under the fixed design: two do-nothing stream apps.

``bench/open_floor.py`` runs each under gunicorn's gevent worker classes and
compares them with our server. Both apps do what every one of our streams does
at the least -- answer ``text/event-stream``, send a ``retry:`` line, park
until the client closes -- and nothing else: no validation, no store, no hub.

* ``raw_app``: a bare WSGI generator (gunicorn's and gevent's share alone).
* ``flask_app``: the same as a Flask blueprint view returning a generator
  response, the shape the fixed design asks of our streams.

gunicorn's ``gevent`` worker puts the connection in ``gunicorn.socket``; its
``gevent_pywsgi`` worker in ``gunicorn.sock``.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, Response, request


def _client_socket(environ: dict[str, Any]) -> Any:
    return environ.get("gunicorn.socket") or environ["gunicorn.sock"]


def raw_app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    connection = _client_socket(environ)
    start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
    yield b"retry: 1000\n\n"
    connection.recv(1)  # parked until the client's FIN


streams = Blueprint("streams", __name__)


@streams.get("/messages")
def stream() -> Response:
    connection = _client_socket(request.environ)

    def body() -> Iterator[str]:
        yield "retry: 1000\n\n"
        connection.recv(1)

    return Response(body(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})


flask_app = Flask(__name__)
flask_app.register_blueprint(streams)
