"""The gRPC backend, over a real ``grpc.aio`` server on 127.0.0.1 (port 0).

Nothing sleeps to synchronise and every wait is bounded (``_support.wait``).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
import grpc.aio
import pytest
from _support import (
    TIMEOUT,
    Gateway,
    Probe,
    Recorder,
    assert_tasks_settle,
    client_runner,
    wait,
)

from proxy_core import (
    AudioRawFrame,
    BusFrameMessage,
    BusMessage,
    ProxyClient,
    TextFrame,
    WorkerRunner,
    serve_proxy,
)
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
from proxy_core.plugins import load_transport, resolve_transport
from proxy_core.testing._raw import connection_pair
from proxy_core.transport import Connection, Listener
from proxy_core_grpc import (
    GrpcProxyClient,
    GrpcProxyServer,
    GrpcServerConnection,
    GrpcTransport,
)
from proxy_core_grpc._generated.service_pb2 import Frame
from proxy_core_grpc._wire import METHOD_PATH, decode_frame, encode_frame

LIMIT = 1000


@pytest.fixture
def transport() -> GrpcTransport:
    return GrpcTransport()


def target_of(url: str) -> str:
    return url.split("://", 1)[1]


@contextlib.asynccontextmanager
async def raw_channel(url: str) -> AsyncIterator[Any]:
    """A bare ``grpc.aio`` channel to a plaintext server."""
    channel = grpc.aio.insecure_channel(target_of(url))
    try:
        yield channel
    finally:
        await channel.close()


def raw_call(channel: Any, metadata: Any = None) -> Any:
    """Start a ``Connect`` call that sends and receives raw ``Frame`` bytes."""
    return channel.stream_stream(METHOD_PATH)(metadata=metadata)


@contextlib.asynccontextmanager
async def raw_server(
    behavior: Callable[[Any, Any], Awaitable[None]],
) -> AsyncIterator[str]:
    """Serve ``Connect`` with a bare ``grpc.aio`` servicer; yield its URL."""
    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(behavior)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("proxy_core.v1.ProxySession", {"Connect": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"grpc://127.0.0.1:{port}"
    finally:
        await server.stop(None)


# --- the Frame wire format ----------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16383, 16384, 2**20])
def test_hand_framing_equals_protobuf(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    wire = encode_frame(payload)
    assert wire == Frame(data=payload).SerializeToString()
    assert Frame.FromString(wire).data == payload
    assert decode_frame(wire) == payload
    assert decode_frame(wire, size) == payload


@pytest.mark.parametrize(
    "wire",
    [
        b"\x12\x01a",  # field 2
        b"\x0a\x02a",  # shorter than declared
        b"\x0a\x01ab",  # longer than declared
        b"\x0a\x01a\x10\x01",  # an unknown field after data
        b"\x0a\x80",  # truncated varint
        b"\x0a" + b"\xff" * 11,  # overlong varint
    ],
)
def test_malformed_frames_are_protocol_errors(wire: bytes) -> None:
    with pytest.raises(ProtocolError, match="malformed Frame"):
        decode_frame(wire)


def test_declared_length_is_checked_against_the_limit_first() -> None:
    with pytest.raises(MessageTooLarge) as refused:
        decode_frame(b"\x0a\x80\x80\x04", LIMIT)  # declares 65536 bytes, sends none
    assert (refused.value.size, refused.value.limit) == (65536, LIMIT)


def test_method_path_comes_from_the_descriptor() -> None:
    assert METHOD_PATH == "/proxy_core.v1.ProxySession/Connect"


def test_found_by_name_through_the_entry_point() -> None:
    assert load_transport("grpc") is GrpcTransport
    assert isinstance(resolve_transport("grpc"), GrpcTransport)
    assert GrpcTransport.schemes == ("grpc", "grpcs")


# --- round trips ------------------------------------------------------------------


async def test_writes_into_a_call_the_server_ended_leave_nothing_behind(
    transport: GrpcTransport,
) -> None:
    """The server sends a frame and ends the call (1002) while the client goes on writing
    without reading: a write fails,
    the client's sends and receives raise ConnectionClosed, and after aclose no task of
    gRPC's own is left waiting for a status that its core would never deliver."""
    ended = asyncio.Event()

    async def handler(conn: Connection) -> None:
        await conn.receive()
        await conn.send(b"goodbye")  # a frame the client never reads
        await conn.aclose(1002, "protocol error")
        ended.set()

    async with transport.serve("grpc://127.0.0.1:0", handler) as listener:
        conn = await wait(transport.connect(listener.url))
        await conn.send(b"first")
        await wait(ended.wait())
        with pytest.raises(ConnectionClosed):
            for _ in range(10_000):  # bounded: the call ended, a write soon fails
                await conn.send(b"more")
        with pytest.raises(ConnectionClosed):
            await conn.send(b"after")
        await wait(conn.aclose())
    await assert_tasks_settle(TIMEOUT)


