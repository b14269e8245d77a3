"""The scaffolding of the anti-forgery contracts: our side of a session with a hostile peer.

Private: :mod:`proxy_core.testing.contracts_forgery` uses it. A :class:`Victim`
is a real runner with a real proxy, the served worker and a bystander (both
:class:`Served`, which also record their lifecycle hooks) and a :class:`BusSpy`
that sees every broadcast exactly as the runner does; the peer is a
:class:`~proxy_core.testing._raw.RawPeer` that may send anything. It imports no
test framework.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..codecs.base import Codec
from ..errors import AuthenticationError
from ..messages import (
    BusFrameMessage,
    BusLocalMessage,
    BusMessage,
    BusWorkerReadyMessage,
    register_type,
)
from ..protocol import Ping, Pong, RejectCode
from ..proxy import ProxyClient, ProxyServer
from ..runner import WorkerRunner
from ..service import serve_proxy
from ..transport import Transport
from ._base import delta
from ._harness import (
    CLIENT_OTHER,
    CLIENT_WORKER,
    SERVER_OTHER,
    SERVER_WORKER,
    TIMEOUT,
    Recorder,
    text,
    wait,
)
from ._raw import RawPeer, raw_client, raw_server

__all__ = [
    "MALLORY",
    "BusSpy",
    "LocalFrame",
    "Note",
    "Served",
    "Victim",
    "client_victim",
    "flag_end",
    "refused_client",
    "server_victim",
]

MALLORY = "mallory"  # a worker configured nowhere


@register_type("proxy_core.testing.forgery.local_frame")
@dataclass
class LocalFrame(BusLocalMessage, BusFrameMessage):
    """A user's local type that is *also* an allow-listed one (a BusFrameMessage)."""


@register_type("proxy_core.testing.forgery.note")
@dataclass
class Note(BusMessage):
    """A registered type that no proxy of the contracts allow-lists."""

    text: str = ""


class Served(Recorder):
    """A recorder that also records what lifecycle messages did to it."""

    def __init__(self, name: str, *, active: bool = True) -> None:
        super().__init__(name, active=active)
        self.lifecycle: list[str] = []

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        self.lifecycle.append(f"activated {args}")

    async def on_deactivated(self) -> None:
        self.lifecycle.append("deactivated")

    async def on_end(self, reason: str | None) -> None:
        self.lifecycle.append(f"ended {reason}")
        await super().on_end(reason)


class BusSpy:
    """A nameless endpoint: the bus gives it every broadcast, exactly as it gives the runner."""

    name = "spy"

    def __init__(self) -> None:
        self.seen: list[BusMessage] = []

    def deliver(self, message: BusMessage) -> None:
        self.seen.append(message)

    def offer(self, message: BusMessage) -> bool:
        self.deliver(message)
        return True

    async def put(self, message: BusMessage) -> None:
        self.deliver(message)


@dataclass
class Victim:
    """Our side of a session with a hostile peer: runner, proxy, workers, and the peer."""

    side: str
    runner: WorkerRunner
    proxy: ProxyClient | ProxyServer
    served: Served
    bystander: Served
    spy: BusSpy
    ended: asyncio.Event
    peer: RawPeer
    markers: list[BusMessage] = field(default_factory=list)

    @property
    def local(self) -> str:
        return self.served.name

    @property
    def remote(self) -> str:
        return self.proxy.rules.remote_worker

    @property
    def local_names(self) -> tuple[str, ...]:
        return (self.proxy.name, self.served.name, self.bystander.name)

    def next_marker(self) -> BusFrameMessage:
        """Return the next legitimate message, remote worker to served worker."""
        message = text(self.remote, self.local, f"marker {len(self.markers)}")
        self.markers.append(message)
        return message

    async def marker(self) -> None:
        """Send a legitimate message after whatever was sent before, and wait until it arrives."""
        message = self.next_marker()
        await self.peer.send_msg(message)
        assert await self.served.wait_for(lambda m: m == message) == message

    async def expect_drops(self, cases: Sequence[tuple[BusMessage, str]]) -> None:
        """Send each forged message, then a marker; each is dropped and counted by reason."""
        for message, reason in cases:
            before = Counter(self.proxy.stats.dropped_in)
            await self.peer.send_msg(message)
            await self.marker()
            assert delta(self.proxy.stats.dropped_in, before) == {reason: 1}, message
        assert self.proxy.stats.messages_in == len(self.markers)
        self.assert_untouched()
        await self.assert_alive()

    def foreign(self, seen: list[BusMessage], name: str) -> list[BusMessage]:
        """What an endpoint got besides the markers and the runner's own ready broadcasts."""
        rest = [m for m in seen if m not in self.markers]
        for worker in self.local_names:
            if worker != name:
                rest.remove(BusWorkerReadyMessage(worker, None, worker))
        return rest

    def assert_untouched(self) -> None:
        """Nothing forged reached a worker or the bus; no lifecycle hook ran."""
        assert self.foreign(self.served.seen, self.served.name) == []
        assert self.foreign(self.bystander.seen, self.bystander.name) == []
        assert self.foreign(self.spy.seen, self.spy.name) == []  # so the runner saw none either
        assert self.served.lifecycle == [] and self.bystander.lifecycle == []
        assert set(self.runner.registry.ready_workers()) <= {*self.local_names, self.remote}

    async def assert_alive(self) -> None:
        """The runner runs, the proxy is active and connected, and the session works both ways."""
        assert not self.ended.is_set()
        assert self.proxy.active and self.proxy.connected
        body = f"reply {len(self.markers)}"
        reply = text(self.local, self.remote, body)
        await self.served.send_bus_message(reply)
        assert (await self.peer.next_text(body)).message == reply  # type: ignore[union-attr]

    async def ping(self, nonce: int) -> None:
        """Prove the session is read and answered, whatever the served worker's state."""
        await self.peer.send(Ping(nonce))
        await self.peer.next_envelope(lambda e: isinstance(e, Pong) and e.nonce == nonce)


