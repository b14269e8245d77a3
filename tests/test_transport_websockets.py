"""The reference ``websockets`` backend, over real sockets on 127.0.0.1.

Here: what is the ``websockets`` backend's own (adopting a library or Starlette
socket, its limits); what every WebSocket backend owes a bare peer is the
kit's ``WebSocketContract``, run by ``test_conformance.py``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from _support import TIMEOUT, Probe, wait
from websockets.asyncio.client import connect as raw_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as raw_serve

from proxy_core.errors import (
    ConfigurationError,
    ConnectionClosed,
    MessageTooLarge,
    ProtocolError,
    ProxyError,
)
from proxy_core_websockets import (
    StarletteConnection,
    WebSocketsConnection,
    WebSocketsTransport,
)

try:
    import uvicorn
    from fastapi import FastAPI, WebSocket
except ImportError:  # pragma: no cover -- the dev extra installs both
    uvicorn = None  # type: ignore[assignment]

LIMIT = 1000

needs_fastapi = pytest.mark.skipif(
    uvicorn is None,
    reason="fastapi and uvicorn are not installed: pip install 'proxy-core[fastapi]' "
    "(python3 scripts/dev.py test installs them)",
)


@pytest.fixture
def transport() -> WebSocketsTransport:
    return WebSocketsTransport()


async def raw_server_url(
    handler: Callable[[ServerConnection], Awaitable[None]],
) -> tuple[Any, str]:
    """Start a bare ``websockets`` server on a free port; return it and its URL."""
    server = await raw_serve(handler, "127.0.0.1", 0, compression=None)
    return server, f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"


# --- the size limit ---------------------------------------------------------------


async def test_adapted_server_connection_takes_our_limit(
    transport: WebSocketsTransport, probe: Probe
) -> None:
    async def handler(ws: ServerConnection) -> None:
        await probe.echo(transport.adapt(ws, max_message_bytes=LIMIT))

    server, url = await raw_server_url(handler)  # the library's own limit is 1 MiB
    async with server:
        conn = await wait(transport.connect(url))
        assert isinstance(await wait(probe.started), WebSocketsConnection)
        await conn.send(b"a" * LIMIT)
        assert await wait(conn.receive()) == b"a" * LIMIT
        await conn.send(b"b" * (LIMIT + 1))
        assert isinstance(await wait(probe.outcome), MessageTooLarge)
        with pytest.raises(ConnectionClosed) as closed:
            await wait(conn.receive())
        assert closed.value.code == 1009


# --- authentication, paths and connection failures --------------------------------


def test_adapt_refuses_an_unsupported_object(transport: WebSocketsTransport) -> None:
    with pytest.raises(ConfigurationError, match="ServerConnection") as refused:
        transport.adapt(object())
    assert "Starlette" in str(refused.value)


def test_imports_without_starlette() -> None:
    code = (
        "import sys; sys.modules['starlette'] = sys.modules['fastapi'] = None; "
        "import proxy_core_websockets.transport as t; t.WebSocketsTransport()"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=TIMEOUT)


# --- the Starlette/FastAPI adapter under uvicorn ----------------------------------


@dataclass
class StarletteApp:
    url: str
    events: asyncio.Queue[Any]


@pytest.fixture
async def starlette_app() -> AsyncIterator[StarletteApp]:
    events: asyncio.Queue[Any] = asyncio.Queue()
    app = FastAPI()

    @app.websocket("/ws")
    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        conn = WebSocketsTransport().adapt(websocket, max_message_bytes=LIMIT)
        events.put_nowait(conn)
        while True:
            try:
                data = await conn.receive()
            except ProtocolError as exc:
                events.put_nowait(exc)
                continue
            except ProxyError as exc:
                events.put_nowait(exc)
                break
            await conn.send(data)
        await conn.aclose()

    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", ws="websockets-sansio"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(3000):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield StarletteApp(f"ws://127.0.0.1:{port}/ws", events)
    finally:
        server.should_exit = True
        await wait(task)


@needs_fastapi
async def test_starlette_echo(transport: WebSocketsTransport, starlette_app: StarletteApp) -> None:
    conn = await wait(transport.connect(starlette_app.url, headers={"X-Custom-Header": "hi"}))
    server_side = await wait(starlette_app.events.get())
    assert isinstance(server_side, StarletteConnection)
    assert server_side.request_headers["x-custom-header"] == "hi"
    assert (server_side.remote_address or "").startswith("127.0.0.1:")
    for frame in (b"hello", b"", b"a" * LIMIT):
        await conn.send(frame)
        assert await wait(conn.receive()) == frame
    await conn.aclose()
    ended = await wait(starlette_app.events.get())
    assert isinstance(ended, ConnectionClosed)
    assert ended.code == 1000


@needs_fastapi
async def test_starlette_refuses_a_frame_over_the_limit(
    transport: WebSocketsTransport, starlette_app: StarletteApp
) -> None:
    conn = await wait(transport.connect(starlette_app.url))
    await wait(starlette_app.events.get())
    await conn.send(b"b" * (LIMIT + 1))
    refused = await wait(starlette_app.events.get())
    assert isinstance(refused, MessageTooLarge)
    assert (refused.size, refused.limit) == (LIMIT + 1, LIMIT)
    with pytest.raises(ConnectionClosed) as closed:
        await wait(conn.receive())
    assert closed.value.code == 1009
    await conn.aclose()


@needs_fastapi
async def test_starlette_text_frame_is_a_protocol_error(starlette_app: StarletteApp) -> None:
    async with raw_connect(starlette_app.url, compression=None) as ws:
        await wait(starlette_app.events.get())
        await ws.send("not binary")
        assert isinstance(await wait(starlette_app.events.get()), ProtocolError)
        await ws.send(b"still works")
        assert await wait(ws.recv()) == b"still works"
