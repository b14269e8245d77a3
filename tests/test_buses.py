"""Buses as plug-ins, the runner's bus argument, and the Redis bus's options and limits."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from _support import Recorder, wait

from proxy_core import (
    Backoff,
    BaseBus,
    ConfigurationError,
    ConnectError,
    InProcessBus,
    PluginError,
    WorkerRunner,
)
from proxy_core.plugins import available_buses, bus_class, load_bus
from proxy_core_redis import RedisBus, RedisBusError, RedisServer


def test_the_installed_buses_are_listed_and_loaded_by_name() -> None:
    assert {"local", "redis"} <= set(available_buses())
    assert bus_class("local") is InProcessBus
    assert bus_class("redis") is RedisBus
    assert isinstance(load_bus("local"), InProcessBus)
    bus = load_bus("redis", url="redis://127.0.0.1:1/0", channel="x")
    assert isinstance(bus, RedisBus) and bus.channel == "x"


def test_an_unknown_bus_names_the_installed_ones() -> None:
    with pytest.raises(PluginError, match=r"unknown bus 'nosuch'; installed buses: .*local.*redis"):
        load_bus("nosuch")


def test_options_a_bus_does_not_take_are_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="bus 'local' does not take"):
        load_bus("local", channel="x")


def test_a_runner_takes_only_a_bus_and_a_bus_serves_one_runner() -> None:
    with pytest.raises(ConfigurationError, match="BaseBus"):
        WorkerRunner("r", bus=object())  # type: ignore[arg-type]
    bus = InProcessBus()
    WorkerRunner("first", bus=bus)
    with pytest.raises(ConfigurationError, match="already serves runner 'first'"):
        WorkerRunner("second", bus=bus)
    assert isinstance(WorkerRunner().bus, InProcessBus)
    assert isinstance(WorkerRunner().bus, BaseBus)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({}, "give a Redis url or a redis.asyncio.Redis client"),
        ({"url": "http://127.0.0.1/"}, "redis://, rediss:// or unix://"),
        ({"url": "redis://h/0", "channel": "a{b}"}, "braces"),
        ({"url": "redis://h/0", "channel": ""}, "non-empty"),
        ({"url": "redis://h/0", "lease_ttl": 0}, "lease_ttl"),
        ({"url": "redis://h/0", "max_backlog": 0}, "max_backlog"),
        ({"url": "redis://h/0", "in_flight": True}, "in_flight"),
        ({"url": "redis://h/0", "claim_timeout": -1}, "claim_timeout"),
        ({"url": "redis://h/0", "put_timeout": 0}, "put_timeout"),
        ({"url": "redis://h/0", "max_message_bytes": 0}, "max_message_bytes"),
    ],
)
def test_redis_bus_options_are_checked(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        RedisBus(**options)


def test_a_redis_url_is_kept_without_its_credentials() -> None:
    bus = RedisBus("redis://bots:s3cret@127.0.0.1:6380/0?password=other", channel="c")
    assert "s3cret" not in bus.url and "other" not in bus.url and "bots" not in bus.url
    assert "s3cret" not in repr(bus)


async def test_an_unreachable_redis_is_a_clear_error_at_start(unused_tcp_port: int) -> None:
    runner = WorkerRunner("r", bus=RedisBus(f"redis://127.0.0.1:{unused_tcp_port}/0", channel="c"))
    with pytest.raises(ConnectError, match=f"could not connect to Redis at .*{unused_tcp_port}"):
        await runner.add_workers(Recorder("w"))
    await runner.bus.aclose()


async def test_a_redis_that_stays_away_ends_the_runner_with_the_error() -> None:
    with RedisServer() as server:
        server.start()
        bus = RedisBus(
            server.url,
            channel="c",
            lease_ttl=0.5,
            reconnect=Backoff(initial_delay=0.05, max_delay=0.2, max_elapsed=1.0),
        )
        runner = WorkerRunner("r", bus=bus, handle_sigint=False)
        await runner.add_workers(Recorder("w"))
        task = asyncio.create_task(runner.run())
        await asyncio.to_thread(server.stop)
        with pytest.raises(RedisBusError, match="gave up"):
            await wait(task)


def test_the_core_never_imports_the_redis_bus() -> None:
    import subprocess
    import sys

    code = (
        "import sys, pkgutil, importlib, proxy_core\n"
        "for m in pkgutil.walk_packages(proxy_core.__path__, 'proxy_core.'):\n"
        "    if '_generated' not in m.name and 'pipecat' not in m.name:\n"
        "        importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('redis', 'proxy_core_redis'))\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


async def test_a_worker_added_while_the_bus_starts_is_started_once() -> None:
    class SlowStart(InProcessBus):
        def __init__(self) -> None:
            super().__init__()
            self.go = asyncio.Event()
            self.starting = asyncio.Event()

        async def start(self) -> None:
            self.starting.set()
            await self.go.wait()

    class Counting(Recorder):
        starts = 0

        async def on_start(self) -> None:
            Counting.starts += 1

    bus = SlowStart()
    runner = WorkerRunner("r", bus=bus, handle_sigint=False)
    task = asyncio.create_task(runner.run())
    await wait(bus.starting.wait())
    worker = Counting("late")
    await runner.add_workers(worker)
    ready = asyncio.Event()

    async def on_ready(_: Any) -> None:
        ready.set()

    runner.registry.watch("late", on_ready)
    bus.go.set()
    await wait(ready.wait())
    await runner.end()
    await wait(task)
    assert Counting.starts == 1
