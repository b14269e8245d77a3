"""Helpers shared by the end-to-end tests (real sockets on 127.0.0.1, port 0).

Nothing here sleeps to synchronise: every wait is on an event, a future or a
queue, bounded by :data:`TIMEOUT`. To show that a message did *not* cross, a
test sends a marker after it on the same path and waits for the marker: the
session keeps order, so the earlier message would have arrived first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgpack
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as raw_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as raw_serve

from proxy_core import (
    BaseWorker,
    BusFrameMessage,
    BusLocalMessage,
    BusMessage,
    ProxyClient,
    WorkerReadyData,
    WorkerRunner,
    register_type,
    serve_proxy,
)
from proxy_core.codecs.json import JsonCodec
from proxy_core.codecs.msgpack import MsgpackCodec
from proxy_core.protocol import Envelope
from proxy_core.service import ProxyService
from proxy_core.testing import _harness
from proxy_core.testing._harness import (
    follow_client,
    follow_session,
    resolve_on_ready,
)
from proxy_core.testing._raw import Probe
from proxy_core_websockets import WebSocketProxyClient, WebSocketProxyServer

TIMEOUT = 30.0
T = TypeVar("T")

# The names of the seed scenario.
CLIENT_WORKER = "acme"
SERVER_WORKER = "assistant"
CLIENT_OTHER = "other"  # a second worker on the client's bus, not served by the proxy
SERVER_OTHER = "helper"  # a second worker on the server's bus, not served by the proxy


async def wait(awaitable: Awaitable[T]) -> T:
    """Await with a generous bound, so a bug fails the test instead of hanging it."""
    return await asyncio.wait_for(awaitable, TIMEOUT)


# --------------------------------------------------------------------------- types


@register_type("tests.e2e.local_note")
@dataclass
class LocalNote(BusLocalMessage, BusMessage):
    """Registered, so that only the BusLocalMessage rule keeps it off the wire."""

    text: str = ""


@register_type("tests.e2e.note")
@dataclass
class Note(BusMessage):
    """Registered but never allow-listed."""

    text: str = ""


def text_of(message: BusMessage) -> str | None:
    """Return the text of a TextFrame message (or a Note), else ``None``."""
    frame = getattr(message, "frame", None)
    text = getattr(frame, "text", None) if frame is not None else getattr(message, "text", None)
    return text if isinstance(text, str) else None


# --------------------------------------------------------------------------- workers


class Recorder(BaseWorker):
    """A worker that records every message and activation it gets."""

    def __init__(self, name: str, *, active: bool = True) -> None:
        super().__init__(name, active=active)
        self.seen: list[BusMessage] = []
        self.inbox: asyncio.Queue[BusMessage] = asyncio.Queue()
        self.activations: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.ended = asyncio.Event()

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        self.activations.put_nowait(args)

    async def on_end(self, reason: str | None) -> None:
        self.ended.set()

    async def on_bus_message(self, message: BusMessage) -> None:
        self.seen.append(message)
        self.inbox.put_nowait(message)

    async def wait_for(self, predicate: Callable[[BusMessage], bool]) -> BusMessage:
        """Return the next message that matches, skipping (but keeping in ``seen``) others."""

        async def scan() -> BusMessage:
            while True:
                message = await self.inbox.get()
                if predicate(message):
                    return message

        return await wait(scan())

    async def wait_text(self, text: str) -> BusMessage:
        """Return the next message carrying ``text``."""
        return await self.wait_for(lambda m: text_of(m) == text)

    def texts(self) -> list[str]:
        """The texts of every text-carrying message seen so far, in order."""
        return [t for t in map(text_of, self.seen) if t is not None]

    def crossed(self) -> list[BusMessage]:
        """The messages seen that are not local runner chatter (ready broadcasts)."""
        return [m for m in self.seen if not isinstance(m, BusLocalMessage)]


def frame(source: str, target: str | None, text: str) -> BusFrameMessage:
    from proxy_core import TextFrame

    return BusFrameMessage(source, target, TextFrame(text))


def delta(after: Counter[str], before: Counter[str]) -> dict[str, int]:
    """What was added to a counter between two snapshots, zeros left out."""
    return {k: v for k, v in (after - before).items() if v}


# --------------------------------------------------------------------------- codecs


class SpyMsgpack(MsgpackCodec):
    """The msgpack codec, counting what it decodes (to tell which codec was negotiated)."""

    def __init__(self) -> None:
        super().__init__()
        self.decoded = 0

    def decode(self, data: bytes) -> Envelope:
        self.decoded += 1
        return super().decode(data)


class SpyJson(JsonCodec):
    """The JSON codec, counting what it decodes."""

    def __init__(self) -> None:
        super().__init__()
        self.decoded = 0

    def decode(self, data: bytes) -> Envelope:
        self.decoded += 1
        return super().decode(data)


# --------------------------------------------------------------------------- server side


class ServerSide(_harness.ServerSide):
    """One server session (the kit's), whose served worker is also called ``assistant``."""

    @property
    def assistant(self) -> Recorder:
        return self.worker


class Sessions:
    """Builds the server side of each session and hands it to the test in a queue.

    ``setup`` is the :func:`serve_proxy` hook; :meth:`pipecat_handler` is a raw
    ``websockets`` handler in the Pipecat documentation's shape.
    """

    def __init__(self, **proxy_options: Any) -> None:
        self.proxy_options = proxy_options
        self.queue: asyncio.Queue[ServerSide] = asyncio.Queue()
        self.all: list[ServerSide] = []

    def _new(self, runner: WorkerRunner) -> ServerSide:
        side = ServerSide(runner, Recorder(SERVER_WORKER, active=False), Recorder(SERVER_OTHER))
        self.all.append(side)
        return side

    async def setup(self, runner: WorkerRunner) -> None:
        side = self._new(runner)
        follow_session(runner, side)
        await runner.add_workers(side.assistant, side.helper)
        self.queue.put_nowait(side)

    async def pipecat_handler(self, ws: ServerConnection) -> None:
        runner = WorkerRunner(handle_sigint=False)
        side = self._new(runner)
        proxy = WebSocketProxyServer(
            "gateway",
            websocket=ws,
            worker_name=SERVER_WORKER,
            remote_worker_name=CLIENT_WORKER,
            **self.proxy_options,
        )
        side.hook(proxy)
        await runner.add_workers(proxy, side.assistant, side.helper)
        self.queue.put_nowait(side)
        try:
            await runner.run()
        finally:
            side.ended.set()

    async def next(self) -> ServerSide:
        """Return the next session the server started (rejected ones included)."""
        return await wait(self.queue.get())

    def of(self, client: ClientSide) -> ServerSide:
        """Return the server side of ``client``'s open session."""
        assert client.proxy.session_id is not None, "the client has no session"
        found = [s for s in self.all if s.proxy and s.proxy.session_id == client.proxy.session_id]
        assert len(found) == 1, found
        return found[0]


@dataclass
class Server:
    url: str
    sessions: Sessions
    service: ProxyService | None = None


@contextlib.asynccontextmanager
async def run_server(shape: str = "serve_proxy", **options: Any) -> AsyncIterator[Server]:
    """Serve the seed scenario's server side, as ``serve_proxy`` or as a raw handler.

    ``options`` go to the server proxy (``forward_messages``, ``codecs``...);
    ``authenticate`` and ``max_message_bytes`` too, whichever the shape.
    """
    options.setdefault("forward_messages", (BusFrameMessage,))
    sessions = Sessions(**options)
    if shape == "serve_proxy":
        async with serve_proxy(
            "ws://127.0.0.1:0/ws",
            worker_name=SERVER_WORKER,
            remote_worker_name=CLIENT_WORKER,
            setup=sessions.setup,
            **options,
        ) as service:
            yield Server(service.url, sessions, service)
    else:
        assert shape == "pipecat", shape
        async with raw_serve(sessions.pipecat_handler, "127.0.0.1", 0, compression=None) as ws:
            port = ws.sockets[0].getsockname()[1]
            yield Server(f"ws://127.0.0.1:{port}/ws", sessions)


# --------------------------------------------------------------------------- client side


@dataclass
class ClientSide(_harness.ClientSide):
    """The client's runner (the kit's): ``acme``, ``other``, the proxy, and when it started."""

    proxy_started: asyncio.Future[WorkerReadyData] | None = None

    async def activate(self) -> None:
        """Activate the proxy (which connects), then wait for the remote worker to be ready."""
        await self.acme.activate_worker(self.proxy.name)
        await self.proxy.wait_connected(TIMEOUT)
        await wait(asyncio.shield(self.remote_ready))

    async def say(self, text: str, *, source: str = CLIENT_WORKER) -> BusFrameMessage:
        message = frame(source, SERVER_WORKER, text)
        await self.acme.send_bus_message(message)
        return message

    async def end(self) -> None:
        """End the runner; if the proxy gave up, ``run()`` ended with that error: keep it.

        Any other error from ``run()`` fails the test.
        """
        await self.runner.end("test over")
        await self._wait_run()


@contextlib.asynccontextmanager
async def run_client(url: str, **options: Any) -> AsyncIterator[ClientSide]:
    """Run the seed scenario's client runner; the proxy is not activated yet."""
    options.setdefault("forward_messages", (BusFrameMessage,))
    # One attempt, as these tests expect, unless a test asks for retries.
    options.setdefault("reconnect", None)
    runner = WorkerRunner(handle_sigint=False)
    proxy = WebSocketProxyClient(
        "proxy",
        url=url,
        local_worker_name=CLIENT_WORKER,
        remote_worker_name=SERVER_WORKER,
        **options,
    )
    loop = asyncio.get_running_loop()
    side = ClientSide(
        runner,
        Recorder(CLIENT_WORKER),
        Recorder(CLIENT_OTHER),
        proxy,
        loop.create_future(),
        proxy_started=loop.create_future(),
    )
    assert side.proxy_started is not None
    follow_client(side)
    runner.registry.watch(SERVER_WORKER, resolve_on_ready(side.remote_ready))
    runner.registry.watch(proxy.name, resolve_on_ready(side.proxy_started))
    await runner.add_workers(side.acme, side.other, proxy)
    side.task = asyncio.create_task(runner.run(), name="client-runner")
    try:
        await wait(asyncio.shield(side.proxy_started))
        yield side
    finally:
        await side.end()


# --------------------------------------------------------------------------- raw protocol


def hello(**fields: Any) -> bytes:
    """A HELLO from ``acme`` to ``assistant`` in the bootstrap encoding, fields overridable."""
    body: dict[str, Any] = {
        "protocol": "proxy-core",
        "type": "hello",
        "version": 1,
        "codecs": ["msgpack"],
        "client_worker": CLIENT_WORKER,
        "server_worker": SERVER_WORKER,
        "max_message_bytes": 1 << 20,
    }
    body.update(fields)
    return json.dumps(body).encode()


def welcome(codec: str = "msgpack", ready: list[str] | None = None) -> bytes:
    return json.dumps(
        {
            "protocol": "proxy-core",
            "type": "welcome",
            "version": 1,
            "codec": codec,
            "session_id": "0" * 32,
            "ready": ready or [],
            "max_message_bytes": 1 << 20,
        }
    ).encode()


def text_tree(source: str | None, target: str | None, text: str) -> dict[str, Any]:
    """The tree of ``BusFrameMessage(source, target, TextFrame(text))``."""
    return {
        "$type": "bus.frame",
        "source": source,
        "target": target,
        "frame": {"$type": "frame.text", "text": text},
    }


def msg(seq: int, message: dict[str, Any]) -> list[Any]:
    return [1, seq, message]


def ready(worker: str) -> list[Any]:
    return [3, worker]


def pack(tree: Any, codec: str = "msgpack") -> bytes:
    if codec == "json":
        return json.dumps(tree).encode()
    data: bytes = msgpack.packb(tree, use_bin_type=True)
    return data


def unpack(data: bytes, codec: str = "msgpack") -> Any:
    if codec == "json":
        return json.loads(data)
    return msgpack.unpackb(data, raw=False)


class RawPeer:
    """One side of a session spoken by hand over a bare ``websockets`` connection."""

    def __init__(self, ws: ClientConnection | ServerConnection, codec: str = "msgpack") -> None:
        self.ws = ws
        self.codec = codec
        self.seq = 0
        self.frames: list[Any] = []
        self.welcome: dict[str, Any] = {}

    async def send(self, tree: Any) -> None:
        await self.ws.send(pack(tree, self.codec))

    async def send_msg(self, message: dict[str, Any]) -> int:
        """Send the next numbered MSG; return its number."""
        self.seq += 1
        await self.send(msg(self.seq, message))
        return self.seq

    async def next_frame(self, predicate: Callable[[Any], bool]) -> Any:
        """Return the next decoded frame that matches, keeping every frame in ``frames``."""

        async def scan() -> Any:
            while True:
                data = await self.ws.recv()
                assert isinstance(data, bytes), data
                tree = unpack(data, self.codec)
                self.frames.append(tree)
                if predicate(tree):
                    return tree

        return await wait(scan())

    async def wait_ready(self, worker: str) -> None:
        """Return once the peer announced ``worker``: in its WELCOME, or in a READY frame."""
        if worker not in self.welcome.get("ready", []):
            await self.next_frame(lambda f: f == ready(worker))

    async def next_text(self, text: str) -> Any:
        """Return the next MSG frame carrying a TextFrame with ``text``."""

        def carries(tree: Any) -> bool:
            if not (isinstance(tree, list) and tree and tree[0] == 1):
                return False
            inner = tree[2].get("frame")
            return isinstance(inner, dict) and inner.get("text") == text

        return await self.next_frame(carries)

    async def closed(self) -> tuple[int | None, str | None]:
        """Read until the connection closes; return the close code and reason the peer sent."""

        async def drain() -> None:
            with contextlib.suppress(Exception):
                async for data in self.ws:
                    if isinstance(data, bytes):
                        with contextlib.suppress(Exception):
                            self.frames.append(unpack(data, self.codec))

        await wait(drain())
        await wait(self.ws.wait_closed())
        return self.ws.close_code, self.ws.close_reason


@contextlib.asynccontextmanager
async def raw_client(
    url: str, *, headers: Mapping[str, str] | None = None, max_size: int | None = 1 << 22
) -> AsyncIterator[ClientConnection]:
    async with raw_connect(
        url, additional_headers=headers, compression=None, max_size=max_size, ping_interval=None
    ) as ws:
        yield ws


async def raw_handshake(url: str, codec: str = "msgpack") -> tuple[ClientConnection, RawPeer]:
    """Open a bare connection and complete the handshake as ``acme``."""
    ws = await wait(
        raw_connect(
            url, compression=None, max_size=1 << 22, ping_interval=None, open_timeout=TIMEOUT
        )
    )
    await ws.send(hello(codecs=[codec]))
    answer = json.loads(await wait(ws.recv()))
    assert answer["type"] == "welcome", answer
    assert answer["codec"] == codec
    peer = RawPeer(ws, codec)
    peer.welcome = answer
    return ws, peer


@contextlib.asynccontextmanager
async def raw_server(
    handler: Callable[[ServerConnection], Awaitable[None]], *, max_size: int | None = 1 << 22
) -> AsyncIterator[str]:
    """Serve ``handler`` on a bare ``websockets`` server; yield its URL."""
    async with raw_serve(
        handler, "127.0.0.1", 0, compression=None, max_size=max_size, ping_interval=None
    ) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"


# --------------------------------------------------------------------------- leaks


@pytest.fixture
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves tasks behind once everything it opened was closed."""
    baseline = asyncio.all_tasks()
    yield
    extra = asyncio.all_tasks() - baseline - {asyncio.current_task()}
    if extra:
        # Sockets finish closing on I/O events, not loop turns: give them a bound.
        _, pending = await asyncio.wait(extra, timeout=5)
        assert not pending, f"leaked tasks: {pending}"


async def settled_tasks(
    baseline: set[asyncio.Task[Any]], timeout: float = 5.0
) -> set[asyncio.Task[Any]]:
    """Return the tasks beyond ``baseline`` still pending after ``timeout`` seconds at most."""
    extra = asyncio.all_tasks() - baseline - {asyncio.current_task()}
    if not extra:
        return set()
    _, pending = await asyncio.wait(extra, timeout=timeout)
    return pending


async def assert_tasks_settle(timeout: float = 5.0) -> None:
    """Fail if tasks other than this one are left once everything was closed.

    Sockets and calls finish closing on I/O events: they get ``timeout`` seconds.
    """
    pending = await settled_tasks(set(), timeout)
    assert not pending, f"leaked tasks: {pending}"


@dataclass
class Gateway:
    """The server side's sessions: each one's assistant, as it starts."""

    assistants: asyncio.Queue[Recorder] = field(default_factory=asyncio.Queue)

    async def setup(self, runner: WorkerRunner) -> None:
        """The ``serve_proxy`` hook: an assistant worker per session."""
        assistant = Recorder(SERVER_WORKER)
        await runner.add_workers(assistant)
        self.assistants.put_nowait(assistant)


@contextlib.asynccontextmanager
async def client_runner(proxy: ProxyClient) -> AsyncIterator[tuple[Recorder, ProxyClient]]:
    """Run ``acme`` and ``proxy``; connect, and wait until the remote assistant is ready."""
    runner = WorkerRunner(handle_sigint=False)
    acme = Recorder(CLIENT_WORKER)
    ready: asyncio.Future[WorkerReadyData] = asyncio.get_running_loop().create_future()

    async def on_ready(data: WorkerReadyData) -> None:
        if not ready.done():
            ready.set_result(data)

    runner.registry.watch(SERVER_WORKER, on_ready)
    await runner.add_workers(acme, proxy)
    task = asyncio.create_task(runner.run())
    try:
        await acme.activate_worker(proxy.name)
        await proxy.wait_connected(TIMEOUT)
        assert (await wait(ready)).remote
        yield acme, proxy
    finally:
        await runner.end("test over")
        await wait(task)


__all__ = [
    "CLIENT_OTHER",
    "CLIENT_WORKER",
    "SERVER_OTHER",
    "SERVER_WORKER",
    "TIMEOUT",
    "ClientSide",
    "Gateway",
    "Probe",
    "assert_tasks_settle",
    "client_runner",
    "LocalNote",
    "Note",
    "RawPeer",
    "Recorder",
    "Server",
    "ServerSide",
    "Sessions",
    "SpyJson",
    "SpyMsgpack",
    "delta",
    "frame",
    "hello",
    "msg",
    "no_leaked_tasks",
    "pack",
    "raw_client",
    "raw_handshake",
    "raw_server",
    "ready",
    "run_client",
    "run_server",
    "settled_tasks",
    "text_of",
    "text_tree",
    "unpack",
    "wait",
    "welcome",
]
