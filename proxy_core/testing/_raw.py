"""Peers that speak the protocol by hand, and the bytes the contracts feed a receiver.

Private, like :mod:`proxy_core.testing._harness`: :func:`connection_pair` opens
one raw connection and :class:`Probe` echoes on one; a :class:`RawPeer` is one side
of a session over a bare :class:`~proxy_core.Connection` (``raw_client`` opens
one, ``raw_server`` serves them), so a contract can misbehave on purpose; the
rest builds frames: a HELLO, a MSG of an exact size, one of an unknown type, and
garbage. It imports no test framework.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import string
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..codecs.base import Codec
from ..errors import (
    CodecError,
    ConnectionClosed,
    MessageTooLarge,
    ProtocolError,
    ProxyError,
    TransportError,
    UnknownMessageType,
)
from ..messages import DEFAULT_TYPES, BusFrameMessage, BusMessage, TypeRegistry
from ..protocol import (
    Batch,
    Bye,
    Envelope,
    Hello,
    Msg,
    Ready,
    Welcome,
    decode_handshake,
    encode_handshake,
)
from ..transport import Connection, Listener, Transport
from ._harness import CLIENT_WORKER, SERVER_WORKER, ClientSide, text, text_of, wait

__all__ = [
    "GARBAGE",
    "TEXT_LIKE",
    "Probe",
    "RawPeer",
    "classify",
    "connection_pair",
    "hello_frame",
    "raw_client",
    "raw_server",
    "ready_peer",
    "sized_message",
    "unknown_type_frame",
]


@contextlib.asynccontextmanager
async def connection_pair(
    transport: Transport, url: str, **serve: Any
) -> AsyncIterator[tuple[Connection, Connection, Listener]]:
    """Serve ``url``; yield (client end, server end, listener) of one raw connection.

    ``serve`` goes to ``transport.serve``, but for ``connect``: the options of
    ``transport.connect``. The server's handler holds its end until both ends
    are closed, on leaving.
    """
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


@dataclass
class Probe:
    """A server's per-connection handler that echoes, and what it saw: when it started,
    the frames it refused as malformed (``ProtocolError``) and how the connection ended."""

    started: asyncio.Future[Connection] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    outcome: asyncio.Future[BaseException] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    protocol_errors: list[ProtocolError] = field(default_factory=list)
    calls: int = 0

    async def echo(self, conn: Connection) -> None:
        """Echo frames, note malformed ones, and record how the connection ended."""
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


class RawPeer:
    """One side of a session spoken by hand over a bare :class:`Connection`.

    Like a compliant peer, it answers the other side's BYE with ``BYE 1000
    "bye"`` as soon as it reads it (unless ``answer_bye`` is false), so that
    the other side's close handshake ends at once.

    Args:
        conn: the connection.
        codec: the codec of the session.
        inbox: where a background reader puts what ``conn`` received (frames,
            then the exception that ended it); ``None`` to read ``conn`` directly.
        answer_bye: answer a BYE by itself.
    """

    def __init__(
        self,
        conn: Connection,
        codec: Codec,
        inbox: asyncio.Queue[bytes | Exception] | None = None,
        *,
        answer_bye: bool = True,
    ) -> None:
        self.conn = conn
        self.codec = codec
        self.seq = 0
        self.received: list[Envelope | bytes] = []
        self.answer_bye = answer_bye
        self.answered_bye = False
        self._inbox = inbox

    async def answer_if_bye(self, data: bytes) -> None:
        """Answer ``data`` with BYE 1000 if it is (or holds) the other side's BYE."""
        if not self.answer_bye or self.answered_bye:
            return
        try:
            decoded = self.codec.decode(data)
        except CodecError:
            return
        items = decoded.items if isinstance(decoded, Batch) else (decoded,)
        if any(isinstance(item, Bye) for item in items):
            self.answered_bye = True
            with contextlib.suppress(TransportError):
                await self.send(Bye(1000, "bye"))

    async def receive(self) -> bytes:
        """Return the next frame received, or raise what ended the connection."""
        if self._inbox is None:
            data = await self.conn.receive()
            await self.answer_if_bye(data)
            return data
        item = await self._inbox.get()
        if isinstance(item, ConnectionClosed):
            self._inbox.put_nowait(item)  # over is over: later calls raise it again
        if isinstance(item, Exception):
            raise item
        return item

    async def send(self, envelope: Envelope) -> None:
        await self.conn.send(self.codec.encode(envelope))

    async def send_msg(self, message: BusMessage) -> int:
        """Send ``message`` as the next numbered MSG; return its number."""
        self.seq += 1
        await self.send(Msg(self.seq, message))
        return self.seq

    async def next_envelope(self, predicate: Callable[[Envelope], bool]) -> Envelope:
        """Return the next received envelope that matches, keeping every frame."""

        async def scan() -> Envelope:
            while True:
                data = await self.receive()
                try:
                    decoded = self.codec.decode(data)
                except CodecError:
                    self.received.append(data)
                    continue
                # A raw peer announces no features, so no BATCH should come; if
                # one does, its frames count one by one.
                items = decoded.items if isinstance(decoded, Batch) else (decoded,)
                for envelope in items:
                    if isinstance(envelope, CodecError):
                        self.received.append(data)
                        continue
                    self.received.append(envelope)
                    if predicate(envelope):
                        return envelope

        return await wait(scan())

    async def next_text(self, body: str) -> Envelope:
        """Return the next MSG carrying a text frame with ``body``."""
        return await self.next_envelope(lambda e: isinstance(e, Msg) and text_of(e.message) == body)

    async def closed(self) -> ConnectionClosed:
        """Read until the connection is over; return how it ended."""

        async def drain() -> ConnectionClosed:
            while True:
                try:
                    self.received.append(await self.receive())
                except ConnectionClosed as exc:
                    return exc
                except (MessageTooLarge, ProtocolError):
                    continue

        return await wait(drain())


