"""The two processes of ``proxy-core bench-load``: ``python -m proxy_core.bench.load_side``.

``server``: :func:`~proxy_core.serve_proxy` on 127.0.0.1 with an :class:`Echo`
worker in every session; it answers ``mem`` (memory, sessions alive, counters),
``wait_live`` (until at most N sessions are alive) and ``stop``.

``client``: one :class:`~proxy_core.WorkerRunner` per session, each with a
:class:`Collector` and a :class:`~proxy_core.ProxyClient`, all in this
process; it answers ``open`` (N sessions, a bounded number at a time),
``traffic`` (every session sends M numbered messages and waits for its M
echoes), ``close``, ``mem`` and ``stop``.

Both talk to the parent (:mod:`proxy_core.bench.load`) in JSON lines, as the
``proxy-core bench`` children do, and run every command under the deadline
it carries.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from ..gc_tuning import tune_gc
from ..messages import BusFrameMessage, BusMessage, TextFrame
from ..plugins import resolve_transport
from ..proxy import ProxyClient
from ..registry import WorkerReadyData
from ..runner import WorkerRunner
from ..service import ProxyService, serve_proxy
from ..worker import BaseWorker
from .load_probes import (
    GC_CLOCK,
    LAG,
    GcClock,
    LagProbe,
    _snapshot,
    cpu_seconds,
    memory,
    raise_fd_limit,
)
from .worker import _Channel, _Profiler, run_role

__all__ = [
    "Collector",
    "Echo",
    "GcClock",
    "LagProbe",
    "cpu_seconds",
    "main",
    "memory",
    "raise_fd_limit",
]

CLIENT, SERVER = "acme", "assistant"
FORWARD = (BusFrameMessage,)
_SEQ_DIGITS = 8  # each payload starts with its sequence number, zero-padded
_YIELD_EVERY = 10  # a session yields to the loop after this many sends
_MAX_ERRORS = 5  # distinct error texts kept per phase


def _heartbeat(spec: dict[str, Any]) -> tuple[float, float]:
    """The proxies' heartbeat interval and timeout: the library's (10 s, 30 s) if not given."""
    interval = float(spec.get("heartbeat_interval") or 10.0)
    return interval, 3 * interval


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


# ---------------------------------------------------------------- server


class _Live:
    """How many sessions' workers are alive, with a wait on that number."""

    def __init__(self) -> None:
        self.count = 0
        self.peak = 0
        self.received = 0
        self.echoed = 0
        self._changed = asyncio.Event()

    def change(self, delta: int) -> None:
        self.count += delta
        self.peak = max(self.peak, self.count)
        self._changed.set()

    async def wait_at_most(self, limit: int) -> None:
        """Wait until at most ``limit`` sessions are alive (the caller bounds the time)."""
        while self.count > limit:
            self._changed.clear()
            await self._changed.wait()


async def _sessions_wound_down(idle: int) -> None:
    """Wait until no more tasks run than when the server was idle: the sessions wound down.

    A session's worker ends before its proxy, its connection and the transport's
    handler task do; waiting for them makes the memory and task counts read next
    those of a server with no session, and a task that never ends shows up as a
    timeout (the caller bounds the time) instead of as noise. The listener's own
    tasks are counted, not named: gRPC's server replaces its pending request task
    with a new one on every call.

    Each pass waits for as many tasks to end as there are too many, with one done
    callback per task: linear in the tasks, where a wait for the first one to end,
    again and again, would cost the whole list per task that ends (quadratic).
    """
    while True:
        tasks = [t for t in asyncio.all_tasks() if not t.done()]
        excess = len(tasks) - idle
        if excess <= 0:
            return
        current = asyncio.current_task()
        await _some_end([t for t in tasks if t is not current], excess)


async def _some_end(tasks: list[asyncio.Task[Any]], count: int) -> None:
    """Wait until ``count`` of ``tasks`` have ended."""
    enough = asyncio.get_running_loop().create_future()
    ended = 0

    def one_ended(_: asyncio.Task[Any]) -> None:
        nonlocal ended
        ended += 1
        if ended >= count and not enough.done():
            enough.set_result(None)

    for task in tasks:
        task.add_done_callback(one_ended)
    try:
        await enough
    finally:
        for task in tasks:
            task.remove_done_callback(one_ended)


