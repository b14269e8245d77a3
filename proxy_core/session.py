"""The sans-I/O session: sequence numbers, acks and heartbeats (the handshake before it
is in ``_handshake.py``, its functions re-exported here).

Nothing here awaits or touches a socket. The proxy feeds received bytes and the
clock in, and writes out what the session returns, as in the websockets and
h11 protocol objects. See ``docs/protocol.md`` for the rules implemented here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from ._handshake import MIN_MESSAGE_BYTES as MIN_MESSAGE_BYTES
from ._handshake import client_accept as client_accept
from ._handshake import client_hello as client_hello
from ._handshake import common_features as common_features
from ._handshake import new_session_id as new_session_id
from ._handshake import server_negotiate as server_negotiate
from .codecs.base import Codec
from .errors import (
    CodecError,
    MessageTooLarge,
    ProtocolError,
    UnknownMessageType,
)
from .messages import BusMessage, check_fields
from .protocol import (
    Ack,
    Batch,
    Bye,
    Envelope,
    Msg,
    Ping,
    Pong,
    Ready,
)
from .rules import DropReason
from .transport import truncate_reason

__all__ = [
    "DEFAULT_MAX_UNACKED_BYTES",
    "BatchReceived",
    "ByeReceived",
    "DuplicateDiscarded",
    "Event",
    "MessageReceived",
    "MessageUndecodable",
    "PongReceived",
    "RemoteReady",
    "Session",
    "client_accept",
    "client_hello",
    "common_features",
    "server_negotiate",
]


#: The default bound, in bytes of encoded frames, of the outbox of messages the
#: peer has not acknowledged yet (``max_unacked_bytes``): with ``max_unacked``
#: alone, 4096 messages of 16 KiB would hold 64 MiB per session.
DEFAULT_MAX_UNACKED_BYTES = 4 * 1024 * 1024


# ---------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A bus message arrived in order."""

    seq: int
    message: BusMessage


@dataclass(frozen=True, slots=True)
class MessageUndecodable:
    """A frame did not decode; ``seq`` is set when it was a MSG whose number was readable."""

    seq: int | None
    reason: DropReason
    error: str


@dataclass(frozen=True, slots=True)
class DuplicateDiscarded:
    """A MSG with a sequence number already delivered."""

    seq: int


@dataclass(frozen=True, slots=True)
class RemoteReady:
    """The peer announced that its served worker is ready."""

    worker: str


@dataclass(frozen=True, slots=True)
class PongReceived:
    """The answer to one of our PINGs; ``rtt`` in seconds."""

    nonce: int
    rtt: float


@dataclass(frozen=True, slots=True)
class ByeReceived:
    """The peer is closing the session on purpose."""

    code: int
    reason: str


#: What one frame in a BATCH can make happen.
FrameEvent = (
    MessageReceived
    | MessageUndecodable
    | DuplicateDiscarded
    | RemoteReady
    | PongReceived
    | ByeReceived
)


@dataclass(frozen=True, slots=True)
class BatchReceived:
    """A BATCH arrived: what its frames made happen, in order."""

    events: tuple[FrameEvent, ...]


Event = FrameEvent | BatchReceived


# ---------------------------------------------------------------- session