def hello_frame(codecs: Sequence[str], *, max_message_bytes: int = 1 << 20) -> bytes:
    """A HELLO from ``acme`` to ``assistant``."""
    return encode_handshake(
        Hello(
            codecs=tuple(codecs),
            client_worker=CLIENT_WORKER,
            server_worker=SERVER_WORKER,
            max_message_bytes=max_message_bytes,
        )
    )


@contextlib.asynccontextmanager
async def raw_client(
    transport: Transport,
    url: str,
    codec: Codec,
    *,
    offer: Sequence[str] | None = None,
    max_message_bytes: int = 1 << 22,
    answer_bye: bool = True,
) -> AsyncIterator[tuple[RawPeer, Welcome]]:
    """Open a bare connection and complete the handshake as ``acme``."""
    conn = await wait(transport.connect(url, max_message_bytes=max_message_bytes))
    try:
        await conn.send(hello_frame(offer or [codec.name], max_message_bytes=max_message_bytes))
        answer = decode_handshake(await wait(conn.receive()))
        assert isinstance(answer, Welcome), f"expected WELCOME, got {answer}"
        assert answer.codec == codec.name, answer
        yield RawPeer(conn, codec, answer_bye=answer_bye), answer
    finally:
        await conn.aclose()


async def ready_peer(client: ClientSide, peers: asyncio.Queue[RawPeer]) -> RawPeer:
    """Activate ``client``'s proxy, take its connection from a :func:`raw_server`, send
    READY for the server's worker, and return the peer once the client sees it ready."""
    await client.acme.activate_worker("proxy")
    peer = await wait(peers.get())
    await peer.send(Ready(SERVER_WORKER))
    await wait(asyncio.shield(client.remote_ready))
    return peer


