"""The in-process bus: delivers each message to its target, broadcasts to everyone else."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

from .errors import ConfigurationError
from .messages import BusMessage

__all__ = ["Bus", "Endpoint"]

logger = logging.getLogger(__name__)


class Endpoint(Protocol):
    """Something attached to a bus: a worker, a proxy, or the runner."""

    @property
    def name(self) -> str: ...

    def deliver(self, message: BusMessage) -> None: ...


class Bus:
    """An in-process bus that routes by target.

    A targeted message goes to the one endpoint that claimed its target name
    (a worker claims its own name; a proxy also claims the remote worker's);
    a broadcast (target ``None``) goes to every endpoint except its source.
    Delivery never fans a targeted message out to everyone.
    """

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
        """Deliver ``message`` to the endpoint routed as ``name`` only, whatever its target."""
        endpoint = self._routes.get(name)
        if endpoint is None:
            self.undeliverable += 1
            return
        endpoint.deliver(message)

    async def send(self, message: BusMessage) -> None:
        """Deliver ``message``: to its target, or to every other endpoint if it has none."""
        target = message.target
        if target is not None:
            endpoint = self._routes.get(target)
            if endpoint is None:
                self.undeliverable += 1
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug("no worker named %r on this bus; dropped %r", target, message)
                return
            endpoint.deliver(message)
            return
        source = message.source
        for endpoint in self._endpoints:
            if endpoint.name != source:
                endpoint.deliver(message)
