"""The conformance kit: contract tests that every transport and codec must pass, unchanged.

Subclass a contract in a test module of your package and name what to test::

    from proxy_core.testing.contracts import CodecContract, TransportContract

    class TestMyBackend(TransportContract):
        transport = "aiohttp"          # a registered name, or an instance
        codecs = ("json", "msgpack")   # codec-sensitive contracts run once per codec

    class TestMyCodec(CodecContract):
        codecs = ("zjson",)

Every contract runs over real connections (127.0.0.1, port 0, for TCP
backends; in-process for ``memory``), with real runners and proxies on both
sides or, where the peer must misbehave, a raw :class:`~proxy_core.Connection`
opened with the transport's own ``connect`` and speaking the protocol by hand.
The fixtures come from the ``proxy_core`` pytest plugin (installed with
proxy-core); the kit needs pytest-asyncio. See ``docs/conformance.md``.

Every wait is bounded (30 s); nothing sleeps to synchronise. To show that a
message did not cross, a contract sends a marker after it on the same path and
waits for the marker.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import pytest

try:
    import pytest_asyncio  # noqa: F401 -- the contracts are coroutines run by pytest-asyncio
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the proxy-core conformance kit needs pytest-asyncio: pip install pytest-asyncio"
    ) from exc

from ..codecs.base import Codec
from ..codecs.json import JsonCodec
from ..codecs.msgpack import MsgpackCodec
from ..errors import (
    AuthenticationError,
    CodecError,
    ConfigurationError,
    ConnectError,
    ConnectionClosed,
    MessageTooLarge,
    SessionRejected,
    UnknownMessageType,
)
from ..messages import (
    AudioRawFrame,
    BusActivateWorkerMessage,
    BusCancelMessage,
    BusDataMessage,
    BusDeactivateWorkerMessage,
    BusEndMessage,
    BusEndWorkerMessage,
    BusFrameMessage,
    BusMessage,
    BusWorkerReadyMessage,
)
from ..protocol import (
    Ack,
    Batch,
    Bye,
    Envelope,
    Msg,
    Ping,
    Pong,
    Ready,
    Reject,
    decode_handshake,
)
from ..registry import WorkerReadyData
from ..transport import Connection, Transport
from ._harness import (
    CLIENT_WORKER,
    GARBAGE,
    SERVER_WORKER,
    TEXT_LIKE,
    TIMEOUT,
    ClientSide,
    RawPeer,
    Recorder,
    Server,
    classify,
    raw_client,
    raw_server,
    running_client,
    running_server,
    sized_message,
    text,
    unknown_type_frame,
    wait,
    wait_counts,
)
from .contracts_close import CloseContract
from .contracts_resume import ResumeContract
from .contracts_tls import TLSContract
from .memory import MemoryTransport
from .relay import FaultRelay

__all__ = ["CodecContract", "TLSContract", "TransportContract", "per_codec"]

_F = TypeVar("_F", bound=Callable[..., Any])

#: The frame limit of the size contracts: small enough to be quick, big enough for a HELLO.
LIMIT = 4096
#: Messages per direction in the ordering contracts.
ORDERING_COUNT = 10_000

#: How long the ordering contracts let a link go without any message crossing
#: before they call it stalled (a deadlock fails fast, with the counts so far).
STALL_SECONDS = 10.0


def per_codec(func: _F) -> _F:
    """Mark a contract to run once per codec in the class's ``codecs``."""
    func._proxy_core_per_codec = True  # type: ignore[attr-defined]
    return func


def _codec_id(spec: str | Codec) -> str:
    return spec if isinstance(spec, str) else spec.name


class _Parametrized:
    """Runs ``per_codec`` contracts once per codec of ``codecs``, through ``proxy_core_codec``."""

    #: The codecs, by registered name or instance; the first one serves the
    #: contracts that do not depend on the codec.
    codecs: ClassVar[Sequence[str | Codec]] = ("json", "msgpack")

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if not getattr(metafunc.function, "_proxy_core_per_codec", False):
            return
        if "proxy_core_codec" not in metafunc.fixturenames:
            return
        specs = list(self.codecs)
        metafunc.parametrize(
            "proxy_core_codec", specs, indirect=True, ids=[_codec_id(s) for s in specs]
        )