async def test_concurrent_sends_queue_up_on_both_sides(transport: GrpcTransport) -> None:
    frames = [bytes([i]) * 50_000 for i in range(20)]

    async def handler(conn: Connection) -> None:
        await asyncio.gather(*(conn.send(frame) for frame in frames))
        for _ in range(5):
            await conn.send(await conn.receive())

    async with transport.serve("grpc://127.0.0.1:0", handler) as listener:
        async with await wait(transport.connect(listener.url)) as conn:
            received = [await wait(conn.receive()) for _ in frames]
            assert sorted(received) == frames
            await wait(asyncio.gather(*(conn.send(frame) for frame in frames[:5])))
            echoed = [await wait(conn.receive()) for _ in range(5)]
            assert sorted(echoed) == frames[:5]


async def test_a_client_built_from_the_generated_stub_interoperates(
    probe: Probe, echo_server: Listener
) -> None:
    from proxy_core_grpc._generated.service_pb2_grpc import ProxySessionStub

    async with raw_channel(echo_server.url) as channel:
        call = ProxySessionStub(channel).Connect(metadata=(("x-from", "stub"),))
        for payload in (b"", b"a", b"b" * 70_000):
            await call.write(Frame(data=payload))
            echoed = await wait(call.read())
            assert isinstance(echoed, Frame)
            assert echoed.data == payload
        await call.done_writing()
        assert await wait(call.read()) is grpc.aio.EOF
        assert await wait(call.code()) == grpc.StatusCode.OK
        trailing = dict(await call.trailing_metadata())
        assert trailing["proxy-core-close-code"] == "1000"
    server_side = await wait(probe.started)
    assert server_side.request_headers["x-from"] == "stub"


# --- the size limit ---------------------------------------------------------------


async def test_server_refuses_a_frame_far_over_the_limit(
    transport: GrpcTransport, probe: Probe
) -> None:
    # Beyond about twice the limit gRPC refuses the message itself; the
    # handler sees the call end, the client still learns why.
    async with transport.serve(
        "grpc://127.0.0.1:0", probe.echo, max_message_bytes=LIMIT
    ) as listener:
        conn = await wait(transport.connect(listener.url))
        await conn.send(b"b" * (10 * LIMIT))
        with pytest.raises(ConnectionClosed) as closed:
            await wait(conn.receive())
        assert closed.value.code == 1009
        outcome = await wait(probe.outcome)
        assert isinstance(outcome, ConnectionClosed)
        await conn.aclose()


async def test_sending_over_ones_own_limit_is_refused_locally(
    transport: GrpcTransport, echo_server: Listener, probe: Probe
) -> None:
    conn = await wait(transport.connect(echo_server.url, max_message_bytes=LIMIT))
    with pytest.raises(MessageTooLarge):
        await conn.send(b"x" * (LIMIT + 1))
    await conn.send(b"x" * LIMIT)  # the connection is still fine
    assert await wait(conn.receive()) == b"x" * LIMIT
    server_side = await wait(probe.started)
    with pytest.raises(MessageTooLarge):
        await server_side.send(b"y" * (2**20 + 1))
    await conn.aclose()


