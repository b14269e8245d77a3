"""The scaffolding of the conformance contracts: workers, and both sides of a session.

Private: the contracts in :mod:`proxy_core.testing.contracts` use it and it may
change with them. It imports no test framework. Nothing here sleeps to
synchronise: every wait is on an event, a future or a queue, bounded by
:data:`TIMEOUT`. To show that a message did *not* cross, a contract sends a
marker after it on the same path and waits for the marker: sessions keep order.

The peers that speak the protocol by hand, and the bytes they send, are in
:mod:`proxy_core.testing._raw`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import ProxyError
from ..messages import BusFrameMessage, BusLocalMessage, BusMessage, TextFrame
from ..proxy import CodecSpec, ProxyClient, ProxyServer
from ..registry import WorkerReadyData
from ..runner import WorkerRunner
from ..service import ProxyService, serve_proxy
from ..transport import Connection, Transport
from ..worker import BaseWorker

__all__ = [
    "CLIENT_OTHER",
    "CLIENT_WORKER",
    "SERVER_OTHER",
    "SERVER_WORKER",
    "TIMEOUT",
    "ClientSide",
    "LinkStalled",
    "Recorder",
    "Server",
    "ServerSide",
    "follow_client",
    "follow_session",
    "resolve_on_ready",
    "runner_outcome",
    "running_client",
    "running_server",
    "text",
    "text_of",
    "wait",
    "wait_counts",
    "waiting_receive",
]

T = TypeVar("T")

#: The bound on every wait: a bug fails the contract instead of hanging it.
TIMEOUT = 30.0

CLIENT_WORKER = "acme"
SERVER_WORKER = "assistant"
CLIENT_OTHER = "other"  # a second worker on the client's bus, not served by the proxy
SERVER_OTHER = "helper"  # a second worker on the server's bus, not served by the proxy


async def wait(awaitable: Awaitable[T], timeout: float = TIMEOUT) -> T:
    """Await ``awaitable`` for at most ``timeout`` seconds."""
    return await asyncio.wait_for(awaitable, timeout)


async def waiting_receive(conn: Connection) -> asyncio.Task[bytes]:
    """Start ``conn.receive()`` in a task; return once that receive is waiting."""
    started = asyncio.Event()

    async def receive() -> bytes:
        started.set()
        # Runs on without yielding until the receive waits: once the caller
        # sees `started`, it is waiting.
        return await conn.receive()

    task = asyncio.ensure_future(receive())
    await wait(started.wait())
    return task


def text(source: str, target: str | None, body: str) -> BusFrameMessage:
    """Return ``BusFrameMessage(source, target, TextFrame(body))``."""
    return BusFrameMessage(source, target, TextFrame(body))


def text_of(message: BusMessage) -> str | None:
    """Return the text of a text-frame message, else ``None``."""
    frame = getattr(message, "frame", None)
    body = getattr(frame, "text", None)
    return body if isinstance(body, str) else None


# --------------------------------------------------------------------------- workers


class Recorder(BaseWorker):
    """A worker that records every message it gets, in order, and lets a test wait for one."""

    def __init__(self, name: str, *, active: bool = True) -> None:
        super().__init__(name, active=active)
        self.seen: list[BusMessage] = []
        self.ended = asyncio.Event()
        self._texts: list[str] = []
        self._waiters: list[tuple[Callable[[BusMessage], bool], asyncio.Future[BusMessage]]] = []

    async def on_bus_message(self, message: BusMessage) -> None:
        self.seen.append(message)
        body = text_of(message)
        if body is not None:
            self._texts.append(body)
        if self._waiters:
            for condition, future in self._waiters:
                if not future.done() and condition(message):
                    future.set_result(message)

    async def on_end(self, reason: str | None) -> None:
        self.ended.set()

    async def _wait(
        self, condition: Callable[[BusMessage], bool], timeout: float = TIMEOUT
    ) -> BusMessage:
        future: asyncio.Future[BusMessage] = asyncio.get_running_loop().create_future()
        entry = (condition, future)
        self._waiters.append(entry)
        try:
            return await wait(future, timeout)
        finally:
            self._waiters.remove(entry)

    async def wait_for(self, predicate: Callable[[BusMessage], bool]) -> BusMessage:
        """Return the first message seen (so far or later) that matches."""
        for message in self.seen:
            if predicate(message):
                return message
        return await self._wait(predicate)

    async def wait_text(self, body: str) -> BusMessage:
        """Return the first text message carrying ``body``."""
        return await self.wait_for(lambda m: text_of(m) == body)

    async def wait_count(self, count: int, timeout: float = TIMEOUT) -> None:
        """Wait until ``count`` text messages were seen."""
        if len(self._texts) < count:
            await self._wait(lambda _: len(self._texts) >= count, timeout)

    def texts(self) -> list[str]:
        """The texts of every text message seen so far, in order."""
        return list(self._texts)

    @property
    def text_count(self) -> int:
        """How many text messages were seen so far."""
        return len(self._texts)

    def crossed(self) -> list[BusMessage]:
        """The messages seen that are not runner chatter (local ready broadcasts)."""
        return [m for m in self.seen if not isinstance(m, BusLocalMessage)]


class LinkStalled(AssertionError):
    """Messages stopped crossing altogether: the link is deadlocked (or dead)."""


async def wait_counts(
    recorders: Sequence[Recorder], count: int, *, stall: float = 5.0, timeout: float = TIMEOUT
) -> None:
    """Wait until every recorder saw ``count`` text messages.

    Raises:
        LinkStalled: none of them saw a new message for ``stall`` seconds.
        TimeoutError: they are still short after ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    progress = [r.text_count for r in recorders]
    while not all(n >= count for n in progress):
        if loop.time() > deadline:
            raise TimeoutError(f"got {progress} of {count} each after {timeout:.0f} s")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(r.wait_count(count, timeout) for r in recorders)), stall
            )
        last, progress = progress, [r.text_count for r in recorders]
        if progress == last:
            raise LinkStalled(f"nothing crossed for {stall:.0f} s; got {progress} of {count} each")