class Session:
    """One open session, after the handshake: numbering, acks, outbox, liveness.

    Args:
        codec: the negotiated codec.
        session_id: the id from WELCOME.
        peer_max_message_bytes: the largest frame the peer accepts.
        max_unacked: the outbox size; :attr:`outbox_full` tells the sender to wait.
        max_unacked_bytes: the outbox's size in bytes of encoded frames: the
            outbox is also full once it holds this many (a lone frame larger
            than it still goes, when the outbox is empty).
        ack_every: acknowledge at once after this many unacknowledged messages.
        ack_delay: otherwise acknowledge this long after the first one.
        batch: whether the handshake agreed on BATCH frames (see
            :meth:`batch_frame`); received batches are accepted either way.
        now: the current time (any monotonic clock, in seconds).
    """

    def __init__(
        self,
        codec: Codec,
        *,
        session_id: str,
        peer_max_message_bytes: int,
        max_unacked: int = 4096,
        max_unacked_bytes: int = DEFAULT_MAX_UNACKED_BYTES,
        ack_every: int = 32,
        ack_delay: float = 0.05,
        batch: bool = False,
        now: float,
    ) -> None:
        self.codec = codec
        self.batch = batch and codec.supports_batch
        self.session_id = session_id
        self.peer_max_message_bytes = peer_max_message_bytes
        self.max_unacked = max_unacked
        self.max_unacked_bytes = max_unacked_bytes
        self.ack_every = ack_every
        self.ack_delay = ack_delay
        self.last_sent_seq = 0
        self.last_received_seq = 0
        self._last_acked_by_us = 0
        self._first_unacked_at: float | None = None
        self._outbox: deque[tuple[int, bytes]] = deque()
        self._outbox_bytes = 0
        self._pending: list[bytes] = []
        self._pings: dict[int, float] = {}
        self._next_nonce = 1
        self._in_batch = False
        #: Acknowledge no further than this (messages received but not yet
        #: delivered locally stay unacknowledged, so the peer's window holds).
        self.ack_ceiling: int | None = None
        self.last_received_at = now

    # -------------------------------------------------------- sending

    def send_message(self, message: BusMessage) -> bytes:
        """Number and encode ``message``, keep it until acknowledged, return the frame.

        The sequence number is spent only when the message is accepted.

        Raises:
            CodecError: a value cannot be encoded.
            MessageTooLarge: the frame exceeds the peer's limit.
        """
        seq = self.last_sent_seq + 1
        data = self.codec.encode(Msg(seq, message))
        if len(data) > self.peer_max_message_bytes:
            raise MessageTooLarge(len(data), self.peer_max_message_bytes)
        self.last_sent_seq = seq
        self._outbox.append((seq, data))
        self._outbox_bytes += len(data)
        return data

    @property
    def outbox_full(self) -> bool:
        """Whether ``max_unacked`` messages, or ``max_unacked_bytes``, wait for the peer's ACK."""
        return len(self._outbox) >= self.max_unacked or self._outbox_bytes >= self.max_unacked_bytes

    @property
    def unacked(self) -> int:
        """How many sent messages the peer has not acknowledged yet."""
        return len(self._outbox)

    @property
    def unacked_bytes(self) -> int:
        """The bytes of the encoded frames the peer has not acknowledged yet."""
        return self._outbox_bytes

    # -------------------------------------------------------- resuming

    def resume(self, peer_received: int, now: float) -> list[bytes]:
        """Take the session over to a new connection; return the frames to send again.

        ``peer_received`` is the last message number the peer received (from
        the resume handshake): everything up to it is acknowledged, and the
        rest of the outbox is returned, in order, to be written first on the
        new connection. The peer discards any it already has by number. The
        handshake also told the peer what we received, so no ACK is owed.

        Raises:
            ProtocolError: the peer claims messages we never sent, or claims
                fewer than it had already acknowledged (they are gone).
        """
        if peer_received > self.last_sent_seq:
            raise ProtocolError(
                f"the peer received message {peer_received}, but only "
                f"{self.last_sent_seq} were sent"
            )
        first_kept = self._outbox[0][0] if self._outbox else self.last_sent_seq + 1
        if peer_received < first_kept - 1:
            raise ProtocolError(
                f"the peer received up to message {peer_received}, but had "
                f"acknowledged up to {first_kept - 1}"
            )
        self._on_ack(peer_received)
        self._last_acked_by_us = self.last_received_seq
        self._first_unacked_at = None
        self._pending.clear()
        self._pings.clear()
        self.last_received_at = now
        return [data for _, data in self._outbox]

    def batch_frame(self, frames: Sequence[bytes]) -> bytes:
        """Return one BATCH frame carrying ``frames`` (two or more, from this session).

        Only when :attr:`batch` is set. Its size is at most
        :func:`~proxy_core.codecs.base.batch_size_bound` of the frames'.
        """
        return self.codec.encode_batch(frames)

    def ready_frame(self, worker: str) -> bytes:
        """Return a READY frame for ``worker``."""
        return self.codec.encode(Ready(worker))

    def bye_frame(self, code: int, reason: str) -> bytes:
        """Return a BYE frame (the reason cut by :func:`~proxy_core.transport.truncate_reason`)."""
        return self.codec.encode(Bye(code, truncate_reason(reason)))

    def ping_frame(self, now: float) -> bytes:
        """Return a PING frame and remember when it left."""
        nonce = self._next_nonce
        self._next_nonce += 1
        self._pings[nonce] = now
        if len(self._pings) > 16:  # unanswered pings: keep the newest few only
            del self._pings[min(self._pings)]
        return self.codec.encode(Ping(nonce))

    def ack_due(self, now: float) -> bool:
        """Whether an ACK should go out now (received messages waited ``ack_delay``)."""
        return self._first_unacked_at is not None and now - self._first_unacked_at >= self.ack_delay

    def ack_frame(self) -> bytes | None:
        """Return an ACK for everything received so far (up to :attr:`ack_ceiling`).

        ``None`` if nothing is owed.
        """
        upto = self.last_received_seq
        if self.ack_ceiling is not None and self.ack_ceiling < upto:
            upto = self.ack_ceiling
        if upto <= self._last_acked_by_us:
            return None
        self._last_acked_by_us = upto
        self._first_unacked_at = None if upto == self.last_received_seq else self._first_unacked_at
        return self.codec.encode(Ack(upto))

    def data_to_send(self) -> list[bytes]:
        """Return (and forget) the control frames the session wants sent (ACK, PONG)."""
        pending, self._pending = self._pending, []
        return pending

    def is_dead(self, now: float, timeout: float) -> bool:
        """Whether nothing at all has arrived for ``timeout`` seconds."""
        return now - self.last_received_at > timeout

    # -------------------------------------------------------- receiving

    def receive(self, data: bytes, now: float) -> Event | None:
        """Process one received frame; return what happened, if anything the caller must see.

        A BATCH returns :class:`BatchReceived` with the events of its frames
        (an ACK owed for them is queued once, after the whole batch).

        Raises:
            ProtocolError: the peer broke the protocol (a gap in the numbering,
                an ACK for a message never sent); the session must close.
        """
        self.last_received_at = now
        try:
            envelope = self.codec.decode(data)
        except CodecError as exc:
            return self._undecodable(exc, now)
        if not isinstance(envelope, Batch):
            return self._process(envelope, now)
        events: list[FrameEvent] = []
        self._in_batch = True
        try:
            for item in envelope.items:
                event = (
                    self._undecodable(item, now)
                    if isinstance(item, CodecError)
                    else self._process(item, now)
                )
                if event is not None:
                    events.append(event)
        finally:
            self._in_batch = False
        if self.last_received_seq - self._last_acked_by_us >= self.ack_every:
            self._owe_ack()
        return BatchReceived(tuple(events))

    def _undecodable(self, exc: CodecError, now: float) -> FrameEvent | None:
        reason = (
            DropReason.UNKNOWN_TYPE if isinstance(exc, UnknownMessageType) else DropReason.MALFORMED
        )
        if exc.seq is not None and exc.seq < 1:
            raise ProtocolError(f"message sequence numbers start at 1, got {exc.seq}") from None
        if exc.seq is not None and exc.seq <= self.last_received_seq:
            return DuplicateDiscarded(exc.seq)
        if exc.seq is not None and self._accept_seq(exc.seq, now):
            return MessageUndecodable(exc.seq, reason, str(exc))
        return MessageUndecodable(None, reason, str(exc))

    def _process(self, envelope: Envelope, now: float) -> FrameEvent | None:
        if isinstance(envelope, Msg):
            if envelope.seq < 1:
                raise ProtocolError(f"message sequence numbers start at 1, got {envelope.seq}")
            if envelope.seq <= self.last_received_seq:
                return DuplicateDiscarded(envelope.seq)
            # -- field types (docs/protocol.md 4.1): whatever the codec, a value that
            # does not fit its field's annotation makes the MSG malformed, as one that
            # does not decode; its number is still consumed and acknowledged.
            try:
                check_fields(envelope.message)
            except CodecError as exc:
                exc.seq = envelope.seq
                return self._undecodable(exc, now)
            # -- end of field types
            self._accept_seq(envelope.seq, now)
            return MessageReceived(envelope.seq, envelope.message)
        if isinstance(envelope, Ack):
            self._on_ack(envelope.seq)
            return None
        if isinstance(envelope, Ping):
            self._pending.append(self.codec.encode(Pong(envelope.nonce)))
            return None
        if isinstance(envelope, Pong):
            sent = self._pings.pop(envelope.nonce, None)
            return None if sent is None else PongReceived(envelope.nonce, now - sent)
        if isinstance(envelope, Ready):
            return RemoteReady(envelope.worker)
        return ByeReceived(envelope.code, envelope.reason)

    def _accept_seq(self, seq: int, now: float) -> bool:
        if seq <= self.last_received_seq:
            return False
        if seq != self.last_received_seq + 1:
            raise ProtocolError(f"expected message {self.last_received_seq + 1}, got {seq}")
        self.last_received_seq = seq
        if self._first_unacked_at is None:
            self._first_unacked_at = now
        if not self._in_batch and seq - self._last_acked_by_us >= self.ack_every:
            self._owe_ack()
        return True

    def _owe_ack(self) -> None:
        frame = self.ack_frame()
        if frame is not None:
            self._pending.append(frame)

    def _on_ack(self, seq: int) -> None:
        if seq > self.last_sent_seq:
            raise ProtocolError(f"ACK for message {seq}, but only {self.last_sent_seq} were sent")
        outbox = self._outbox
        while outbox and outbox[0][0] <= seq:
            self._outbox_bytes -= len(outbox.popleft()[1])
