"""MSG may flow before READY (docs/protocol.md, section 7).

READY tells the workers that the remote worker is there (``registry.watch``); it
does not gate the session. A peer may send MSGs as soon as it has WELCOME, and
ours does. Our receiver acknowledges a MSG once it is in the served worker's
inbox, which exists from the moment the worker is on the bus, before it is ready
(its ``on_start`` still running): the worker handles the message once it starts.
A MSG for a worker that is not on the bus at all is acknowledged and lost.

Over a real ``websockets`` loopback on 127.0.0.1, port 0; every wait is on an event
and bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from _support import (
    CLIENT_WORKER,
    SERVER_WORKER,
    TIMEOUT,
    Recorder,
    raw_handshake,
    ready,
    run_client,
    text_tree,
    wait,
)

from proxy_core import BusFrameMessage, WorkerRunner, serve_proxy


def ack(seq: int) -> list[int]:
    return [2, seq]


class LateWorker(Recorder):
    """A worker that is on the bus at once but ready only when the test opens ``gate``."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.gate = asyncio.Event()
        self.starting = asyncio.Event()

    async def on_start(self) -> None:
        self.starting.set()
        await self.gate.wait()


@dataclass
class LateServer:
    url: str = ""
    workers: asyncio.Queue[LateWorker] = field(default_factory=asyncio.Queue)
    runners: list[WorkerRunner] = field(default_factory=list)


@contextlib.asynccontextmanager
async def late_server(*, with_worker: bool = True) -> AsyncIterator[LateServer]:
    """Serve sessions whose ``assistant`` waits for its gate (or is missing)."""
    server = LateServer()

    async def setup(runner: WorkerRunner) -> None:
        server.runners.append(runner)
        if with_worker:
            worker = LateWorker(SERVER_WORKER)
            await runner.add_workers(worker)
            server.workers.put_nowait(worker)

    async with serve_proxy(
        "ws://127.0.0.1:0/ws",
        worker_name=SERVER_WORKER,
        remote_worker_name=CLIENT_WORKER,
        forward_messages=(BusFrameMessage,),
        setup=setup,
    ) as service:
        server.url = service.url
        yield server


async def test_a_msg_before_ready_is_acknowledged_and_delivered_once_ready() -> None:
    async with late_server() as server:
        ws, peer = await raw_handshake(server.url, "json")
        try:
            worker = await wait(server.workers.get())
            await wait(worker.starting.wait())
            assert peer.welcome["ready"] == []  # the server's worker is not ready

            assert await peer.send_msg(text_tree(CLIENT_WORKER, SERVER_WORKER, "early")) == 1
            await peer.next_frame(lambda f: f == ack(1))
            # Acknowledged, and yet no READY has come and the worker has seen nothing.
            assert ready(SERVER_WORKER) not in peer.frames
            assert worker.seen == []

            worker.gate.set()
            await peer.next_frame(lambda f: f == ready(SERVER_WORKER))
            early = await worker.wait_text("early")
            assert early.source == CLIENT_WORKER

            # Later messages follow, in order.
            await peer.send_msg(text_tree(CLIENT_WORKER, SERVER_WORKER, "late"))
            await worker.wait_text("late")
            assert worker.texts() == ["early", "late"]
        finally:
            await ws.close()


async def test_a_msg_for_a_worker_not_on_the_bus_is_acknowledged_and_lost() -> None:
    async with late_server(with_worker=False) as server:
        ws, peer = await raw_handshake(server.url, "json")
        try:
            await peer.send_msg(text_tree(CLIENT_WORKER, SERVER_WORKER, "nobody"))
            await peer.next_frame(lambda f: f == ack(1))
            (runner,) = server.runners
            assert runner.bus.undeliverable == 1
        finally:
            await ws.close()


async def test_our_client_sends_before_the_servers_ready() -> None:
    async with late_server() as server, run_client(server.url, codec="json") as client:
        await client.acme.activate_worker(client.proxy.name)
        await client.proxy.wait_connected(TIMEOUT)
        worker = await wait(server.workers.get())
        assert not client.remote_ready.done()

        sent = await client.say("before ready")
        await wait(client.proxy.wait_idle())  # the proxy took it from its inbox
        assert client.proxy.stats.messages_out == 1  # sent, not held back or dropped
        assert not client.remote_ready.done()
        assert worker.seen == []

        worker.gate.set()
        await wait(asyncio.shield(client.remote_ready))
        assert await worker.wait_text("before ready") == sent
