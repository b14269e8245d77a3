"""Overflow policies on the proxy's own inbox: the queue between the local workers and the wire.

A peer that acknowledges nothing fills the proxy's outbox (``max_unacked``);
the proxy then stops taking messages from its inbox, and the inbox's policy
decides what happens to the next ones: senders wait (default), or messages are
dropped (oldest or newest) and counted, or the sender gets ``QueueFull``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from proxy_core import (
    BaseWorker,
    BusFrameMessage,
    ConfigurationError,
    ProxyClient,
    QueueFull,
    TextFrame,
    WorkerRunner,
)
from proxy_core.protocol import Welcome, decode_handshake, encode_handshake
from proxy_core.testing import MemoryTransport
from proxy_core.transport import Connection

TIMEOUT = 30.0


@asynccontextmanager
async def deaf_peer_client(**options: Any) -> AsyncIterator[tuple[BaseWorker, ProxyClient]]:
    """A client whose server answers WELCOME, then reads everything and acknowledges nothing."""
    transport = MemoryTransport()
    stop = asyncio.Event()

    async def handler(conn: Connection) -> None:
        decode_handshake(await conn.receive())
        await conn.send(encode_handshake(Welcome("json", "s-1", ("assistant",), 1 << 20)))
        reader = asyncio.ensure_future(_drain(conn))
        await stop.wait()
        reader.cancel()

    async with transport.serve("memory://127.0.0.1:0/ws", handler) as listener:
        async with connected_client(transport, listener.url, max_unacked=4, **options) as (
            acme,
            proxy,
        ):
            try:
                yield acme, proxy
            finally:
                stop.set()


@asynccontextmanager
async def connected_client(
    transport: MemoryTransport, url: str, **options: Any
) -> AsyncIterator[tuple[BaseWorker, ProxyClient]]:
    """``acme`` and a connected json client proxy (one attempt) in a running runner."""
    runner = WorkerRunner(handle_sigint=False)
    acme = BaseWorker("acme")
    proxy = ProxyClient(
        "proxy",
        url=url,
        transport=transport,
        codec="json",
        local_worker_name="acme",
        remote_worker_name="assistant",
        forward_messages=(BusFrameMessage,),
        reconnect=None,
        **options,
    )
    await runner.add_workers(acme, proxy)
    task = asyncio.create_task(runner.run())
    try:
        await acme.activate_worker("proxy")
        await proxy.wait_connected(TIMEOUT)
        yield acme, proxy
    finally:
        await runner.cancel()
        await asyncio.wait_for(task, TIMEOUT)


async def _drain(conn: Connection) -> None:
    async for _ in conn:
        pass


def say(n: int) -> BusFrameMessage:
    return BusFrameMessage("acme", "assistant", TextFrame(str(n)))


async def until(predicate: Any) -> None:
    """Wait for a condition that has no event: bounded polling (at most 30 s)."""
    for _ in range(3000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("condition not reached")


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
async def test_drop_policies_count_what_they_drop(policy: str) -> None:
    async with deaf_peer_client(max_queue=8, overflow=policy) as (acme, proxy):
        sent = 100
        for n in range(sent):  # never waits: the policy drops instead
            await acme.send_bus_message(say(n))
        # The sender never yields: 8 fit in the inbox, the policy drops the rest.
        assert proxy.queue_stats.dropped == {policy: sent - 8}
        # Then the proxy sends 4 (its window) and holds one waiting for room.
        await until(lambda: proxy.stats.messages_out == 4 and proxy.queue_stats.depth == 3)
        assert proxy.queue_stats.high_water == proxy.queue_stats.maxsize == 8


async def test_error_policy_raises_queue_full_to_the_sender() -> None:
    async with deaf_peer_client(max_queue=8, overflow="error") as (acme, proxy):
        with pytest.raises(QueueFull):
            for n in range(100):
                await acme.send_bus_message(say(n))
        assert proxy.queue_stats.dropped.get("error") == 1


async def test_wait_policy_blocks_the_sender_with_memory_bounded() -> None:
    async with deaf_peer_client(max_queue=8, put_timeout=TIMEOUT) as (acme, proxy):
        sending = asyncio.ensure_future(_send_many(acme, 100))
        await until(lambda: proxy.queue_stats.waiting == 1)
        assert not sending.done()  # the sender waits for room
        assert proxy.queue_stats.depth <= 8 and proxy.stats.messages_out == 4
        assert proxy.queue_stats.dropped == {}
        sending.cancel()


async def _send_many(worker: BaseWorker, count: int) -> None:
    for n in range(count):
        await worker.send_bus_message(say(n))


def test_bad_queue_options_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError):
        ProxyClient(
            "p",
            url="ws://127.0.0.1:1/ws",
            local_worker_name="a",
            remote_worker_name="b",
            overflow="sometimes",
        )


class Stalling(BaseWorker):
    """A served worker that takes nothing until ``go`` is set, then records what it got."""

    def __init__(self, name: str, **options: Any) -> None:
        super().__init__(name, **options)
        self.go = asyncio.Event()
        self.got: list[str] = []
        self.all_in = asyncio.Event()
        self.expected = 0

    async def on_bus_message(self, message: Any) -> None:
        await asyncio.wait_for(self.go.wait(), TIMEOUT)
        if isinstance(message, BusFrameMessage):
            self.got.append(message.frame.text)
            if len(self.got) == self.expected:
                self.all_in.set()


async def test_a_stalled_served_worker_holds_the_senders_window_not_the_link() -> None:
    """The server's worker takes nothing for longer than the heartbeat timeout. What
    arrives meanwhile waits unacknowledged (the client's outbox, bounded by
    ``max_unacked``, is the window); the receive loop keeps reading, so PINGs are
    answered and the link stays up. Released, every message arrives once, in order."""
    from proxy_core import serve_proxy

    transport = MemoryTransport()
    workers: list[Stalling] = []

    async def setup(runner: WorkerRunner) -> None:
        worker = Stalling("assistant", max_queue=8)
        workers.append(worker)
        await runner.add_workers(worker)

    quick = {"heartbeat_interval": 0.2, "heartbeat_timeout": 1.0}
    async with serve_proxy(
        "memory://127.0.0.1:0/ws",
        transport=transport,
        worker_name="assistant",
        remote_worker_name="acme",
        setup=setup,
        forward_messages=(BusFrameMessage,),
        codecs=["json"],
        **quick,
    ) as service:
        async with connected_client(
            transport, service.url, max_unacked=32, max_queue=16, **quick
        ) as (acme, proxy):
            disconnects: list[object] = []
            proxy.event_handler("on_disconnected")(lambda *a: disconnects.append(a))
            (worker,) = workers
            count = 200
            worker.expected = count
            sending = asyncio.ensure_future(_send_many(acme, count))
            # The client fills its window and waits; nothing is acknowledged meanwhile.
            await until(lambda: proxy._session is not None and proxy._session.outbox_full)
            pings = proxy.stats.heartbeat_rtt
            await until(lambda: proxy.stats.heartbeat_rtt != pings)  # PONGs still come back
            assert proxy.connected and not sending.done()
            assert proxy._session is not None and proxy._session.unacked == 32
            worker.go.set()
            await asyncio.wait_for(worker.all_in.wait(), TIMEOUT)
            await asyncio.wait_for(sending, TIMEOUT)
            assert worker.got == [str(n) for n in range(count)]
            assert disconnects == []
            assert set(proxy.stats.dropped_out) <= {"local"}  # the runner's ready broadcasts
