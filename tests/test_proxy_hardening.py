"""Regression tests for review findings: waits after a disconnect, forged READY floods,
workers that fail to start. Real sessions over the shipped in-memory transport."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from proxy_core import (
    AuthenticationError,
    BaseWorker,
    BusFrameMessage,
    ConfigurationError,
    ProxyClient,
    ProxyServer,
    TextFrame,
    WorkerRunner,
    serve_proxy,
)
from proxy_core.codecs.json import JsonCodec
from proxy_core.protocol import Ready, Welcome, decode_handshake, encode_handshake
from proxy_core.testing import MemoryTransport
from proxy_core.transport import Connection

TIMEOUT = 30


@asynccontextmanager
async def hand_server(
    script: Callable[[Connection], object],
) -> AsyncIterator[str]:
    """A server that answers HELLO with WELCOME (json) by hand, then runs ``script``."""
    transport = MemoryTransport()

    async def handler(conn: Connection) -> None:
        hello = decode_handshake(await conn.receive())
        assert hello.__class__.__name__ == "Hello"
        await conn.send(encode_handshake(Welcome("json", "s-1", ("assistant",), 1 << 20)))
        result = script(conn)
        if asyncio.iscoroutine(result):
            await result

    async with transport.serve("memory://127.0.0.1:0/ws", handler) as listener:
        yield listener.url


async def start_client(url: str) -> tuple[WorkerRunner, ProxyClient, asyncio.Task[None]]:
    runner = WorkerRunner(handle_sigint=False)
    proxy = ProxyClient(
        "proxy",
        url=url,
        transport=MemoryTransport(),
        codec="json",
        local_worker_name="acme",
        remote_worker_name="assistant",
        forward_messages=(BusFrameMessage,),
        reconnect=None,  # one attempt: these tests follow one connection
    )
    await runner.add_workers(BaseWorker("acme"), proxy)
    task = asyncio.create_task(runner.run())
    await runner.workers[0].activate_worker("proxy")
    await proxy.wait_connected(TIMEOUT)
    return runner, proxy, task


async def test_wait_connected_after_a_disconnect_waits_for_the_next_attempt() -> None:
    async with hand_server(lambda conn: conn.aclose(1000, "bye")) as url:
        runner, proxy, task = await start_client(url)
        disconnected = asyncio.Event()
        proxy.event_handler("on_disconnected")(lambda *_: disconnected.set())
        if proxy.connected:
            await asyncio.wait_for(disconnected.wait(), TIMEOUT)
        assert not proxy.connected
        # The outcome of the finished session must not satisfy a new wait.
        with pytest.raises(TimeoutError):
            await proxy.wait_connected(0.2)
        await runner.end()
        await asyncio.wait_for(task, TIMEOUT)


async def test_forged_ready_flood_is_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    codec = JsonCodec()
    done = asyncio.Event()

    async def flood(conn: Connection) -> None:
        for i in range(50):
            await conn.send(codec.encode(Ready(f"intruder-{i}")))
        await conn.send(codec.encode(Ready("assistant")))
        await asyncio.wait_for(done.wait(), TIMEOUT)

    caplog.set_level(logging.WARNING, logger="proxy_core.proxy")
    async with hand_server(flood) as url:
        runner, proxy, task = await start_client(url)
        seen = asyncio.Event()

        async def ready(_: object) -> None:
            seen.set()

        runner.registry.watch("assistant", ready)
        await asyncio.wait_for(seen.wait(), TIMEOUT)  # the READY after the flood arrived
        assert proxy.stats.dropped_in["wrong_source"] == 50
        warnings = [r for r in caplog.records if "peer announced worker" in r.msg]
        assert len(warnings) == 1
        for i in range(50):
            assert not runner.registry.is_ready(f"intruder-{i}")
        done.set()
        await runner.end()
        await asyncio.wait_for(task, TIMEOUT)


class _Broken(BaseWorker):
    async def on_start(self) -> None:
        raise RuntimeError("cannot start")


async def test_a_worker_that_fails_to_start_leaves_the_bus(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner = WorkerRunner(handle_sigint=False)
    got = asyncio.Queue[object]()

    class Ok(BaseWorker):
        async def on_bus_message(self, message: object) -> None:
            await got.put(message)

    ok = Ok("ok")
    await runner.add_workers(_Broken("broken"), ok)
    task = asyncio.create_task(runner.run())
    ready = asyncio.Event()

    async def on_ready(_: object) -> None:
        ready.set()

    runner.registry.watch("ok", on_ready)
    await asyncio.wait_for(ready.wait(), TIMEOUT)
    for _ in range(1000):  # bounded: the broken worker's start runs in its own task
        if "broken" not in runner.bus.names():
            break
        await asyncio.sleep(0)
    assert "broken" not in runner.bus.names()
    assert not runner.registry.is_ready("broken")
    before = runner.bus.undeliverable
    await ok.send_bus_message(BusFrameMessage("ok", "broken", TextFrame("hello?")))
    assert runner.bus.undeliverable == before + 1
    assert any("failed to start" in r.getMessage() for r in caplog.records)
    await runner.end()
    await asyncio.wait_for(task, TIMEOUT)


async def test_serve_proxy_checks_its_options_on_entry() -> None:
    async def setup(runner: WorkerRunner) -> None:
        raise AssertionError("no client should ever be served")

    with pytest.raises(ConfigurationError, match="heartbeat_interval"):
        async with serve_proxy(
            "memory://127.0.0.1:0/ws",
            transport=MemoryTransport(),
            worker_name="assistant",
            remote_worker_name="acme",
            setup=setup,
            heartbeat_interval=0,
        ):
            raise AssertionError("entered with a bad option")


async def test_an_authenticate_hook_that_hangs_is_a_refusal() -> None:
    never = asyncio.Event()

    async def hangs(headers: object) -> bool:
        await never.wait()
        return True

    transport = MemoryTransport()
    done = asyncio.Event()

    async def handler(conn: Connection) -> None:
        runner = WorkerRunner(handle_sigint=False)
        proxy = ProxyServer(
            "gateway",
            connection=conn,
            worker_name="assistant",
            remote_worker_name="acme",
            authenticate=hangs,
            handshake_timeout=0.2,
        )
        await runner.add_workers(proxy, BaseWorker("assistant"))
        await runner.run()
        done.set()

    async with transport.serve("memory://127.0.0.1:0/ws", handler) as listener:
        runner = WorkerRunner(handle_sigint=False)
        proxy = ProxyClient(
            "proxy",
            url=listener.url,
            transport=transport,
            local_worker_name="acme",
            remote_worker_name="assistant",
        )
        await runner.add_workers(BaseWorker("acme"), proxy)
        task = asyncio.create_task(runner.run())
        await runner.workers[0].activate_worker("proxy")
        with pytest.raises(AuthenticationError, match="authentication timed out"):
            await proxy.wait_connected(TIMEOUT)
        await asyncio.wait_for(done.wait(), TIMEOUT)
        # The refusal is final: the runner ends with the same error.
        with pytest.raises(AuthenticationError) as ended:
            await asyncio.wait_for(task, TIMEOUT)
        assert ended.value is proxy.last_error


async def test_a_write_that_makes_no_progress_closes_the_link(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A peer that stays alive (it keeps sending) but never reads: once the transport's
    buffer is full the write blocks, and after ``heartbeat_timeout`` the link is closed
    (4008) instead of the writer waiting forever."""
    caplog.set_level(logging.WARNING, logger="proxy_core.proxy")
    transport = MemoryTransport(buffer_frames=4)
    codec = JsonCodec()

    async def handler(conn: Connection) -> None:
        decode_handshake(await conn.receive())
        await conn.send(encode_handshake(Welcome("json", "s-1", ("assistant",), 1 << 20)))
        for _ in range(600):  # alive, never reading; bounded (60 s at most)
            await conn.send(codec.encode(Ready("assistant")))
            await asyncio.sleep(0.1)
            if conn.closed:
                return

    async with transport.serve("memory://127.0.0.1:0/ws", handler) as listener:
        runner = WorkerRunner(handle_sigint=False)
        acme = BaseWorker("acme")
        proxy = ProxyClient(
            "proxy",
            url=listener.url,
            transport=transport,
            codec="json",
            local_worker_name="acme",
            remote_worker_name="assistant",
            forward_messages=(BusFrameMessage,),
            reconnect=None,
            heartbeat_interval=0.5,
            heartbeat_timeout=1.0,
        )
        disconnected = asyncio.Event()
        proxy.event_handler("on_disconnected")(lambda *_: disconnected.set())
        await runner.add_workers(acme, proxy)
        task = asyncio.create_task(runner.run())
        await acme.activate_worker("proxy")
        await proxy.wait_connected(TIMEOUT)
        for n in range(20):  # more than the buffer holds
            await acme.send_bus_message(BusFrameMessage("acme", "assistant", TextFrame(str(n))))
        await asyncio.wait_for(disconnected.wait(), TIMEOUT)
        assert any("write made no progress" in r.getMessage() for r in caplog.records)
        await runner.end()
        await asyncio.wait_for(task, TIMEOUT)


@pytest.mark.parametrize("option", ["max_unacked", "max_unacked_bytes"])
def test_outbox_bounds_below_one_are_refused(option: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{option} must be at least 1"):
        ProxyClient(
            "proxy",
            url="ws://127.0.0.1:1/ws",
            local_worker_name="a",
            remote_worker_name="b",
            **{option: 0},  # type: ignore[arg-type]
        )