@contextlib.asynccontextmanager
async def raw_server(
    transport: Transport,
    url: str,
    codec: Codec,
    *,
    max_message_bytes: int = 1 << 22,
    answer_bye: bool = True,
    ready: Sequence[str] = (),
) -> AsyncIterator[tuple[str, asyncio.Queue[RawPeer]]]:
    """Serve bare connections that complete the handshake by hand; yield the URL and peers.

    Like a real proxy, each connection is read all the time (into the peer's
    inbox), so a closing client is answered at once on every backend (its BYE
    too, unless ``answer_bye`` is false). The WELCOME announces the workers
    ``ready`` (a hostile server may name any).
    """
    peers: asyncio.Queue[RawPeer] = asyncio.Queue()

    async def handler(conn: Connection) -> None:
        hello = decode_handshake(await wait(conn.receive()))
        assert isinstance(hello, Hello), hello
        welcome = Welcome(
            codec=codec.name,
            session_id="0" * 32,
            ready=tuple(ready),
            max_message_bytes=max_message_bytes,
        )
        await conn.send(encode_handshake(welcome))
        inbox: asyncio.Queue[bytes | Exception] = asyncio.Queue()
        peer = RawPeer(conn, codec, inbox, answer_bye=answer_bye)
        peers.put_nowait(peer)
        while True:
            try:
                data = await conn.receive()
                inbox.put_nowait(data)
                await peer.answer_if_bye(data)
            except ConnectionClosed as exc:
                inbox.put_nowait(exc)
                return
            except (MessageTooLarge, ProtocolError) as exc:
                inbox.put_nowait(exc)

    async with transport.serve(url, handler, max_message_bytes=max_message_bytes) as listener:
        yield listener.url, peers


# --------------------------------------------------------------------------- sizes and bytes


def sized_message(
    codec: Codec, seq: int, size: int, source: str, target: str
) -> BusFrameMessage | None:
    """Return a text message whose MSG frame with ``seq`` encodes to exactly ``size`` bytes.

    Random letters keep compressing codecs honest. Returns ``None`` when no text
    length hits ``size`` exactly (a codec whose sizes jump over it).
    """
    rng = random.Random(size)
    for _ in range(16):
        pool = "".join(rng.choices(string.ascii_letters + string.digits, k=2 * size + 256))

        def length(n: int, pool: str = pool) -> int:
            return len(codec.encode(Msg(seq, text(source, target, pool[:n]))))

        if length(len(pool)) < size or length(0) > size:
            return None
        low, high = 0, len(pool)
        while low < high:  # the first length whose frame reaches ``size``
            middle = (low + high) // 2
            if length(middle) < size:
                low = middle + 1
            else:
                high = middle
        for n in range(max(0, low - 64), min(len(pool), low + 64) + 1):
            if length(n) == size:
                return text(source, target, pool[:n])
    return None


@dataclass
class _Unregistered(BusMessage):
    """A message type that only a private registry knows: the receiver must refuse its tag."""


_UNKNOWN_TAG = "proxy_core.testing.unregistered"


def _registry_with_unknown() -> TypeRegistry:
    registry = TypeRegistry()
    for tag in DEFAULT_TYPES.tags():
        cls = DEFAULT_TYPES.type_of(tag)
        if cls is not None:
            registry.register(cls, tag)
    registry.register(_Unregistered, _UNKNOWN_TAG)
    return registry


def unknown_type_frame(codec: Codec, seq: int, source: str, target: str) -> bytes | None:
    """Return a MSG frame whose message has a tag the receiver does not know, or ``None``.

    Built with another instance of the codec's class given a registry that knows
    one more type (``type(codec)(registry=...)``, as the built-in codecs accept);
    ``None`` if the class takes no registry.
    """
    try:
        probe = type(codec)(registry=_registry_with_unknown())  # type: ignore[call-arg]
    except TypeError:
        return None
    try:
        return probe.encode(Msg(seq, _Unregistered(source, target)))
    except CodecError:
        return None


#: Frames that are not protocol frames, for a codec to refuse.
GARBAGE = (
    b"\xff" * 12 + b"\xc1 not a frame \x00",
    b"\x00\x01\x02\x03 garbage \xfe\xfd\xc1",
    bytes(range(256)),
    b"\xc1",
)
TEXT_LIKE = (
    b"hello, this is not a frame",
    b'"just a string"',
    b'{"kind": "no frame"}',
    b"[99, 1]",
)


def classify(codec: Codec, data: bytes) -> str | None:
    """Return the drop reason a receiver counts ``data`` under, or ``None`` if it is not dropped.

    Frames that decode, or whose error carries a sequence number (they would
    consume one), are not garbage for this codec: ``None``.
    """
    try:
        codec.decode(data)
    except UnknownMessageType as exc:
        return None if exc.seq is not None else "unknown_type"
    except CodecError as exc:
        return None if exc.seq is not None else "malformed"
    return None
