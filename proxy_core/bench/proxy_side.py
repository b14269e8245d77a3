"""The proxy path under test: a worker on one bus to a worker on another, through both proxies.

Server: :func:`~proxy_core.serve_proxy` with a :class:`Sink` worker
(``assistant``) in every session. Client: a :class:`WorkerRunner` with a
:class:`Source` worker (``acme``) and a :class:`~proxy_core.ProxyClient`.
Payloads are ``BusFrameMessage("acme", "assistant", AudioRawFrame(<size>
random bytes, 16000))``; control commands are ``BusDataMessage`` s.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ..messages import AudioRawFrame, BusDataMessage, BusFrameMessage, BusMessage
from ..plugins import resolve_transport
from ..proxy import ProxyClient
from ..registry import WorkerReadyData
from ..runner import WorkerRunner
from ..service import serve_proxy
from ..worker import BaseWorker
from .links import Link, SinkState, produce

__all__ = [
    "ProxyLink",
    "Sink",
    "Source",
    "SourceLink",
    "open_idle_sessions",
    "payload_message",
    "serve",
]

FORWARD = (BusFrameMessage, BusDataMessage)
CLIENT, SERVER = "acme", "assistant"


def payload_message(size: int, source: str = CLIENT, target: str = SERVER) -> BusFrameMessage:
    """Return the message the source sends: a frame of ``size`` random bytes."""
    return BusFrameMessage(source, target, AudioRawFrame(os.urandom(size), 16000))


class Sink(BaseWorker):
    """The measured side's worker: counts payloads, or echoes them, and answers control commands."""

    def __init__(self, name: str = SERVER) -> None:
        super().__init__(name)
        self.state = SinkState()

    async def on_bus_message(self, message: BusMessage) -> None:
        if type(message) is BusFrameMessage:
            state = self.state
            if state.echo:
                await self.send_bus_message(
                    BusFrameMessage(self.name, message.source, message.frame)
                )
            else:
                state.count += 1
        elif isinstance(message, BusDataMessage):
            reply = self.state.control(str(message.data.get("cmd")))
            await self.send_bus_message(BusDataMessage(self.name, message.source, reply))


class _RoundTrips:
    """A run of round trips driven from the :class:`Source`'s own message handler."""

    __slots__ = ("done", "left", "message", "samples", "start")

    def __init__(self, message: BusMessage, count: int, done: asyncio.Future[None]) -> None:
        self.message = message
        self.left = count
        self.samples: list[float] = []
        self.start = 0.0
        self.done = done


class Source(BaseWorker):
    """The sending worker: hands what the sink ``peer`` sends to whoever waits for it.

    During :meth:`SourceLink.round_trips` it sends each next message from its
    own handler, as a worker that answers a reply does: a round trip is timed
    from its send to its handler running with the echo, with no other task in
    between (the bare client's ``recv`` returns in the task that sent, too).
    """

    def __init__(self, name: str = CLIENT, peer: str = SERVER) -> None:
        super().__init__(name)
        self.peer = peer
        self.waiter: asyncio.Future[BusMessage] | None = None
        self.trips: _RoundTrips | None = None

    async def on_bus_message(self, message: BusMessage) -> None:
        if message.source != self.peer:
            return
        trips = self.trips
        if trips is not None and type(message) is BusFrameMessage:
            trips.samples.append(time.perf_counter() - trips.start)
            trips.left -= 1
            if trips.left > 0:
                trips.start = time.perf_counter()
                await self.send_bus_message(trips.message)
            else:
                self.trips = None
                if not trips.done.done():
                    trips.done.set_result(None)
            return
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            self.waiter = None
            waiter.set_result(message)


class SourceLink(Link):
    """A :class:`Source` worker talking to its sink, whatever carries the messages between."""

    def __init__(self, source: Source) -> None:
        self.source = source

    async def _request(self, message: BusMessage) -> BusMessage:
        waiter: asyncio.Future[BusMessage] = asyncio.get_running_loop().create_future()
        self.source.waiter = waiter
        await self.source.send_bus_message(message)
        return await waiter

    async def control(self, command: str) -> dict[str, Any]:
        source = self.source
        reply = await self._request(BusDataMessage(source.name, source.peer, {"cmd": command}))
        if not isinstance(reply, BusDataMessage):
            raise RuntimeError(f"expected a control reply, got {type(reply).__name__}")
        return dict(reply.data)

    async def stream(self, size: int, count: int, *, back_to_back: bool = False) -> None:
        message = payload_message(size, self.source.name, self.source.peer)
        await produce(self.source.send_bus_message, message, count, back_to_back=back_to_back)

    async def round_trips(self, size: int, count: int) -> list[float]:
        if count <= 0:
            return []
        message = payload_message(size, self.source.name, self.source.peer)
        source = self.source
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        trips = source.trips = _RoundTrips(message, count, done)
        try:
            trips.start = time.perf_counter()
            await source.send_bus_message(message)
            await done
        finally:
            source.trips = None
        return trips.samples


@asynccontextmanager
async def serve(transport: str, codecs: list[str]) -> AsyncIterator[str]:
    """Serve proxy sessions with a :class:`Sink` each on 127.0.0.1; yield the URL."""
    backend = resolve_transport(transport)

    async def setup(runner: WorkerRunner) -> None:
        await runner.add_workers(Sink())

    async with serve_proxy(
        f"{backend.schemes[0]}://127.0.0.1:0/ws",
        transport=backend,
        codecs=tuple(codecs),
        worker_name=SERVER,
        remote_worker_name=CLIENT,
        forward_messages=FORWARD,
        setup=setup,
    ) as service:
        yield service.url


class ProxyLink(SourceLink):
    """One client session: a runner with a :class:`Source` and a connected ProxyClient."""

    def __init__(self, runner: WorkerRunner, source: Source, task: asyncio.Task[None]) -> None:
        super().__init__(source)
        self.runner = runner
        self._task = task

    @classmethod
    async def open(cls, transport: str, url: str, codec: str, timeout: float) -> ProxyLink:
        """Connect a new session with ``codec`` and wait until the remote sink is ready."""
        runner = WorkerRunner("bench-client", handle_sigint=False)
        source = Source()
        proxy = ProxyClient(
            "proxy",
            url=url,
            transport=transport,
            codec=codec,
            local_worker_name=CLIENT,
            remote_worker_name=SERVER,
            forward_messages=FORWARD,
        )
        ready = asyncio.Event()

        async def on_ready(data: WorkerReadyData) -> None:
            ready.set()

        runner.registry.watch(SERVER, on_ready)
        await runner.add_workers(source, proxy)
        task = asyncio.get_running_loop().create_task(runner.run())
        link = cls(runner, source, task)
        try:
            await source.activate_worker("proxy")
            await proxy.wait_connected(timeout)
            await asyncio.wait_for(ready.wait(), timeout)
        except BaseException:
            await link.aclose()
            raise
        return link

    async def aclose(self) -> None:
        await self.runner.end("benchmark done")
        try:
            await asyncio.wait_for(self._task, 15)
        except (TimeoutError, Exception):
            self._task.cancel()


async def open_idle_sessions(
    transport: str, url: str, codec: str, count: int, timeout: float
) -> list[Link]:
    """Open ``count`` sessions that then stay idle; return them (close with ``aclose``)."""
    links: list[Link] = []
    for _ in range(count):
        links.append(await ProxyLink.open(transport, url, codec, timeout))
    return links
