"""Claiming and releasing worker names: which runner's stream reader a worker's messages reach.

A part of :class:`~proxy_core_redis.bus.RedisBus`. An endpoint takes each of
its names on the channel with a lease (``ACQUIRE``), waiting up to
``claim_timeout`` for a name another runner holds; from then on the name's
stream is read by this runner, first what its last holder left unfinished
(delivered again). Releasing a name (``RELEASE``) stops reading its stream and
leaves what is left in it to the next holder. Renewing the leases, and losing
them, is :mod:`.membership`'s part.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from proxy_core.bus import Endpoint
from proxy_core.errors import ConfigurationError
from proxy_core.worker import BaseWorker

from .keys import parse_id
from .membership import NEWS_MAXLEN
from .support import CONNECTION_ERRORS, RedisBusError, text
from .tracking import StreamState

if TYPE_CHECKING:
    from .bus import RedisBus

__all__ = ["Claims"]

logger = logging.getLogger("proxy_core_redis")


class Claims:
    """Takes names on the channel for ``bus``'s endpoints, and gives them up.

    Args:
        bus: the bus it claims names for.
    """

    def __init__(self, bus: RedisBus) -> None:
        self.bus = bus
        self.freed = asyncio.Event()  # set on news that a runner gave a name up

    async def claim(self, endpoint: Endpoint, names: list[str]) -> None:
        """Take ``names`` for ``endpoint`` and start reading their streams.

        Raises:
            ConfigurationError: a live runner holds one of the names (the message names it).
        """
        bus = self.bus
        reply = await self._acquire(names, [bus._members.lease_value(endpoint) for _ in names])
        if isinstance(endpoint, BaseWorker):
            endpoint._on_finished(bus._acker.finished)
        for name, (claimed, last, backlog) in zip(names, reply[1:], strict=True):
            state = StreamState(bus.keys.stream(name), name)
            if int(claimed):
                state.redelivered_upto = parse_id(last)
                bus._stats["claimed"] += int(claimed)
                logger.warning(
                    "redis bus %r: took %r over with %d message(s) its last holder had not "
                    "finished; they are delivered again",
                    bus.node,
                    name,
                    int(claimed),
                )
            # Messages from this runner go straight to a local endpoint, unless a
            # backlog (or our own queued writes) must come first: then, for this
            # hold, through the stream, so that order is kept.
            state.direct = int(backlog) == 0 and not bus._writer.pending(name)
            bus._reader.add(state)

    async def _acquire(self, names: list[str], values: list[str]) -> Any:
        """Run ``ACQUIRE`` until it takes every name, waiting for a held one up to the timeout."""
        bus = self.bus
        keys: list[str] = []
        for name in names:
            keys += [bus.keys.lease(name), bus.keys.stream(name)]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + bus.claim_timeout
        while True:
            reply = await bus._call(
                "ACQUIRE",
                keys,
                [bus.node, bus._ttl_ms(), *values, bus.keys.orphans, bus.keys.prefix],
                retry_as="claiming names",  # idempotent for this runner
            )
            if int(reply[0]) == 1:
                return reply
            name = names[int(reply[1]) - 1]
            holder = text(reply[2]).split("\t")
            left = deadline - loop.time()
            if left > 0:
                # Wait for that lease to run out, or for news that a name was
                # given up, whichever comes first; then try again.
                ttl = await bus._redis.pttl(bus.keys.lease(name))
                self.freed.clear()
                try:
                    async with asyncio.timeout(min(left, max(ttl, 10) / 1000)):
                        await self.freed.wait()
                except TimeoutError:
                    pass
                continue
            raise ConfigurationError(
                f"the name {name!r} is held on channel {bus.channel!r} by runner "
                f"{holder[1] if len(holder) > 1 else '?'!r} ({holder[0]}); it is free once "
                f"that runner stops, or {bus.lease_ttl:g}s after its process died"
            )

    async def release(self, endpoint: Endpoint, names: list[str]) -> None:
        """Give ``names`` up, after acknowledging what ``endpoint`` finished."""
        bus = self.bus
        if isinstance(endpoint, BaseWorker) and endpoint not in bus._routes.values():
            endpoint._on_finished(None)
        if not bus._started or bus._closed:
            return
        try:
            await bus._acker.flush()
        except (RedisBusError, *CONNECTION_ERRORS) as exc:  # type: ignore[misc]
            logger.warning("redis bus %r: acknowledgements not sent at release: %s", bus.node, exc)
        for name in names:
            await self.release_one(name)

    async def release_one(self, name: str) -> None:
        """Stop reading the stream of ``name`` and give the name up; a failure is logged."""
        bus = self.bus
        state = bus._reader.remove(bus.keys.stream(name))
        if state is not None:
            bus._tracker.forget(state)
        bus._remote_ready.pop(name, None)
        try:
            await bus._call(
                "RELEASE",
                [bus.keys.lease(name), bus.keys.stream(name), bus.keys.ready, bus.keys.orphans],
                [bus.node, name, bus._backstop_ms(), bus.keys.prefix, NEWS_MAXLEN],
            )
        except (RedisBusError, *CONNECTION_ERRORS) as exc:  # type: ignore[misc]
            logger.warning(
                "redis bus %r: could not give %r up (%s); it is free in %.0fs",
                bus.node,
                name,
                exc,
                bus.lease_ttl,
            )

    async def release_all(self) -> None:
        """Give every name this runner holds up (at close)."""
        bus = self.bus
        for name in list(bus._routes):
            bus._routes.pop(name, None)
            await self.release_one(name)
