"""The two processes of ``proxy-core bench-load``: ``python -m proxy_core.bench.load_side``.

``server``: :func:`~proxy_core.serve_proxy` on 127.0.0.1 with an :class:`Echo`
worker in every session; it answers ``mem`` (memory, sessions alive, counters),
``wait_live`` (until at most N sessions are alive) and ``stop``.

``client`` (:mod:`proxy_core.bench._load_client`): one
:class:`~proxy_core.WorkerRunner` per session, each with a :class:`Collector`
and a :class:`~proxy_core.ProxyClient`, all in this process; it answers
``open`` (N sessions, a bounded number at a time), ``traffic`` (every session
sends M numbered messages and waits for its M echoes), ``close``, ``mem`` and
``stop``.

Both talk to the parent (:mod:`proxy_core.bench.load`) in JSON lines, as the
``proxy-core bench`` children do, and run every command under the deadline
it carries.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from typing import Any

from ..messages import BusFrameMessage, BusMessage
from ..plugins import resolve_transport
from ..runner import WorkerRunner
from ..service import ProxyService, serve_proxy
from ..worker import BaseWorker
from ._load_client import Collector, client_role
from ._load_common import CLIENT, FORWARD, SERVER, describe, heartbeat, start_child
from .load_probes import GcClock, LagProbe, _snapshot, cpu_seconds, memory, raise_fd_limit
from .worker import _Profiler, run_role

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
    channel, limits = await start_child(spec)
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
        heartbeat_interval=heartbeat(spec)[0],
        heartbeat_timeout=heartbeat(spec)[1],
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
                reply = {"ok": False, "error": describe(exc), "live": live.count}
            channel.send(reply)
    return 0


_ROLES = {"server": _server_role, "client": client_role}


def main(argv: list[str] | None = None) -> int:
    """Run a child role; return its exit code."""
    return run_role("proxy_core.bench.load_side", _ROLES, argv)


if __name__ == "__main__":
    sys.exit(main())