# --- malformed messages -----------------------------------------------------------


async def test_malformed_frame_from_a_client_is_a_protocol_error(
    probe: Probe, echo_server: Listener
) -> None:
    async with raw_channel(echo_server.url) as channel:
        call = raw_call(channel)
        await call.write(b"\x12\x01a")  # field 2, not a Frame of ours
        await call.write(encode_frame(b"still works"))
        assert await wait(call.read()) == encode_frame(b"still works")
        call.cancel()
    assert len(probe.protocol_errors) == 1
    assert "malformed Frame" in str(probe.protocol_errors[0])


async def test_malformed_frame_from_a_server_is_a_protocol_error(
    transport: GrpcTransport,
) -> None:
    async def behavior(requests: Any, context: Any) -> None:
        await context.send_initial_metadata(())
        await context.write(b"\x0a\x05abc")
        await context.write(encode_frame(b"fine"))
        await context.write(await context.read())

    async with raw_server(behavior) as url:
        async with await wait(transport.connect(url)) as conn:
            with pytest.raises(ProtocolError, match="malformed Frame"):
                await wait(conn.receive())
            assert await wait(conn.receive()) == b"fine"
            await conn.send(b"back")
            assert await wait(conn.receive()) == b"back"


# --- authentication, URLs and connection failures ---------------------------------


def refuse_without_token(headers: Mapping[str, str]) -> bool:
    if headers.get("x-token") != "sesame":
        raise AuthenticationError("bad token")
    return True


async def test_refusal_is_unauthenticated_status_for_any_grpc_client(
    transport: GrpcTransport, probe: Probe
) -> None:
    async with transport.serve(
        "grpc://127.0.0.1:0", probe.echo, authenticate=refuse_without_token
    ) as listener:
        async with raw_channel(listener.url) as channel:
            call = raw_call(channel, metadata=(("x-token", "nope"),))
            assert await wait(call.code()) == grpc.StatusCode.UNAUTHENTICATED
            assert await call.details() == "bad token"
    assert probe.calls == 0


async def test_a_server_without_the_service_is_a_connect_error(
    transport: GrpcTransport,
) -> None:
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        with pytest.raises(ConnectError, match="does not serve"):
            await wait(transport.connect(f"grpc://127.0.0.1:{port}"))
    finally:
        await server.stop(None)


async def test_an_ssl_context_is_refused_with_advice(transport: GrpcTransport) -> None:
    import ssl

    context = ssl.create_default_context()
    with pytest.raises(ConfigurationError, match="channel_credentials"):
        await transport.connect("grpcs://127.0.0.1:1", ssl=context)
    with pytest.raises(ConfigurationError, match="server_credentials"):
        transport.serve("grpcs://127.0.0.1:0", Probe().echo, ssl=context)
    with pytest.raises(ConfigurationError, match="server_credentials"):
        transport.serve("grpcs://127.0.0.1:0", Probe().echo)


@pytest.mark.parametrize(
    "headers",
    [{"bad header": "x"}, {"grpc-timeout": "1S"}, {"x-bin": "x"}, {"x-token": "caf\u00e9"}],
)
async def test_headers_that_cannot_be_metadata(
    transport: GrpcTransport, headers: dict[str, str]
) -> None:
    with pytest.raises(ConfigurationError, match="metadata"):
        await transport.connect("grpc://127.0.0.1:1", headers=headers)


def test_adapt_is_not_applicable(transport: GrpcTransport) -> None:
    with pytest.raises(ConfigurationError, match="cannot adopt"):
        transport.adapt(object())


# --- what the handler sees, and how connections end -------------------------------


