"""The client process of ``proxy-core bench-load``: many sessions, their traffic, their end.

One :class:`~proxy_core.WorkerRunner` per session, each with a
:class:`Collector` and a :class:`~proxy_core.ProxyClient`, all in this
process. It answers ``open`` (N sessions, a bounded number at a time),
``traffic`` (every session sends M numbered messages and waits for its M
echoes), ``close``, ``mem`` and ``stop``. Run through
:mod:`proxy_core.bench.load_side`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from ..messages import BusFrameMessage, BusMessage, TextFrame
from ..proxy import ProxyClient
from ..registry import WorkerReadyData
from ..runner import WorkerRunner
from ..worker import BaseWorker
from ._load_common import CLIENT, FORWARD, SERVER, describe, heartbeat, start_child
from .load_probes import GC_CLOCK, _snapshot, cpu_seconds
from .worker import _Profiler

__all__ = ["Collector", "client_role"]

_SEQ_DIGITS = 8  # each payload starts with its sequence number, zero-padded
_YIELD_EVERY = 10  # a session yields to the loop after this many sends
_MAX_ERRORS = 5  # distinct error texts kept per phase


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
            heartbeat_interval=heartbeat(spec)[0],
            heartbeat_timeout=heartbeat(spec)[1],
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
            errors[describe(task.exception() or RuntimeError("?"))] += 1
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


async def client_role(spec: dict[str, Any]) -> int:
    """Run the client process for ``spec`` until the parent says ``stop``; return 0."""
    channel, limits = await start_child(spec)
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
                reply = {"ok": False, "error": describe(exc)}
            channel.send(reply)
    finally:
        await client.aclose()
    return 0
