"""A proxy worker's inbound delivery: from the wire to the served worker.

A frame the session decoded is an event: a message goes through the inbound
filter rules and into the served worker's inbox; when that inbox is full, it
waits here, in order, unacknowledged (so the peer's window bounds what
waits), and a task delivers it when there is room. The peer's READY marks
its worker ready on this side; ours is announced when the served worker is.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from ._link_out import _Outbound
from .errors import QueueFull
from .flag import Flag
from .messages import BusMessage
from .registry import WorkerReadyData
from .rules import Drop, DropReason
from .session import (
    DuplicateDiscarded,
    FrameEvent,
    MessageReceived,
    MessageUndecodable,
    PongReceived,
    RemoteReady,
    Session,
)
from .worker import BaseWorker

__all__: list[str] = []

# One logger for the proxies, whichever module: ``proxy_core.proxy``.
logger = logging.getLogger("proxy_core.proxy")


class _Inbound(_Outbound):
    """The inbound delivery of a proxy worker: rules, the served worker's inbox, READY."""

    __slots__ = (
        "_deliverer",
        "_inbound",
        "_inbound_space",
        "_ready_sent",
        "_remote_ready_warned",
    )

    def _init_inbound(self) -> None:
        """Make the inbound delivery's state (the constructor calls it once)."""
        self._ready_sent = False  # our READY went out on this connection
        self._remote_ready_warned = False  # a READY for another worker was logged
        # Messages received but not yet taken by the local worker's inbox (it
        # was full), in order, with the session that numbered them. They are
        # left unacknowledged, so the peer's outbox (its window) bounds them.
        self._inbound: deque[tuple[Session, int, BusMessage]] | None = None  # made when needed
        self._inbound_space = Flag()
        self._deliverer: asyncio.Task[None] | None = None

    def _on_event(self, event: FrameEvent) -> None:
        if isinstance(event, MessageReceived):
            message = event.message
            decision = self.rules.inbound(message)
            if isinstance(decision, Drop):
                self._count_drop(self.stats.dropped_in, decision.reason, message)
                return
            self.stats.messages_in += 1
            # A targeted message is for the served worker (the rules checked);
            # an allow-listed broadcast (forward_broadcasts) too, never for
            # every worker on this bus.
            if self._inbound or not self._offer_local(message):
                session = self._session
                assert session is not None
                if self._inbound is None:
                    self._inbound = deque()
                self._inbound.append((session, event.seq, message))
                self._set_ack_ceiling()
                if self._deliverer is None or self._deliverer.done():
                    self._deliverer = self.create_task(
                        self._deliver_inbound(), name=f"{self.name}-deliver"
                    )
        elif isinstance(event, MessageUndecodable):
            self._count_drop(self.stats.dropped_in, event.reason, event.error)
        elif isinstance(event, DuplicateDiscarded):
            self.stats.duplicates += 1
        elif isinstance(event, RemoteReady):
            self._remote_ready(event.worker)
        elif isinstance(event, PongReceived):
            self.stats.heartbeat_rtt = event.rtt

    def _offer_local(self, message: BusMessage) -> bool:
        """Hand ``message`` to the served worker's inbox; ``False`` if it is full (``wait``)."""
        try:
            return self.bus.offer_to(self.rules.local_worker, message)
        except QueueFull:
            self._count_drop(self.stats.dropped_in, DropReason.QUEUE_FULL, message)
            return True

    def _set_ack_ceiling(self) -> None:
        """Acknowledge the open session only up to its first message not yet delivered."""
        session = self._session
        if session is None:
            return
        ceiling = None
        for owner, seq, _ in self._inbound or ():
            if owner is session:
                ceiling = seq - 1
                break
        session.ack_ceiling = ceiling

    async def _deliver_inbound(self) -> None:
        """Deliver what the served worker's full inbox could not take, in order, waiting for room.

        Each wait is bounded by that worker's ``put_timeout``: a worker stalled
        longer has the message dropped and counted by its inbox's policy.
        """
        inbound = self._inbound
        assert inbound is not None
        delivered = 0
        while inbound:
            _, _, message = inbound[0]
            try:
                await self.bus.send_to(self.rules.local_worker, message)
            except QueueFull:
                self._count_drop(self.stats.dropped_in, DropReason.QUEUE_FULL, message)
            inbound.popleft()
            delivered += 1
            self._inbound_space.set()
            self._set_ack_ceiling()
            session = self._session
            # Acknowledge what was delivered: in steps, and once all of it is.
            if session is not None and self._conn is not None:
                if not inbound or delivered % session.ack_every == 0:
                    self._flush_ack(session)

    async def _wait_for_inbound_space(self) -> None:
        """The peer sent more than our window without acknowledgements: stop reading a while."""
        while self._inbound is not None and len(self._inbound) >= self.max_unacked:
            self._inbound_space.clear()
            try:
                async with asyncio.timeout(self.heartbeat_timeout):
                    await self._inbound_space.wait()
            except TimeoutError:
                logger.warning(
                    "proxy %r: the served worker took nothing for %.1fs; %d message(s) wait",
                    self.name,
                    self.heartbeat_timeout,
                    len(self._inbound or ()),
                )

    async def _until_delivered(self) -> None:
        """Wait until every MSG received went to the served worker's inbox."""
        while self._inbound:
            self._inbound_space.clear()
            await self._inbound_space.wait()

    async def _until_local_idle(self) -> None:
        """Wait until the served worker (when in this process) and this proxy handled their inboxes.

        So a message the served worker sends while handling one from the peer
        has been given to this proxy, and sent, before the BYE.
        """
        worker = self.bus.endpoint(self.rules.local_worker)
        if isinstance(worker, BaseWorker):
            await worker.wait_idle()
        await self.wait_idle()

    def _remote_ready(self, worker: str) -> None:
        if worker != self.rules.remote_worker:
            if not self._remote_ready_warned:  # a hostile peer must not flood the log
                self._remote_ready_warned = True
                logger.warning(
                    "proxy %r: peer announced worker %r, but only %r is configured; ignored",
                    self.name,
                    worker,
                    self.rules.remote_worker,
                )
            self._count_drop(self.stats.dropped_in, DropReason.WRONG_SOURCE, f"READY {worker}")
            return
        self.registry.set_ready(worker, remote=True, via=self.name)

    async def _announce_ready(self, data: WorkerReadyData) -> None:
        session = self._session
        if session is not None and not self._ready_sent:
            self._ready_sent = True
            self._enqueue(session.ready_frame(data.name))