async def test_each_connection_has_a_tcp_connection_of_its_own(
    transport: GrpcTransport,
) -> None:
    peers: list[str | None] = []

    async def handler(conn: Connection) -> None:
        peers.append(conn.remote_address)
        await conn.send(await conn.receive())

    async with transport.serve("grpc://127.0.0.1:0", handler) as listener:
        conns = [await wait(transport.connect(listener.url)) for _ in range(3)]
        for conn in conns:
            await conn.send(b"x")
            assert await wait(conn.receive()) == b"x"
        for conn in conns:
            await conn.aclose()
    assert len(set(peers)) == 3, peers


@pytest.mark.parametrize(
    ("code", "reason"),
    [(1000, ""), (1001, "going away"), (1009, "too big"), (4001, "no"), (4008, "h\u00e9artbeat %")],
)
async def test_server_close_code_and_reason_reach_the_client(
    transport: GrpcTransport, code: int, reason: str
) -> None:
    async def handler(conn: Connection) -> None:
        await conn.send(await conn.receive())
        await conn.aclose(code, reason)
        with pytest.raises(ConnectionClosed):
            await conn.receive()

    async with transport.serve("grpc://127.0.0.1:0", handler) as listener:
        conn = await wait(transport.connect(listener.url))
        await conn.send(b"last")
        assert await wait(conn.receive()) == b"last"
        with pytest.raises(ConnectionClosed) as closed:
            await wait(conn.receive())
        assert (closed.value.code, closed.value.reason) == (code, reason)
        with pytest.raises(ConnectionClosed):
            await conn.send(b"after")
        await conn.aclose()


async def test_frames_sent_before_the_clients_close_arrive_when_read_later(
    transport: GrpcTransport,
) -> None:
    async with connection_pair(transport, "grpc://127.0.0.1:0") as (conn, server_side, _):
        for n in range(3):
            await conn.send(b"frame %d" % n)
        await wait(conn.aclose(4321, "see you"))  # returns before the server reads
        assert [await wait(server_side.receive()) for _ in range(3)] == [
            b"frame 0",
            b"frame 1",
            b"frame 2",
        ]
        with pytest.raises(ConnectionClosed) as closed:
            await wait(server_side.receive())
        assert closed.value.code is None  # gRPC carries no code from a client
        with pytest.raises(ConnectionClosed):
            await server_side.send(b"to a closed peer")
    await assert_tasks_settle(TIMEOUT)


