"""sse-starlette peer: Starlette on uvicorn workers, fanned out through Redis.

The way sse-starlette's users scale past one process: each uvicorn worker
holds one Redis pub/sub connection through `broadcaster` (encode's library
for exactly this) and fans each message out to its own streams; a publish
goes to Redis, which sends it to every worker. No history, so no resume.
Same HTTP shape as the Flask-SSE peer: GET /stream?channel=, POST /publish.
"""

import json
import os
from contextlib import asynccontextmanager

from broadcaster import Broadcast
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

HEARTBEAT_SECONDS = int(os.environ.get("HEARTBEAT_SECONDS", "15"))
broadcast = Broadcast(os.environ["REDIS_URL"])


async def stream(request: Request) -> EventSourceResponse:
    channel = request.query_params["channel"]

    async def events():
        async with broadcast.subscribe(channel=channel) as subscriber:
            async for event in subscriber:
                yield {"event": "message", "data": event.message}

    return EventSourceResponse(events(), ping=HEARTBEAT_SECONDS)


async def publish(request: Request) -> JSONResponse:
    message = await request.json()
    await broadcast.publish(channel=message["room"], message=json.dumps(message))
    return JSONResponse({"published": True}, status_code=201)


@asynccontextmanager
async def lifespan(app: Starlette):
    await broadcast.connect()
    try:
        yield
    finally:
        await broadcast.disconnect()


app = Starlette(routes=[Route("/stream", stream), Route("/publish", publish, methods=["POST"])], lifespan=lifespan)
