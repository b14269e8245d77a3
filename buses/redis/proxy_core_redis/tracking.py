"""What a runner knows of the streams it reads: pure bookkeeping, no Redis, no asyncio.

An entry read from a stream is *delivered* when it is queued for local
endpoints, and *finished* once each of them has handled it (its handler
returned) or dropped it (its inbox's overflow policy). Only finished entries
are acknowledged (``XACK``), and a stream is trimmed only below its oldest
entry that is not finished, so nothing pending is ever trimmed away.

A stream read again from its pending list (after a cut connection, or a
takeover) returns entries this process may have delivered already: those at
or below :attr:`StreamState.delivered_upto` are skipped, so a cut never
delivers an entry twice.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .keys import EntryId, after

__all__ = ["AckTracker", "StreamState"]


@dataclass(eq=False)
class StreamState:
    """One stream this runner reads (a worker's, or its own node stream).

    Attributes:
        key: the stream's key.
        name: the worker name it carries messages for (``None``: the node stream).
        cursor: ``"0-0"``-like while re-reading our pending entries (after a
            start, a takeover or a cut), ``">"`` once reading new ones.
        delivered_upto: the highest entry delivered in this hold.
        redelivered_upto: entries up to this one were claimed from a dead
            runner: delivering them again may repeat what it had handled.
        outstanding: entries delivered, not finished, in order.
        held: decoded entries waiting for room in the endpoint's inbox, in order.
        direct: messages from this process go straight to the local endpoint
            (``False`` while a taken-over backlog must come first, in order).
    """

    key: str
    name: str | None
    cursor: str = "0-0"
    delivered_upto: EntryId = (0, 0)
    redelivered_upto: EntryId = (0, 0)
    outstanding: dict[EntryId, None] = field(default_factory=dict)
    held: deque[tuple[EntryId, Any]] = field(default_factory=deque)
    direct: bool = True

    def restart(self) -> None:
        """Read our pending entries again from the start (after a cut or a restart)."""
        self.cursor = "0-0"

    def trim_below(self) -> str:
        """The ``XTRIM MINID`` threshold: every entry below it is finished and acknowledged."""
        for oldest in self.outstanding:
            return f"{oldest[0]}-{oldest[1]}"
        for oldest, _ in self.held:
            return f"{oldest[0]}-{oldest[1]}"
        return after(self.delivered_upto)


@dataclass
class _Delivery:
    stream: StreamState
    entry: EntryId
    message: Any
    waiting: set[int]


class AckTracker:
    """Tracks delivered entries until every endpoint they went to is finished with them."""

    __slots__ = ("_by_message", "_acks")

    def __init__(self) -> None:
        self._by_message: dict[int, _Delivery] = {}
        # stream -> entry IDs finished and not yet acknowledged.
        self._acks: dict[StreamState, list[EntryId]] = {}

    def __len__(self) -> int:
        return len(self._by_message)

    def delivered(self, stream: StreamState, entry: EntryId, message: Any) -> None:
        """Record that ``entry`` (decoded as ``message``) is being handed to local endpoints.

        Call :meth:`expect` for each endpoint it is offered to, then
        :meth:`settle` once all were offered.
        """
        stream.outstanding[entry] = None
        if entry > stream.delivered_upto:
            stream.delivered_upto = entry
        self._by_message[id(message)] = _Delivery(stream, entry, message, set())

    def expect(self, endpoint: object, message: Any) -> None:
        """Record that ``message`` is offered to ``endpoint``, which will say when it is done."""
        self._by_message[id(message)].waiting.add(id(endpoint))

    def settle(self, message: Any) -> bool:
        """Finish ``message`` now if no endpoint took it; return whether an ack is due."""
        delivery = self._by_message.get(id(message))
        if delivery is None or delivery.message is not message or delivery.waiting:
            return False
        return self._finish(delivery)

    def finished(self, endpoint: object, message: Any) -> bool:
        """Record that ``endpoint`` is finished with ``message``; return whether an ack is due.

        A message this tracker did not deliver to ``endpoint`` (a local
        message, or one a worker passed on) is ignored.
        """
        delivery = self._by_message.get(id(message))
        if delivery is None or delivery.message is not message:
            return False
        waiting = delivery.waiting
        if id(endpoint) not in waiting:
            return False
        waiting.discard(id(endpoint))
        return not waiting and self._finish(delivery)

    def finish_entry(self, stream: StreamState, entry: EntryId) -> None:
        """Acknowledge an entry that was never delivered (undecodable, or dropped on arrival)."""
        if entry > stream.delivered_upto:
            stream.delivered_upto = entry
        self._acks.setdefault(stream, []).append(entry)

    def forget(self, stream: StreamState) -> None:
        """Drop everything about ``stream`` (its name was given up or lost)."""
        self._by_message = {k: d for k, d in self._by_message.items() if d.stream is not stream}
        self._acks.pop(stream, None)
        stream.outstanding.clear()
        stream.held.clear()

    def take_acks(self) -> dict[StreamState, list[EntryId]]:
        """Return the finished entries to acknowledge, by stream, and forget them."""
        acks, self._acks = self._acks, {}
        return acks

    def requeue(self, acks: dict[StreamState, list[EntryId]]) -> None:
        """Put back acknowledgements that could not be sent (they are sent again later)."""
        for stream, entries in acks.items():
            self._acks.setdefault(stream, [])[:0] = entries

    @property
    def has_acks(self) -> bool:
        """Whether some finished entries wait to be acknowledged."""
        return bool(self._acks)

    def _finish(self, delivery: _Delivery) -> bool:
        del self._by_message[id(delivery.message)]
        delivery.stream.outstanding.pop(delivery.entry, None)
        self._acks.setdefault(delivery.stream, []).append(delivery.entry)
        return True
