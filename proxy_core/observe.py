"""The observability hook: which proxies are alive, and what they have counted.

Exporters (Prometheus, OpenTelemetry, a log line every minute) work by pull:
when scraped, they read :meth:`stats_snapshot` of every live proxy. This
module tells them which proxies those are, and when one starts or stops, so
that nothing runs per message:

- :func:`live_proxies` returns the proxy workers running now (client and
  server, whatever the transport);
- :func:`observe` subscribes ``callback(event, proxy)`` to the lifecycle
  events ``"started"``, ``"connected"``, ``"disconnected"`` and ``"stopped"``;
- :class:`ProxySnapshot` is what ``proxy.stats_snapshot()`` returns: the
  counters of :class:`~proxy_core.ProxyStats` plus the gauges read at that
  moment (connected, queue depths).

The module imports no event loop library, and callbacks are plain functions
called synchronously in the proxy's event loop; an exception in one is logged
on the ``proxy_core.observe`` logger and never reaches the proxy. See
``docs/observability.md``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias

__all__ = [
    "ObserveEvent",
    "ObservedProxy",
    "Observer",
    "ProxySide",
    "ProxySnapshot",
    "Unsubscribe",
    "live_proxies",
    "observe",
]

logger = logging.getLogger(__name__)

#: A proxy's lifecycle event, as passed to an :data:`Observer`.
ObserveEvent: TypeAlias = Literal["started", "connected", "disconnected", "stopped"]

#: Which end of a link a proxy is.
ProxySide: TypeAlias = Literal["client", "server"]


@dataclass(frozen=True)
class ProxySnapshot:
    """One proxy's counters and gauges, read at one moment.

    Counters only grow over the proxy's life (across all its sessions);
    gauges are the state now.

    Attributes:
        name: the proxy worker's name (all servers of one ``serve_proxy``
            share it: one proxy per connection).
        side: ``"client"`` or ``"server"``.
        session_id: the session open or held for a resume, if any.
        codec: the codec of that session, if any.
        connected: gauge: a session is open on a live connection.
        messages_out, messages_in: counters: messages that crossed, each way.
        bytes_out, bytes_in: counters: frame bytes written and read.
        dropped_out, dropped_in: counters: dropped messages by drop reason.
        duplicates: counter: received messages discarded as already delivered.
        replayed: counter: frames sent again on a resumed session.
        reconnects: counter: connections after the first (clients), or
            connections that took a lost session over (servers).
        resumes: counter: sessions resumed on a new connection.
        batches_out, batches_in: counters: BATCH frames written and read.
        sessions: counter: sessions opened (a resume counts again).
        heartbeat_rtt: gauge: the last PING round trip in seconds, or ``None``.
        inbox_depth: gauge: messages waiting in the proxy's own inbox (the
            local worker's way out).
        inbox_max: the inbox's bound.
        inbox_dropped: counters: messages its inbox dropped, by reason (see
            :class:`~proxy_core.QueueStats`).
        outbox_unacked: gauge: messages sent and not acknowledged yet (kept
            for a resend).
        outbox_max: the outbox's bound (``max_unacked``).
        write_queue: gauge: frames queued for the writer, not yet written.
    """

    name: str
    side: ProxySide
    session_id: str | None
    codec: str | None
    connected: bool
    messages_out: int
    messages_in: int
    bytes_out: int
    bytes_in: int
    dropped_out: dict[str, int]
    dropped_in: dict[str, int]
    duplicates: int
    replayed: int
    reconnects: int
    resumes: int
    batches_out: int
    batches_in: int
    sessions: int
    heartbeat_rtt: float | None
    inbox_depth: int
    inbox_max: int
    inbox_dropped: dict[str, int]
    outbox_unacked: int
    outbox_max: int
    write_queue: int

    def as_dict(self) -> dict[str, Any]:
        """Return the snapshot as a plain dict (for logs and JSON)."""
        return dataclasses.asdict(self)


class ObservedProxy(Protocol):
    """What an observer may read from a proxy (``ProxyClient`` or ``ProxyServer``)."""

    @property
    def name(self) -> str:
        """The proxy worker's name."""
        ...

    @property
    def side(self) -> ProxySide:
        """``"client"`` or ``"server"``."""
        ...

    @property
    def connected(self) -> bool:
        """Whether a session is open now, on a live connection."""
        ...

    @property
    def session_id(self) -> str | None:
        """The id of the open session, if any."""
        ...

    def stats_snapshot(self) -> ProxySnapshot:
        """Return the counters and gauges now."""
        ...


#: ``callback(event, proxy)``: a plain function, called in the proxy's event loop.
Observer: TypeAlias = Callable[[ObserveEvent, ObservedProxy], None]

#: Cancels a subscription; calling it again does nothing.
Unsubscribe: TypeAlias = Callable[[], None]

# Exporters read from their own thread (prometheus_client's HTTP server, the
# OpenTelemetry reader), proxies change the set from the event loop's thread.
_lock = threading.Lock()
_live: weakref.WeakSet[ObservedProxy] = weakref.WeakSet()
# Replaced, never mutated, so that _emit iterates without holding the lock.
_observers: tuple[tuple[object, Observer], ...] = ()


def observe(callback: Observer) -> Unsubscribe:
    """Call ``callback(event, proxy)`` at each proxy lifecycle event; return the unsubscribe.

    Events: ``"started"`` (the proxy worker started: it is in
    :func:`live_proxies` from now on), ``"connected"`` (a session is in place
    on a new connection, new or resumed; before the ``on_connected`` events),
    ``"disconnected"`` (that connection ended; the session may be held for a
    resume) and ``"stopped"`` (the worker stopped: its counters are final and
    it has left :func:`live_proxies`). Nothing is called per message.

    ``callback`` runs synchronously in the proxy's event loop, so it must be
    quick and must not block; an exception it raises is logged and ignored.
    Proxies that started before the subscription are in :func:`live_proxies`.

    Args:
        callback: a plain (not ``async``) function of ``(event, proxy)``.

    Returns:
        A function that cancels this subscription (idempotent).
    """
    global _observers
    token = object()
    with _lock:
        _observers = (*_observers, (token, callback))

    def unsubscribe() -> None:
        global _observers
        with _lock:
            _observers = tuple(entry for entry in _observers if entry[0] is not token)

    return unsubscribe


def live_proxies() -> list[ObservedProxy]:
    """Return the proxy workers that have started and not stopped yet, in this process."""
    with _lock:
        return list(_live)


def _emit(event: ObserveEvent, proxy: ObservedProxy) -> None:
    """Record ``event`` of ``proxy`` and tell the observers (called by the proxies)."""
    with _lock:
        if event == "started":
            _live.add(proxy)
        elif event == "stopped":
            _live.discard(proxy)
        observers = _observers
    for _, callback in observers:
        try:
            callback(event, proxy)
        except Exception:
            logger.exception("observer %r failed on %s of proxy %r", callback, event, proxy.name)
