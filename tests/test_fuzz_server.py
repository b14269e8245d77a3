"""Hostile connections against a real server while a well-behaved session keeps working.

One ``serve_proxy`` server per TCP transport (127.0.0.1, port 0), one proxy client
exchanging messages both ways, and, at the same time, a crowd of raw connections
opened with the transport's own ``connect``: random bytes as HELLO, mutated
HELLOs, a valid HELLO followed by random and mutated frames, deep nesting, a
PING flood, a BATCH of tiny garbage frames, a frame over the limit, a sequence
gap, wrong-typed lifecycle messages. The good session must deliver every message
in order during and after the attack, without reconnecting; every hostile session
must end once its connection is gone (nothing piles up); and nothing may be
logged as an error (a crashed receive loop or handler logs one).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from _fuzzing import CODEC_NAMES, CODECS, SEED, items_of, mutate, seed_frames

from proxy_core.codecs.base import Codec
from proxy_core.errors import (
    CodecError,
    ConnectionClosed,
    HandshakeError,
    MessageTooLarge,
    PluginError,
    ProtocolError,
    TransportError,
)
from proxy_core.messages import (
    BusActivateWorkerMessage,
    BusDataMessage,
    BusEndWorkerMessage,
    BusFrameMessage,
    TextFrame,
)
from proxy_core.plugins import available_transports, resolve_transport
from proxy_core.protocol import Msg, Ping, Pong, Reject, RejectCode, Welcome, decode_handshake
from proxy_core.proxy import ProxyServer
from proxy_core.testing._harness import (
    CLIENT_WORKER,
    SERVER_WORKER,
    ClientSide,
    ServerSide,
    running_client,
    running_server,
    text,
    wait,
)
from proxy_core.testing._raw import hello_frame
from proxy_core.transport import Connection, Transport

pytestmark = pytest.mark.timeout(180)

#: The server's frame limit: small, so that the frame over it is cheap to send.
LIMIT = 64 * 1024
#: The TCP transports of this repository, each with the codec its good client speaks.
GOOD_CODEC = {"websockets": "msgpack", "aiohttp": "json", "grpc": "protobuf"}


def _tcp_transports() -> list[str]:
    found = []
    for name in GOOD_CODEC:
        if name not in available_transports() or GOOD_CODEC[name] not in CODECS:
            continue
        try:
            resolve_transport(name)
        except PluginError:
            continue
        found.append(name)
    return found


TRANSPORTS = _tcp_transports()
#: A server that holds lost sessions for a resume would keep each hostile one for
#: its grace period: end them at once instead, so that "gone" can be checked.
NO_RESUME = (
    {"resume_grace": 0.0}
    if "resume_grace" in inspect.signature(ProxyServer.__init__).parameters
    else {}
)


# --------------------------------------------------------------------------- a raw peer


class Hostile:
    """A bare connection to the server, read all the time in the background."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.reader = asyncio.create_task(self._read(), name="fuzz-hostile-reader")

    async def _read(self) -> None:
        while True:
            try:
                self.inbox.put_nowait(await self.conn.receive())
            except ConnectionClosed as exc:
                self.close_code = exc.code
                break
            except (MessageTooLarge, ProtocolError):
                continue
            except TransportError:
                break
        self.closed.set()

    async def send(self, data: bytes) -> bool:
        """Send one frame; ``False`` once the server has closed the connection."""
        try:
            await self.conn.send(data)
        except (TransportError, MessageTooLarge):
            return False
        return True

    async def next_frame(self) -> bytes | None:
        """The next frame, or ``None`` once the connection is closed and drained."""

        async def either() -> bytes | None:
            while True:
                if not self.inbox.empty():
                    return self.inbox.get_nowait()
                if self.closed.is_set():
                    return None
                getter = asyncio.ensure_future(self.inbox.get())
                closer = asyncio.ensure_future(self.closed.wait())
                done, pending = await asyncio.wait(
                    {getter, closer}, return_when=asyncio.FIRST_COMPLETED
                )
                for task in pending:
                    task.cancel()
                if getter in done:
                    return getter.result()

        return await wait(either())

    async def handshake(self, codec: str) -> Welcome | None:
        """Send a valid HELLO offering ``codec``; the WELCOME, or ``None`` if refused."""
        await self.send(hello_frame([codec], max_message_bytes=1 << 20))
        answer = await self.next_frame()
        assert answer is not None, "the server closed without answering HELLO"
        frame = decode_handshake(answer)
        return frame if isinstance(frame, Welcome) else None

    async def until_closed(self) -> int | None:
        """Read until the server closes the connection; its close code."""
        while await self.next_frame() is not None:
            pass
        return self.close_code

    async def pongs(self, codec: Codec, nonces: set[int]) -> str:
        """Wait for a PONG for each of ``nonces``: ``"pong"``, or ``"closed"`` if it ended first."""
        missing = set(nonces)
        while missing:
            data = await self.next_frame()
            if data is None:
                return "closed"
            try:
                decoded = codec.decode(data)
            except CodecError:
                continue
            missing -= {i.nonce for i in items_of(decoded) if isinstance(i, Pong)}
        return "pong"


