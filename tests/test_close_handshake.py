"""The close handshake's parts that the kit's CloseContract does not show: ``wait_idle``,
messages after our BYE, the close after a protocol error, and a slow worker that the
answer to a BYE waits for (within bounds). Real sessions over the in-memory transport."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from proxy_core import (
    BaseWorker,
    BusFrameMessage,
    BusMessage,
    ConfigurationError,
    ProxyClient,
    TextFrame,
    WorkerRunner,
)
from proxy_core.codecs.json import JsonCodec
from proxy_core.errors import ConnectionClosed
from proxy_core.protocol import (
    Ack,
    Bye,
    Envelope,
    Hello,
    Msg,
    Ready,
    Welcome,
    decode_handshake,
    encode_handshake,
)
from proxy_core.testing import MemoryTransport
from proxy_core.transport import Connection

TIMEOUT = 30


class Gate(BaseWorker):
    """Handles each message only once the test opens the gate; records what it handled."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.handled: list[BusMessage] = []

    async def on_bus_message(self, message: BusMessage) -> None:
        if not isinstance(message, BusFrameMessage):
            return  # readiness news and the like pass at once
        self.entered.set()
        await self.gate.wait()
        self.handled.append(message)


def say(source: str, target: str, body: str) -> BusFrameMessage:
    return BusFrameMessage(source, target, TextFrame(body))


# ---------------------------------------------------------------- wait_idle


async def test_wait_idle_waits_for_the_message_being_handled_and_those_queued() -> None:
    runner = WorkerRunner(handle_sigint=False)
    gate, other = Gate("gate"), BaseWorker("other")
    await runner.add_workers(gate, other)
    task = asyncio.create_task(runner.run())
    try:
        await other.send_bus_message(say("other", "gate", "one"))
        await other.send_bus_message(say("other", "gate", "two"))
        await asyncio.wait_for(gate.entered.wait(), TIMEOUT)
        idle = asyncio.create_task(gate.wait_idle())
        await asyncio.sleep(0)  # let the waiter register; it must not return yet
        assert not idle.done()
        gate.gate.set()
        await asyncio.wait_for(idle, TIMEOUT)
        assert [m.frame.text for m in gate.handled] == ["one", "two"]  # type: ignore[attr-defined]
        await asyncio.wait_for(gate.wait_idle(), TIMEOUT)  # idle already: at once
    finally:
        await runner.end()
        await asyncio.wait_for(task, TIMEOUT)


async def test_wait_idle_returns_for_a_worker_that_is_not_running_or_stops() -> None:
    worker = Gate("gate")
    await asyncio.wait_for(worker.wait_idle(), TIMEOUT)  # never started
    runner = WorkerRunner(handle_sigint=False)
    other = BaseWorker("other")
    await runner.add_workers(worker, other)
    task = asyncio.create_task(runner.run())
    await other.send_bus_message(say("other", "gate", "stuck"))
    await asyncio.wait_for(worker.entered.wait(), TIMEOUT)
    idle = asyncio.create_task(worker.wait_idle())
    await runner.cancel("stop")  # the worker stops in the middle of a message
    await asyncio.wait_for(idle, TIMEOUT)
    await asyncio.wait_for(task, TIMEOUT)


# ---------------------------------------------------------------- a hand-written server


@asynccontextmanager
async def hand_server(
    *, answer: bool = True
) -> AsyncIterator[tuple[str, asyncio.Queue[Envelope | ConnectionClosed], list[Connection]]]:
    """A json server written by hand: WELCOME, READY, then it records every frame, and
    answers a BYE with BYE 1000 if ``answer``."""
    transport = MemoryTransport()
    codec = JsonCodec()
    frames: asyncio.Queue[Envelope | ConnectionClosed] = asyncio.Queue()
    conns: list[Connection] = []

    async def handler(conn: Connection) -> None:
        conns.append(conn)
        hello = decode_handshake(await conn.receive())
        assert isinstance(hello, Hello)
        await conn.send(encode_handshake(Welcome("json", "s-1", (), 1 << 20)))
        await conn.send(codec.encode(Ready("assistant")))
        while True:
            try:
                envelope = codec.decode(await conn.receive())
            except ConnectionClosed as exc:
                frames.put_nowait(exc)
                return
            assert not isinstance(envelope, tuple)
            frames.put_nowait(envelope)  # type: ignore[arg-type]
            if answer and isinstance(envelope, Bye):
                await conn.send(codec.encode(Bye(1000, "bye")))

    async with transport.serve("memory://127.0.0.1:0/ws", handler) as listener:
        yield listener.url, frames, conns