async def test_closing_client_discards_what_the_server_still_sends(
    transport: GrpcTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    import proxy_core_grpc.connection as module

    # Were the closing client not draining, it would wait this long.
    monkeypatch.setattr(module, "_CLOSE_TIMEOUT", 3 * TIMEOUT)
    ended: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def handler(conn: Connection) -> None:
        for _ in range(50):
            await conn.send(b"z" * 100_000)
        try:
            await conn.receive()
        except ProxyError as exc:
            ended.set_result(exc)

    async with transport.serve("grpc://127.0.0.1:0", handler) as listener:
        conn = await wait(transport.connect(listener.url))
        assert await wait(conn.receive()) == b"z" * 100_000
        await wait(conn.aclose())
        assert isinstance(await wait(ended), ConnectionClosed)
        closers = set(module._closers)  # the client call, closing in the background
        assert closers
        await asyncio.wait(closers, timeout=TIMEOUT)
        assert all(task.done() for task in closers)


async def test_a_send_racing_the_servers_close_is_a_typed_close(
    transport: GrpcTransport,
) -> None:
    # The server ends the call while the client still sends: whatever the
    # interleaving, the client sees ConnectionClosed, never a gRPC error.
    async def handler(conn: Connection) -> None:
        await conn.receive()
        await conn.aclose(4008, "bye")

    async with transport.serve("grpc://127.0.0.1:0", handler) as listener:
        conn = await wait(transport.connect(listener.url))
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(10_000):
                await conn.send(b"x" * 100)
        assert closed.value.code in (4008, 1006)
        with pytest.raises(ConnectionClosed):
            await wait(conn.receive())
        await conn.aclose()


@pytest.mark.parametrize("code", [1000, 4001, 1011])
async def test_a_call_closed_right_after_accepting_still_connects(
    transport: GrpcTransport, code: int
) -> None:
    # The client may learn of the close together with the acceptance.
    async def handler(conn: Connection) -> None:
        await conn.aclose(code, "at once")

    async with transport.serve("grpc://127.0.0.1:0", handler) as listener:
        for _ in range(20):
            conn = await wait(transport.connect(listener.url))
            with pytest.raises(ConnectionClosed) as closed:
                await wait(conn.receive())
            assert (closed.value.code, closed.value.reason) == (code, "at once")
            await conn.aclose()


async def test_server_close_reason_is_bounded(transport: GrpcTransport) -> None:
    async def handler(conn: Connection) -> None:
        await conn.aclose(4000, "\u00e9" * 200)

    async with transport.serve("grpc://127.0.0.1:0", handler) as listener:
        conn = await wait(transport.connect(listener.url))
        with pytest.raises(ConnectionClosed) as closed:
            await wait(conn.receive())
        assert closed.value.code == 4000
        assert closed.value.reason == "\u00e9" * 61  # 123 bytes of UTF-8, whole characters
        await conn.aclose()


@pytest.mark.parametrize("how", ["cancel", "close_channel"])
async def test_client_vanishing_mid_stream(probe: Probe, echo_server: Listener, how: str) -> None:
    async with raw_channel(echo_server.url) as channel:
        call = raw_call(channel)
        await call.write(encode_frame(b"one"))
        assert await wait(call.read()) == encode_frame(b"one")
        if how == "cancel":
            call.cancel()
        else:
            await channel.close()
        outcome = await wait(probe.outcome)
    assert isinstance(outcome, ConnectionClosed)
    assert outcome.code is None


async def test_client_process_dying_mid_stream(probe: Probe, echo_server: Listener) -> None:
    code = (
        "import asyncio, os, grpc\n"
        "async def main():\n"
        f"    channel = grpc.aio.insecure_channel({target_of(echo_server.url)!r})\n"
        f"    call = channel.stream_stream({METHOD_PATH!r})()\n"
        "    await call.write(b'\\x0a\\x03one')\n"
        "    await call.read()\n"
        "    os._exit(0)\n"
        "asyncio.run(main())\n"
    )
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
    assert await wait(process.wait()) == 0
    outcome = await wait(probe.outcome)
    assert isinstance(outcome, ConnectionClosed)
    assert outcome.code is None


# --- TLS --------------------------------------------------------------------------


async def test_grpcs_round_trip_and_wrong_ca(probe: Probe) -> None:
    trustme = pytest.importorskip(
        "trustme",
        reason="trustme is not installed: the TLS tests make their certificates "
        "with it (python3 scripts/dev.py test installs it)",
    )
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_credentials = grpc.ssl_server_credentials(
        [(cert.private_key_pem.bytes(), cert.cert_chain_pems[0].bytes())]
    )
    server = GrpcTransport(server_credentials=server_credentials)
    async with server.serve("grpcs://127.0.0.1:0", probe.echo) as listener:
        assert listener.url.startswith("grpcs://127.0.0.1:")
        client = GrpcTransport(
            channel_credentials=grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
        )
        async with await wait(client.connect(listener.url)) as conn:
            await conn.send(b"secret")
            assert await wait(conn.receive()) == b"secret"
        stranger = trustme.CA()
        wrong = GrpcTransport(
            channel_credentials=grpc.ssl_channel_credentials(
                root_certificates=stranger.cert_pem.bytes()
            )
        )
        with pytest.raises(TLSError, match="certificate verification failed") as failed:
            await wait(wrong.connect(listener.url, open_timeout=5.0))
        assert listener.url in str(failed.value)
        # Plaintext to a TLS port fails too, as a ConnectError.
        with pytest.raises(ConnectError):
            plain = listener.url.replace("grpcs://", "grpc://")
            await wait(GrpcTransport().connect(plain, open_timeout=5.0))
    assert probe.calls == 1


# --- end to end: proxies found by name --------------------------------------------


def is_frame(message: BusMessage) -> bool:
    return isinstance(message, BusFrameMessage)


async def exchange_both_ways(gateway: Gateway, client: ProxyClient) -> None:
    """Connect ``client``, then cross a text and an audio frame each way."""
    async with client_runner(client) as (acme, _):
        assistant = await wait(gateway.assistants.get())
        outbound: list[BusFrameMessage] = [
            BusFrameMessage("acme", "assistant", TextFrame("hello over grpc")),
            BusFrameMessage("acme", "assistant", AudioRawFrame(bytes(range(256)) * 8, 16000, 1)),
        ]
        for message in outbound:
            await acme.send_bus_message(message)
            assert await assistant.wait_for(is_frame) == message
        inbound: list[BusFrameMessage] = [
            BusFrameMessage("assistant", "acme", TextFrame("HELLO")),
            BusFrameMessage("assistant", "acme", AudioRawFrame(b"\x00\xff" * 800, 24000, 2)),
        ]
        for message in inbound:
            await assistant.send_bus_message(message)
            assert await acme.wait_for(is_frame) == message
        assert client.stats.messages_in == 2


async def test_grpc_proxy_client_with_metadata_authentication() -> None:
    """``GrpcProxyClient`` against ``serve_proxy`` by name, its headers sent as gRPC metadata
    (sessions over gRPC with every codec, and refusals: the conformance kit)."""
    gateway = Gateway()

    def token_required(headers: Mapping[str, str]) -> bool:
        return headers.get("authorization") == "Bearer sesame"

    async with serve_proxy(
        "grpc://127.0.0.1:0",
        transport="grpc",
        worker_name="assistant",
        remote_worker_name="acme",
        setup=gateway.setup,
        forward_messages=(BusFrameMessage,),
        authenticate=token_required,
    ) as service:
        assert service.url.startswith("grpc://127.0.0.1:")
        options: dict[str, Any] = {
            "url": service.url,
            "local_worker_name": "acme",
            "remote_worker_name": "assistant",
            "forward_messages": (BusFrameMessage,),
            "headers": {"Authorization": "Bearer sesame"},
        }
        client = GrpcProxyClient("proxy", **options)
        assert isinstance(client.transport, GrpcTransport)
        await exchange_both_ways(gateway, client)
    await assert_tasks_settle(TIMEOUT)


async def test_grpc_proxy_server_on_a_served_connection() -> None:
    gateway = Gateway()

    async def handler(conn: Connection) -> None:
        assert isinstance(conn, GrpcServerConnection)
        runner = WorkerRunner(handle_sigint=False)
        assistant = Recorder("assistant")
        proxy = GrpcProxyServer(
            "gateway",
            connection=conn,
            worker_name="assistant",
            remote_worker_name="acme",
            forward_messages=(BusFrameMessage,),
        )
        await runner.add_workers(proxy, assistant)
        gateway.assistants.put_nowait(assistant)
        await runner.run()

    async with GrpcTransport().serve("grpc://127.0.0.1:0", handler) as listener:
        client = GrpcProxyClient(
            "proxy",
            url=listener.url,
            local_worker_name="acme",
            remote_worker_name="assistant",
            forward_messages=(BusFrameMessage,),
        )
        await exchange_both_ways(gateway, client)


def test_grpc_proxy_server_needs_a_grpc_server_connection() -> None:
    with pytest.raises(ConfigurationError, match="GrpcServerConnection"):
        GrpcProxyServer(
            "gateway",
            connection=object(),  # type: ignore[arg-type]
            worker_name="assistant",
            remote_worker_name="acme",
        )


def test_imports_cleanly_in_a_fresh_interpreter() -> None:
    code = "import proxy_core_grpc; proxy_core_grpc.GrpcTransport()"
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True, timeout=TIMEOUT)
