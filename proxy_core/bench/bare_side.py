"""The bare libraries doing the same work: raw bytes of the same size, one message per send.

- ``websockets``: ``ws.send(bytes)`` / ``ws.recv()`` on the asyncio API;
- ``aiohttp``: ``ws.send_bytes(bytes)`` / ``ws.receive()``;
- ``grpc``: a ``grpc.aio`` bidirectional stream of raw bytes (no serializer),
  ``call.write`` / ``call.read`` on the client, ``context.write`` /
  ``context.read`` on the server.

Each is configured as the proxy-core backend configures it (no compression,
no library pings, the same 1 MiB frame limit, a TCP connection per session
for gRPC), so the difference measured is what proxy-core adds. Control
commands travel as frames shorter than :data:`~proxy_core.bench.spec.CONTROL_MAX`
bytes; replies are JSON.

With ``hop=True`` (the bench's ``--floor`` rows), each side receives in a task
of its own and hands every frame to the consumer through a queue, which is the
proxy's shape (a receive loop, an inbox, the worker's task) without the proxy:
the round trip it measures is the floor of that design on the bare library.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, cast

from ..transport import DEFAULT_MAX_MESSAGE_BYTES
from .links import Link, SinkState, produce
from .spec import CONTROL_MAX

__all__ = ["BARE_LABELS", "BareLink", "connect", "open_idle_sessions", "serve"]

LIMIT = DEFAULT_MAX_MESSAGE_BYTES
_METHOD = "/proxy_core.bench.Bare/Stream"

#: What "bare" means for each transport, for reports.
BARE_LABELS = {
    "websockets": "websockets send/recv",
    "aiohttp": "aiohttp send_bytes/receive",
    "grpc": "grpc.aio bidi stream of bytes",
}

Send = Callable[[bytes], Awaitable[Any]]
Receive = Callable[[], Awaitable[bytes]]


class _Closed(Exception):
    """The peer closed the connection."""


#: How many received frames a hop holds before its receive loop waits (backpressure).
_HOP_BOUND = 256


class _Hop:
    """Receive in a task of its own; hand each frame to the consumer through a bounded queue.

    One task wake-up per hop when the consumer waits, as a proxy's receive loop
    waking a worker through its inbox. The receive loop's error (the peer
    closed, the connection failed) is raised to the consumer once the frames
    before it are consumed.
    """

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._frames: deque[bytes] = deque()
        self._loop = asyncio.get_running_loop()
        self._ready: asyncio.Future[None] | None = None  # the consumer waits for a frame
        self._room: asyncio.Future[None] | None = None  # the receive loop waits for room
        self._error: BaseException | None = None
        self._task = self._loop.create_task(self._run(), name="bare-hop-receive")

    async def _run(self) -> None:
        try:
            while True:
                frame = await self._receive()
                self._frames.append(frame)
                _wake(self._ready)
                if len(self._frames) >= _HOP_BOUND:
                    self._room = self._loop.create_future()
                    await self._room
        except asyncio.CancelledError:
            self._error = _Closed("the hop was closed")
            raise
        except BaseException as exc:
            self._error = exc
        finally:
            _wake(self._ready)

    async def receive(self) -> bytes:
        """Return the next frame received, waiting for it in this task."""
        frames = self._frames
        while not frames:
            if self._error is not None:
                raise self._error
            self._ready = self._loop.create_future()
            await self._ready
        frame = frames.popleft()
        if self._room is not None and len(frames) < _HOP_BOUND // 2:
            _wake(self._room)
            self._room = None
        return frame

    async def aclose(self) -> None:
        """Stop the receive loop."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def _wake(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


async def _serve_one(send: Send, receive: Receive, hop: bool) -> None:
    """Run :func:`_sink` on one connection, through a :class:`_Hop` with ``hop``."""
    if not hop:
        await _sink(send, receive)
        return
    hopper = _Hop(receive)
    try:
        await _sink(send, hopper.receive)
    finally:
        await hopper.aclose()


async def _sink(send: Send, receive: Receive) -> None:
    """Serve one connection: count or echo payloads, answer control frames."""
    state = SinkState()
    while True:
        data = await receive()
        if len(data) > CONTROL_MAX:
            if state.echo:
                await send(data)
            else:
                state.count += 1
        else:
            await send(json.dumps(state.control(data.decode())).encode())


# ---------------------------------------------------------------- servers


@asynccontextmanager
async def serve(transport: str, *, hop: bool = False) -> AsyncIterator[str]:
    """Serve bare sinks for ``transport`` on 127.0.0.1; yield the address to connect to.

    With ``hop``, each connection receives in a task of its own (see :class:`_Hop`).
    """
    servers = {"websockets": _serve_websockets, "aiohttp": _serve_aiohttp, "grpc": _serve_grpc}
    if transport not in servers:
        raise ValueError(f"no bare baseline for transport {transport!r}")
    async with servers[transport](hop) as address:
        yield address


