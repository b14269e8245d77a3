"""The in-process bus: delivers each message to its target, broadcasts to everyone else."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

from .errors import ConfigurationError, QueueFull
from .messages import BusMessage

__all__ = ["Bus", "Endpoint"]

logger = logging.getLogger(__name__)


class Endpoint(Protocol):
    """Something attached to a bus: a worker, a proxy, or the runner.

    ``offer`` queues a message if that needs no wait and returns whether it
    did; if not, the bus awaits ``put``, which waits for room. ``deliver``
    never waits.
    """

    @property
    def name(self) -> str: ...

    def deliver(self, message: BusMessage) -> None: ...

    def offer(self, message: BusMessage) -> bool: ...

    async def put(self, message: BusMessage) -> None: ...


class Bus:
    """An in-process bus that routes by target.

    A targeted message goes to the one endpoint that claimed its target name
    (a worker claims its own name; a proxy also claims the remote worker's);
    a broadcast (target ``None``) goes to every endpoint except its source.
    Delivery never fans a targeted message out to everyone.

    Every worker's inbox is bounded: :meth:`send` waits while the target's
    inbox is full (if its overflow policy is ``"wait"``), so a fast sender
    goes at the pace of a slow receiver. See ``docs/concepts.md``.
    """

    __slots__ = ("_endpoints", "_routes", "undeliverable")

    def __init__(self) -> None:
        self._routes: dict[str, Endpoint] = {}
        self._endpoints: list[Endpoint] = []
        self.undeliverable = 0

    def attach(self, endpoint: Endpoint, names: Iterable[str]) -> None:
        """Attach ``endpoint`` and route the given names to it.

        Raises:
            ConfigurationError: a name is already routed to another endpoint.
        """
        names = list(names)
        for name in names:
            owner = self._routes.get(name)
            if owner is not None and owner is not endpoint:
                raise ConfigurationError(
                    f"the name {name!r} is already taken on this bus by {owner.name!r}"
                )
        for name in names:
            self._routes[name] = endpoint
        if endpoint not in self._endpoints:
            self._endpoints.append(endpoint)

    def detach(self, endpoint: Endpoint) -> None:
        """Remove ``endpoint`` and every name routed to it."""
        self._routes = {k: v for k, v in self._routes.items() if v is not endpoint}
        if endpoint in self._endpoints:
            self._endpoints.remove(endpoint)

    def names(self) -> list[str]:
        """Return the routed names, sorted."""
        return sorted(self._routes)

    def deliver_to(self, name: str, message: BusMessage) -> None:
        """Deliver ``message`` to the endpoint routed as ``name`` only, whatever its target.

        Never waits: if that endpoint's inbox is full, its overflow policy
        applies, and under ``"wait"`` the message is dropped (counted as
        ``full`` in its ``queue_stats``). :meth:`send_to` waits instead.

        Raises:
            QueueFull: the inbox is full and its policy is ``"error"``.
        """
        endpoint = self._routes.get(name)
        if endpoint is None:
            self.undeliverable += 1
            return
        endpoint.deliver(message)

    def offer_to(self, name: str, message: BusMessage) -> bool:
        """Queue ``message`` for the endpoint routed as ``name`` only, without waiting.

        Returns ``False`` only when that inbox is full and its policy is
        ``"wait"`` (nothing was queued or dropped: try again, or :meth:`send_to`).
        A name nobody claims counts as undeliverable and returns ``True``.

        Raises:
            QueueFull: the inbox is full and its policy is ``"error"``.
        """
        endpoint = self._routes.get(name)
        if endpoint is None:
            self.undeliverable += 1
            return True
        return endpoint.offer(message)

    async def send_to(self, name: str, message: BusMessage) -> None:
        """Deliver ``message`` to the endpoint routed as ``name`` only, waiting for room.

        Raises:
            QueueFull: the inbox is full and its policy is ``"error"``.
        """
        endpoint = self._routes.get(name)
        if endpoint is None:
            self.undeliverable += 1
            return
        if not endpoint.offer(message):
            await endpoint.put(message)

    async def send(self, message: BusMessage) -> None:
        """Deliver ``message``: to its target, or to every other endpoint if it has none.

        Waits while a receiving inbox is full and its policy is ``"wait"``
        (each wait bounded by that worker's ``put_timeout``).

        Raises:
            QueueFull: a receiving inbox is full and its policy is ``"error"``
                (a broadcast still reaches the other endpoints).
        """
        target = message.target
        if target is not None:
            endpoint = self._routes.get(target)
            if endpoint is None:
                self.undeliverable += 1
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug("no worker named %r on this bus; dropped %r", target, message)
                return
            if not endpoint.offer(message):  # the hot path queues without a wait
                await endpoint.put(message)
            return
        source = message.source
        refused: QueueFull | None = None
        # A copy: endpoints may come and go while we wait for one.
        for endpoint in tuple(self._endpoints):
            if endpoint.name == source:
                continue
            try:
                if not endpoint.offer(message):
                    await endpoint.put(message)
            except QueueFull as exc:  # the others still get the broadcast
                refused = refused or exc
        if refused is not None:
            raise refused