# --------------------------------------------------------------------------- the server


@dataclass
class ServerSide:
    """One server session: its runner, workers, proxy, and what happened to it."""

    runner: WorkerRunner
    worker: Recorder
    helper: Recorder
    proxy: ProxyServer | None = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    events: list[str] = field(default_factory=list)

    @property
    def server_proxy(self) -> ProxyServer:
        assert self.proxy is not None, "the session has no proxy yet"
        return self.proxy

    def hook(self, proxy: ProxyServer) -> None:
        """Follow ``proxy``'s client events."""
        self.proxy = proxy

        @proxy.event_handler("on_client_connected")
        async def connected(_: ProxyServer, conn: Connection) -> None:
            self.events.append("connected")
            self.connected.set()

        @proxy.event_handler("on_client_disconnected")
        async def disconnected(_: ProxyServer, conn: Connection) -> None:
            self.events.append("disconnected")
            self.disconnected.set()


def follow_session(runner: WorkerRunner, side: ServerSide) -> None:
    """Hook ``side`` to the proxy that ``serve_proxy`` adds to ``runner``; flag the runner's end.

    ``serve_proxy`` adds its proxy after the ``setup`` hook and then runs the
    runner; it offers no hook to see either, so follow both calls.
    """
    add_workers, run = runner.add_workers, runner.run

    async def add_and_hook(*workers: BaseWorker) -> None:
        for worker in workers:
            if isinstance(worker, ProxyServer):
                side.hook(worker)
        await add_workers(*workers)

    async def run_and_flag() -> None:
        try:
            await run()
        finally:
            side.ended.set()

    runner.add_workers = add_and_hook  # type: ignore[method-assign]
    runner.run = run_and_flag  # type: ignore[method-assign]


class Server:
    """A :func:`serve_proxy` server whose sessions the contracts can reach."""

    def __init__(self) -> None:
        self.service: ProxyService | None = None
        self.sessions: list[ServerSide] = []
        self._queue: asyncio.Queue[ServerSide] = asyncio.Queue()
        self._changed = asyncio.Condition()

    @property
    def url(self) -> str:
        assert self.service is not None
        return self.service.url

    async def setup(self, runner: WorkerRunner) -> None:
        """The ``serve_proxy`` hook: add this session's workers and follow its proxy."""
        side = ServerSide(runner, Recorder(SERVER_WORKER), Recorder(SERVER_OTHER))
        self.sessions.append(side)
        follow_session(runner, side)

        async def client_ready(data: WorkerReadyData) -> None:
            async with self._changed:
                self._changed.notify_all()

        # The client's READY is handled by the session loop, so once the client's
        # worker is ready here, this session's proxy knows its session id.
        runner.registry.watch(CLIENT_WORKER, client_ready)
        await runner.add_workers(side.worker, side.helper)
        self._queue.put_nowait(side)

    async def next_session(self) -> ServerSide:
        """Return the next session the server started."""
        return await wait(self._queue.get())

    async def of(self, client: ClientSide) -> ServerSide:
        """Return the server side of ``client``'s open session, once the server has it.

        The client may learn that the server's worker is ready from WELCOME, before
        the server's session loop runs: wait (bounded) for the server to catch up.
        """
        session_id = client.proxy.session_id
        assert session_id is not None, "the client has no session"

        def found() -> list[ServerSide]:
            return [s for s in self.sessions if s.proxy and s.proxy.session_id == session_id]

        async with self._changed:
            await wait(self._changed.wait_for(lambda: len(found()) == 1))
        return found()[0]


@contextlib.asynccontextmanager
async def running_server(
    transport: Transport,
    url: str,
    *,
    codecs: CodecSpec,
    forward_messages: Sequence[type[BusMessage]] = (BusFrameMessage,),
    **options: Any,
) -> AsyncIterator[Server]:
    """Serve the contracts' server side (``assistant`` and ``helper`` per session)."""
    server = Server()
    async with serve_proxy(
        url,
        transport=transport,
        codecs=codecs,
        worker_name=SERVER_WORKER,
        remote_worker_name=CLIENT_WORKER,
        setup=server.setup,
        forward_messages=forward_messages,
        **options,
    ) as service:
        server.service = service
        yield server