@contextlib.asynccontextmanager
async def hostile(transport: Transport, url: str) -> AsyncIterator[Hostile]:
    """Open a bare connection with the transport's own ``connect``; close it after."""
    conn = await wait(transport.connect(url, max_message_bytes=1 << 20))
    peer = Hostile(conn)
    try:
        yield peer
    finally:
        await conn.aclose()
        await wait(peer.reader)


# --------------------------------------------------------------------------- attacks

Attack = Callable[[Transport, str, random.Random], Awaitable[str]]


async def garbage_hello(transport: Transport, url: str, rng: random.Random) -> str:
    async with hostile(transport, url) as peer:
        await peer.send(rng.randbytes(rng.randint(0, 200)))
        answer = await peer.next_frame()
        assert answer is not None
        reject = decode_handshake(answer)
        assert isinstance(reject, Reject) and reject.code == RejectCode.BAD_HELLO
        await peer.until_closed()
        return "rejected"


async def mutated_hello(transport: Transport, url: str, rng: random.Random) -> str:
    async with hostile(transport, url) as peer:
        hello = hello_frame([rng.choice(CODEC_NAMES)], max_message_bytes=1 << 20)
        await peer.send(mutate(hello, rng, rng.randint(1, 4)))
        answer = await peer.next_frame()
        assert answer is not None
        try:
            frame = decode_handshake(answer)
        except HandshakeError:
            raise AssertionError(f"the server answered a bad HELLO with {answer!r}") from None
        assert isinstance(frame, Welcome | Reject)
        return type(frame).__name__.lower()


async def garbage_after_hello(transport: Transport, url: str, rng: random.Random) -> str:
    """A valid HELLO, then random and mutated frames of the negotiated codec, then a PING."""
    name = rng.choice(CODEC_NAMES)
    codec = CODECS[name]
    seeds = seed_frames(codec)
    async with hostile(transport, url) as peer:
        assert await peer.handshake(name) is not None
        for _ in range(40):
            if rng.random() < 0.3:
                frame = rng.randbytes(rng.randint(0, 64))
            else:
                frame = mutate(rng.choice(seeds), rng, rng.randint(1, 5))
            if not await peer.send(frame):
                break
        await peer.send(codec.encode(Ping(424242)))
        # A mutant may have broken the numbering (the server then closes): either is fine.
        return await peer.pongs(codec, {424242})


async def ping_flood(transport: Transport, url: str, rng: random.Random) -> str:
    """Hundreds of PINGs: every one answered, and the session still there."""
    name = rng.choice(CODEC_NAMES)
    codec = CODECS[name]
    async with hostile(transport, url) as peer:
        assert await peer.handshake(name) is not None
        nonces = set(range(1, 501))
        for nonce in nonces:
            assert await peer.send(codec.encode(Ping(nonce)))
        assert await peer.pongs(codec, nonces) == "pong"
        return "pong"


async def deep_nesting(transport: Transport, url: str, rng: random.Random) -> str:
    """MSGs nesting thousands of levels deep (json, msgpack), then a PING that is answered."""
    async with hostile(transport, url) as peer:
        name = rng.choice([n for n in ("json", "msgpack") if n in CODECS])
        assert await peer.handshake(name) is not None
        depth = rng.randint(900, 20_000)
        if name == "json":
            deep = "[" * depth + "]" * depth
            head = '[1,1,{"$type":"bus.data","source":"acme","target":"assistant","data":{"x":'
            frame = (head + deep + "}}]").encode()
        else:
            head = (
                b"\x93\x01\x01\x84\xa5$type\xa8bus.data\xa6source\xa4acme"
                b"\xa6target\xa9assistant\xa4data\x81\xa1x"
            )
            frame = head + b"\x91" * depth + b"\x90"
        assert await peer.send(frame)
        assert await peer.send(CODECS[name].encode(Ping(99)))
        return await peer.pongs(CODECS[name], {99})


async def garbage_batch(transport: Transport, url: str, rng: random.Random) -> str:
    """One BATCH of tens of thousands of 1-byte frames that are not frames."""
    name = rng.choice([n for n in CODEC_NAMES if getattr(CODECS[n], "supports_batch", False)])
    codec = CODECS[name]
    tiny = {"json": b"0", "msgpack": b"\xc0", "protobuf": b""}.get(name, b"0")
    async with hostile(transport, url) as peer:
        assert await peer.handshake(name) is not None
        frame = codec.encode_batch([tiny] * 20_000)
        assert len(frame) <= LIMIT
        assert await peer.send(frame)
        assert await peer.send(codec.encode(Ping(7)))
        return await peer.pongs(codec, {7})


async def too_large(transport: Transport, url: str, rng: random.Random) -> str:
    async with hostile(transport, url) as peer:
        assert await peer.handshake(rng.choice(CODEC_NAMES)) is not None
        await peer.send(rng.randbytes(LIMIT + 1))
        await peer.until_closed()
        return "closed"


