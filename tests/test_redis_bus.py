"""The Redis bus with several runners in one process: routing, registry, names, cleanup.

Each runner has its own RedisBus on the same channel of a throwaway
redis-server (never the machine's 6379), so everything between two runners
goes through Redis as between two processes; ``test_redis_multiprocess.py``
does the same with real OS processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from _support import LocalNote, Recorder, frame, wait

from proxy_core import BusDataMessage, ConfigurationError, WorkerReadyData, WorkerRunner
from proxy_core_redis import RedisBus

_channels = itertools.count(1)


def channel() -> str:
    return f"t-bus-{next(_channels)}"


@contextlib.asynccontextmanager
async def running(
    url: str, channel: str, *workers: Any, name: str | None = None, **options: Any
) -> AsyncIterator[WorkerRunner]:
    """A runner on a RedisBus, running in a task; ended (cleanly) on exit."""
    options.setdefault("lease_ttl", 2.0)
    runner = WorkerRunner(name, bus=RedisBus(url, channel=channel, **options), handle_sigint=False)
    await runner.add_workers(*workers)
    task = asyncio.create_task(runner.run())
    try:
        yield runner
    finally:
        await runner.end()
        await wait(task)


async def keys_of(url: str, channel: str) -> list[bytes]:
    client = aioredis.Redis.from_url(url)
    try:
        return sorted([k async for k in client.scan_iter(match=f"pc:{{{channel}}}:*")])
    finally:
        await client.aclose()


async def test_a_message_crosses_to_a_worker_of_another_runner_and_back(redis_url: str) -> None:
    ch = channel()
    alice, bob = Recorder("alice"), Recorder("bob")
    async with running(redis_url, ch, alice, name="a"), running(redis_url, ch, bob, name="b"):
        await alice.send_bus_message(frame("alice", "bob", "hello"))
        got = await bob.wait_text("hello")
        assert got.source == "alice" and got.target == "bob"
        await bob.send_bus_message(frame("bob", "alice", "hi back"))
        await alice.wait_text("hi back")


async def test_watch_fires_for_a_worker_that_becomes_ready_in_another_runner(
    redis_url: str,
) -> None:
    ch = channel()
    seen: asyncio.Queue[WorkerReadyData] = asyncio.Queue()

    async def on_ready(data: WorkerReadyData) -> None:
        seen.put_nowait(data)

    gone: asyncio.Queue[WorkerReadyData] = asyncio.Queue()

    async def on_gone(data: WorkerReadyData) -> None:
        gone.put_nowait(data)

    watcher = Recorder("watcher")
    async with running(redis_url, ch, watcher, name="a") as a:
        a.registry.watch("late", on_ready)
        a.registry.watch_gone("late", on_gone)
        async with running(redis_url, ch, Recorder("late"), name="b"):
            data = await wait(seen.get())
            assert data.name == "late" and data.node == "b" and not data.remote
            assert a.registry.is_ready("late")
            assert gone.empty()
        # b ended cleanly: its worker is gone here too
        assert (await wait(gone.get())).node == "b"
        assert not a.registry.is_ready("late")


async def test_broadcasts_reach_every_worker_but_the_source_in_every_runner(
    redis_url: str,
) -> None:
    ch = channel()
    a1, a2, b1 = Recorder("a1"), Recorder("a2"), Recorder("b1")
    async with running(redis_url, ch, a1, a2, name="a"), running(redis_url, ch, b1, name="b"):
        await a1.send_bus_message(BusDataMessage("a1", None, {"n": 1}))
        for worker in (a2, b1):
            got = await worker.wait_for(lambda m: isinstance(m, BusDataMessage))
            assert got.data == {"n": 1}
        # a1 sent it: it never comes back to a1 (a marker after it shows the order)
        await b1.send_bus_message(frame("b1", "a1", "marker"))
        await a1.wait_text("marker")
        assert not [m for m in a1.seen if isinstance(m, BusDataMessage)]


async def test_local_messages_never_leave_their_runner(redis_url: str) -> None:
    ch = channel()
    a1, a2, b1 = Recorder("a1"), Recorder("a2"), Recorder("b1")
    async with running(redis_url, ch, a1, a2, name="a") as a, running(redis_url, ch, b1, name="b"):
        await a1.send_bus_message(LocalNote("a1", None, "local broadcast"))
        await a1.send_bus_message(LocalNote("a1", "b1", "local, for b1"))
        await a2.wait_for(lambda m: isinstance(m, LocalNote))
        await a1.send_bus_message(frame("a1", "b1", "marker"))
        await b1.wait_text("marker")
        assert not [m for m in b1.seen if isinstance(m, LocalNote)]
        assert a.bus.undeliverable == 1


async def test_a_name_held_by_a_live_runner_cannot_be_taken(redis_url: str) -> None:
    ch = channel()
    async with running(redis_url, ch, Recorder("solo"), name="first"):
        runner = WorkerRunner("second", bus=RedisBus(redis_url, channel=ch), handle_sigint=False)
        with pytest.raises(ConfigurationError, match=r"'solo'.*held.*'first'"):
            await runner.add_workers(Recorder("solo"))
        await runner.bus.aclose()


async def test_a_clean_shutdown_leaves_no_key_behind(redis_url: str) -> None:
    ch = channel()
    alice, bob = Recorder("alice"), Recorder("bob")
    async with running(redis_url, ch, alice, name="a"), running(redis_url, ch, bob, name="b"):
        for i in range(50):
            await alice.send_bus_message(frame("alice", "bob", f"m{i}"))
        await bob.wait_text("m49")
        await alice.send_bus_message(BusDataMessage("alice", None, {}))
        await bob.wait_for(lambda m: isinstance(m, BusDataMessage))
        assert await keys_of(redis_url, ch)
    assert await keys_of(redis_url, ch) == []


async def test_messages_for_a_name_nobody_holds_wait_for_its_next_holder(redis_url: str) -> None:
    ch = channel()
    alice = Recorder("alice")
    async with running(redis_url, ch, alice, name="a") as a:
        for i in range(20):
            await alice.send_bus_message(frame("alice", "later", f"m{i}"))
        assert await wait(a.bus._writer.drain(30))  # type: ignore[attr-defined]
        later = Recorder("later")
        async with running(redis_url, ch, later, name="b"):
            for i in range(20):
                assert (await later.inbox.get()).frame.text == f"m{i}"  # type: ignore[attr-defined]