# --------------------------------------------------------------------------- the client


@dataclass
class ClientSide:
    """A client runner: ``acme``, ``other`` and the proxy."""

    runner: WorkerRunner
    acme: Recorder
    other: Recorder
    proxy: ProxyClient
    remote_ready: asyncio.Future[WorkerReadyData]
    task: asyncio.Task[None] | None = None
    events: list[str] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    connect_errors: list[BaseException] = field(default_factory=list)
    # What run() raised when the proxy gave up (by default the runner ends with it).
    run_error: ProxyError | None = None

    async def activate(self) -> None:
        """Activate the proxy (it connects), then wait until the remote worker is ready."""
        ready: asyncio.Future[WorkerReadyData] = asyncio.get_running_loop().create_future()
        watch = self.runner.registry.watch(SERVER_WORKER, resolve_on_ready(ready))
        try:
            await self.acme.activate_worker(self.proxy.name)
            await self.proxy.wait_connected(TIMEOUT)
            await wait(ready)
        finally:
            watch.cancel()

    async def say(self, body: str) -> BusFrameMessage:
        message = text(CLIENT_WORKER, SERVER_WORKER, body)
        await self.acme.send_bus_message(message)
        return message

    async def end(self) -> None:
        """End the client runner gracefully and wait for it."""
        await self.runner.end("contract over")
        await self._wait_run()

    async def cancel(self) -> None:
        """Cancel the client runner (no graceful goodbye) and wait for it."""
        await self.runner.cancel("contract failed")
        await self._wait_run()

    async def _wait_run(self) -> None:
        """Wait for ``run()``; if the proxy gave up, it ended with that error: keep it."""
        error = await runner_outcome(self.task, self.proxy)
        if error is not None:
            self.run_error = error


async def runner_outcome(task: asyncio.Task[None] | None, proxy: ProxyClient) -> ProxyError | None:
    """Wait for a client runner's ``run()``; return the error it ended with, if the proxy gave up.

    Any other error from ``run()`` is raised: it fails the test.
    """
    if task is None:
        return None
    try:
        await wait(task)
    except ProxyError as exc:
        if exc is not proxy.last_error:
            raise
        return exc
    return None


@contextlib.asynccontextmanager
async def running_client(
    transport: Transport,
    url: str,
    *,
    codec: CodecSpec,
    forward_messages: Sequence[type[BusMessage]] = (BusFrameMessage,),
    **options: Any,
) -> AsyncIterator[ClientSide]:
    """Run a client runner; its proxy is not activated yet.

    The proxy makes one attempt (``reconnect=None``) unless ``options`` say otherwise.
    """
    options.setdefault("reconnect", None)
    runner = WorkerRunner(handle_sigint=False)
    proxy = ProxyClient(
        "proxy",
        url=url,
        transport=transport,
        codec=codec,
        local_worker_name=CLIENT_WORKER,
        remote_worker_name=SERVER_WORKER,
        forward_messages=forward_messages,
        **options,
    )
    loop = asyncio.get_running_loop()
    side = ClientSide(
        runner, Recorder(CLIENT_WORKER), Recorder(CLIENT_OTHER), proxy, loop.create_future()
    )
    started: asyncio.Future[WorkerReadyData] = loop.create_future()
    follow_client(side)
    runner.registry.watch(SERVER_WORKER, resolve_on_ready(side.remote_ready))
    runner.registry.watch(proxy.name, resolve_on_ready(started))
    await runner.add_workers(side.acme, side.other, proxy)
    side.task = asyncio.create_task(runner.run(), name="contract-client-runner")
    try:
        await wait(started)
        yield side
    except BaseException:
        # A failed contract may leave the link wedged: do not wait for a goodbye.
        await side.cancel()
        raise
    await side.end()


def follow_client(side: ClientSide) -> None:
    """Record the events of ``side``'s proxy: connected, disconnected, connect errors."""

    @side.proxy.event_handler("on_connected")
    async def connected(_: ProxyClient, conn: Connection) -> None:
        side.events.append("connected")
        side.connected.set()

    @side.proxy.event_handler("on_disconnected")
    async def disconnected(_: ProxyClient, conn: Connection) -> None:
        side.events.append("disconnected")
        side.disconnected.set()

    @side.proxy.event_handler("on_connect_error")
    async def connect_error(_: ProxyClient, error: BaseException) -> None:
        side.events.append("connect_error")
        side.connect_errors.append(error)


def resolve_on_ready(future: asyncio.Future[WorkerReadyData]) -> Any:
    """Return a ``registry.watch`` callback that resolves ``future`` with the first readiness."""

    async def callback(data: WorkerReadyData) -> None:
        if not future.done():
            future.set_result(data)

    return callback
