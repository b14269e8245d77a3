"""The aiohttp backend, over real sockets on 127.0.0.1: alone, against ``websockets``, end to end.

Only aiohttp's own behaviour is here (adopted responses, plain HTTP, close
timeouts, interoperability); the checks every WebSocket backend shares are in
the conformance kit (``WebSocketContract``, ``test_conformance.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import aiohttp
import pytest
from _support import (
    Gateway,
    Probe,
    Recorder,
    assert_tasks_settle,
    client_runner,
    frame,
    text_of,
    wait,
)
from aiohttp import web

from proxy_core import (
    BusFrameMessage,
    ProxyClient,
    WorkerRunner,
    serve_proxy,
)
from proxy_core.errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectError,
    ConnectionClosed,
    MessageTooLarge,
    ProxyError,
)
from proxy_core.plugins import available_transports, load_transport
from proxy_core.testing._harness import waiting_receive
from proxy_core.testing._raw import connection_pair
from proxy_core.transport import Connection, Listener, Transport
from proxy_core_aiohttp import (
    AiohttpConnection,
    AiohttpProxyClient,
    AiohttpProxyServer,
    AiohttpTransport,
)
from proxy_core_websockets import WebSocketsTransport

LIMIT = 1000


@pytest.fixture
def transport() -> AiohttpTransport:
    return AiohttpTransport()


@contextlib.asynccontextmanager
async def aiohttp_app(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]], path: str = "/ws"
) -> AsyncIterator[str]:
    """Serve a bare aiohttp application with one route; yield its URL."""
    app = web.Application()
    app.router.add_route("GET", path, handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"ws://127.0.0.1:{runner.addresses[0][1]}{path}"
    finally:
        await runner.cleanup()


# --- the plug-in ------------------------------------------------------------------


def test_public_names() -> None:
    import proxy_core_aiohttp

    assert sorted(proxy_core_aiohttp.__all__) == [
        "AiohttpConnection",
        "AiohttpProxyClient",
        "AiohttpProxyServer",
        "AiohttpTransport",
    ]
    for name in proxy_core_aiohttp.__all__:
        assert getattr(proxy_core_aiohttp, name).__module__.startswith("proxy_core_aiohttp.")


def test_registered_by_name() -> None:
    assert "aiohttp" in available_transports()
    cls = load_transport("aiohttp")
    assert cls is AiohttpTransport
    assert issubclass(cls, Transport)
    assert (cls.name, cls.schemes) == ("aiohttp", ("ws", "wss"))


# --- round trips ------------------------------------------------------------------


async def test_a_code_one_may_not_send_drops_the_connection(
    transport: AiohttpTransport, probe: Probe, echo_server: Listener
) -> None:
    conn = await wait(transport.connect(echo_server.url))
    await wait(probe.started)
    await wait(conn.aclose(1005))
    outcome = await wait(probe.outcome)
    assert isinstance(outcome, ConnectionClosed)
    assert outcome.code == 1006


async def test_close_from_another_task_ends_a_pending_receive(
    transport: AiohttpTransport, echo_server: Listener
) -> None:
    conn = await wait(transport.connect(echo_server.url))
    pending = await waiting_receive(conn)
    await wait(conn.aclose(4008, "heartbeat timeout"))
    with pytest.raises(ConnectionClosed) as closed:
        await wait(pending)
    assert (closed.value.code, closed.value.reason) == (4008, "heartbeat timeout")


@pytest.mark.parametrize("closer", ["client", "server"])
async def test_close_to_a_peer_that_is_not_reading(closer: str) -> None:
    # aiohttp answers a closing frame only while receiving: the closer waits
    # close_timeout for an answer, then closes; the peer still gets everything.
    transport = AiohttpTransport(close_timeout=0.2)
    async with connection_pair(transport, "ws://127.0.0.1:0/") as (client, server, _):
        closing, peer = (client, server) if closer == "client" else (server, client)
        for n in range(3):
            await closing.send(b"frame %d" % n)
        await wait(closing.aclose(4321, "see you"))
        assert [await wait(peer.receive()) for _ in range(3)] == [
            b"frame 0",
            b"frame 1",
            b"frame 2",
        ]
        with pytest.raises(ConnectionClosed) as closed:
            await wait(peer.receive())
        assert (closed.value.code, closed.value.reason) == (4321, "see you")


def test_close_timeout_must_be_positive() -> None:
    with pytest.raises(ConfigurationError, match="close_timeout"):
        AiohttpTransport(close_timeout=0)


# --- the size limit ---------------------------------------------------------------


async def test_adopted_socket_takes_our_limit(transport: AiohttpTransport, probe: Probe) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()  # aiohttp's own limit is 4 MiB
        await ws.prepare(request)
        await probe.echo(transport.adapt(ws, max_message_bytes=LIMIT))
        return ws

    async with aiohttp_app(handler) as url:
        conn = await wait(transport.connect(url))
        assert isinstance(await wait(probe.started), AiohttpConnection)
        await conn.send(b"a" * LIMIT)
        assert await wait(conn.receive()) == b"a" * LIMIT
        # aiohttp buffered the frame (it is under its own limit); we refuse it
        # and close with 1009, which the client answers while it receives.
        pending = await waiting_receive(conn)
        await conn.send(b"b" * (LIMIT + 1))
        refused = await wait(probe.outcome)
        assert isinstance(refused, MessageTooLarge)
        assert (refused.size, refused.limit) == (LIMIT + 1, LIMIT)
        with pytest.raises(ConnectionClosed) as closed:
            await wait(pending)
        assert closed.value.code == 1009
        await conn.aclose()


# --- authentication, paths and connection failures --------------------------------


def refuse_without_token(headers: Mapping[str, str]) -> bool:
    if headers.get("x-token") != "sesame":
        raise AuthenticationError("bad token")
    return True


async def test_forbidden_without_a_body_is_an_authentication_error(
    transport: AiohttpTransport,
) -> None:
    async def forbid(request: web.Request) -> web.StreamResponse:
        return web.Response(status=403)

    async with aiohttp_app(forbid) as url:
        with pytest.raises(AuthenticationError) as refused:
            await wait(transport.connect(url))
    assert refused.value.reason == "HTTP 403 Forbidden"


async def test_plain_http_requests_never_reach_the_handler(
    transport: AiohttpTransport, probe: Probe, echo_server: Listener
) -> None:
    http_url = echo_server.url.replace("ws://", "http://")
    async with aiohttp.ClientSession() as session:
        async with session.get(http_url) as response:
            assert response.status == 400  # no Upgrade: aiohttp refuses the handshake
        async with session.post(http_url) as response:
            assert response.status == 405
    assert probe.calls == 0


async def test_a_limit_beyond_what_aiohttp_holds(transport: AiohttpTransport, probe: Probe) -> None:
    huge = 2**40  # aiohttp's parser keeps its limit in 32 bits; ours applies alone
    async with transport.serve("ws://127.0.0.1:0/", probe.echo, max_message_bytes=huge) as listener:
        async with await wait(transport.connect(listener.url, max_message_bytes=huge)) as conn:
            await conn.send(b"big enough")
            assert await wait(conn.receive()) == b"big enough"


def test_adapt_refuses_an_unsupported_object(transport: AiohttpTransport) -> None:
    with pytest.raises(ConfigurationError, match="aiohttp.web.WebSocketResponse") as refused:
        transport.adapt(object())
    assert "builtins.object" in str(refused.value)


async def test_adapt_refuses_an_unprepared_response(transport: AiohttpTransport) -> None:
    with pytest.raises(ConfigurationError, match="prepare"):
        transport.adapt(web.WebSocketResponse())
    with pytest.raises(ConfigurationError, match="prepare"):
        AiohttpProxyServer(
            "gateway",
            websocket=web.WebSocketResponse(),
            worker_name="assistant",
            remote_worker_name="acme",
        )


# --- interoperability with the websockets backend ---------------------------------


@pytest.mark.parametrize(
    ("client", "server"),
    [(AiohttpTransport, WebSocketsTransport), (WebSocketsTransport, AiohttpTransport)],
    ids=["aiohttp-to-websockets", "websockets-to-aiohttp"],
)
async def test_interoperates_with_websockets(
    client: type[Transport], server: type[Transport], probe: Probe
) -> None:
    dialer, listener_backend = client(), server()
    async with listener_backend.serve(
        "ws://127.0.0.1:0/proxy",
        probe.echo,
        authenticate=refuse_without_token,
        max_message_bytes=LIMIT,
    ) as listener:
        with pytest.raises(AuthenticationError) as refused:
            await wait(dialer.connect(listener.url, headers={"X-Token": "wrong"}))
        assert refused.value.reason == "bad token"
        with pytest.raises(ConnectError, match="404"):
            await wait(dialer.connect(listener.url.replace("/proxy", "/nope")))

        conn = await wait(
            dialer.connect(listener.url, headers={"X-Token": "sesame"}, max_message_bytes=LIMIT)
        )
        server_side = await wait(probe.started)
        assert server_side.request_headers["x-token"] == "sesame"
        frames = [i.to_bytes(2, "big") * (1 + i % 5) for i in range(200)] + [b"", b"z" * LIMIT]
        for data in frames:
            await conn.send(data)
        assert [await wait(conn.receive()) for _ in frames] == frames
        await conn.send(b"x" * (LIMIT + 1))
        refused_frame = await wait(probe.outcome)
        assert isinstance(refused_frame, MessageTooLarge)
        assert refused_frame.limit == LIMIT
        with pytest.raises(ConnectionClosed) as closed:
            await wait(conn.receive())
        assert closed.value.code == 1009
        await conn.aclose()


@pytest.mark.parametrize(
    ("client", "server"),
    [(AiohttpTransport, WebSocketsTransport), (WebSocketsTransport, AiohttpTransport)],
    ids=["aiohttp-to-websockets", "websockets-to-aiohttp"],
)
async def test_close_codes_cross_backends(client: type[Transport], server: type[Transport]) -> None:
    ended: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def closer(conn: Connection) -> None:
        await conn.send(await conn.receive())
        await conn.aclose(4003, "no common codec")

    async with server().serve("ws://127.0.0.1:0/", closer) as listener:
        conn = await wait(client().connect(listener.url))
        await conn.send(b"ping")
        assert await wait(conn.receive()) == b"ping"
        try:
            await wait(conn.receive())
        except ProxyError as exc:
            ended.set_result(exc)
        await conn.aclose()
    closed = await wait(ended)
    assert isinstance(closed, ConnectionClosed)
    assert (closed.code, closed.reason) == (4003, "no common codec")


# --- end to end: proxies over the aiohttp backend ---------------------------------


async def exchange(acme: Recorder, assistant: Recorder) -> None:
    """Frames cross both ways, in order, and activation crosses too."""
    await acme.activate_worker("assistant", args={"voice": "calm"})
    assert await wait(assistant.activations.get()) == {"voice": "calm"}
    for i in range(20):
        await acme.send_bus_message(frame("acme", "assistant", f"out {i}"))
    for i in range(20):
        got = await assistant.wait_for(lambda m: isinstance(m, BusFrameMessage))
        assert text_of(got) == f"out {i}"
    await assistant.send_bus_message(frame("assistant", "acme", "back"))
    assert text_of(await acme.wait_text("back")) == "back"


@pytest.mark.parametrize(
    ("client", "server"),
    [("aiohttp", "websockets"), ("websockets", "aiohttp")],
)
async def test_serve_proxy_by_name_across_backends(client: str, server: str) -> None:
    """A session between the two WebSocket backends (one backend alone: the conformance kit)."""
    gateway = Gateway()
    async with serve_proxy(
        "ws://127.0.0.1:0/ws",
        transport=server,
        worker_name="assistant",
        remote_worker_name="acme",
        setup=gateway.setup,
        forward_messages=(BusFrameMessage,),
    ) as service:
        proxy = ProxyClient(
            "proxy",
            url=service.url,
            local_worker_name="acme",
            remote_worker_name="assistant",
            forward_messages=(BusFrameMessage,),
            transport=client,
        )
        assert proxy.transport.name == client
        async with client_runner(proxy) as (acme, _):
            assistant = await wait(gateway.assistants.get())
            await exchange(acme, assistant)
            assert proxy.stats.messages_in >= 1
    await assert_tasks_settle()


async def test_existing_aiohttp_app_hosts_a_session() -> None:
    assistants: asyncio.Queue[Recorder] = asyncio.Queue()
    disconnected = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        # The application's own handler, in the shape of the Pipecat documentation.
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        runner = WorkerRunner(handle_sigint=False)
        proxy = AiohttpProxyServer(
            "gateway",
            websocket=ws,
            worker_name="assistant",
            remote_worker_name="acme",
            forward_messages=(BusFrameMessage,),
        )
        assert proxy.websocket is ws

        @proxy.event_handler("on_client_disconnected")
        async def gone(_: object, conn: object) -> None:
            disconnected.set()

        assistant = Recorder("assistant")
        await runner.add_workers(proxy, assistant)
        assistants.put_nowait(assistant)
        await runner.run()
        return ws

    async with aiohttp_app(handler, path="/agent") as url:
        proxy = AiohttpProxyClient(
            "proxy",
            url=url,
            local_worker_name="acme",
            remote_worker_name="assistant",
            forward_messages=(BusFrameMessage,),
            codec="msgpack",
        )
        assert isinstance(proxy.transport, AiohttpTransport)
        async with client_runner(proxy) as (acme, _):
            assistant = await wait(assistants.get())
            await exchange(acme, assistant)
        await wait(disconnected.wait())
    await assert_tasks_settle(timeout=0)
