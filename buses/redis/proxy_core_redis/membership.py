"""Who holds what on a channel: leases, readiness news, the sweep, and recovery.

A part of :class:`~proxy_core_redis.bus.RedisBus`: a runner holds each of its
names with a lease that the control loop renews every third of ``lease_ttl``;
it publishes the readiness of the workers it holds and hears of the others'
through its node stream; it sweeps for runners and workers whose leases ran
out; and it sets everything up again when Redis lost the channel's state (a
restart without persistence).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING

from proxy_core.bus import Endpoint
from proxy_core.inbox import OverflowPolicy
from proxy_core.messages import BusEndWorkerMessage
from proxy_core.registry import WorkerReadyData
from proxy_core.worker import BaseWorker

from .support import CONNECTION_ERRORS, Retry, field, text

if TYPE_CHECKING:
    from .bus import RedisBus

__all__ = ["NEWS_MAXLEN", "Membership"]

logger = logging.getLogger("proxy_core_redis")

#: The most entries kept in a runner's node stream of registry news.
NEWS_MAXLEN = 10_000


class Membership:
    """Leases, registry news and recovery: the part of a RedisBus that keeps the channel's books.

    Args:
        bus: the bus it keeps the books of.
    """

    def __init__(self, bus: RedisBus) -> None:
        self.bus = bus

    def node_keys(self) -> list[str]:
        """The keys of this runner: the channel's runners, its liveness key, its node stream."""
        bus = self.bus
        return [bus.keys.nodes, bus.keys.alive(bus.node), bus.keys.node_stream(bus.node)]

    def info(self) -> str:
        """This runner's record: its name, codec, process id and host."""
        runner = field(self.bus._runner.name) if self.bus._runner is not None else "?"
        return f"{runner}\t{self.bus._codec.name}\t{os.getpid()}\t{field(socket.gethostname())}"

    def lease_value(self, endpoint: Endpoint) -> str:
        policy = OverflowPolicy.WAIT
        if isinstance(endpoint, BaseWorker):
            policy = endpoint.queue_stats.overflow
        runner = field(self.bus._runner.name) if self.bus._runner is not None else "?"
        return f"{self.bus.node}\t{runner}\t{self.bus.max_backlog}\t{policy.value}"

    def lease_valid(self, now: float) -> bool:
        return now < self.bus._valid_until

    def on_local_ready(self, name: str, data: WorkerReadyData | None) -> None:
        if name not in self.bus._routes or not self.bus._started:
            return
        record = "" if data is None else self.record(data)
        self.bus._news.append((name, record))
        self.bus._news_wanted.set()

    def record(self, data: WorkerReadyData) -> str:
        runner = field(self.bus._runner.name) if self.bus._runner is not None else "?"
        return f"{self.bus.node}\t{runner}\t{int(data.remote)}\t{field(data.via or '')}"

    def on_news(self, kind: bytes, fields: dict[bytes, bytes]) -> None:
        name = fields.get(b"w", b"").decode()
        value = fields.get(b"v", b"").decode()
        if kind == b"ready":
            self.peer_ready(name, value)
        elif kind == b"gone":
            self.peer_gone(name, value)

    def peer_ready(self, name: str, record: str) -> None:
        node, runner, remote, via = (record.split("\t") + ["", "", "", ""])[:4]
        if node == self.bus.node or not name or self.bus._runner is None:
            return
        self.bus._remote_ready[name] = (node, runner)
        self.bus._runner.registry.set_ready(
            name, remote=remote == "1", via=via or None, node=runner
        )

    def peer_gone(self, name: str, node: str) -> None:
        self.bus._claims.freed.set()
        known = self.bus._remote_ready.get(name)
        if known is None or known[0] != node or self.bus._runner is None:
            return
        del self.bus._remote_ready[name]
        self.bus._runner.registry.set_gone(name, node=known[1])

    async def register(self) -> None:
        """Register this runner on the channel, and hear which workers are ready elsewhere."""
        snapshot = await self.bus._call(
            "REGISTER",
            self.node_keys() + [self.bus.keys.ready],
            [self.bus.node, self.info(), self.bus._ttl_ms()],
        )
        for i in range(0, len(snapshot), 2):
            self.peer_ready(text(snapshot[i]), text(snapshot[i + 1]))

    async def leave(self) -> None:
        """Take this runner off the channel (its names given up already)."""
        await self.bus._call("LEAVE", self.node_keys() + [self.bus.keys.seq], [self.bus.node])

    async def control_loop(self) -> None:
        """Publish readiness, renew leases, and sweep the dead runners' leftovers."""
        loop = asyncio.get_running_loop()
        retry = Retry(self.bus, "renewing leases")
        next_renew = loop.time() + self.bus.lease_ttl / 3
        next_sweep = loop.time() + self.bus.lease_ttl / 2
        while True:
            try:
                while self.bus._news:
                    name, record = self.bus._news[0]
                    await self.bus._call(
                        "PUBLISH",
                        [self.bus.keys.ready, self.bus.keys.lease(name)],
                        [self.bus.node, name, record, self.bus.keys.prefix, NEWS_MAXLEN],
                    )
                    self.bus._news.pop(0)
                now = loop.time()
                if now >= next_renew:
                    await self.renew(now)
                    next_renew = now + self.bus.lease_ttl / 3
                if now >= next_sweep:
                    await self.sweep()
                    next_sweep = now + self.bus.lease_ttl / 2
            except CONNECTION_ERRORS as exc:
                await retry.failed(exc)
                continue
            retry.succeeded()
            self.bus._news_wanted.clear()
            try:
                async with asyncio.timeout(max(0.0, min(next_renew, next_sweep) - loop.time())):
                    await self.bus._news_wanted.wait()
            except TimeoutError:
                pass

    async def renew(self, started: float) -> None:
        names = list(self.bus._routes)
        keys = self.node_keys() + [self.bus.keys.lease(n) for n in names]
        values = [self.lease_value(self.bus._routes[n]) for n in names]
        reply = await self.bus._call(
            "RENEW", keys, [self.bus.node, self.bus._ttl_ms(), self.info(), *values]
        )
        self.bus._valid_until = started + self.bus.lease_ttl * 0.8
        self.bus._reader.wake()
        if int(reply[0]):
            logger.warning(
                "redis bus %r: Redis had forgotten this runner (presumed dead, or the server "
                "restarted); registered again",
                self.bus.node,
            )
            self.bus._stats["state_lost"] += 1
            await self.republish()
        for name, status in zip(names, reply[1:], strict=True):
            if int(status) == 0:
                self.lose(name)
            elif int(status) == 2:
                logger.warning(
                    "redis bus %r: the lease of %r had expired (Redis out of reach for over "
                    "%.0fs?); taken again",
                    self.bus.node,
                    name,
                    self.bus.lease_ttl,
                )

    async def republish(self) -> None:
        registry = self.bus._runner.registry if self.bus._runner is not None else None
        if registry is None:
            return
        for name in list(self.bus._routes):
            data = registry.get(name)
            if data is not None and data.node is None:
                self.on_local_ready(name, data)

    async def sweep(self) -> None:
        gone, expired = await self.bus._call(
            "SWEEP",
            [self.bus.keys.nodes, self.bus.keys.ready, self.bus.keys.seq, self.bus.keys.orphans],
            [
                self.bus.keys.prefix,
                self.bus.node,
                NEWS_MAXLEN,
                int(self.bus.orphan_ttl * 1000),
                self.bus._backstop_ms(),
            ],
        )
        for i in range(0, len(gone), 2):
            self.peer_gone(text(gone[i]), text(gone[i + 1]))
        for i in range(0, len(expired), 2):
            name, count = text(expired[i]), int(expired[i + 1])
            self.bus._count("expired", count)
            logger.warning(
                "redis bus %r: %d message(s) for %r dropped: no runner took the name within "
                "orphan_ttl (%.0fs)",
                self.bus.node,
                count,
                name,
                self.bus.orphan_ttl,
            )

    def lose(self, name: str) -> None:
        """Another runner holds ``name`` now: stop reading it and end the local endpoint."""
        endpoint = self.bus._routes.get(name)
        state = self.bus._reader.remove(self.bus.keys.stream(name))
        if state is not None:
            self.bus._tracker.forget(state)
        self.bus._stats["leases_lost"] += 1
        logger.error(
            "redis bus %r: another runner holds %r now (this one could not renew its lease "
            "in time); %r is ended here",
            self.bus.node,
            name,
            getattr(endpoint, "name", name),
        )
        if endpoint is not None:
            owner = endpoint.name
            self.bus._routes = {k: v for k, v in self.bus._routes.items() if k != name}
            if isinstance(endpoint, BaseWorker) and endpoint.accepting:
                endpoint.deliver(BusEndWorkerMessage(owner, owner, f"lost {name!r} on the bus"))

    async def recover(self, why: str) -> None:
        """Redis lost this channel's state (a restart without persistence): set it up again."""
        if self.bus._closed:
            raise asyncio.CancelledError
        self.bus._stats["state_lost"] += 1
        logger.error(
            "redis bus %r: %s: Redis lost this channel's state (a restart without "
            "persistence?); messages it held are lost; setting up again",
            self.bus.node,
            why,
        )
        retry = Retry(self.bus, "setting up again")
        while True:
            try:
                await self.register()
                for name, endpoint in list(self.bus._routes.items()):
                    reply = await self.bus._call(
                        "ACQUIRE",
                        [self.bus.keys.lease(name), self.bus.keys.stream(name)],
                        [
                            self.bus.node,
                            self.bus._ttl_ms(),
                            self.lease_value(endpoint),
                            self.bus.keys.orphans,
                            self.bus.keys.prefix,
                        ],
                    )
                    if int(reply[0]) == 0:
                        self.lose(name)
                break
            except CONNECTION_ERRORS as exc:
                await retry.failed(exc)
        self.bus._reader.restart()
        await self.republish()