@asynccontextmanager
async def _serve_websockets(hop: bool) -> AsyncIterator[str]:
    from websockets.asyncio.server import ServerConnection
    from websockets.asyncio.server import serve as ws_serve
    from websockets.exceptions import ConnectionClosed

    async def handler(ws: ServerConnection) -> None:
        try:
            # Every frame is binary: recv() returns bytes, no wrapper needed.
            await _serve_one(ws.send, cast(Receive, ws.recv), hop)
        except ConnectionClosed:
            pass

    async with ws_serve(
        handler, "127.0.0.1", 0, compression=None, ping_interval=None, max_size=LIMIT
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws"


@asynccontextmanager
async def _serve_aiohttp(hop: bool) -> AsyncIterator[str]:
    from aiohttp import WSMsgType, web

    async def endpoint(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(
            max_msg_size=LIMIT, compress=False, heartbeat=None, autoping=True
        )
        await ws.prepare(request)

        async def receive() -> bytes:
            message = await ws.receive()
            if message.type == WSMsgType.BINARY:
                data: bytes = message.data
                return data
            raise _Closed

        try:
            await _serve_one(ws.send_bytes, receive, hop)
        except (_Closed, ConnectionError):
            pass
        return ws

    app = web.Application()
    app.router.add_get("/ws", endpoint)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"ws://127.0.0.1:{runner.addresses[0][1]}/ws"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def _serve_grpc(hop: bool) -> AsyncIterator[str]:
    import grpc
    import grpc.aio

    async def rpc(request_iterator: Any, context: Any) -> None:
        async def receive() -> bytes:
            data = await context.read()
            if data is grpc.aio.EOF:
                raise _Closed
            return bytes(data)

        try:
            await _serve_one(context.write, receive, hop)
        except _Closed:
            pass

    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", LIMIT),
            ("grpc.max_send_message_length", LIMIT),
            ("grpc.so_reuseport", 0),
        ]
    )
    handler = grpc.method_handlers_generic_handler(
        "proxy_core.bench.Bare", {"Stream": grpc.stream_stream_rpc_method_handler(rpc)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0.5)


# ---------------------------------------------------------------- clients


class BareLink(Link):
    """A bare library connection: the driver's hot loops call the library directly."""

    def __init__(self, send: Send, receive: Receive, stack: AsyncExitStack) -> None:
        self._send = send
        self._receive = receive
        self._stack = stack

    async def control(self, command: str) -> dict[str, Any]:
        await self._send(command.encode())
        reply: dict[str, Any] = json.loads(await self._receive())
        return reply

    async def stream(self, size: int, count: int, *, back_to_back: bool = False) -> None:
        await produce(self._send, _payload(size), count, back_to_back=back_to_back)

    async def round_trips(self, size: int, count: int) -> list[float]:
        payload = _payload(size)
        send, receive = self._send, self._receive
        clock = time.perf_counter
        samples: list[float] = []
        for _ in range(count):
            start = clock()
            await send(payload)
            await receive()
            samples.append(clock() - start)
        return samples

    async def aclose(self) -> None:
        await self._stack.aclose()


def _payload(size: int) -> bytes:
    return os.urandom(size)


async def connect(transport: str, address: str, *, hop: bool = False) -> BareLink:
    """Open a bare connection to ``address`` with the library behind ``transport``.

    With ``hop``, replies are received in a task of its own (see :class:`_Hop`).
    """
    stack = AsyncExitStack()
    try:
        if transport == "websockets":
            send, receive = await _connect_websockets(address, stack)
        elif transport == "aiohttp":
            send, receive = await _connect_aiohttp(address, stack)
        elif transport == "grpc":
            send, receive = await _connect_grpc(address, stack)
        else:
            raise ValueError(f"no bare baseline for transport {transport!r}")
        if hop:
            hopper = _Hop(receive)
            stack.push_async_callback(hopper.aclose)
            receive = hopper.receive
    except BaseException:
        await stack.aclose()
        raise
    return BareLink(send, receive, stack)


async def _connect_websockets(address: str, stack: AsyncExitStack) -> tuple[Send, Receive]:
    from websockets.asyncio.client import connect as ws_connect

    ws = await ws_connect(address, compression=None, ping_interval=None, max_size=LIMIT)
    stack.push_async_callback(ws.close)
    return ws.send, cast(Receive, ws.recv)


async def _connect_aiohttp(address: str, stack: AsyncExitStack) -> tuple[Send, Receive]:
    import aiohttp

    session = aiohttp.ClientSession()
    stack.push_async_callback(session.close)
    ws = await session.ws_connect(
        address, compress=0, heartbeat=None, max_msg_size=LIMIT, autoping=True
    )
    stack.push_async_callback(ws.close)
    binary = aiohttp.WSMsgType.BINARY

    async def receive() -> bytes:
        message = await ws.receive()
        if message.type == binary:
            data: bytes = message.data
            return data
        raise _Closed

    return ws.send_bytes, receive


async def _connect_grpc(address: str, stack: AsyncExitStack) -> tuple[Send, Receive]:
    import grpc
    import grpc.aio

    channel = grpc.aio.insecure_channel(
        address,
        options=[
            ("grpc.max_receive_message_length", LIMIT),
            ("grpc.max_send_message_length", LIMIT),
            ("grpc.use_local_subchannel_pool", 1),
        ],
    )
    stack.push_async_callback(channel.close)
    call = channel.stream_stream(_METHOD)()
    stack.callback(call.cancel)

    async def receive() -> bytes:
        data = await call.read()
        if data is grpc.aio.EOF:
            raise _Closed
        return bytes(data)

    return call.write, receive


async def open_idle_sessions(transport: str, address: str, count: int) -> list[Link]:
    """Open ``count`` bare connections, each answered once by the server, then left idle."""
    links: list[Link] = []
    for _ in range(count):
        link = await connect(transport, address)
        links.append(link)
        await link.control("hello")
    return links