class Echo(BaseWorker):
    """The server's worker in every session: sends each frame message back to its sender."""

    def __init__(self, live: _Live) -> None:
        super().__init__(SERVER)
        self._live = live

    async def on_start(self) -> None:
        self._live.change(+1)
        self.create_task(self._alive())

    async def _alive(self) -> None:
        # Cancelled when the session's runner shuts down: that is the session's end.
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            self._live.change(-1)

    async def on_bus_message(self, message: BusMessage) -> None:
        if type(message) is BusFrameMessage:
            self._live.received += 1
            await self.send_bus_message(BusFrameMessage(SERVER, message.source, message.frame))
            self._live.echoed += 1


def _server_drops(service: ProxyService) -> dict[str, int]:
    drops: Counter[str] = Counter()
    for proxy in list(service.proxies):
        drops.update({f"out.{k}": v for k, v in proxy.stats.dropped_out.items()})
        drops.update({f"in.{k}": v for k, v in proxy.stats.dropped_in.items()})
    return dict(drops)


def _server_links(service: ProxyService) -> dict[str, int]:
    """Connections that took a lost session over, on the server's live sessions."""
    proxies = list(service.proxies)
    return {
        "reconnects": sum(p.stats.reconnects for p in proxies),
        "resumes": sum(p.stats.resumes for p in proxies),
    }


async def _server_role(spec: dict[str, Any]) -> int:
    limits = raise_fd_limit()
    if spec.get("tune_gc"):
        tune_gc()
    GC_CLOCK.install()
    LAG.start()
    channel = await _Channel.open()
    live = _Live()
    backend = resolve_transport(spec["transport"])

    async def setup(runner: WorkerRunner) -> None:
        await runner.add_workers(Echo(live))

    async with serve_proxy(
        f"{backend.schemes[0]}://127.0.0.1:0/ws",
        transport=backend,
        codecs=(spec["codec"],),
        worker_name=SERVER,
        remote_worker_name=CLIENT,
        forward_messages=FORWARD,
        setup=setup,
        heartbeat_interval=_heartbeat(spec)[0],
        heartbeat_timeout=_heartbeat(spec)[1],
    ) as service:
        idle_tasks = len(asyncio.all_tasks())  # this one and the listener's (gRPC has some)
        channel.send({"event": "ready", "url": service.url, "pid": os.getpid(), "nofile": limits})
        profiler = _Profiler()
        while (command := await channel.receive()) is not None:
            name = command.get("cmd")
            if name == "stop":
                break
            if name == "profile":
                channel.send(profiler.handle(command))
                continue
            reply: dict[str, Any] = {"ok": True}
            try:
                if name == "wait_live":
                    async with asyncio.timeout(float(command["deadline"])):
                        await live.wait_at_most(int(command["at_most"]))
                        if command.get("settle"):
                            await _sessions_wound_down(idle_tasks)
                elif name != "mem":
                    raise ValueError(f"unknown command {name!r}")
                reply.update(_snapshot(bool(command.get("freeze"))))
                reply.update(
                    live=live.count,
                    peak_live=live.peak,
                    runners=len(service.runners),
                    served=service.sessions_served,
                    received=live.received,
                    echoed=live.echoed,
                    drops=_server_drops(service),
                    **_server_links(service),
                )
            except Exception as exc:
                reply = {"ok": False, "error": _describe(exc), "live": live.count}
            channel.send(reply)
    return 0


# ---------------------------------------------------------------- client


