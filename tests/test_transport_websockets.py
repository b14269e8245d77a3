"""The reference ``websockets`` backend, over real sockets on 127.0.0.1.

Every wait is bounded (``asyncio.wait_for(..., TIMEOUT)``) and nothing sleeps
for a fixed time, so the tests are quick when all is well and fail rather than
hang when it is not.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from websockets.asyncio.client import connect as raw_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as raw_serve

from proxy_core.errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectError,
    ConnectionClosed,
    MessageTooLarge,
    ProtocolError,
    ProxyError,
    TLSError,
)
from proxy_core.transport import Connection, Listener
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

TIMEOUT = 30.0
LIMIT = 1000
T = TypeVar("T")

needs_fastapi = pytest.mark.skipif(
    uvicorn is None,
    reason="fastapi and uvicorn are not installed: pip install 'proxy-core[fastapi]' "
    "(python3 scripts/dev.py test installs them)",
)


async def wait(awaitable: Awaitable[T]) -> T:
    """Await with a generous bound, so a bug fails the test instead of hanging it."""
    return await asyncio.wait_for(awaitable, TIMEOUT)


@dataclass
class Probe:
    """What a server-side handler saw: when it started and how it ended."""

    started: asyncio.Future[Connection] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    outcome: asyncio.Future[BaseException] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    protocol_errors: list[ProtocolError] = field(default_factory=list)
    calls: int = 0

    async def echo(self, conn: Connection) -> None:
        """Echo binary frames, note text frames, and record how the connection ended."""
        self.calls += 1
        self.started.set_result(conn)
        while True:
            try:
                data = await conn.receive()
            except ProtocolError as exc:
                self.protocol_errors.append(exc)
                continue
            except ProxyError as exc:
                self.outcome.set_result(exc)
                return
            await conn.send(data)


@pytest.fixture
def transport() -> WebSocketsTransport:
    return WebSocketsTransport()


@pytest.fixture
async def probe() -> Probe:
    return Probe()


@pytest.fixture
async def echo_server(transport: WebSocketsTransport, probe: Probe) -> AsyncIterator[Listener]:
    async with transport.serve("ws://127.0.0.1:0/proxy", probe.echo) as listener:
        yield listener


async def raw_server_url(
    handler: Callable[[ServerConnection], Awaitable[None]],
) -> tuple[Any, str]:
    """Start a bare ``websockets`` server on a free port; return it and its URL."""
    server = await raw_serve(handler, "127.0.0.1", 0, compression=None)
    return server, f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"


# --- round trips ------------------------------------------------------------------


async def test_echo_round_trip(transport: WebSocketsTransport, probe: Probe) -> None:
    async with transport.serve("ws://127.0.0.1:0/proxy", probe.echo) as listener:
        assert listener.url.startswith("ws://127.0.0.1:")
        assert listener.url.endswith("/proxy")
        assert not listener.url.startswith("ws://127.0.0.1:0/")
        conn = await wait(transport.connect(listener.url))
        assert isinstance(conn, WebSocketsConnection)
        await conn.send(b"hello")
        assert await wait(conn.receive()) == b"hello"
        await conn.send(b"")
        assert await wait(conn.receive()) == b""
        await wait(conn.aclose())
        await wait(conn.aclose())  # idempotent
        with pytest.raises(ConnectionClosed):
            await conn.send(b"late")
        with pytest.raises(ConnectionClosed):
            await wait(conn.receive())
        outcome = await wait(probe.outcome)
        assert isinstance(outcome, ConnectionClosed)
        assert outcome.code == 1000
    others = asyncio.all_tasks() - {asyncio.current_task()}
    assert not others, f"leaked tasks: {others}"


async def test_misuse_is_ours_to_report(
    transport: WebSocketsTransport, echo_server: Listener
) -> None:
    conn = await wait(transport.connect(echo_server.url))
    pending = asyncio.create_task(conn.receive())
    await conn.send(b"wake")  # the echo lets `pending` finish once checked
    with pytest.raises(ConfigurationError, match="another receive"):
        await wait(conn.receive())
    assert await wait(pending) == b"wake"
    await wait(conn.aclose(1006))  # not a code one may send: dropped, not raised
    with pytest.raises(ConnectionClosed):
        await wait(conn.receive())


async def test_thousand_frames_keep_their_order(
    transport: WebSocketsTransport, echo_server: Listener
) -> None:
    frames = [i.to_bytes(4, "big") * (1 + i % 7) for i in range(1000)]
    async with await wait(transport.connect(echo_server.url)) as conn:

        async def send_all() -> None:
            for frame in frames:
                await conn.send(frame)

        sender = asyncio.create_task(send_all())
        received = [await wait(conn.receive()) for _ in frames]
        await wait(sender)
    assert received == frames


async def test_async_iteration_ends_at_close(
    transport: WebSocketsTransport, echo_server: Listener
) -> None:
    conn = await wait(transport.connect(echo_server.url))
    await conn.send(b"one")
    seen = []
    async for data in conn:
        seen.append(data)
        await conn.aclose()
    assert seen == [b"one"]


# --- the size limit ---------------------------------------------------------------


async def test_server_refuses_a_frame_over_the_limit(
    transport: WebSocketsTransport, probe: Probe
) -> None:
    async with transport.serve(
        "ws://127.0.0.1:0/", probe.echo, max_message_bytes=LIMIT
    ) as listener:
        conn = await wait(transport.connect(listener.url))
        await conn.send(b"a" * LIMIT)
        assert await wait(conn.receive()) == b"a" * LIMIT
        await conn.send(b"b" * (LIMIT + 1))
        refused = await wait(probe.outcome)
        assert isinstance(refused, MessageTooLarge)
        assert (refused.size, refused.limit) == (LIMIT + 1, LIMIT)
        with pytest.raises(ConnectionClosed) as closed:
            await wait(conn.receive())
        assert closed.value.code == 1009
        assert not isinstance(closed.value, MessageTooLarge)


async def test_fragmented_message_over_the_limit_is_refused_whole(
    transport: WebSocketsTransport, probe: Probe
) -> None:
    async with transport.serve(
        "ws://127.0.0.1:0/", probe.echo, max_message_bytes=LIMIT
    ) as listener:
        async with raw_connect(listener.url, compression=None) as ws:
            await ws.send([b"a" * 600, b"b" * 600])
            refused = await wait(probe.outcome)
    assert isinstance(refused, MessageTooLarge)
    assert (refused.size, refused.limit) == (1200, LIMIT)


async def test_client_refuses_a_frame_over_the_limit(transport: WebSocketsTransport) -> None:
    ended: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def handler(conn: Connection) -> None:
        await conn.send(b"a" * LIMIT)
        await conn.send(b"b" * (LIMIT + 1))
        try:
            await conn.receive()
        except ProxyError as exc:
            ended.set_result(exc)

    async with transport.serve("ws://127.0.0.1:0", handler) as listener:
        conn = await wait(transport.connect(listener.url, max_message_bytes=LIMIT))
        assert await wait(conn.receive()) == b"a" * LIMIT
        with pytest.raises(MessageTooLarge) as refused:
            await wait(conn.receive())
        assert (refused.value.size, refused.value.limit) == (LIMIT + 1, LIMIT)
        with pytest.raises(ConnectionClosed):  # reported once, then plainly closed
            await wait(conn.receive())
        server_side = await wait(ended)
        assert isinstance(server_side, ConnectionClosed)
        assert server_side.code == 1009
        assert not isinstance(server_side, MessageTooLarge)


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


# --- text frames ------------------------------------------------------------------


async def test_text_frame_from_a_client_is_a_protocol_error(
    probe: Probe, echo_server: Listener
) -> None:
    async with raw_connect(echo_server.url, compression=None) as ws:
        await ws.send("not binary")
        await ws.send(b"still works")
        assert await wait(ws.recv()) == b"still works"
    assert len(probe.protocol_errors) == 1
    assert "text frame" in str(probe.protocol_errors[0])


async def test_text_frame_from_a_server_is_a_protocol_error(
    transport: WebSocketsTransport,
) -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send("not binary")
        await ws.send(b"binary")
        await ws.send(await ws.recv())

    server, url = await raw_server_url(handler)
    async with server:
        async with await wait(transport.connect(url)) as conn:
            with pytest.raises(ProtocolError, match="text frame"):
                await wait(conn.receive())
            assert await wait(conn.receive()) == b"binary"
            await conn.send(b"back")
            assert await wait(conn.receive()) == b"back"


# --- authentication, paths and connection failures --------------------------------


def refuse_without_token(headers: Mapping[str, str]) -> bool:
    if headers.get("x-token") != "sesame":
        raise AuthenticationError("bad token")
    return True


async def refuse_async(headers: Mapping[str, str]) -> bool:
    return headers.get("x-token") == "sesame"


def refuse_by_crashing(headers: Mapping[str, str]) -> bool:
    raise ZeroDivisionError("hook bug")


@pytest.mark.parametrize(
    ("hook", "reason"),
    [
        (refuse_without_token, "bad token"),
        (refuse_async, "unauthorized"),
        (refuse_by_crashing, "authentication failed"),
    ],
)
async def test_authentication_refusal(
    transport: WebSocketsTransport,
    probe: Probe,
    hook: Callable[[Mapping[str, str]], Any],
    reason: str,
) -> None:
    async with transport.serve("ws://127.0.0.1:0/proxy", probe.echo, authenticate=hook) as listener:
        with pytest.raises(AuthenticationError) as refused:
            await wait(transport.connect(listener.url, headers={"X-Token": "wrong"}))
        assert refused.value.reason == reason
        assert probe.calls == 0
        if hook is not refuse_by_crashing:
            conn = await wait(transport.connect(listener.url, headers={"X-Token": "sesame"}))
            await conn.send(b"in")
            assert await wait(conn.receive()) == b"in"
            await conn.aclose()
            assert probe.calls == 1


async def test_wrong_path_is_a_connect_error(
    transport: WebSocketsTransport, probe: Probe, echo_server: Listener
) -> None:
    wrong = echo_server.url.replace("/proxy", "/elsewhere")
    with pytest.raises(ConnectError, match="404") as failed:
        await wait(transport.connect(wrong))
    assert wrong in str(failed.value)
    assert probe.calls == 0


async def test_root_url_accepts_any_path(transport: WebSocketsTransport, probe: Probe) -> None:
    async with transport.serve("ws://127.0.0.1:0", probe.echo) as listener:
        async with await wait(transport.connect(listener.url + "/any/path?q=1")) as conn:
            await conn.send(b"x")
            assert await wait(conn.receive()) == b"x"


async def test_closed_port_is_a_connect_error(transport: WebSocketsTransport) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"ws://127.0.0.1:{port}/"
    with pytest.raises(ConnectError) as failed:
        await wait(transport.connect(url))
    assert url in str(failed.value)
    assert isinstance(failed.value.__cause__, OSError)


async def test_credentials_in_the_url_stay_out_of_errors(
    transport: WebSocketsTransport,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectError) as failed:
        await wait(transport.connect(f"ws://user:hunter2@127.0.0.1:{port}/"))
    assert "hunter2" not in str(failed.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/", "tcp://x", "127.0.0.1:80"])
async def test_other_schemes_are_a_configuration_error(
    transport: WebSocketsTransport, url: str
) -> None:
    with pytest.raises(ConfigurationError, match="ws, wss"):
        await transport.connect(url)
    with pytest.raises(ConfigurationError, match="ws, wss"):
        transport.serve(url, Probe().echo)


async def test_ssl_must_match_the_scheme(transport: WebSocketsTransport) -> None:
    context = ssl.create_default_context()
    with pytest.raises(ConfigurationError):
        await transport.connect("ws://127.0.0.1:1/", ssl=context)
    with pytest.raises(ConfigurationError):
        transport.serve("wss://127.0.0.1:0/", Probe().echo)
    with pytest.raises(ConfigurationError):
        transport.serve("ws://127.0.0.1:0/", Probe().echo, ssl=context)


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


# --- what the handler sees, and how connections end -------------------------------


async def test_request_headers_and_address(
    transport: WebSocketsTransport, probe: Probe, echo_server: Listener
) -> None:
    conn = await wait(
        transport.connect(echo_server.url, headers={"X-Custom-Header": "custom value"})
    )
    server_side = await wait(probe.started)
    assert server_side.request_headers["x-custom-header"] == "custom value"
    assert all(name == name.lower() for name in server_side.request_headers)
    assert (server_side.remote_address or "").startswith("127.0.0.1:")
    assert conn.request_headers == {}
    assert conn.remote_address == echo_server.url.split("/")[2]
    await conn.aclose()


async def test_peer_vanishing_mid_stream(probe: Probe, echo_server: Listener) -> None:
    async with raw_connect(echo_server.url, compression=None) as ws:
        await ws.send(b"one")
        assert await wait(ws.recv()) == b"one"
        ws.transport.abort()
        outcome = await wait(probe.outcome)
    assert isinstance(outcome, ConnectionClosed)
    assert outcome.code == 1006


async def test_leaving_serve_closes_open_connections(
    transport: WebSocketsTransport, probe: Probe
) -> None:
    async with transport.serve("ws://127.0.0.1:0/", probe.echo) as listener:
        conn = await wait(transport.connect(listener.url))
        await wait(probe.started)
    with pytest.raises(ConnectionClosed) as closed:
        await wait(conn.receive())
    assert closed.value.code == 1001
    assert isinstance(await wait(probe.outcome), ConnectionClosed)
    with pytest.raises(ConnectError):
        await wait(transport.connect(listener.url))


async def test_busy_address_is_a_connect_error(transport: WebSocketsTransport) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        url = f"ws://127.0.0.1:{sock.getsockname()[1]}/"
        with pytest.raises(ConnectError, match="could not listen"):
            async with transport.serve(url, Probe().echo):
                pass


async def test_silent_server_times_out_as_a_connect_error(
    transport: WebSocketsTransport,
) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    async with server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        with pytest.raises(ConnectError, match="timed out") as failed:
            await wait(transport.connect(url, open_timeout=0.2))
        assert isinstance(failed.value.__cause__, TimeoutError)
        for writer in accepted:
            writer.close()


async def test_wss_round_trip(transport: WebSocketsTransport, probe: Probe) -> None:
    trustme = pytest.importorskip(
        "trustme",
        reason="trustme is not installed: the TLS tests make their certificates "
        "with it (python3 scripts/dev.py test installs it)",
    )
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with transport.serve("wss://127.0.0.1:0/", probe.echo, ssl=server_context) as listener:
        assert listener.url.startswith("wss://127.0.0.1:")
        async with await wait(transport.connect(listener.url, ssl=client_context)) as conn:
            await conn.send(b"secret")
            assert await wait(conn.receive()) == b"secret"
        # Without a context, the system trust store does not know our test CA.
        with pytest.raises(TLSError, match="certificate verification failed"):
            await wait(transport.connect(listener.url))


async def test_shutdown_cancels_a_handler_that_ignores_its_connection(
    transport: WebSocketsTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    import proxy_core.transport as module

    monkeypatch.setattr(module, "SHUTDOWN_GRACE", 0.5)
    started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    cancelled: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def stubborn(conn: Connection) -> None:
        started.set_result(None)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set_result(None)
            raise

    async with transport.serve("ws://127.0.0.1:0/", stubborn) as listener:
        conn = await wait(transport.connect(listener.url))
        await wait(started)
    assert cancelled.done()
    with pytest.raises(ConnectionClosed):
        await wait(conn.receive())


async def test_listener_aclose_is_idempotent(transport: WebSocketsTransport) -> None:
    async with transport.serve("ws://127.0.0.1:0/", Probe().echo) as listener:
        await wait(listener.aclose())
        await wait(listener.aclose())


async def test_raising_handler_closes_with_1011(
    transport: WebSocketsTransport, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(conn: Connection) -> None:
        raise RuntimeError("handler bug")

    with caplog.at_level(logging.ERROR, logger="proxy_core_websockets.transport"):
        async with transport.serve("ws://127.0.0.1:0/", handler) as listener:
            conn = await wait(transport.connect(listener.url))
            with pytest.raises(ConnectionClosed) as closed:
                await wait(conn.receive())
    assert closed.value.code == 1011
    assert any("handler bug" in (r.exc_text or "") for r in caplog.records)


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
