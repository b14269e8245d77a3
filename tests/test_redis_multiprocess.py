"""The Redis bus across real OS processes: round trips, broadcasts, crashes, cuts, restarts.

Every test has a throwaway redis-server on 127.0.0.1 (never the machine's
6379). The test process runs one runner; the others run ``tests/redis_child.py``
and report, one JSON line at a time, what they handled. Waits are on those
lines, bounded; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from _redis import running
from _support import LocalNote, Note, Recorder, frame, wait

from proxy_core import BusDataMessage, WorkerReadyData, WorkerRunner
from proxy_core_redis import RedisBus

CHILD = Path(__file__).parent / "redis_child.py"
_channels = itertools.count(1)

pytestmark = pytest.mark.slow


def channel() -> str:
    return f"t-mp-{next(_channels)}"


class Child:
    """A runner in another process, and what it reported."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.seen: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, role: str, url: str, ch: str, name: str, *args: str) -> Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(CHILD),
            role,
            "--url",
            url,
            "--channel",
            ch,
            "--name",
            name,
            *args,
            stdout=asyncio.subprocess.PIPE,
        )
        child = cls(process)
        await child.expect("ready")
        return child

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            event = json.loads(line)
            self.seen.append(event)
            self.events.put_nowait(event)
        self.events.put_nowait({"event": "exit"})

    async def expect(
        self, event: str, check: Callable[[dict[str, Any]], bool] = lambda e: True
    ) -> dict[str, Any]:
        """Return the next report of kind ``event`` that passes ``check``."""

        async def scan() -> dict[str, Any]:
            while True:
                got = await self.events.get()
                if got["event"] == "exit":
                    raise AssertionError(f"the child exited; it reported {self.seen[-5:]}")
                if got["event"] == event and check(got):
                    return got

        return await wait(scan())

    async def stop(self) -> dict[str, Any]:
        """End it gracefully (SIGINT) and return its final counters."""
        self.process.send_signal(signal.SIGINT)
        stopped = await self.expect("stopped")
        await wait(self.process.wait())
        return stopped["stats"]

    async def kill(self) -> None:
        self.process.kill()
        await wait(self.process.wait())

    async def close(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await wait(self.process.wait())
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def child(role: str, url: str, ch: str, name: str, *args: str) -> AsyncIterator[Child]:
    process = await Child.start(role, url, ch, name, *args)
    try:
        yield process
    finally:
        await process.close()


def here(url: str, ch: str, *workers: Any, **options: Any) -> Any:
    """A runner in this process, named ``test``, on the same channel."""
    return running(url, ch, *workers, name="test", **options)


def handled(log: Path) -> list[int]:
    return [int(line[1:]) for line in log.read_text().split()]


async def send_numbered(runner: WorkerRunner, source: str, target: str, numbers: range) -> None:
    for i in numbers:
        await runner.bus.send(frame(source, target, f"m{i}"))


# ----------------------------------------------------------------------------- tests


async def test_a_round_trip_across_processes(redis_url: str) -> None:
    ch = channel()
    asker = Recorder("asker")
    async with child("echo", redis_url, ch, "echo"), here(redis_url, ch, asker):
        for i in range(20):
            await asker.send_bus_message(frame("asker", "echo", f"ping {i}"))
        for i in range(20):
            got = await asker.wait_for(lambda m: m.source == "echo")
            assert got.frame.text == f"ping {i}"  # type: ignore[attr-defined]


async def test_broadcasts_cross_processes_and_local_messages_do_not(redis_url: str) -> None:
    ch = channel()
    me = Recorder("me")
    async with child("listener", redis_url, ch, "ears") as ears, here(redis_url, ch, me):
        await me.send_bus_message(BusDataMessage("me", None, {"hello": "all"}))
        await me.send_bus_message(LocalNote("me", None, "local broadcast"))
        await me.send_bus_message(LocalNote("me", "ears", "local, targeted"))
        await me.send_bus_message(frame("me", "ears", "marker"))
        got = await ears.expect("got", lambda e: e["type"] == "BusDataMessage")
        assert got["source"] == "me" and got["target"] is None
        await ears.expect("got", lambda e: e["text"] == "marker")
        assert not [e for e in ears.seen if e.get("type") == "LocalNote"]


async def test_the_registry_sees_a_worker_of_another_process_come_and_die(
    redis_url: str,
) -> None:
    ch = channel()
    ready: asyncio.Queue[WorkerReadyData] = asyncio.Queue()
    gone: asyncio.Queue[WorkerReadyData] = asyncio.Queue()

    async def on_ready(data: WorkerReadyData) -> None:
        ready.put_nowait(data)

    async def on_gone(data: WorkerReadyData) -> None:
        gone.put_nowait(data)

    async with here(redis_url, ch, Recorder("me"), lease_ttl=1.0) as runner:
        runner.registry.watch("far", on_ready)
        runner.registry.watch_gone("far", on_gone)
        async with child("echo", redis_url, ch, "far", "--lease-ttl", "1") as far:
            assert (await wait(ready.get())).node == "child-far"
            await far.kill()  # no goodbye: its lease runs out
            started = asyncio.get_running_loop().time()
            assert (await wait(gone.get())).name == "far"
            # noticed within lease_ttl (1 s) and a sweep (lease_ttl / 2), with room for a slow box
            assert asyncio.get_running_loop().time() - started < 10
        assert not runner.registry.is_ready("far")


async def test_ten_thousand_messages_through_a_consumer_crash(
    redis_url: str, tmp_path: Path
) -> None:
    """SIGKILL the consumer mid-stream; a successor takes over: nothing lost, order kept."""
    ch, log, total, window = channel(), tmp_path / "sink.log", 10_000, 256
    args = ("--log", str(log), "--every", "500", "--in-flight", str(window))
    async with here(redis_url, ch, Recorder("producer")) as runner:
        first = await Child.start("sink", redis_url, ch, "sink", *args)
        sending = asyncio.create_task(send_numbered(runner, "producer", "sink", range(total)))
        try:
            await first.expect("progress", lambda e: e["n"] >= 3000)
            await first.kill()
            before = handled(log)
            successor = await Child.start("sink", redis_url, ch, "sink", *args)
            try:
                await wait(sending)
                await runner.bus.send(frame("producer", "sink", "stats?"))
                stats = (await successor.expect("stats"))["stats"]
            finally:
                await successor.close()
        finally:
            await first.close()
            sending.cancel()
    after = handled(log)[len(before) :]
    assert before == list(range(len(before)))  # in order, no gap, before the crash
    assert after == sorted(after) and len(set(after)) == len(after)  # in order, no repeat
    assert set(before) | set(after) == set(range(total))  # nothing lost
    repeated = set(before) & set(after)
    assert len(repeated) <= window + 256  # the in-flight window (+ one read)
    assert stats["redelivered"] >= len(repeated)  # and reported


async def test_connections_killed_mid_stream_lose_and_repeat_nothing(
    redis_url: str, tmp_path: Path
) -> None:
    """``CLIENT KILL`` every connection of both runners, three times: exactly once, in order."""
    ch, log, total = channel(), tmp_path / "sink.log", 10_000
    admin = aioredis.Redis.from_url(redis_url)
    try:
        async with (
            child("sink", redis_url, ch, "sink", "--log", str(log), "--every", "1000") as sink,
            here(redis_url, ch, Recorder("producer")) as runner,
        ):
            sending = asyncio.create_task(send_numbered(runner, "producer", "sink", range(total)))
            for n in (2000, 5000, 8000):
                await sink.expect("progress", lambda e, n=n: e["n"] >= n)
                killed = await admin.client_kill_filter(_type="normal", skipme=True)
                assert killed >= 2
            await wait(sending)
            await runner.bus.send(frame("producer", "sink", "stats?"))
            stats = (await sink.expect("stats"))["stats"]
            here_stats = runner.bus.stats()
    finally:
        await admin.aclose()
    assert handled(log) == list(range(total))
    # The kills were felt: a loop that was in a call when its connection died counts a
    # reconnect once it is through again. Which side was in a call is up to timing (an idle
    # pooled connection is replaced without an error), so count both; the producer's reader
    # sits in a blocking read, and the stats reply came back through it.
    assert stats["reconnects"] + here_stats["reconnects"] >= 1


async def test_a_redis_restart_with_persistence_loses_nothing(
    persistent_redis_server: Any, tmp_path: Path
) -> None:
    server = persistent_redis_server
    ch, log, total = channel(), tmp_path / "sink.log", 4000
    async with (
        child("sink", server.url, ch, "sink", "--log", str(log), "--every", "500") as sink,
        here(server.url, ch, Recorder("producer")) as runner,
    ):
        await send_numbered(runner, "producer", "sink", range(total // 2))
        await sink.expect("progress", lambda e: e["n"] >= 1000)
        await asyncio.to_thread(server.restart)
        await send_numbered(runner, "producer", "sink", range(total // 2, total))
        await sink.expect("progress", lambda e: e["n"] >= total)
    assert handled(log) == list(range(total))


async def test_a_redis_restart_without_persistence_is_reported_and_survived(
    fresh_redis_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = fresh_redis_server
    ch = channel()
    me = Recorder("me")
    async with child("echo", server.url, ch, "echo") as echo, here(server.url, ch, me) as runner:
        await me.send_bus_message(frame("me", "echo", "before"))
        await me.wait_text("before")
        await asyncio.to_thread(server.restart)
        # Everything Redis held is gone; both runners set the channel up again by
        # themselves, and the bus carries messages again.
        await me.send_bus_message(frame("me", "echo", "after"))
        await me.wait_text("after")
        assert runner.bus.stats()["state_lost"] >= 1
        assert echo.process.returncode is None
    assert any("lost" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")


async def test_a_proxy_serves_a_worker_that_lives_in_another_process(redis_url: str) -> None:
    """Client -> wire -> server proxy (this process, on the Redis bus) -> worker in a child."""
    from proxy_core import BusFrameMessage, serve_proxy
    from proxy_core_websockets import WebSocketProxyClient

    ch = channel()

    async def setup(runner: WorkerRunner) -> None:
        """The served worker is not here: it lives in the child, on the same bus."""

    acme = Recorder("acme")
    ready: asyncio.Queue[WorkerReadyData] = asyncio.Queue()

    async def on_ready(data: WorkerReadyData) -> None:
        ready.put_nowait(data)

    async with (
        child("echo", redis_url, ch, "assistant"),
        serve_proxy(
            "ws://127.0.0.1:0/ws",
            worker_name="assistant",
            remote_worker_name="acme",
            forward_messages=(BusFrameMessage,),
            setup=setup,
            bus_factory=lambda: RedisBus(redis_url, channel=ch, lease_ttl=2.0),
        ) as service,
    ):
        client_runner = WorkerRunner("client", handle_sigint=False)
        proxy = WebSocketProxyClient(
            "proxy",
            url=service.url,
            local_worker_name="acme",
            remote_worker_name="assistant",
            forward_messages=(BusFrameMessage,),
            reconnect=None,
        )
        client_runner.registry.watch("assistant", on_ready)
        await client_runner.add_workers(acme, proxy)
        task = asyncio.create_task(client_runner.run())
        try:
            await acme.activate_worker("proxy")
            assert (await wait(ready.get())).remote  # announced by the server, from the child
            await acme.send_bus_message(frame("acme", "assistant", "across two hops"))
            reply = await acme.wait_text("across two hops")
            assert reply.source == "assistant"
            # The rules still apply: a message the proxy must not carry does not cross.
            await acme.send_bus_message(Note("acme", "assistant", "not allow-listed"))
            await acme.send_bus_message(frame("acme", "assistant", "marker"))
            await acme.wait_text("marker")
            assert "not allow-listed" not in acme.texts()
            assert proxy.stats.dropped_out["not_allowed"] == 1
        finally:
            await client_runner.end()
            await wait(task)


async def test_a_standby_takes_over_and_watchers_hear_gone_then_ready(redis_url: str) -> None:
    ch = channel()
    events: asyncio.Queue[tuple[str, str | None]] = asyncio.Queue()

    async def on_ready(data: WorkerReadyData) -> None:
        events.put_nowait(("ready", data.node))

    async def on_gone(data: WorkerReadyData) -> None:
        events.put_nowait(("gone", data.node))

    asker = Recorder("asker")
    async with here(redis_url, ch, asker, lease_ttl=1.0) as runner:
        runner.registry.watch("far", on_ready)
        runner.registry.watch_gone("far", on_gone)
        first = await Child.start(
            "echo", redis_url, ch, "far", "--runner", "first", "--lease-ttl", "1"
        )
        try:
            assert await wait(events.get()) == ("ready", "first")
            standby = asyncio.create_task(
                Child.start("echo", redis_url, ch, "far", "--runner", "second", "--lease-ttl", "1")
            )
            await first.kill()
            second = await wait(standby)
            try:
                assert await wait(events.get()) == ("gone", "first")
                assert await wait(events.get()) == ("ready", "second")
                await asker.send_bus_message(frame("asker", "far", "are you there?"))
                reply = await asker.wait_text("are you there?")
                assert reply.source == "far"
            finally:
                await second.close()
        finally:
            await first.close()