class Collector(BaseWorker):
    """The client's worker in every session: checks the echoes against what was sent."""

    def __init__(self, expected: int) -> None:
        super().__init__(CLIENT)
        self.expected = expected
        self.sent = 0
        self.seen: set[int] = set()
        self.duplicates = 0
        self.out_of_order = 0
        self.foreign = 0
        self.complete = asyncio.Event()

    async def on_bus_message(self, message: BusMessage) -> None:
        frame = getattr(message, "frame", None)
        if type(message) is not BusFrameMessage or not isinstance(frame, TextFrame):
            self.foreign += 1
            return
        try:
            seq = int(frame.text[:_SEQ_DIGITS])
        except ValueError:
            self.foreign += 1
            return
        if seq in self.seen:
            self.duplicates += 1
            return
        if seq != len(self.seen):  # the i-th distinct echo must be message i
            self.out_of_order += 1
        self.seen.add(seq)
        if len(self.seen) >= self.expected:
            self.complete.set()

    async def send_all(self, size: int) -> None:
        """Send the ``expected`` numbered messages, each ``size`` characters long."""
        pad = "x" * max(0, size - _SEQ_DIGITS)
        for seq in range(self.expected):
            text = f"{seq:0{_SEQ_DIGITS}d}{pad}"
            await self.send_bus_message(BusFrameMessage(CLIENT, SERVER, TextFrame(text)))
            self.sent += 1
            if seq % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)  # let the other sessions' senders and the writers run


class _Session:
    """One client session: a runner with a :class:`Collector` and a connected ProxyClient."""

    def __init__(self, runner: WorkerRunner, collector: Collector, proxy: ProxyClient) -> None:
        self.runner = runner
        self.collector = collector
        self.proxy = proxy
        self.task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, index: int, spec: dict[str, Any], url: str, timeout: float) -> _Session:
        runner = WorkerRunner(f"load-{index}", handle_sigint=False)
        proxy = ProxyClient(
            "proxy",
            url=url,
            transport=spec["transport"],
            codec=spec["codec"],
            local_worker_name=CLIENT,
            remote_worker_name=SERVER,
            forward_messages=FORWARD,
            open_timeout=timeout,
            heartbeat_interval=_heartbeat(spec)[0],
            heartbeat_timeout=_heartbeat(spec)[1],
        )
        session = cls(runner, Collector(int(spec["messages"])), proxy)
        ready = asyncio.Event()

        async def on_ready(data: WorkerReadyData) -> None:
            ready.set()

        runner.registry.watch(SERVER, on_ready)
        await runner.add_workers(session.collector, proxy)
        session.task = asyncio.get_running_loop().create_task(runner.run())
        try:
            async with asyncio.timeout(timeout):
                await session.collector.activate_worker("proxy")
                await proxy.wait_connected(timeout)
                await ready.wait()
        except BaseException:
            await session.close(timeout)
            raise
        return session

    async def close(self, timeout: float) -> bool:
        """End the runner (BYE, then close); return whether it finished within ``timeout``."""
        await self.runner.end("load test done")
        if self.task is None:
            return True
        done, _ = await asyncio.wait([self.task], timeout=timeout)
        if not done:
            self.task.cancel()
            await asyncio.wait([self.task], timeout=timeout)
        return bool(done)


async def _bounded(
    count: int, job: Callable[[int], Awaitable[Any]], limit: int, timeout: float
) -> tuple[list[Any], Counter[str], int]:
    """Run ``job(0) .. job(count - 1)``, ``limit`` at a time; return results, errors, unfinished."""
    gate = asyncio.Semaphore(limit)

    async def one(index: int) -> Any:
        async with gate:
            return await job(index)

    tasks = [asyncio.ensure_future(one(i)) for i in range(count)]
    if not tasks:
        return [], Counter(), 0
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=10)
    results, errors = [], Counter[str]()
    for task in tasks:
        if task in done and task.exception() is None:
            results.append(task.result())
        elif task in done:
            errors[_describe(task.exception() or RuntimeError("?"))] += 1
    return results, errors, len(pending)