async def sequence_gap(transport: Transport, url: str, rng: random.Random) -> str:
    name = rng.choice(CODEC_NAMES)
    async with hostile(transport, url) as peer:
        assert await peer.handshake(name) is not None
        message = text(CLIENT_WORKER, SERVER_WORKER, "gap")
        await peer.send(CODECS[name].encode(Msg(5, message)))
        await peer.until_closed()
        return "closed"


async def odd_lifecycle(transport: Transport, url: str, rng: random.Random) -> str:
    """Lifecycle messages cross unfiltered: fields of the wrong type must not crash anything."""
    name = rng.choice([n for n in ("json", "msgpack") if n in CODECS])
    codec = CODECS[name]
    odd = [
        BusActivateWorkerMessage(CLIENT_WORKER, SERVER_WORKER, [1, 2]),  # type: ignore[arg-type]
        BusDataMessage(CLIENT_WORKER, SERVER_WORKER, "not a dict"),  # type: ignore[arg-type]
        BusFrameMessage(CLIENT_WORKER, SERVER_WORKER, TextFrame(None)),  # type: ignore[arg-type]
        BusEndWorkerMessage(CLIENT_WORKER, SERVER_WORKER, {"why": 1}),  # type: ignore[arg-type]
    ]
    async with hostile(transport, url) as peer:
        assert await peer.handshake(name) is not None
        for seq, message in enumerate(odd, start=1):
            if not await peer.send(codec.encode(Msg(seq, message))):
                break
        # The end_worker may end this session's worker, and with it the session.
        await peer.send(codec.encode(Ping(5)))
        return await peer.pongs(codec, {5})


async def silent_close(transport: Transport, url: str, rng: random.Random) -> str:
    async with hostile(transport, url):
        return "gone"


ATTACKS: list[Attack] = [
    garbage_hello,
    garbage_hello,
    mutated_hello,
    mutated_hello,
    garbage_after_hello,
    garbage_after_hello,
    garbage_after_hello,
    ping_flood,
    deep_nesting,
    deep_nesting,
    garbage_batch,
    too_large,
    sequence_gap,
    odd_lifecycle,
    silent_close,
]


# --------------------------------------------------------------------------- the test


async def round_trip(client: ClientSide, good: ServerSide, body: str) -> None:
    """One message each way on the good session."""
    await client.say(body)
    await good.worker.wait_text(body)
    await good.worker.send_bus_message(text(SERVER_WORKER, CLIENT_WORKER, f"re: {body}"))
    await client.acme.wait_text(f"re: {body}")


async def good_traffic(
    client: ClientSide, good: ServerSide, label: str, count: int, until: asyncio.Event | None = None
) -> list[str]:
    """At least ``count`` round trips, and on until ``until`` is set (at most 2000)."""
    bodies: list[str] = []
    for i in range(2000):
        if i >= count and (until is None or until.is_set()):
            break
        bodies.append(f"{label} {i}")
        await round_trip(client, good, bodies[-1])
    return bodies


async def attack_all(transport: Transport, url: str, rng: random.Random) -> list[str]:
    seeds = [rng.randrange(2**32) for _ in ATTACKS]
    return list(
        await asyncio.gather(
            *(a(transport, url, random.Random(s)) for a, s in zip(ATTACKS, seeds, strict=True))
        )
    )


@pytest.mark.parametrize("name", TRANSPORTS)
async def test_hostile_peers_do_not_disturb_a_good_session(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    transport = resolve_transport(name)
    url = f"{transport.schemes[0]}://127.0.0.1:0/ws"
    rng = random.Random(f"{SEED}-server-{name}")
    async with running_server(
        transport, url, codecs=CODEC_NAMES, max_message_bytes=LIMIT, **NO_RESUME
    ) as server:
        async with running_client(transport, server.url, codec=GOOD_CODEC[name]) as client:
            await client.activate()
            good = await server.of(client)
            await round_trip(client, good, "before")

            attacks = asyncio.create_task(attack_all(transport, server.url, rng))
            over = asyncio.Event()
            attacks.add_done_callback(lambda _: over.set())
            during = await wait(good_traffic(client, good, "during", 10, until=over), timeout=120)
            outcomes = await wait(attacks)
            after = await good_traffic(client, good, "after", 3)

            # Every message crossed, in order, on the one session the client opened,
            # while the attacks ran and after.
            sent = ["before", *during, *after]
            assert good.worker.texts() == sent
            assert client.acme.texts() == [f"re: {t}" for t in sent]
            assert client.events == ["connected"]
            # The attacks did what they meant to (the PING flood was answered in full).
            assert outcomes[ATTACKS.index(ping_flood)] == "pong"
            assert outcomes[ATTACKS.index(garbage_hello)] == "rejected"

            # Each hostile connection is gone: so is its session on the server (every
            # attack that got a PONG had one), and the good session is still open.
            hostile = [side for side in server.sessions if side is not good]
            assert len(hostile) >= outcomes.count("pong")
            for side in hostile:
                await wait(side.ended.wait())
            assert not good.ended.is_set()

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
