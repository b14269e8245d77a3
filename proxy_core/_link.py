"""What both proxy workers share: the session loop, the heartbeat, the lifecycle.

The proxy is the only part of the core that awaits I/O. A proxy is a worker
that claims the remote worker's name on its local bus. Messages it sees go
through the outbound filter rules and, if they pass, are numbered by the
sans-I/O :class:`~proxy_core.session.Session` and written to the connection;
frames it receives are decoded by the session, checked by the inbound rules
and put on the local bus. :class:`~proxy_core.client.ProxyClient` connects
when it is activated; :class:`~proxy_core.server.ProxyServer` serves one
accepted connection (and takes over a resumed one).

The worker is built in layers, one concern to a module (see
:mod:`proxy_core._link_base`): the outbound path in ``_link_out``, inbound
delivery in ``_link_in``, the close handshake in ``_link_close``, and here
the constructor, the session loop that ties them together and the heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import ClassVar

from ._link_base import (
    DEFAULT_CODEC,
    DEFAULT_SERVER_CODECS,
    CodecSpec,
    ProxyStats,
)
from ._link_close import _CLOSE_DRAIN_SECONDS, _Closing
from .errors import (
    ConfigurationError,
    ConnectionClosed,
    MessageTooLarge,
    ProtocolError,
)
from .flag import Flag
from .inbox import OverflowPolicy
from .messages import BusMessage
from .observe import ProxySide, ProxySnapshot, _emit
from .protocol import CloseCode
from .registry import Watch
from .rules import DropReason, FilterRules
from .session import (
    MIN_MESSAGE_BYTES,
    BatchReceived,
    ByeReceived,
    Session,
)
from .transport import (
    Connection,
)

# They live in _link_base; named here too for code that imports them from _link.
__all__ = ["DEFAULT_CODEC", "DEFAULT_SERVER_CODECS", "CodecSpec", "ProxyStats"]

# One logger for the proxies, whichever module: ``proxy_core.proxy``.
logger = logging.getLogger("proxy_core.proxy")


class _ProxyWorker(_Closing):
    """What the client and the server proxy share: rules, session loop, stats."""

    __slots__ = ("_observed",)

    #: Which end of a link this proxy is (set by each subclass).
    side: ClassVar[ProxySide]

    def __init__(
        self,
        name: str,
        *,
        local_worker_name: str,
        remote_worker_name: str,
        forward_messages: Sequence[type[BusMessage]],
        forward_broadcasts: bool,
        max_message_bytes: int,
        heartbeat_interval: float,
        heartbeat_timeout: float,
        max_unacked: int,
        max_unacked_bytes: int,
        close_timeout: float,
        max_queue: int,
        overflow: OverflowPolicy | str,
        put_timeout: float,
        active: bool,
    ) -> None:
        # No defaults: ProxyClient's and ProxyServer's signatures hold them, once each.
        super().__init__(
            name, active=active, max_queue=max_queue, overflow=overflow, put_timeout=put_timeout
        )
        for label, value in (("local", local_worker_name), ("remote", remote_worker_name)):
            if not isinstance(value, str) or not value:
                raise ConfigurationError(f"the {label} worker name must be a non-empty string")
        if len({name, local_worker_name, remote_worker_name}) != 3:
            raise ConfigurationError(
                f"proxy {name!r}, local worker {local_worker_name!r} and remote worker "
                f"{remote_worker_name!r} must have three different names"
            )
        for kind in forward_messages:
            if not (isinstance(kind, type) and issubclass(kind, BusMessage)):
                raise ConfigurationError(
                    f"forward_messages must hold BusMessage subclasses, got {kind!r}"
                )
        if max_message_bytes < MIN_MESSAGE_BYTES:
            raise ConfigurationError(f"max_message_bytes must be at least {MIN_MESSAGE_BYTES}")
        if max_unacked < 1:
            raise ConfigurationError("max_unacked must be at least 1")
        if max_unacked_bytes < 1:
            raise ConfigurationError("max_unacked_bytes must be at least 1")
        if heartbeat_interval <= 0 or heartbeat_timeout <= heartbeat_interval:
            raise ConfigurationError("need 0 < heartbeat_interval < heartbeat_timeout")
        if not close_timeout > 0:
            raise ConfigurationError(f"close_timeout must be positive, got {close_timeout!r}")
        self.rules = FilterRules(
            local_worker_name, remote_worker_name, tuple(forward_messages), forward_broadcasts
        )
        self.stats = ProxyStats()
        self.max_message_bytes = max_message_bytes
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.max_unacked = max_unacked
        self.max_unacked_bytes = max_unacked_bytes
        self.close_timeout = close_timeout
        self._conn = None
        self._session = None
        self._session_task = None
        self._init_outbound()
        self._init_inbound()
        self._init_closing()
        self._observed = False  # "started" was emitted, "stopped" not yet

    def routed_names(self) -> tuple[str, ...]:
        return (self.name, self.rules.remote_worker)

    @property
    def connected(self) -> bool:
        """Whether a session is open now, on a live connection."""
        return self._session is not None and self._conn is not None

    @property
    def codec(self) -> str | None:
        """The name of the codec negotiated for the open session, if any."""
        return self._session.codec.name if self._session is not None else None

    @property
    def session_id(self) -> str | None:
        """The id of the open session, if any."""
        return self._session.session_id if self._session is not None else None

    def stats_snapshot(self) -> ProxySnapshot:
        """Return the counters of :attr:`stats` and the gauges now, as one snapshot.

        Cheap, and safe to call from another thread (an exporter's): it only reads.
        """
        session, inbox = self._session, self.queue_stats
        return ProxySnapshot(
            name=self.name,
            side=self.side,
            session_id=session.session_id if session is not None else None,
            codec=session.codec.name if session is not None else None,
            connected=self.connected,
            **self.stats.snapshot(),
            inbox_depth=inbox.depth,
            inbox_max=inbox.maxsize,
            inbox_dropped=inbox.dropped,
            outbox_unacked=session.unacked if session is not None else 0,
            outbox_max=self.max_unacked,
            write_queue=len(self._out),
        )

    # ------------------------------------------------------------ lifecycle

    def _start(self) -> None:
        super()._start()
        self._observed = True
        _emit("started", self)

    async def _stop(self, reason: str | None, *, graceful: bool) -> None:
        try:
            await super()._stop(reason, graceful=graceful)
        finally:
            if self._observed:  # once, and only for a proxy that started
                self._observed = False
                _emit("stopped", self)

    # ------------------------------------------------------------ session loop

    async def _run_session(
        self,
        conn: Connection,
        session: Session,
        *,
        first: bytes | None = None,
        replay: Sequence[bytes] = (),
        on_open: Callable[[], Awaitable[None]] | None = None,
        resumable: bool = False,
    ) -> bool:
        """Serve an open session on ``conn`` until it ends; always closes ``conn``.

        The session is in place before anything else happens: ``first`` (the
        server's WELCOME) is the first frame written, then ``replay`` (the
        frames a resumed session sends again), and ``on_open`` (the connected
        events) runs with the session already visible.

        Returns:
            Whether the link was lost (no BYE, not closed by us) and the session
            is kept, with its outbox, for a resume: only when ``resumable``.
        """
        self._conn, self._session = conn, session
        self._burst = False
        self._closing = self._link_lost = self._peer_bye = False
        self._bye_sent = self._close_with = None
        self._stall_mark, self._stall_since = -1, None
        self._link_closed = Flag()
        self._outbox_space.set()
        self._out.clear()
        self._out.extend(replay)
        self._out_drained.set()
        if replay:
            self._out_drained.clear()
            self.stats.replayed += len(replay)
        self.stats.sessions += 1
        _emit("connected", self)
        self._writing = first is not None  # the writer sends WELCOME before anything else
        self._writer_task = None
        if first is not None or replay:
            self._start_writer(first)
        # The heartbeat is a timer, not a task: an idle session costs one task less.
        heartbeat = _Heartbeat(self, conn, session)
        watch: Watch = self.registry.watch(self.rules.local_worker, self._announce_ready)
        code: int = CloseCode.INTERNAL_ERROR
        reason = "internal error"
        try:
            if on_open is not None:
                await on_open()
            code, reason = await self._receive_loop(conn, session)
        except asyncio.CancelledError:
            code, reason = CloseCode.GOING_AWAY, "cancelled"
            raise
        except Exception:
            logger.exception("proxy %r: the receive loop failed", self.name)
        finally:
            # Everything synchronous first, so that a cancellation arriving
            # during the awaits below cannot leave stale state behind.
            watch.cancel()
            heartbeat.cancel()
            self._link_closed.set()
            closer, self._closer = self._closer, None
            if self._ack_timer is not None:
                self._ack_timer.cancel()
                self._ack_timer = None
            keep = resumable and self._link_lost and not self._closing
            self._conn = None
            if not keep:
                self._session = None
                self._outbox_space.set()  # wake senders waiting for room: they now drop
            self.registry.set_gone(self.rules.remote_worker)
            self._remote_ready_warned = False
            _emit("disconnected", self)
            try:
                if closer is not None and not closer.done():
                    # Let it finish closing the connection (cut short, the close
                    # would be abnormal), within its own bounds.
                    await asyncio.wait({closer}, timeout=self.close_timeout)
                if code == CloseCode.PROTOCOL_ERROR:
                    await self._drain(_CLOSE_DRAIN_SECONDS)  # let our BYE out first
            finally:
                if closer is not None and not closer.done():
                    closer.cancel()
                if self._writer_task is not None:
                    self._writer_task.cancel()
                    self._writer_task = None
                self._out.clear()
                await conn.aclose(code, reason)
                if keep:
                    logger.info(
                        "proxy %r: link lost (%d %s); session %s kept for a resume",
                        self.name,
                        code,
                        reason,
                        session.session_id,
                    )
                else:
                    logger.info("proxy %r: session closed (%d %s)", self.name, code, reason)
        return keep

    async def _receive_loop(self, conn: Connection, session: Session) -> tuple[int, str]:
        loop = asyncio.get_running_loop()
        limit = self.max_message_bytes
        while True:
            if self._inbound is not None and len(self._inbound) >= self.max_unacked:
                await self._wait_for_inbound_space()
            try:
                data = await conn.receive()
            except ConnectionClosed as exc:
                self._link_lost = not self._closing
                self._link_closed.set()
                if self._close_with is not None:  # we closed it, after the BYEs
                    return self._close_with
                return (exc.code or CloseCode.GOING_AWAY), exc.reason or "connection closed"
            except MessageTooLarge as exc:
                logger.warning("proxy %r: peer sent an oversized frame: %s", self.name, exc)
                return CloseCode.TOO_LARGE, "frame too large"
            except ProtocolError as exc:
                self._count_drop(self.stats.dropped_in, DropReason.MALFORMED, exc)
                continue
            self._burst = False  # the loop has turned since anything was written
            self.stats.bytes_in += len(data)
            if len(data) > limit:  # backends enforce this too; never decode past the limit
                logger.warning("proxy %r: peer sent %d bytes > %d", self.name, len(data), limit)
                return CloseCode.TOO_LARGE, "frame too large"
            try:
                event = session.receive(data, loop.time())
            except ProtocolError as exc:
                logger.warning("proxy %r: protocol error from peer: %s", self.name, exc)
                # No close handshake with a peer that broke the protocol: BYE,
                # then the close, with the same code and reason.
                self._closing = True
                self._bye_sent = (CloseCode.PROTOCOL_ERROR, str(exc))
                self._enqueue(session.bye_frame(*self._bye_sent))
                return self._bye_sent
            if isinstance(event, BatchReceived):
                self.stats.batches_in += 1
                for item in event.events:
                    if isinstance(item, ByeReceived):
                        self._on_peer_bye(conn, session, item)
                    else:
                        self._on_event(item)
            elif event is not None:
                if isinstance(event, ByeReceived):
                    self._on_peer_bye(conn, session, event)
                else:
                    self._on_event(event)
            for frame in session.data_to_send():
                self._enqueue(frame)
            if not session.outbox_full:
                self._outbox_space.set()
            if self._ack_timer is None and session.last_received_seq:
                self._ack_timer = loop.call_later(session.ack_delay, self._flush_ack, session)

    # ------------------------------------------------------------ heartbeat

    def _beat(self, conn: Connection, session: Session, now: float) -> bool:
        """One heartbeat: PING, or close a link that has been silent or stopped reading;
        ``False`` when closing."""
        self._burst = False
        if self._write_stalled(now):
            logger.warning(
                "proxy %r: a write made no progress for %.1fs; closing the link",
                self.name,
                self.heartbeat_timeout,
            )
            self._out.clear()
            self._out_drained.set()
            self.create_task(
                conn.aclose(CloseCode.HEARTBEAT_TIMEOUT, "write stalled"),
                name=f"{self.name}-stall-close",
            )
            return False
        if session.is_dead(now, self.heartbeat_timeout):
            logger.warning(
                "proxy %r: nothing heard for %.1fs; closing the link",
                self.name,
                self.heartbeat_timeout,
            )
            self.create_task(
                conn.aclose(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout"),
                name=f"{self.name}-heartbeat-close",
            )
            return False
        self._enqueue(session.ping_frame(now))
        return True


class _Heartbeat:
    """Every ``heartbeat_interval``: a PING, or the end of a silent link (a timer chain)."""

    __slots__ = ("_conn", "_handle", "_loop", "_proxy", "_session")

    def __init__(self, proxy: _ProxyWorker, conn: Connection, session: Session) -> None:
        self._proxy, self._conn, self._session = proxy, conn, session
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(
            proxy.heartbeat_interval, self._fire
        )

    def _fire(self) -> None:
        self._handle = None
        if self._proxy._beat(self._conn, self._session, self._loop.time()):
            self._handle = self._loop.call_later(self._proxy.heartbeat_interval, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
