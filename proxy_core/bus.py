"""Buses: the interface a runner needs, and the in-process bus.

A bus routes messages between the endpoints (workers, proxies, the runner)
of one :class:`~proxy_core.runner.WorkerRunner`. :class:`BaseBus` is the
interface, and holds the routing of the endpoints in this process, which
every bus needs; :class:`InProcessBus` (plug-in name ``local``) is the
default, one bus per runner in one process. A bus shared by several
processes (``proxy-core-redis``'s ``RedisBus``) subclasses :class:`BaseBus`
and sends on, through its engine, what is for names held elsewhere.

Buses are plug-ins like transports and codecs: the entry-point group
``proxy_core.buses`` (see :func:`proxy_core.plugins.load_bus`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from .errors import ConfigurationError, QueueFull
from .messages import BusMessage

if TYPE_CHECKING:
    from .runner import WorkerRunner

__all__ = ["BaseBus", "Bus", "Endpoint", "InProcessBus"]

logger = logging.getLogger(__name__)


class Endpoint(Protocol):
    """Something attached to a bus: a worker, a proxy, or the runner.

    ``offer`` queues a message if that needs no wait and returns whether it
    did; if not, the bus awaits ``put``, which waits for room. ``deliver``
    never waits. An endpoint whose class sets ``inline_put = True`` (optional;
    a proxy does) is sent to by awaiting ``put`` at once, which may handle the
    message in the sender's task.
    """

    @property
    def name(self) -> str: ...

    def deliver(self, message: BusMessage) -> None: ...

    def offer(self, message: BusMessage) -> bool: ...

    async def put(self, message: BusMessage) -> None: ...


class BaseBus:
    """What a runner and its workers need from a bus.

    A targeted message goes to the one endpoint that claimed its target name
    (a worker claims its own name; a proxy also claims the remote worker's);
    a broadcast (target ``None``) goes to every endpoint except its source.
    Delivery never fans a targeted message out to everyone. Every worker's
    inbox is bounded: sending waits while the target's inbox is full (if its
    overflow policy is ``"wait"``), so a fast sender goes at the pace of a
    slow receiver. See ``docs/concepts.md``.

    This class routes between the endpoints of this process. A bus that spans
    processes overrides :meth:`start`, :meth:`aclose`, :meth:`claim`,
    :meth:`release` and the sending methods (calling these for the names
    held here); ``proxy_core.testing.BusContract`` holds it to the same
    semantics. One bus serves one runner (:meth:`bind`).

    Attributes:
        name: the plug-in name (entry-point group ``proxy_core.buses``).
        undeliverable: messages for a name that no endpoint claims, dropped.
    """

    name: ClassVar[str] = ""

    __slots__ = ("_endpoints", "_routes", "_runner", "undeliverable")

    def __init__(self) -> None:
        self._routes: dict[str, Endpoint] = {}
        self._endpoints: list[Endpoint] = []
        self._runner: WorkerRunner | None = None
        self.undeliverable = 0

    # ------------------------------------------------------------ lifecycle

    def bind(self, runner: WorkerRunner) -> None:
        """Become the bus of ``runner`` (called by the runner; once).

        Raises:
            ConfigurationError: the bus already serves another runner.
        """
        if self._runner is not None and self._runner is not runner:
            raise ConfigurationError(
                f"this {type(self).__name__} already serves runner {self._runner.name!r}; "
                "create one bus per runner"
            )
        self._runner = runner

    @property
    def runner(self) -> WorkerRunner | None:
        """The runner this bus serves, once bound."""
        return self._runner

    async def start(self) -> None:
        """Get ready to carry messages (connect, ...); idempotent. The runner calls it."""

    def stopping(self) -> None:
        """Stop handing messages over from beyond this process: the runner stops its workers.

        A shared bus leaves what it has not delivered with its engine, for the
        next holder of each name.
        """

    async def aclose(self) -> None:
        """Release what the bus holds; idempotent. The runner calls it after its workers stop."""

    def stats(self) -> dict[str, Any]:
        """Return the bus's counters as a plain dict (for logs and exporters)."""
        return {"bus": self.name, "undeliverable": self.undeliverable}

    # ------------------------------------------------------------ routing

    async def claim(self, endpoint: Endpoint, names: list[str]) -> None:
        """Claim ``names`` for ``endpoint`` beyond this process (no-op in process).

        Called by :meth:`attach` once the names are free here.

        Raises:
            ConfigurationError: another process holds one of the names.
        """

    async def release(self, endpoint: Endpoint, names: list[str]) -> None:
        """Give up ``names`` beyond this process (no-op in process). Called by :meth:`detach`."""

    async def attach(self, endpoint: Endpoint, names: Iterable[str]) -> None:
        """Attach ``endpoint`` and route the given names to it.

        Raises:
            ConfigurationError: a name is already routed to another endpoint
                (here, or, on a shared bus, in another process).
        """
        names = list(names)
        for name in names:
            owner = self._routes.get(name)
            if owner is not None and owner is not endpoint:
                raise ConfigurationError(
                    f"the name {name!r} is already taken on this bus by {owner.name!r}"
                )
        fresh = [name for name in names if name not in self._routes]
        if fresh:
            await self.claim(endpoint, fresh)
        self.listen(endpoint)
        for name in names:
            self._routes[name] = endpoint

    def listen(self, endpoint: Endpoint) -> None:
        """Attach ``endpoint`` for broadcasts only, in this process (the runner does)."""
        if endpoint not in self._endpoints:
            self._endpoints.append(endpoint)

    async def detach(self, endpoint: Endpoint) -> None:
        """Remove ``endpoint`` and every name routed to it."""
        names = [k for k, v in self._routes.items() if v is endpoint]
        self._routes = {k: v for k, v in self._routes.items() if v is not endpoint}
        if endpoint in self._endpoints:
            self._endpoints.remove(endpoint)
        if names:
            await self.release(endpoint, names)

    def names(self) -> list[str]:
        """Return the names routed in this process, sorted."""
        return sorted(self._routes)

    def endpoint(self, name: str) -> Endpoint | None:
        """Return the endpoint in this process that claims ``name``, or ``None``."""
        return self._routes.get(name)

    # ------------------------------------------------------------ delivery

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

        Returns ``False`` when it cannot be queued without a wait (that inbox
        is full and its policy is ``"wait"``, or, on a shared bus, the name is
        held in another process): nothing was queued or dropped; try again,
        or :meth:`send_to`. A name nobody claims counts as undeliverable and
        returns ``True``.

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
        if getattr(endpoint, "inline_put", False) or not endpoint.offer(message):
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
            # The hot path queues without a wait (or, for a proxy, writes in this task).
            if getattr(endpoint, "inline_put", False) or not endpoint.offer(message):
                await endpoint.put(message)
            return
        await self.broadcast_local(message)

    async def broadcast_local(self, message: BusMessage) -> None:
        """Deliver ``message`` to every endpoint in this process except its source.

        Raises:
            QueueFull: a receiving inbox is full and its policy is ``"error"``
                (the others still get the broadcast).
        """
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


class InProcessBus(BaseBus):
    """The default bus: the endpoints of one runner, in one process (plug-in name ``local``)."""

    name: ClassVar[str] = "local"

    __slots__ = ()


#: The name this class had before buses became plug-ins; the in-process bus.
Bus = InProcessBus