class _Client:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.sessions: list[_Session] = []
        self.profiler = _Profiler()

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        name, deadline = command["cmd"], float(command["deadline"])
        if name == "profile":
            return self.profiler.handle(command)
        start, cpu, collected = time.perf_counter(), cpu_seconds(), GC_CLOCK.reading()
        if name == "open":
            reply = await self.open(command["url"], int(command["count"]), deadline)
        elif name == "traffic":
            reply = await self.traffic(deadline)
        elif name == "close":
            reply = await self.close(deadline)
        elif name == "mem":
            reply = {}
        else:
            raise ValueError(f"unknown command {name!r}")
        seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        used = {"seconds": seconds, "cpu_used": cpu, "gc_used": GC_CLOCK.since(collected)}
        freeze = name == "open" and bool(self.spec.get("gc_freeze"))
        return {"ok": True, **used, **reply, **_snapshot(freeze)}

    async def open(self, url: str, count: int, deadline: float) -> dict[str, Any]:
        each = min(float(self.spec["open_timeout"]), deadline)
        base = len(self.sessions)

        def job(i: int) -> Awaitable[_Session]:
            return _Session.open(base + i, self.spec, url, each)

        limit = int(self.spec["concurrency"])
        opened, errors, unfinished = await _bounded(count, job, limit, deadline)
        self.sessions.extend(opened)
        if unfinished:
            errors[f"not opened within the {deadline:.0f} s left"] += unfinished
        return {"opened": len(opened), "failed": count - len(opened), "errors": _top(errors)}

    async def traffic(self, deadline: float) -> dict[str, Any]:
        size = int(self.spec["size"])

        async def drive(session: _Session) -> None:
            await session.collector.send_all(size)
            await session.collector.complete.wait()

        tasks = [asyncio.ensure_future(drive(s)) for s in self.sessions]
        pending: set[asyncio.Future[None]] = set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=deadline)
        for task in pending:
            task.cancel()
        return {**_tally(self.sessions), "incomplete": len(pending)}

    async def close(self, deadline: float) -> dict[str, Any]:
        sessions, self.sessions = self.sessions, []

        def job(i: int) -> Awaitable[bool]:
            return sessions[i].close(deadline)

        finished, _, _ = await _bounded(len(sessions), job, len(sessions) or 1, deadline)
        closed = sum(1 for ok in finished if ok)
        return {"closed": closed, "not_closed": len(sessions) - closed, "final": _tally(sessions)}

    async def aclose(self) -> None:
        await self.close(10)


def _tally(sessions: list[_Session]) -> dict[str, Any]:
    """Add up what the sessions' collectors and proxies counted."""
    collectors = [s.collector for s in sessions]
    drops: Counter[str] = Counter()
    for s in sessions:
        drops.update({f"out.{k}": v for k, v in s.proxy.stats.dropped_out.items()})
        drops.update({f"in.{k}": v for k, v in s.proxy.stats.dropped_in.items()})
    sent = sum(c.sent for c in collectors)
    received = sum(len(c.seen) for c in collectors)
    return {
        "sessions": len(collectors),
        "connected": sum(1 for s in sessions if s.proxy.connected),
        "sent": sent,
        "received": received,
        "lost": sent - received,
        "duplicated": sum(c.duplicates for c in collectors),
        "out_of_order": sum(c.out_of_order for c in collectors),
        "foreign": sum(c.foreign for c in collectors),
        "drops": dict(drops),
        # Links lost and opened again (a heartbeat timeout, ...): sessions resumed.
        "reconnects": sum(s.proxy.stats.reconnects for s in sessions),
        "resumes": sum(s.proxy.stats.resumes for s in sessions),
        "replayed": sum(s.proxy.stats.replayed for s in sessions),
    }


def _top(errors: Counter[str]) -> dict[str, int]:
    return dict(errors.most_common(_MAX_ERRORS))


async def _client_role(spec: dict[str, Any]) -> int:
    limits = raise_fd_limit()
    if spec.get("tune_gc"):
        tune_gc()
    GC_CLOCK.install()
    LAG.start()
    channel = await _Channel.open()
    client = _Client(spec)
    channel.send({"event": "ready", "pid": os.getpid(), "nofile": limits, **_snapshot()})
    try:
        while (command := await channel.receive()) is not None:
            if command.get("cmd") == "stop":
                break
            try:
                async with asyncio.timeout(float(command["deadline"]) + 10):
                    reply = await client.handle(command)
            except Exception as exc:
                reply = {"ok": False, "error": _describe(exc)}
            channel.send(reply)
    finally:
        await client.aclose()
    return 0


_ROLES = {"server": _server_role, "client": _client_role}


def main(argv: list[str] | None = None) -> int:
    """Run a child role; return its exit code."""
    return run_role("proxy_core.bench.load_side", _ROLES, argv)


if __name__ == "__main__":
    sys.exit(main())
