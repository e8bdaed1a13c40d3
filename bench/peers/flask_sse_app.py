"""Flask-SSE peer: the extension's own blueprint, with Redis pub/sub behind it.

Served like our server: `gunicorn -k gevent -w 2 flask_sse_app:app`.
REDIS_URL names the Redis the bench starts for it.
"""

import os

from flask import Flask, jsonify, request
from flask_sse import sse

app = Flask(__name__)
app.config["REDIS_URL"] = os.environ["REDIS_URL"]
# GET /stream?channel=r1 -> text/event-stream, one Redis subscription per stream.
app.register_blueprint(sse, url_prefix="/stream")


@app.post("/publish")
def publish():
    """Publish {"room", "text"} to the room's channel, as our POST /messages does."""
    payload = request.get_json(force=True)
    message = {"room": payload["room"], "text": payload["text"]}
    sse.publish(message, type="message", channel=payload["room"])
    return jsonify(message), 201