def flag_end(runner: WorkerRunner, ended: asyncio.Event) -> None:
    """Set ``ended`` when ``runner.run()`` returns (serve_proxy runs it and offers no hook)."""
    run = runner.run

    async def run_and_flag() -> None:
        try:
            await run()
        finally:
            ended.set()

    runner.run = run_and_flag  # type: ignore[method-assign]


@contextlib.asynccontextmanager
async def server_victim(
    transport: Transport, url: str, codec: Codec, **options: Any
) -> AsyncIterator[Victim]:
    """A ``serve_proxy`` server (its runner is the victim) with a raw client as the peer."""
    opened: asyncio.Queue[tuple[WorkerRunner, Served, Served, BusSpy, asyncio.Event]]
    opened = asyncio.Queue()

    async def setup(runner: WorkerRunner) -> None:
        served, bystander, spy = Served(SERVER_WORKER), Served(SERVER_OTHER), BusSpy()
        ended = asyncio.Event()
        flag_end(runner, ended)
        runner.bus.listen(spy)
        await runner.add_workers(served, bystander)
        opened.put_nowait((runner, served, bystander, spy, ended))

    options.setdefault("forward_messages", (BusFrameMessage,))
    async with (
        serve_proxy(
            url,
            transport=transport,
            codecs=[codec],
            worker_name=SERVER_WORKER,
            remote_worker_name=CLIENT_WORKER,
            setup=setup,
            **options,
        ) as service,
        raw_client(transport, service.url, codec) as (peer, _),
    ):
        runner, served, bystander, spy, ended = await wait(opened.get())
        (proxy,) = [w for w in runner.workers if isinstance(w, ProxyServer)]
        yield Victim("server", runner, proxy, served, bystander, spy, ended, peer)


@contextlib.asynccontextmanager
async def client_victim(
    transport: Transport, url: str, codec: Codec, *, ready: Sequence[str] = (), **options: Any
) -> AsyncIterator[Victim]:
    """A ``ProxyClient`` runner (the victim) connected to a hostile raw server.

    The server's WELCOME announces ``ready`` (names a hostile server may forge).
    """
    options.setdefault("forward_messages", (BusFrameMessage,))
    async with raw_server(transport, url, codec, ready=ready) as (served_url, peers):
        runner = WorkerRunner(handle_sigint=False)
        proxy = ProxyClient(
            "proxy",
            url=served_url,
            transport=transport,
            codec=codec,
            local_worker_name=CLIENT_WORKER,
            remote_worker_name=SERVER_WORKER,
            **options,
        )
        served, bystander, spy = Served(CLIENT_WORKER), Served(CLIENT_OTHER), BusSpy()
        runner.bus.listen(spy)
        await runner.add_workers(served, bystander, proxy)
        ended = asyncio.Event()
        flag_end(runner, ended)
        task = asyncio.create_task(runner.run(), name="victim-client-runner")
        try:
            await served.activate_worker(proxy.name)
            await proxy.wait_connected(TIMEOUT)
            peer = await wait(peers.get())
            yield Victim("client", runner, proxy, served, bystander, spy, ended, peer)
        finally:
            await runner.end("contract over")
            await wait(task)


@contextlib.asynccontextmanager
async def refused_client(
    url: str, transport: Transport, codec: Codec
) -> AsyncIterator[ProxyClient]:
    """Run a client whose credentials the server refuses; yield its proxy after the refusal.

    On the way out, check that its runner ended with that refusal, after one attempt.
    """
    runner = WorkerRunner(handle_sigint=False)
    proxy = ProxyClient(
        "proxy",
        url=url,
        transport=transport,
        codec=codec,
        local_worker_name=CLIENT_WORKER,
        remote_worker_name=SERVER_WORKER,
        headers={"Authorization": "Bearer forged"},
    )
    errors: list[BaseException] = []
    proxy.event_handler("on_connect_error")(lambda _, error: errors.append(error))
    acme = Served(CLIENT_WORKER)
    await runner.add_workers(acme, proxy)
    task = asyncio.create_task(runner.run(), name="refused-client-runner")
    failure: BaseException | None = None
    try:
        await acme.activate_worker(proxy.name)
        refusal: AuthenticationError | None = None
        try:
            await proxy.wait_connected(TIMEOUT)
        except AuthenticationError as exc:
            refusal = exc
        assert refusal is not None, "the refused client connected"
        assert refusal.code == RejectCode.UNAUTHORIZED
        assert proxy.last_error is refusal and errors == [refusal]
        assert not proxy.connected and proxy.session_id is None and proxy.stats.sessions == 0
        assert not runner.registry.is_ready(SERVER_WORKER)
        yield proxy
    finally:
        await runner.end("contract over")
        # The refusal is final: the runner ends with the same error.
        try:
            await wait(task)
        except AuthenticationError as exc:
            failure = exc
    assert failure is not None and failure is proxy.last_error, "the runner ended otherwise"
    assert errors == [proxy.last_error]  # one attempt: the client did not try again