def _delta(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    return {k: v for k, v in (Counter(after) - Counter(before)).items() if v}


def _drops(*proxies: Any) -> list[dict[str, int]]:
    """Every drop counter of ``proxies``: runner chatter (ready broadcasts) is counted too."""
    return [dict(c) for p in proxies for c in (p.stats.dropped_out, p.stats.dropped_in)]


def _assert_close_code(exc: ConnectionClosed, expected: int) -> None:
    # The Connection contract: the code is reported "when the backend knows it".
    assert exc.code in (expected, None), (
        f"the connection closed with {exc.code} ({exc.reason!r}); expected {expected}"
    )


def _other_codec(codec: Codec) -> Codec:
    """A second codec both sides have, distinct from ``codec``."""
    return MsgpackCodec() if codec.name == "json" else JsonCodec()


def _counting(codec: Codec) -> Codec:
    """Wrap ``codec`` to count what it decodes (to tell which codec a session uses)."""

    class Counting(Codec):
        name = codec.name
        decoded = 0

        def encode(self, envelope: Envelope) -> bytes:
            return codec.encode(envelope)

        def decode(self, data: bytes) -> Envelope | Batch:
            type(self).decoded += 1
            return codec.decode(data)

    return Counting()


class _Unshared(Codec):
    """A codec only the server has: no client offers it."""

    name = "proxy-core-kit-unshared"

    def encode(self, envelope: Envelope) -> bytes:
        raise CodecError("never negotiated")

    def decode(self, data: bytes) -> Envelope:
        raise CodecError("never negotiated")


# =========================================================================== codecs


def _awkward_data() -> dict[str, Any]:
    return {
        "$type": "evil.module:Thing",  # a key, not a tag: escaped on the wire
        "$dict": [["a", 1]],
        "tuple": (1, "two", (3.5, None)),
        "bytes": b"\x00\xff" * 3,
        "text": "h\u00e9llo \U0001f916 \u202e \x00",
        "ints": [0, -1, 2**63 - 1, -(2**63)],
        "floats": [0.1, -0.0, 1e308],
        "flags": [True, False, None],
        "nested": {"list": [{"k": [b"v"]}], "empty": {}, "": ""},
    }


def _sample_envelopes() -> list[Envelope]:
    return [
        Msg(1, text(CLIENT_WORKER, SERVER_WORKER, "hello")),
        Msg(2, BusDataMessage(CLIENT_WORKER, SERVER_WORKER, _awkward_data())),
        Msg(3, _audio_message()),
        Msg(4, BusActivateWorkerMessage(CLIENT_WORKER, SERVER_WORKER, {"voice": "calm", "n": 1})),
        Msg(5, BusDeactivateWorkerMessage(CLIENT_WORKER, SERVER_WORKER)),
        Msg(6, BusEndWorkerMessage(CLIENT_WORKER, SERVER_WORKER, "done")),
        Msg(2**31 + 7, BusMessage(CLIENT_WORKER, None)),
        Ack(7),
        Ready(SERVER_WORKER),
        Ping(2**40),
        Pong(1),
        Bye(1000, "bye"),
        Bye(4008, "heartbeat timeout \u2014 n\u00e9"),
    ]


def _audio_message() -> BusMessage:
    return BusFrameMessage(
        CLIENT_WORKER, SERVER_WORKER, AudioRawFrame(bytes(range(256)) * 4, 16000, 2)
    )


class CodecContract(_Parametrized):
    """The pure contracts of a codec: no event loop, objects in, assertions out.

    Attributes:
        codecs: the codecs to check, by registered name or instance.
    """

    pytestmark = [pytest.mark.proxy_core_contract]

    @per_codec
    def test_codec_is_named_and_found(self, proxy_core_codec: Codec) -> None:
        """A codec is a ``Codec`` whose ``name`` is a class attribute (the negotiated name)."""
        assert isinstance(proxy_core_codec, Codec)
        assert isinstance(proxy_core_codec.name, str) and proxy_core_codec.name
        assert type(proxy_core_codec).name == proxy_core_codec.name

    @per_codec
    def test_every_envelope_round_trips(self, proxy_core_codec: Codec) -> None:
        """Each kind of frame, and every value of the value model, decodes equal to itself."""
        for envelope in _sample_envelopes():
            data = proxy_core_codec.encode(envelope)
            assert type(data) is bytes, f"encode returned {type(data).__qualname__}"
            assert proxy_core_codec.decode(data) == envelope, envelope

    @per_codec
    def test_unknown_tag_is_refused_with_its_sequence_number(self, proxy_core_codec: Codec) -> None:
        """An unregistered tag raises ``UnknownMessageType`` carrying the MSG's ``seq``."""
        frame = unknown_type_frame(proxy_core_codec, 7, CLIENT_WORKER, SERVER_WORKER)
        if frame is None:
            pytest.skip(f"{type(proxy_core_codec).__qualname__} takes no registry= argument")
        with pytest.raises(UnknownMessageType) as caught:
            proxy_core_codec.decode(frame)
        assert caught.value.seq == 7, "pass seq= so the session consumes the number (no gap)"

    @per_codec
    def test_bad_bytes_raise_codec_error_only(self, proxy_core_codec: Codec) -> None:
        """Garbage, truncations and random bytes decode or raise ``CodecError``: nothing else."""
        good = proxy_core_codec.encode(Msg(3, text(CLIENT_WORKER, SERVER_WORKER, "truncate me")))
        rng = random.Random(1234)
        samples = [b"", *GARBAGE, *TEXT_LIKE, *(good[:n] for n in range(len(good)))]
        samples += [rng.randbytes(rng.randrange(1, 64)) for _ in range(300)]
        for data in samples:
            try:
                proxy_core_codec.decode(data)
            except CodecError:
                pass
        assert any(classify(proxy_core_codec, g) for g in GARBAGE), "garbage decoded"

    @per_codec
    def test_unencodable_values_raise_codec_error(self, proxy_core_codec: Codec) -> None:
        """A value outside the value model is a ``CodecError`` (the proxy counts encode_failed)."""
        for data in ({"x": object()}, {1: "an int key"}, {"s": {1, 2}}):
            message = BusDataMessage(CLIENT_WORKER, SERVER_WORKER, data)  # type: ignore[arg-type]
            with pytest.raises(CodecError):
                proxy_core_codec.encode(Msg(1, message))


# =========================================================================== transports


class TransportContract(TLSContract, ResumeContract, CloseContract, _Parametrized):
    """The live contracts of a transport, with each codec of ``codecs``.

    The TLS contracts (:class:`~proxy_core.testing.contracts_tls.TLSContract`,
    ``test_tls_*``), the resume contracts
    (:class:`~proxy_core.testing.contracts_resume.ResumeContract`) and the
    close-handshake contracts
    (:class:`~proxy_core.testing.contracts_close.CloseContract`) are
    included; they run once, with the first codec.

    Attributes:
        transport: the transport under test, by registered name or instance.
        codecs: the codecs the codec-sensitive contracts run with.
        tcp: whether the transport runs over TCP, so that :class:`FaultRelay`
            can sit in the middle; ``None`` guesses (everything but memory).
    """

    transport: ClassVar[str | Transport | None] = None
    tcp: ClassVar[bool | None] = None

    pytestmark = [
        pytest.mark.proxy_core_contract,
        pytest.mark.asyncio(loop_scope="function"),
        pytest.mark.usefixtures("proxy_core_no_leaked_tasks"),
    ]

    # ------------------------------------------------------------ helpers

    def _require_tcp(self, transport: Transport) -> None:
        tcp = self.tcp if self.tcp is not None else not isinstance(transport, MemoryTransport)
        if not tcp:
            pytest.skip(f"transport {transport.name!r} is not TCP: no relay can sit in the middle")

    @staticmethod
    async def _connected(client: ClientSide, server: Server) -> Any:
        await client.activate()
        side = await server.of(client)
        await wait(side.connected.wait())
        return side

    @staticmethod
    async def _crosses(sender: Any, receiver: Recorder, message: BusMessage) -> None:
        await sender.send_bus_message(message)
        assert await receiver.wait_for(lambda m: m == message) == message

    async def _assert_still_serves(
        self, transport: Transport, server: Server, codec: Codec
    ) -> None:
        async with running_client(transport, server.url, codec=codec) as client:
            side = await self._connected(client, server)
            await self._crosses(client.acme, side.worker, text(CLIENT_WORKER, SERVER_WORKER, "up"))
            await self._crosses(side.worker, client.acme, text(SERVER_WORKER, CLIENT_WORKER, "yes"))

    # ================================================================ the Connection contract

    @contextlib.asynccontextmanager
    async def _pair(
        self, transport: Transport, url: str, **serve: Any
    ) -> Any:  # AsyncIterator[tuple[Connection, Connection, Any]]
        """Serve ``url``; yield (client end, server end, listener) of one raw connection."""
        accepted: asyncio.Queue[Connection] = asyncio.Queue()
        release = asyncio.Event()
        connect_options = serve.pop("connect", {})

        async def handler(conn: Connection) -> None:
            accepted.put_nowait(conn)
            await release.wait()

        async with transport.serve(url, handler, **serve) as listener:
            try:
                client = await wait(transport.connect(listener.url, **connect_options))
                server: Connection | None = None
                try:
                    server = await wait(accepted.get())
                    yield client, server, listener
                finally:
                    # Both at once: a backend's close may wait for the peer to answer it.
                    ends = [client] if server is None else [client, server]
                    await wait(asyncio.gather(*(end.aclose() for end in ends)))
            finally:
                release.set()

    async def test_frames_cross_whole_and_in_order(
        self, proxy_core_transport: Transport, serve_url: str
    ) -> None:
        """Binary frames of any size and content arrive whole, equal and in order, both ways."""
        rng = random.Random(7)
        sizes = [1, 2, 125, 126, 127, 65535, 65536, 100_000, *range(1, 200)]
        frames = [bytes(range(256)), *(rng.randbytes(n) for n in sizes)]
        async with self._pair(proxy_core_transport, serve_url) as (client, server, listener):
            assert listener.url.split(":", 1)[0] in proxy_core_transport.schemes
            for sender, receiver in ((client, server), (server, client)):
                sending = asyncio.ensure_future(self._send_all(sender, frames))
                got = [await wait(receiver.receive()) for _ in frames]
                await wait(sending)
                assert [len(g) for g in got] == [len(f) for f in frames]
                assert got == frames

    @staticmethod
    async def _send_all(conn: Connection, frames: Sequence[bytes]) -> None:
        for frame in frames:
            await conn.send(frame)

    @pytest.mark.parametrize("closer", ["client", "server"])
    async def test_close_reaches_the_peer_after_the_frames_before_it(
        self, proxy_core_transport: Transport, serve_url: str, closer: str
    ) -> None:
        """Frames sent before ``aclose`` arrive, then ``receive`` raises ConnectionClosed."""
        async with self._pair(proxy_core_transport, serve_url) as (client, server, _):
            closing, peer = (client, server) if closer == "client" else (server, client)
            # The peer reads all the time, as a proxy does: some backends only finish a
            # close once the other end has read up to it.
            reading = asyncio.ensure_future(self._receive_until_closed(peer))
            for n in range(3):
                await closing.send(b"frame %d" % n)
            await wait(closing.aclose(4321, "see you"))
            await wait(closing.aclose(4321, "see you"))  # idempotent
            frames, ended = await wait(reading)
            assert frames == [b"frame 0", b"frame 1", b"frame 2"]
            _assert_close_code(ended, 4321)
            if ended.code is not None:
                assert ended.reason == "see you"
            with pytest.raises(ConnectionClosed):
                await wait(peer.receive())  # over is over
            with pytest.raises(ConnectionClosed):
                await wait(closing.receive())
            with pytest.raises(ConnectionClosed):
                await wait(closing.send(b"after close"))
            with pytest.raises(ConnectionClosed):
                for _ in range(100):  # the peer learns, at the latest on its next sends
                    await wait(peer.send(b"to a closed peer"))
            async for _ in peer:  # iteration ends at the close
                raise AssertionError("no frame after the close")

    @staticmethod
    async def _receive_until_closed(conn: Connection) -> tuple[list[bytes], ConnectionClosed]:
        frames: list[bytes] = []
        while True:
            try:
                frames.append(await conn.receive())
            except ConnectionClosed as exc:
                return frames, exc

    async def test_request_headers_reach_the_server_lower_cased(
        self, proxy_core_transport: Transport, serve_url: str
    ) -> None:
        """The server end sees the client's headers with lower-cased names; the client sees none."""
        headers = {"Authorization": "Bearer Token-42", "X-Tenant": "Acme-Corp"}
        async with self._pair(proxy_core_transport, serve_url, connect={"headers": headers}) as (
            client,
            server,
            _,
        ):
            assert server.request_headers.get("authorization") == "Bearer Token-42"
            assert server.request_headers.get("x-tenant") == "Acme-Corp"
            assert all(name == name.lower() for name in server.request_headers)
            assert dict(client.request_headers) == {}

    @pytest.mark.parametrize("hook", ["plain", "async", "raising"])
    async def test_authenticate_refusal_is_an_authentication_error(
        self, proxy_core_transport: Transport, serve_url: str, hook: str
    ) -> None:
        """A refused client gets ``AuthenticationError`` from ``connect``; no handler runs."""
        seen: list[dict[str, str]] = []

        def check(headers: Mapping[str, str]) -> bool:
            seen.append(dict(headers))
            if hook == "raising" and headers.get("x-key") != "sesame":
                raise AuthenticationError("bad key")
            return headers.get("x-key") == "sesame"

        async def check_async(headers: Mapping[str, str]) -> bool:
            return check(headers)

        handled: list[Connection] = []

        async def handler(conn: Connection) -> None:
            handled.append(conn)
            await conn.send(b"welcome")

        transport = proxy_core_transport
        authenticate = check_async if hook == "async" else check
        async with transport.serve(serve_url, handler, authenticate=authenticate) as listener:
            with pytest.raises(AuthenticationError) as caught:
                await wait(transport.connect(listener.url, headers={"X-Key": "wrong"}))
            if hook == "raising":
                assert "bad key" in caught.value.reason
            assert handled == []
            conn = await wait(transport.connect(listener.url, headers={"X-Key": "sesame"}))
            async with conn:
                assert await wait(conn.receive()) == b"welcome"
        assert [h.get("x-key") for h in seen] == ["wrong", "sesame"]

    @pytest.mark.parametrize("receiver", ["server", "client"])
    async def test_frame_over_the_limit_is_message_too_large_on_the_receiver(
        self, proxy_core_transport: Transport, serve_url: str, receiver: str
    ) -> None:
        """A frame at the receiver's limit arrives; one byte over raises MessageTooLarge there."""
        options: dict[str, Any] = {"max_message_bytes": 1 << 20}
        if receiver == "server":
            options["max_message_bytes"] = LIMIT
        else:
            options["connect"] = {"max_message_bytes": LIMIT}
        async with self._pair(proxy_core_transport, serve_url, **options) as (client, server, _):
            sender, peer = (client, server) if receiver == "server" else (server, client)
            await sender.send(b"\x01" * LIMIT)
            assert await wait(peer.receive()) == b"\x01" * LIMIT
            with contextlib.suppress(ConnectionClosed):  # the sender may learn of the close first
                await sender.send(b"\x02" * (LIMIT + 1))
            with pytest.raises(MessageTooLarge) as caught:
                await wait(peer.receive())
            assert caught.value.limit == LIMIT
            assert caught.value.size in (LIMIT + 1, None)
            with pytest.raises(ConnectionClosed):
                await wait(peer.receive())
            with pytest.raises(ConnectionClosed) as closed:
                for _ in range(100):
                    await wait(sender.receive())
            _assert_close_code(closed.value, 1009)

    async def test_handler_end_and_listener_close_close_the_connections(
        self, proxy_core_transport: Transport, serve_url: str
    ) -> None:
        """The server closes a connection when its handler returns (1000) or fails (1011), and
        every connection when the listener closes."""
        transport = proxy_core_transport

        async def handler(conn: Connection) -> None:
            command = await conn.receive()
            if command == b"fail":
                raise RuntimeError("a deliberately failing handler (the kit's test)")
            if command == b"hold":
                await conn.send(b"holding")
                with contextlib.suppress(ConnectionClosed):
                    await conn.receive()

        held: Connection | None = None
        try:
            async with transport.serve(serve_url, handler) as listener:
                for command, code in ((b"return", 1000), (b"fail", 1011)):
                    async with await wait(transport.connect(listener.url)) as conn:
                        await conn.send(command)
                        with pytest.raises(ConnectionClosed) as caught:
                            await wait(conn.receive())
                        _assert_close_code(caught.value, code)
                held = await wait(transport.connect(listener.url))
                await held.send(b"hold")
                assert await wait(held.receive()) == b"holding"
            with pytest.raises(ConnectionClosed):
                await wait(held.receive())
            with pytest.raises(ConnectError):
                await wait(transport.connect(listener.url, open_timeout=5))
        finally:
            if held is not None:
                await held.aclose()

    async def test_bad_urls_are_configuration_errors(self, proxy_core_transport: Transport) -> None:
        """A URL of another scheme is local misuse: ``ConfigurationError``, connect or serve."""

        async def handler(conn: Connection) -> None:
            pass

        with pytest.raises(ConfigurationError):
            await wait(proxy_core_transport.connect("proxy-core-kit-bogus://127.0.0.1:1/x"))
        with pytest.raises(ConfigurationError):
            async with proxy_core_transport.serve("proxy-core-kit-bogus://127.0.0.1:0/x", handler):
                pass

    # ================================================================ handshake

    @per_codec
    async def test_handshake_follows_the_clients_preference(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """The server picks the client's first codec it has, whatever its own order."""
        transport, codec = proxy_core_transport, proxy_core_codec
        other = _other_codec(codec)
        mine, theirs = _counting(codec), _counting(other)
        async with running_server(transport, serve_url, codecs=[theirs, mine]) as server:
            for offer, chosen in (([codec, other], codec), ([other, codec], other)):
                names = [c.name for c in offer]
                async with raw_client(transport, server.url, chosen, offer=names) as (_, welcome):
                    assert welcome.codec == chosen.name
            async with running_client(transport, server.url, codec=[codec, other]) as client:
                await client.acme.activate_worker("proxy")
                await client.proxy.wait_connected(TIMEOUT)
                ready = await wait(asyncio.shield(client.remote_ready))
                assert ready == WorkerReadyData(SERVER_WORKER, remote=True, via="proxy")
                side = await server.of(client)
                before = type(theirs).decoded  # type: ignore[attr-defined]
                await self._crosses(
                    client.acme, side.worker, text(CLIENT_WORKER, SERVER_WORKER, "a")
                )
                await self._crosses(
                    side.worker, client.acme, text(SERVER_WORKER, CLIENT_WORKER, "b")
                )
                assert type(mine).decoded > 0  # type: ignore[attr-defined]
                assert type(theirs).decoded == before  # type: ignore[attr-defined]
                assert client.proxy.session_id == side.server_proxy.session_id

    @per_codec
    async def test_no_common_codec_is_session_rejected_4003(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """A client and a server with no codec in common: ``SessionRejected(4003)``, no session."""
        transport = proxy_core_transport
        async with running_server(transport, serve_url, codecs=[_Unshared()]) as server:
            async with running_client(transport, server.url, codec=proxy_core_codec) as client:
                await client.acme.activate_worker("proxy")
                with pytest.raises(SessionRejected) as caught:
                    await client.proxy.wait_connected(TIMEOUT)
                assert caught.value.code == 4003
                assert not isinstance(caught.value, AuthenticationError)
                assert client.events == ["connect_error"]  # refusals are never retried
                assert not client.proxy.connected
                # Refused at HELLO: no runner, no worker was ever started for it.
                assert server.sessions == []

    @pytest.mark.parametrize(
        "first", [b"\x00\xffnot a hello\x81", b'{"protocol": "proxy-core"}', b"[1, 1, {}]"]
    )
    async def test_garbage_hello_is_rejected_4000(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str, first: bytes
    ) -> None:
        """A first frame that is not a HELLO is answered REJECT 4000; the server keeps serving."""
        transport = proxy_core_transport
        async with running_server(transport, serve_url, codecs=[proxy_core_codec]) as server:
            async with await wait(transport.connect(server.url)) as conn:
                await conn.send(first)
                answer = decode_handshake(await wait(conn.receive()))
                assert isinstance(answer, Reject) and answer.code == 4000, answer
                with pytest.raises(ConnectionClosed) as caught:
                    await wait(conn.receive())
                _assert_close_code(caught.value, 4000)
            assert server.sessions == []  # refused before any runner or worker started
            await self._assert_still_serves(transport, server, proxy_core_codec)

    # ================================================================ ordering

    @staticmethod
    async def _send_numbered(sender: Any, target: str, count: int) -> None:
        for n in range(count):
            await sender.send_bus_message(text(sender.name, target, str(n)))

    @per_codec
    async def test_ten_thousand_messages_keep_their_order(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """10,000 messages bus to bus, client to server: every one arrives, once, in order."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with (
            running_server(transport, serve_url, codecs=[codec]) as server,
            running_client(transport, server.url, codec=codec) as client,
        ):
            side = await self._connected(client, server)
            drops = _drops(client.proxy, side.server_proxy)
            await self._send_numbered(client.acme, SERVER_WORKER, ORDERING_COUNT)
            await wait_counts([side.worker], ORDERING_COUNT, stall=STALL_SECONDS)
            assert side.worker.texts() == [str(n) for n in range(ORDERING_COUNT)]
            assert client.proxy.stats.messages_out == ORDERING_COUNT
            assert side.server_proxy.stats.messages_in == ORDERING_COUNT
            assert _drops(client.proxy, side.server_proxy) == drops

    @per_codec
    async def test_ten_thousand_messages_each_way_at_once(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """10,000 messages each way at the same time: counts and order exact on both sides."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with (
            running_server(transport, serve_url, codecs=[codec]) as server,
            running_client(transport, server.url, codec=codec) as client,
        ):
            side = await self._connected(client, server)
            drops = _drops(client.proxy, side.server_proxy)
            await asyncio.gather(
                self._send_numbered(client.acme, SERVER_WORKER, ORDERING_COUNT),
                self._send_numbered(side.worker, CLIENT_WORKER, ORDERING_COUNT),
            )
            # Both directions saturated at once: the receive loops must keep reading
            # while the senders wait for room (a proxy that blocks there deadlocks).
            await wait_counts([side.worker, client.acme], ORDERING_COUNT, stall=STALL_SECONDS)
            expected = [str(n) for n in range(ORDERING_COUNT)]
            assert side.worker.texts() == expected
            assert client.acme.texts() == expected
            for proxy in (client.proxy, side.server_proxy):
                assert proxy.stats.messages_out == proxy.stats.messages_in == ORDERING_COUNT
            assert _drops(client.proxy, side.server_proxy) == drops

    # ================================================================ sizes

    @per_codec
    @pytest.mark.parametrize("direction", ["client_to_server", "server_to_client"])
    async def test_message_at_the_limit_crosses_one_byte_over_is_dropped(
        self,
        proxy_core_transport: Transport,
        proxy_core_codec: Codec,
        serve_url: str,
        direction: str,
    ) -> None:
        """A MSG frame of exactly the peer's limit crosses; one byte more is dropped: too_large."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with (
            running_server(transport, serve_url, codecs=[codec], max_message_bytes=LIMIT) as server,
            running_client(transport, server.url, codec=codec, max_message_bytes=LIMIT) as client,
        ):
            side = await self._connected(client, server)
            if direction == "client_to_server":
                sender, receiver, proxy = client.acme, side.worker, client.proxy
            else:
                sender, receiver, proxy = side.worker, client.acme, side.server_proxy
            me, peer = sender.name, receiver.name
            seq = proxy.stats.messages_out + 1
            at = sized_message(codec, seq, LIMIT, me, peer)
            over = sized_message(codec, seq + 1, LIMIT + 1, me, peer)
            if at is None or over is None:
                pytest.skip(f"no text message encodes to exactly {LIMIT} (+1) bytes with {codec}")
            before = Counter(proxy.stats.dropped_out)
            await self._crosses(sender, receiver, at)
            await sender.send_bus_message(over)
            await self._crosses(sender, receiver, text(me, peer, "marker"))
            assert _delta(proxy.stats.dropped_out, before) == {"too_large": 1}
            assert receiver.crossed() == [at, text(me, peer, "marker")]
            assert proxy.connected

    async def test_oversized_raw_frame_closes_the_servers_session_only(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """A raw frame over the server's limit closes that session (1009); the server serves on."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with running_server(
            transport, serve_url, codecs=[codec], max_message_bytes=LIMIT
        ) as server:
            async with raw_client(transport, server.url, codec) as (peer, _):
                side = await server.next_session()
                await wait(side.connected.wait())
                await peer.send_msg(text(CLIENT_WORKER, SERVER_WORKER, "fits"))
                await side.worker.wait_text("fits")
                with contextlib.suppress(ConnectionClosed):
                    await peer.conn.send(b"\x00" * (LIMIT + 1))
                _assert_close_code(await peer.closed(), 1009)
            await wait(side.disconnected.wait())
            await wait(side.ended.wait())
            assert side.events == ["connected", "disconnected"]
            assert side.worker.texts() == ["fits"]
            await self._assert_still_serves(transport, server, codec)

    async def test_oversized_raw_frame_closes_the_clients_session(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """A raw frame over the client's limit closes its session (1009); the remote is gone."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with (
            raw_server(transport, serve_url, codec) as (url, peers),
            running_client(transport, url, codec=codec, max_message_bytes=LIMIT) as client,
        ):
            await client.acme.activate_worker("proxy")
            peer = await wait(peers.get())
            await peer.send(Ready(SERVER_WORKER))
            await wait(asyncio.shield(client.remote_ready))
            with contextlib.suppress(ConnectionClosed):
                await peer.conn.send(b"\x00" * (LIMIT + 1))
            await wait(client.disconnected.wait())
            _assert_close_code(await peer.closed(), 1009)
            assert client.events == ["connected", "disconnected"]
            assert not client.runner.registry.is_ready(SERVER_WORKER)

    # ================================================================ ends

    async def test_client_end_ends_the_server_session(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """Ending the client runner: the server sees on_client_disconnected and its runner ends."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with running_server(transport, serve_url, codecs=[codec]) as server:
            async with running_client(transport, server.url, codec=codec) as client:
                side = await self._connected(client, server)
                await client.end()
                await wait(side.disconnected.wait())
                await wait(side.ended.wait())
                assert side.events == ["connected", "disconnected"]
                assert side.worker.ended.is_set()  # a graceful end: on_end ran
                assert client.events == ["connected", "disconnected"]
                assert not side.runner.registry.is_ready(CLIENT_WORKER)

    async def test_client_says_bye_before_closing(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """A deactivated client proxy sends BYE 1000, then closes with 1000."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with (
            raw_server(transport, serve_url, codec) as (url, peers),
            running_client(transport, url, codec=codec) as client,
        ):
            await client.acme.activate_worker("proxy")
            peer = await wait(peers.get())
            await peer.send(Ready(SERVER_WORKER))
            await wait(asyncio.shield(client.remote_ready))
            await client.acme.deactivate_worker("proxy")
            bye = await peer.next_envelope(lambda e: isinstance(e, Bye))
            assert isinstance(bye, Bye) and bye.code == 1000
            _assert_close_code(await peer.closed(), 1000)
            await wait(client.disconnected.wait())
            assert not client.runner.registry.is_ready(SERVER_WORKER)

    @pytest.mark.parametrize("how", ["end", "cancel"])
    async def test_server_runner_end_reaches_the_client(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str, how: str
    ) -> None:
        """Ending (or cancelling) the server's runner: the client's on_disconnected fires and the
        remote worker leaves its registry; the client runner goes on."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with (
            running_server(transport, serve_url, codecs=[codec]) as server,
            running_client(transport, server.url, codec=codec) as client,
        ):
            side = await self._connected(client, server)
            assert client.runner.registry.is_ready(SERVER_WORKER)
            stop = side.runner.end if how == "end" else side.runner.cancel
            await stop("server going down")
            await wait(side.disconnected.wait())
            await wait(side.ended.wait())
            await wait(client.disconnected.wait())
            assert side.events == ["connected", "disconnected"]
            assert client.events == ["connected", "disconnected"]
            assert not client.proxy.connected
            assert not client.runner.registry.is_ready(SERVER_WORKER)
            assert client.task is not None and not client.task.done()

    async def test_server_says_bye_before_closing(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """A server whose runner ends sends BYE 1001, then closes with 1001."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with running_server(transport, serve_url, codecs=[codec]) as server:
            async with raw_client(transport, server.url, codec) as (peer, _):
                side = await server.next_session()
                await wait(side.connected.wait())
                await side.runner.end("closing time")
                bye = await peer.next_envelope(lambda e: isinstance(e, Bye))
                assert isinstance(bye, Bye) and bye.code == 1001
                _assert_close_code(await peer.closed(), 1001)
            await wait(side.ended.wait())

    # ================================================================ faults on the wire

    @pytest.mark.parametrize("fault", ["cut", "truncate"])
    async def test_peer_vanishing_mid_stream_is_noticed_by_both_sides(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str, fault: str
    ) -> None:
        """The TCP connection drops mid-stream (reset, or half a frame then reset): both sides'
        events fire, the remote workers are gone, and the client can connect again."""
        transport, codec = proxy_core_transport, proxy_core_codec
        self._require_tcp(transport)
        async with running_server(transport, serve_url, codecs=[codec]) as server:
            async with (
                FaultRelay.for_url(server.url) as relay,
                running_client(transport, relay.url_for(server.url), codec=codec) as client,
            ):
                side = await self._connected(client, server)
                streaming = asyncio.ensure_future(
                    self._send_numbered(client.acme, SERVER_WORKER, 2000)
                )
                await side.worker.wait_text("20")
                if fault == "cut":
                    relay.cut()
                else:
                    relay.truncate_next("downstream", 3)
                    await side.worker.send_bus_message(
                        text(SERVER_WORKER, CLIENT_WORKER, "x" * 200)
                    )
                await wait(streaming)
                await wait(client.disconnected.wait())
                await wait(side.disconnected.wait())
                await wait(side.ended.wait())
                assert client.events == ["connected", "disconnected"]
                assert side.events == ["connected", "disconnected"]
                assert not client.runner.registry.is_ready(SERVER_WORKER)
                assert not side.runner.registry.is_ready(CLIENT_WORKER)
                texts = side.worker.texts()
                assert texts == [str(n) for n in range(len(texts))]  # a prefix, in order
                again = await self._connected(client, server)
                assert again is not side
                await self._crosses(
                    client.acme, again.worker, text(CLIENT_WORKER, SERVER_WORKER, "back")
                )
                assert relay.connections_accepted == 2

    async def test_stalled_and_slow_link_delivers_in_order(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """A link that stalls (half-open) and then crawls loses and reorders nothing."""
        transport, codec = proxy_core_transport, proxy_core_codec
        self._require_tcp(transport)
        count = 300
        async with running_server(transport, serve_url, codecs=[codec]) as server:
            async with (
                FaultRelay.for_url(server.url) as relay,
                running_client(transport, relay.url_for(server.url), codec=codec) as client,
            ):
                side = await self._connected(client, server)
                relay.stall()
                await asyncio.gather(
                    self._send_numbered(client.acme, SERVER_WORKER, count),
                    self._send_numbered(side.worker, CLIENT_WORKER, count),
                )
                relay.delay(0.001)
                relay.resume()
                await asyncio.gather(side.worker.wait_count(count), client.acme.wait_count(count))
                expected = [str(n) for n in range(count)]
                assert side.worker.texts() == expected and client.acme.texts() == expected
                assert relay.bytes_upstream > 0 and relay.bytes_downstream > 0
                assert client.proxy.connected

    # ================================================================ headers and auth

    async def test_authenticate_sees_headers_and_refusal_reaches_the_client(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """``authenticate`` sees the client's headers lower-cased; a refusal is an
        ``AuthenticationError`` on the client and no session on the server."""
        transport, codec = proxy_core_transport, proxy_core_codec
        seen: list[dict[str, str]] = []

        def authenticate(headers: Mapping[str, str]) -> bool:
            seen.append(dict(headers))
            if headers.get("authorization") != "Bearer good":
                raise AuthenticationError("bad token")
            return True

        bad = {"Authorization": "Bearer bad", "X-Tenant": "Acme-Corp"}
        async with running_server(
            transport, serve_url, codecs=[codec], authenticate=authenticate
        ) as server:
            async with running_client(transport, server.url, codec=codec, headers=bad) as client:
                await client.acme.activate_worker("proxy")
                with pytest.raises(AuthenticationError) as caught:
                    await client.proxy.wait_connected(TIMEOUT)
                assert "bad token" in caught.value.reason
                assert client.proxy.last_error is caught.value
                assert client.events == ["connect_error"]
                assert not client.runner.registry.is_ready(SERVER_WORKER)
            assert server.sessions == []  # refused before any session or runner existed
            assert seen[0].get("authorization") == "Bearer bad"
            assert seen[0].get("x-tenant") == "Acme-Corp"
            assert all(name == name.lower() for name in seen[0])
            good = {"Authorization": "Bearer good"}
            async with running_client(transport, server.url, codec=codec, headers=good) as client:
                side = await self._connected(client, server)
                await self._crosses(
                    client.acme, side.worker, text(CLIENT_WORKER, SERVER_WORKER, "in")
                )
            assert len(server.sessions) == 1

    # ================================================================ isolation

    async def test_concurrent_sessions_stay_isolated(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """Three clients on one server: each conversation stays on its own runner."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with (
            running_server(transport, serve_url, codecs=[codec]) as server,
            contextlib.AsyncExitStack() as stack,
        ):
            clients = [
                await stack.enter_async_context(running_client(transport, server.url, codec=codec))
                for _ in range(3)
            ]
            sides = await asyncio.gather(*(self._connected(c, server) for c in clients))
            assert len({id(s.runner) for s in sides}) == 3
            assert len({c.proxy.session_id for c in clients}) == 3
            for round_ in range(3):
                await asyncio.gather(
                    *(c.say(f"{i}:{round_}") for i, c in enumerate(clients)),
                    *(
                        s.worker.send_bus_message(
                            text(SERVER_WORKER, CLIENT_WORKER, f"to {i}:{round_}")
                        )
                        for i, s in enumerate(sides)
                    ),
                )
            for i, (client, side) in enumerate(zip(clients, sides, strict=True)):
                await side.worker.wait_count(3)
                await client.acme.wait_count(3)
                assert side.worker.texts() == [f"{i}:{r}" for r in range(3)]
                assert client.acme.texts() == [f"to {i}:{r}" for r in range(3)]
            await clients[0].end()
            await wait(sides[0].ended.wait())
            await self._crosses(
                clients[1].acme, sides[1].worker, text(CLIENT_WORKER, SERVER_WORKER, "on")
            )
            assert not sides[2].ended.is_set()

    # ================================================================ filter rules

    @pytest.mark.parametrize("direction", ["client_to_server", "server_to_client"])
    async def test_outbound_filter_rules_across_the_link(
        self,
        proxy_core_transport: Transport,
        proxy_core_codec: Codec,
        serve_url: str,
        direction: str,
    ) -> None:
        """Only allow-listed messages from the served worker to the remote worker leave; every
        other one is dropped at the sender, counted by reason."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with (
            running_server(transport, serve_url, codecs=[codec]) as server,
            running_client(transport, server.url, codec=codec) as client,
        ):
            side = await self._connected(client, server)
            if direction == "client_to_server":
                sender, other, proxy, receiver = (
                    client.acme,
                    client.other,
                    client.proxy,
                    side.worker,
                )
                receiver_proxy: Any = side.server_proxy
            else:
                sender, other, proxy, receiver = (
                    side.worker,
                    side.helper,
                    side.server_proxy,
                    client.acme,
                )
                receiver_proxy = client.proxy
            me, peer = sender.name, receiver.name
            cases: list[tuple[Any, BusMessage, str]] = [
                (sender, BusEndMessage(me, peer, "end them"), "local"),
                (sender, BusCancelMessage(me, peer, "cancel them"), "local"),
                (sender, text(me, None, "broadcast"), "broadcast"),
                (sender, text(me, proxy.name, "to the proxy itself"), "wrong_target"),
                (other, text(other.name, peer, "leak"), "wrong_source"),
                (sender, BusDataMessage(me, peer, {"k": "v"}), "not_allowed"),
                (sender, BusMessage(me, peer), "not_allowed"),
            ]
            for number, (who, message, reason) in enumerate(cases):
                before = Counter(proxy.stats.dropped_out)
                await who.send_bus_message(message)
                await self._crosses(sender, receiver, text(me, peer, f"marker {number}"))
                assert _delta(proxy.stats.dropped_out, before) == {reason: 1}, message
            assert receiver.crossed() == [text(me, peer, f"marker {n}") for n in range(len(cases))]
            assert not receiver_proxy.stats.dropped_in

    @staticmethod
    def _inbound_cases(remote: str, local: str, bystander: str) -> list[tuple[BusMessage, str]]:
        return [
            (BusEndMessage(remote, local, "die"), "local"),
            (BusCancelMessage(remote, None, "die"), "local"),
            (BusWorkerReadyMessage(remote, None, "x"), "local"),
            (text(remote, None, "broadcast"), "broadcast"),
            (text(remote, bystander, "wrong target"), "wrong_target"),
            (BusActivateWorkerMessage(remote, bystander), "wrong_target"),
            (text("mallory", local, "spoofed source"), "wrong_source"),
            (BusDataMessage(remote, local, {}), "not_allowed"),
            (BusMessage(remote, local), "not_allowed"),
        ]

    async def _check_inbound(
        self, peer: RawPeer, proxy: Any, receiver: Recorder, bystander: Recorder
    ) -> None:
        remote = CLIENT_WORKER if receiver.name == SERVER_WORKER else SERVER_WORKER
        cases = self._inbound_cases(remote, receiver.name, bystander.name)
        markers = []
        for number, (message, reason) in enumerate(cases):
            before = Counter(proxy.stats.dropped_in)
            await peer.send_msg(message)
            marker = text(remote, receiver.name, f"marker {number}")
            markers.append(marker)
            await peer.send_msg(marker)
            assert await receiver.wait_text(f"marker {number}") == marker
            assert _delta(proxy.stats.dropped_in, before) == {reason: 1}, message
        assert receiver.crossed() == markers
        assert bystander.crossed() == []

    @per_codec
    async def test_inbound_filter_rules_on_the_server(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """A hostile client's messages that break a rule are dropped by the server, by reason."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with running_server(transport, serve_url, codecs=[codec]) as server:
            async with raw_client(transport, server.url, codec) as (peer, _):
                side = await server.next_session()
                await wait(side.connected.wait())
                await self._check_inbound(peer, side.server_proxy, side.worker, side.helper)
                assert not side.ended.is_set()

    @per_codec
    async def test_inbound_filter_rules_on_the_client(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """A hostile server's messages that break a rule are dropped by the client, by reason."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with (
            raw_server(transport, serve_url, codec) as (url, peers),
            running_client(transport, url, codec=codec) as client,
        ):
            await client.acme.activate_worker("proxy")
            peer = await wait(peers.get())
            await peer.send(Ready(SERVER_WORKER))
            await wait(asyncio.shield(client.remote_ready))
            await self._check_inbound(peer, client.proxy, client.acme, client.other)
            assert client.task is not None and not client.task.done()

    # ================================================================ malformed input

    @per_codec
    async def test_malformed_frames_are_dropped_and_the_session_goes_on(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """Garbage, text-like payloads and unknown type tags from a raw peer are dropped and
        counted; the session keeps working both ways."""
        transport, codec = proxy_core_transport, proxy_core_codec
        garbage = [(g, classify(codec, g)) for g in (*GARBAGE, *TEXT_LIKE)]
        refused = [(g, reason) for g, reason in garbage if reason is not None]
        assert any(g in GARBAGE for g, _ in refused), f"{codec} decodes every garbage sample"
        async with running_server(transport, serve_url, codecs=[codec]) as server:
            async with raw_client(transport, server.url, codec) as (peer, _):
                side = await server.next_session()
                await wait(side.connected.wait())
                await peer.send_msg(text(CLIENT_WORKER, SERVER_WORKER, "one"))
                await side.worker.wait_text("one")
                expected: Counter[str] = Counter()
                for data, reason in refused:
                    await peer.conn.send(data)
                    expected[reason] += 1
                unknown = unknown_type_frame(codec, peer.seq + 1, CLIENT_WORKER, SERVER_WORKER)
                if unknown is not None:
                    with pytest.raises(UnknownMessageType) as caught:
                        codec.decode(unknown)
                    assert caught.value.seq == peer.seq + 1, "the codec must report seq="
                    peer.seq += 1
                    await peer.conn.send(unknown)
                    expected["unknown_type"] += 1
                await peer.send_msg(text(CLIENT_WORKER, SERVER_WORKER, "after"))
                await side.worker.wait_text("after")
                assert Counter(side.server_proxy.stats.dropped_in) == expected
                assert side.worker.texts() == ["one", "after"]
                await side.worker.send_bus_message(text(SERVER_WORKER, CLIENT_WORKER, "back"))
                await peer.next_text("back")
                assert side.events == ["connected"]