async def client_runner(url: str, **options: object) -> tuple[WorkerRunner, ProxyClient, Gate]:
    runner = WorkerRunner(handle_sigint=False)
    proxy = ProxyClient(
        "proxy",
        url=url,
        transport=MemoryTransport(),
        codec="json",
        local_worker_name="acme",
        remote_worker_name="assistant",
        forward_messages=(BusFrameMessage,),
        reconnect=None,
        **options,  # type: ignore[arg-type]
    )
    acme = Gate("acme")
    await runner.add_workers(acme, proxy)
    return runner, proxy, acme


async def until(
    frames: asyncio.Queue[Envelope | ConnectionClosed], kind: type[object]
) -> list[Envelope | ConnectionClosed]:
    """The frames received up to and including the next one of ``kind``."""

    async def scan() -> list[Envelope | ConnectionClosed]:
        seen = []
        while True:
            seen.append(await frames.get())
            if isinstance(seen[-1], kind):
                return seen

    return await asyncio.wait_for(scan(), TIMEOUT)


async def next_frame(
    frames: asyncio.Queue[Envelope | ConnectionClosed], kind: type[object]
) -> Envelope | ConnectionClosed:
    return (await until(frames, kind))[-1]


async def test_a_message_sent_after_our_bye_is_counted_not_sent() -> None:
    async with hand_server(answer=False) as (url, frames, conns):
        runner, proxy, acme = await client_runner(url)
        task = asyncio.create_task(runner.run())
        try:
            await acme.activate_worker("proxy")
            await proxy.wait_connected(TIMEOUT)
            await acme.send_bus_message(say("acme", "assistant", "before"))
            await acme.deactivate_worker("proxy")
            assert await next_frame(frames, Msg) == Msg(1, say("acme", "assistant", "before"))
            assert await next_frame(frames, Bye) == Bye(1000, "deactivated")
            # Our BYE is out and the server has not answered: this one stays here.
            await proxy.on_bus_message(say("acme", "assistant", "after"))
            assert proxy.stats.dropped_out["not_connected"] == 1
            assert proxy.stats.messages_out == 1
            await conns[0].aclose(1000, "bye")
            closed = await next_frame(frames, ConnectionClosed)
            assert isinstance(closed, ConnectionClosed)
            assert frames.empty()  # nothing after the BYE
        finally:
            await runner.end()
            await asyncio.wait_for(task, TIMEOUT)


async def test_bye_answer_waits_for_the_served_worker_within_close_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server says BYE while the client's worker is stuck on a message: the client
    answers anyway once half of close_timeout has passed, and says so."""
    async with hand_server() as (url, frames, conns):
        runner, proxy, acme = await client_runner(url, close_timeout=0.4)
        task = asyncio.create_task(runner.run())
        try:
            await acme.activate_worker("proxy")
            await proxy.wait_connected(TIMEOUT)
            codec = JsonCodec()
            conn = conns[0]
            await conn.send(codec.encode(Msg(1, say("assistant", "acme", "stuck"))))
            await asyncio.wait_for(acme.entered.wait(), TIMEOUT)
            with caplog.at_level(logging.INFO, logger="proxy_core.proxy"):
                await conn.send(codec.encode(Bye(1001, "closing time")))
                seen = await until(frames, Bye)
            assert seen[-1] == Bye(1000, "bye")
            assert any("answering BYE after" in r.getMessage() for r in caplog.records)
            assert Ack(1) in seen  # delivered (to the inbox) and acknowledged before the answer
            assert acme.handled == []  # still stuck: the answer did not wait for ever
            await conn.aclose(1001, "closing time")
            acme.gate.set()
        finally:
            await runner.end()
            await asyncio.wait_for(task, TIMEOUT)


async def test_a_protocol_error_closes_with_the_byes_reason() -> None:
    """A gap in the numbering: BYE 1002 with what was wrong, and the close says the same."""
    async with hand_server() as (url, frames, conns):
        runner, proxy, acme = await client_runner(url)
        task = asyncio.create_task(runner.run())
        try:
            await acme.activate_worker("proxy")
            await proxy.wait_connected(TIMEOUT)
            await conns[0].send(JsonCodec().encode(Msg(2, say("assistant", "acme", "gap"))))
            bye = await next_frame(frames, Bye)
            closed = await next_frame(frames, ConnectionClosed)
            assert bye == Bye(1002, "expected message 1, got 2")
            assert isinstance(closed, ConnectionClosed)
            assert (closed.code, closed.reason) == (1002, "expected message 1, got 2")
        finally:
            await runner.end()
            await asyncio.wait_for(task, TIMEOUT)


def test_close_timeout_must_be_positive() -> None:
    with pytest.raises(ConfigurationError, match="close_timeout"):
        ProxyClient(
            "proxy",
            url="ws://127.0.0.1:1/ws",
            local_worker_name="acme",
            remote_worker_name="assistant",
            close_timeout=0,
        )
