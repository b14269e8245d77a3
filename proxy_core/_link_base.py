"""What every layer of a proxy worker shares: the stats, the codec choice, the state.

A proxy worker (:class:`~proxy_core._link._ProxyWorker`) is built in layers,
one concern to a module, each layer using only those below it:

- :class:`_LinkBase` (here): the configuration, the rules, the stats, the
  open connection and session, and dropping a message with a reason;
- :class:`~proxy_core._link_out._Outbound`: a message from the bus to the
  wire (``put``, the filter rules, numbering, the writer task);
- :class:`~proxy_core._link_in._Inbound`: a message from the wire to the
  served worker (the rules, the inbox, delivery when it is full);
- :class:`~proxy_core._link_close._Closing`: the close handshake (BYE);
- :class:`~proxy_core._link._ProxyWorker`: the constructor, the lifecycle,
  the session loop and the heartbeat.

Each layer declares the slots of its own state (a single line of classes, so
several of them may), and the state is made by its ``_init_*`` method, beside
the code that uses it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from .backoff import Backoff
from .codecs.base import Codec
from .errors import ConfigurationError
from .plugins import resolve_codec
from .protocol import FEATURES
from .rules import DropReason, FilterRules
from .session import Session
from .transport import Connection
from .worker import BaseWorker

__all__ = ["DEFAULT_CODEC", "DEFAULT_SERVER_CODECS", "CodecSpec", "ProxyStats"]

# One logger for the proxies, whichever module: ``proxy_core.proxy``.
logger = logging.getLogger("proxy_core.proxy")


#: How long a close handshake may take (``close_timeout``): the side that says
#: BYE waits this long for the answer; the other side answers within half of it.
DEFAULT_CLOSE_TIMEOUT = 5.0

_NO_RESUME = tuple(f for f in FEATURES if f != "resume")


#: The reconnect policy of a client that names none.
_DEFAULT_BACKOFF = Backoff()


CodecSpec: TypeAlias = str | Codec | Sequence[str | Codec]

#: The codec every client class asks for unless told otherwise: the fast one.
#: ``json`` stays available by name (``codec="json"``).
DEFAULT_CODEC = "msgpack"
#: What every server class accepts unless told otherwise, in order of preference.
DEFAULT_SERVER_CODECS: tuple[str, ...] = ("msgpack", "json")


@dataclass
class ProxyStats:
    """Counters of one proxy, across all its sessions.

    Attributes:
        messages_out / messages_in: messages that crossed, each way.
        bytes_out / bytes_in: frame bytes written and read (control frames included).
        dropped_out / dropped_in: dropped messages by :class:`~proxy_core.rules.DropReason` value.
        duplicates: received messages discarded as already delivered.
        replayed: frames sent again on a resumed session.
        reconnects: connections opened after the first (clients), or
            connections that took a lost session over (servers).
        resumes: sessions resumed on a new connection.
        batches_out / batches_in: BATCH frames (several frames in one
            transport message) written and read.
        sessions: sessions opened.
        heartbeat_rtt: the last PING round trip, in seconds.
    """

    messages_out: int = 0
    messages_in: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    dropped_out: Counter[str] = field(default_factory=Counter)
    dropped_in: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    replayed: int = 0
    reconnects: int = 0
    resumes: int = 0
    batches_out: int = 0
    batches_in: int = 0
    sessions: int = 0
    heartbeat_rtt: float | None = None

    def snapshot(self) -> dict[str, Any]:
        """Return the counters as a plain dict (for logs and exporters)."""
        return {
            "messages_out": self.messages_out,
            "messages_in": self.messages_in,
            "bytes_out": self.bytes_out,
            "bytes_in": self.bytes_in,
            "dropped_out": dict(self.dropped_out),
            "dropped_in": dict(self.dropped_in),
            "duplicates": self.duplicates,
            "replayed": self.replayed,
            "reconnects": self.reconnects,
            "resumes": self.resumes,
            "batches_out": self.batches_out,
            "batches_in": self.batches_in,
            "sessions": self.sessions,
            "heartbeat_rtt": self.heartbeat_rtt,
        }


def _codec_list(spec: CodecSpec) -> list[Codec]:
    items: Sequence[str | Codec] = [spec] if isinstance(spec, str | Codec) else spec
    codecs = [resolve_codec(item) for item in items]
    if not codecs:
        raise ConfigurationError("at least one codec is needed")
    return codecs


class _LinkBase(BaseWorker):
    """The state every layer of a proxy worker reads: configuration, rules, stats, session."""

    # Slots: a server holds one proxy per session (idle memory). Each layer
    # above adds the slots of its own state.
    __slots__ = (
        "_bye_sent",
        "_conn",
        "_session",
        "_session_task",
        "close_timeout",
        "codecs",
        "heartbeat_interval",
        "heartbeat_timeout",
        "max_message_bytes",
        "max_unacked",
        "max_unacked_bytes",
        "rules",
        "stats",
    )

    # Set by the constructor (proxy_core._link) from its arguments.
    rules: FilterRules
    stats: ProxyStats
    max_message_bytes: int
    heartbeat_interval: float
    heartbeat_timeout: float
    max_unacked: int
    max_unacked_bytes: int
    close_timeout: float
    codecs: list[Codec]  # set by each subclass
    # The open connection (None while there is no live one), its session
    # (kept without a connection while a lost one waits for its resume), and
    # the task that runs them (each subclass's).
    _conn: Connection | None
    _session: Session | None
    _session_task: asyncio.Task[None] | None
    # Our BYE's code and reason once sent: no MSG follows it (the close
    # handshake, proxy_core._link_close, sends it; the writer checks it).
    _bye_sent: tuple[int, str] | None

    def _count_drop(self, counter: Counter[str], reason: DropReason, what: object) -> None:
        counter[reason.value] += 1
        if logger.isEnabledFor(logging.DEBUG):
            direction = "outbound" if counter is self.stats.dropped_out else "inbound"
            logger.debug("proxy %r dropped %s %r: %s", self.name, direction, what, reason.value)
