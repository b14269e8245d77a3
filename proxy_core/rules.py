"""The filter rules: which messages may cross a proxy, in each direction.

Pure functions of a message and a :class:`FilterRules` configuration; no I/O,
no asyncio. A decision is a return value (:data:`FORWARD` or a :class:`Drop`
with a reason), never an exception. ``docs/filter-rules.md`` states the rules
with examples; ``tests/test_rules.py`` checks each one with hypothesis.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from .messages import LIFECYCLE_MESSAGES, BusLocalMessage, BusMessage

__all__ = ["FORWARD", "Decision", "Drop", "DropReason", "FilterRules", "Forward"]


class DropReason(StrEnum):
    """Why a message did not cross. The value is the name used in stats and logs."""

    LOCAL = "local"
    """A :class:`BusLocalMessage`: never crosses."""
    BROADCAST = "broadcast"
    """No target: broadcasts stay on their bus."""
    WRONG_TARGET = "wrong_target"
    """Targeted at a worker the proxy does not serve."""
    WRONG_SOURCE = "wrong_source"
    """Sent by a worker the proxy does not serve (outbound leak, inbound spoof)."""
    NOT_ALLOWED = "not_allowed"
    """Its type is not in ``forward_messages`` and is not a lifecycle message."""
    UNKNOWN_TYPE = "unknown_type"
    """Inbound bytes whose type tag is not registered."""
    MALFORMED = "malformed"
    """Inbound bytes that do not decode."""
    NOT_CONNECTED = "not_connected"
    """Outbound while no session is open."""
    TOO_LARGE = "too_large"
    """Outbound message whose encoding exceeds the peer's ``max_message_bytes``."""
    ENCODE_FAILED = "encode_failed"
    """Outbound message with a value the codec cannot encode."""
    DUPLICATE = "duplicate"
    """Inbound message whose sequence number was already delivered."""
    SESSION_LOST = "session_lost"
    """Outbound message sent but never acknowledged by a session that was lost."""
    QUEUE_FULL = "queue_full"
    """Inbound message refused by the served worker's full inbox (its policy is ``error``)."""


@dataclass(frozen=True, slots=True)
class Forward:
    """Decision: the message crosses."""


@dataclass(frozen=True, slots=True)
class Drop:
    """Decision: the message stays where it is, for ``reason``."""

    reason: DropReason


Decision = Forward | Drop

FORWARD: Final = Forward()
_DROPS: Final = {reason: Drop(reason) for reason in DropReason}


@dataclass(frozen=True, slots=True)
class FilterRules:
    """The configuration of one proxy, and the rules applied with it.

    Attributes:
        local_worker: the worker on this side that the proxy serves.
        remote_worker: the worker on the other side.
        forward_messages: allow-listed message types (``isinstance`` match),
            applied in both directions.
        forward_broadcasts: opt-in: let allow-listed broadcasts from the local
            worker cross (and accept them from the remote worker).
    """

    local_worker: str
    remote_worker: str
    forward_messages: tuple[type[BusMessage], ...] = ()
    forward_broadcasts: bool = False

    def outbound(self, message: BusMessage) -> Decision:
        """Decide whether a message seen on the local bus may go to the wire."""
        return self._decide(message, source=self.local_worker, target=self.remote_worker)

    def inbound(self, message: BusMessage) -> Decision:
        """Decide whether a message decoded from the wire may enter the local bus.

        Rule 1 (only registered types decode) is enforced by the codec; a
        failure there is counted as :attr:`DropReason.UNKNOWN_TYPE`.
        """
        return self._decide(message, source=self.remote_worker, target=self.local_worker)

    def _decide(self, message: BusMessage, *, source: str, target: str) -> Decision:
        # The same rules hold both ways with the two names swapped; the order of
        # the checks fixes which reason a message that breaks several is counted under.
        if isinstance(message, BusLocalMessage):
            return _DROPS[DropReason.LOCAL]
        if message.target is None:
            if not (self.forward_broadcasts and isinstance(message, self.forward_messages)):
                return _DROPS[DropReason.BROADCAST]
        elif message.target != target:
            return _DROPS[DropReason.WRONG_TARGET]
        if message.source != source:
            return _DROPS[DropReason.WRONG_SOURCE]
        if message.target is not None and isinstance(message, LIFECYCLE_MESSAGES):
            return FORWARD
        if not isinstance(message, self.forward_messages):
            return _DROPS[DropReason.NOT_ALLOWED]
        return FORWARD
