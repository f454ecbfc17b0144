"""The aiohttp application: the page at `/`, its files at `/static/`, one websocket per dialogue at
`/ws` (s2s.serve.protocol) and the hub's figures at `/stats`.

A connection's faults stay with it: a malformed or oversized message closes that connection with
the reason, and a client whose replies pile up (it stopped reading) is cut off; neither touches
another stream, because a connection only ever reads and writes its own row's backlog and queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from importlib import resources

from aiohttp import WSMsgType, web

from s2s.serve.hub import ServeHub, Stream
from s2s.serve.protocol import FORMAT, ChunkReply, ProtocolError, decode_audio, decode_control

HUB = web.AppKey("hub", ServeHub)
HELLO = web.AppKey("hello", dict)
STATIC = resources.files("s2s.serve") / "static"


def make_app(hub: ServeHub, model_name: str, max_message_bytes: int) -> web.Application:
    app = web.Application()
    app[HUB] = hub
    config = hub.session.model.config
    app[HELLO] = {
        "type": "hello", "format": FORMAT, "sample_rate": config.sample_rate,
        "chunk_samples": hub.chunk_samples, "chunk_frames": hub.session.chunk,
        "frame_seconds": config.frame_samples / config.sample_rate, "max_message_bytes": max_message_bytes,
        "backlog_samples": hub.limits.backlog_samples, "model": model_name,
    }  # fmt: skip
    app.router.add_get("/", _page)
    app.router.add_get("/static/{name}", _static)
    app.router.add_get("/ws", _websocket)
    app.router.add_get("/stats", _stats)
    return app


CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


async def _page(request: web.Request) -> web.Response:
    return _file("index.html")


async def _static(request: web.Request) -> web.Response:
    return _file(request.match_info["name"])


def _file(name: str) -> web.Response:
    """A file of the package's static/ folder (a plain name: no path can leave the folder)."""
    suffix = name[name.rfind(".") :] if "." in name else ""
    if "/" in name or "\\" in name or name.startswith(".") or suffix not in CONTENT_TYPES:
        raise web.HTTPNotFound()
    resource = STATIC / name
    if not resource.is_file():
        raise web.HTTPNotFound()
    return web.Response(body=resource.read_bytes(), content_type=CONTENT_TYPES[suffix],
                        headers={"Cache-Control": "no-cache"})  # fmt: skip


async def _stats(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    return web.json_response(hub.stats.summary(hub.connections, hub.capacity))


async def _websocket(request: web.Request) -> web.WebSocketResponse:
    hub, hello = request.app[HUB], request.app[HELLO]
    limit = hello["max_message_bytes"]
    # aiohttp refuses far larger messages itself (1009); ours names the limit for the rest
    websocket = web.WebSocketResponse(max_msg_size=2 * limit + 1024)
    await websocket.prepare(request)
    stream = hub.join()
    if stream is None:
        await websocket.send_json({"type": "error", "message": f"the server is full ({hub.capacity} streams: "
                                "max_connections); try again later"})  # fmt: skip
        await websocket.close(code=1013, message=b"server full")
        return websocket
    transport = request.transport
    stream.drop = lambda: transport.abort() if transport is not None else None
    _bound_send_buffers(transport)
    sender = None
    try:  # from here on the row is this connection's: whatever happens, `finally` gives it back
        await websocket.send_json({**hello, "stream": stream.row})
        sender = asyncio.create_task(_send_replies(websocket, stream))
        async for message in websocket:
            if message.type == WSMsgType.BINARY:
                hub.receive(stream, decode_audio(message.data, limit))
            elif message.type == WSMsgType.TEXT:
                decode_control(message.data)
                hub.restart(stream, "the client asked for a new dialogue")
            else:
                break
    except ProtocolError as error:
        await websocket.close(code=error.close_code, message=str(error).encode()[:120])
    finally:
        hub.leave(stream)
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
    return websocket


# Bytes the kernel (Linux doubles it) and the event loop's transport may hold for a client that is not
# reading: small, so that a stalled client's replies back up into its bounded queue within seconds
# (a chunk's reply is ~5 kB at 160 ms), not megabytes later.
SEND_BUFFER_BYTES = 32 * 1024


def _bound_send_buffers(transport) -> None:
    if transport is None:
        return
    transport.set_write_buffer_limits(high=SEND_BUFFER_BYTES)
    connection = transport.get_extra_info("socket")
    if connection is not None:
        with contextlib.suppress(OSError):
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)


async def _send_replies(websocket: web.WebSocketResponse, stream: Stream) -> None:
    """Drain the stream's reply queue to its client, in order; stops when the connection goes."""
    with contextlib.suppress(ConnectionError, RuntimeError):
        while not websocket.closed:
            message = await stream.replies.get()
            if isinstance(message, ChunkReply):
                await websocket.send_bytes(message.encode())
            else:
                await websocket.send_json(message)
