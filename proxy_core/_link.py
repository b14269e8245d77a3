"""What both proxy workers share: the session loop, the writer, the stats.

The proxy is the only part of the core that awaits I/O. A proxy is a worker
that claims the remote worker's name on its local bus. Messages it sees go
through the outbound filter rules and, if they pass, are numbered by the
sans-I/O :class:`~proxy_core.session.Session` and written to the connection;
frames it receives are decoded by the session, checked by the inbound rules
and put on the local bus. :class:`~proxy_core.client.ProxyClient` connects
when it is activated; :class:`~proxy_core.server.ProxyServer` serves one
accepted connection (and takes over a resumed one).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

from .backoff import Backoff
from .codecs.base import Codec, batch_size_bound
from .errors import (
    CodecError,
    ConfigurationError,
    ConnectionClosed,
    MessageTooLarge,
    ProtocolError,
    QueueFull,
    TransportError,
)
from .flag import Flag
from .inbox import DEFAULT_MAX_QUEUE, DEFAULT_PUT_TIMEOUT, OverflowPolicy
from .messages import BusMessage
from .observe import ProxySide, ProxySnapshot, _emit
from .plugins import resolve_codec
from .protocol import (
    FEATURES,
    CloseCode,
)
from .registry import Watch, WorkerReadyData
from .rules import Drop, DropReason, FilterRules
from .session import (
    DEFAULT_MAX_UNACKED_BYTES,
    MIN_MESSAGE_BYTES,
    BatchReceived,
    ByeReceived,
    DuplicateDiscarded,
    FrameEvent,
    MessageReceived,
    MessageUndecodable,
    PongReceived,
    RemoteReady,
    Session,
)
from .transport import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Connection,
)
from .worker import BaseWorker

__all__ = ["DEFAULT_CODEC", "DEFAULT_SERVER_CODECS", "CodecSpec", "ProxyStats"]

# One logger for the proxies, whichever module: ``proxy_core.proxy``.
logger = logging.getLogger("proxy_core.proxy")

#: How long a closing session waits for its queued frames (its BYE) to be written.
_CLOSE_DRAIN_SECONDS = 2.0

#: How long a close handshake may take (``close_timeout``): the side that says
#: BYE waits this long for the answer; the other side answers within half of it.
DEFAULT_CLOSE_TIMEOUT = 5.0

_NO_RESUME = tuple(f for f in FEATURES if f != "resume")

#: The reconnect policy of a client that names none.
_DEFAULT_BACKOFF = Backoff()

#: The most bytes of frames the writer puts in one BATCH (within the peer's limit).
_BATCH_MAX_BYTES = 64 * 1024

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


class _ProxyWorker(BaseWorker):
    """What the client and the server proxy share: rules, session loop, stats."""

    # Slots: a server holds one proxy per session (idle memory).
    __slots__ = (
        "_ack_timer",
        "_burst",
        "_bye_sent",
        "_close_with",
        "_closer",
        "_closing",
        "_conn",
        "_deliverer",
        "_inbound",
        "_inbound_space",
        "_inline_busy",
        "_link_closed",
        "_link_lost",
        "_observed",
        "_opening",
        "_out",
        "_out_drained",
        "_outbox_space",
        "_peer_bye",
        "_ready_sent",
        "_remote_ready_warned",
        "_session",
        "_session_task",
        "_stall_mark",
        "_stall_since",
        "_write_pending",
        "_writer_task",
        "_writes_done",
        "_writing",
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

    #: Which end of a link this proxy is (set by each subclass).
    side: ClassVar[ProxySide]

    #: A sender awaits :meth:`put`, which writes the message in its task when
    #: it can (see :meth:`_can_inline`).
    inline_put: ClassVar[bool] = True

    def __init__(
        self,
        name: str,
        *,
        local_worker_name: str,
        remote_worker_name: str,
        forward_messages: Sequence[type[BusMessage]] = (),
        forward_broadcasts: bool = False,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        heartbeat_interval: float = 10.0,
        heartbeat_timeout: float = 30.0,
        max_unacked: int = 4096,
        max_unacked_bytes: int = DEFAULT_MAX_UNACKED_BYTES,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        max_queue: int = DEFAULT_MAX_QUEUE,
        overflow: OverflowPolicy | str = OverflowPolicy.WAIT,
        put_timeout: float = DEFAULT_PUT_TIMEOUT,
        active: bool,
    ) -> None:
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
        self._conn: Connection | None = None
        self._session: Session | None = None
        self._session_task: asyncio.Task[None] | None = None
        # Every frame of a session goes through one writer task, so that the
        # receive loop never waits on a write: with both directions saturated,
        # a receive loop blocked writing an ACK would stop reading, and the two
        # peers would deadlock. The queue is bounded by max_unacked MSG frames
        # plus the few control frames the receive loop owes.
        self._out: deque[bytes] = deque()
        self._out_drained = Flag()
        self._writing = False  # a frame is being written (by the writer or inline)
        self._inline_busy = False  # a sender's task is handling a message for us (put)
        # A frame was written at once, and the loop may not have turned since:
        # what follows is a burst, queued and written together by the writer
        # (one BATCH) rather than one write each. Cleared where the loop has
        # surely turned, at no cost of its own: when a frame arrives, when the
        # writer has emptied the queue, at each heartbeat. A message sent while
        # it is set only takes the writer's way, never waits longer.
        self._burst = False
        # A write stuck on a peer that stopped reading is found by the heartbeat
        # (_write_stalled), not by a timer armed around every write: a write in
        # progress, the writes finished so far, and since when none has.
        self._write_pending = False
        self._writes_done = 0
        self._stall_mark = -1
        self._stall_since: float | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._outbox_space = Flag()
        self._ack_timer: asyncio.TimerHandle | None = None
        self._ready_sent = False
        self._remote_ready_warned = False
        # Messages received but not yet taken by the local worker's inbox (it
        # was full), in order, with the session that numbered them. They are
        # left unacknowledged, so the peer's outbox (its window) bounds them.
        self._inbound: deque[tuple[Session, int, BusMessage]] | None = None  # made when needed
        self._inbound_space = Flag()
        self._deliverer: asyncio.Task[None] | None = None
        # No live connection: connecting, in the handshake, waiting to retry,
        # or holding a lost session for a resume. Closing then abandons the wait.
        self._opening = False
        self._closing = False  # we are closing on purpose: not a lost link
        self._link_lost = False  # the last connection ended without a BYE either way
        # The close handshake (see _close_session): our BYE's code and reason
        # once sent (no MSG follows it), whether the peer said BYE, the task
        # that answers or finishes it, the code and reason the session ends
        # with, and whether the connection is closed.
        self._bye_sent: tuple[int, str] | None = None
        self._peer_bye = False
        self._closer: asyncio.Task[None] | None = None
        self._close_with: tuple[int, str] | None = None
        self._link_closed = Flag()
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

    # ------------------------------------------------------------ outbound

    async def put(self, message: BusMessage) -> None:
        """Take ``message`` from a sender (called by the bus): in its task when possible.

        On the latency path, with nothing queued before it, the message is
        checked, numbered and written in the sender's task, sparing the wake-up
        of this proxy's own task; otherwise it is queued for that task, as for
        any worker. Either way messages leave in the order they were sent.
        """
        if self._can_inline(message):
            self._inline_busy = True
            try:
                await self.on_bus_message(message)
            except Exception:
                logger.exception("worker %r failed to handle %r", self.name, message)
            finally:
                self._inline_busy = False
            return
        await super().put(message)

    def _can_inline(self, message: BusMessage) -> bool:
        """Whether ``put`` may handle ``message`` in the sender's task, in order, with no wait.

        Only when this proxy's task is idle with nothing queued (nothing sent
        earlier is still to be numbered), no other sender is in the middle of
        it, the message is data for the remote worker (control messages for
        the proxy itself go through its task), no shared bus waits to be told
        that a message is finished, the session has room in its outbox (no
        wait for acknowledgements), and the connection's ``send`` is safe to
        await, and to cancel, in another task.
        """
        conn, session = self._conn, self._session
        return (
            self._waiting
            and not self._inline_busy
            and conn is not None
            and conn.cancel_safe_send
            and session is not None
            and not session.outbox_full
            and not self._inbox
            and self._finished is None
            and message.target == self.rules.remote_worker
        )

    async def on_bus_message(self, message: BusMessage) -> None:
        decision = self.rules.outbound(message)
        if isinstance(decision, Drop):
            self._count_drop(self.stats.dropped_out, decision.reason, message)
            return
        await self._send(message)

    async def _send(self, message: BusMessage) -> None:
        session = self._session
        while session is not None and session.outbox_full:
            # Backpressure: wait for the peer to acknowledge. A live peer acks
            # within ack_delay; one that does not for heartbeat_timeout is stuck.
            # While a lost session waits for its resume, the resume (or the end
            # of the grace period) sets the event.
            self._outbox_space.clear()
            try:
                async with asyncio.timeout(self.heartbeat_timeout):
                    await self._outbox_space.wait()
            except TimeoutError:
                conn = self._conn
                if conn is not None and self._session is session:
                    logger.warning(
                        "proxy %r: peer acknowledged nothing for %.1fs; closing the link",
                        self.name,
                        self.heartbeat_timeout,
                    )
                    await conn.aclose(CloseCode.HEARTBEAT_TIMEOUT, "no acknowledgements")
            session = self._session
        if session is None or self._bye_sent is not None:  # none open, or we said BYE
            self._count_drop(self.stats.dropped_out, DropReason.NOT_CONNECTED, message)
            return
        try:
            data = session.send_message(message)
        except MessageTooLarge as exc:
            logger.warning("proxy %r dropped %s: %s", self.name, type(message).__name__, exc)
            self._count_drop(self.stats.dropped_out, DropReason.TOO_LARGE, message)
            return
        except CodecError as exc:
            logger.warning("proxy %r cannot encode %s: %s", self.name, type(message).__name__, exc)
            self._count_drop(self.stats.dropped_out, DropReason.ENCODE_FAILED, message)
            return
        self.stats.messages_out += 1
        conn = self._conn
        if conn is None:
            return  # the link is lost: the frame waits in the outbox for the resume
        if self._out or self._writing or self._burst or len(self._inbox):
            self._enqueue(data)  # the writer sends it, coalesced with what is queued
            return
        # A lone message (nothing queued, nothing behind it in our inbox, none
        # written at once since the loop last turned): write it from this task,
        # sparing a wake-up of the writer's on the latency path. What follows
        # before the loop turns is a burst: it goes to the writer, which batches
        # it (see _burst).
        self._burst = True
        self._writing = True
        try:
            await self._write(conn, data)
        finally:
            self._writing = False
            if self._out:
                self._start_writer()  # what was queued meanwhile

    def _enqueue(self, data: bytes) -> None:
        """Queue a frame for the session's writer task; never blocks."""
        self._out.append(data)
        self._out_drained.clear()
        if not self._writing:  # else whoever is writing takes it next
            self._start_writer()

    def _start_writer(self, first: bytes | None = None) -> None:
        """Start the writer task unless it runs; it ends when the queue is empty."""
        conn, session, task = self._conn, self._session, self._writer_task
        if conn is None or session is None or (task is not None and not task.done()):
            return
        self._writer_task = self.create_task(
            self._writer(conn, session, first), name=f"{self.name}-writer"
        )

    async def _writer(self, conn: Connection, session: Session, first: bytes | None) -> None:
        """Write the queued frames in order, coalescing them; end when the queue is empty.

        Whatever is queued when the writer gets to run goes out together, in
        one BATCH (if the session has them) up to the peer's limit: a lone
        frame leaves at once, alone, and no timer ever holds one back. The task
        exists only while there is something to write, so an idle session has
        none.
        """
        out, stats = self._out, self.stats
        limit = min(session.peer_max_message_bytes, _BATCH_MAX_BYTES) if session.batch else 0
        try:
            if first is not None:
                try:  # _run_session set _writing: nothing may go out before WELCOME
                    if not await self._write(conn, first):
                        return
                finally:
                    self._writing = False
            while out:
                frames = [out.popleft()]
                total = len(frames[0])
                while out and batch_size_bound(total + len(out[0]), len(frames) + 1) <= limit:
                    frames.append(out.popleft())
                    total += len(frames[-1])
                if len(frames) == 1:
                    data = frames[0]
                else:
                    data = session.batch_frame(frames)
                    stats.batches_out += 1
                self._writing = True
                try:
                    if not await self._write(conn, data):
                        return
                finally:
                    self._writing = False
        finally:
            task = self._writer_task
            if task is not None and asyncio.current_task(task.get_loop()) is task:
                self._writer_task = None
            if not out:
                self._out_drained.set()
                self._burst = False

    async def _write(self, conn: Connection, data: bytes) -> bool:
        """Send one transport message; ``False`` when the connection is done for.

        A write that makes no progress for ``heartbeat_timeout`` (a peer that
        stopped reading) is found by the heartbeat, which closes the link with
        4008, like a silent peer; the write then fails here.
        """
        self._write_pending = True
        try:
            await conn.send(data)
        except MessageTooLarge as exc:  # refused locally; the connection is fine
            logger.warning("proxy %r: frame not sent: %s", self.name, exc)
            return True
        except TransportError:
            # The receive loop sees the same closed connection and ends the session.
            self._out.clear()
            self._out_drained.set()
            return False
        except Exception:
            logger.exception("proxy %r: writing a frame failed; closing", self.name)
            self._out.clear()
            self._out_drained.set()
            await conn.aclose(CloseCode.INTERNAL_ERROR, "write failed")
            return False
        finally:
            self._write_pending = False
            self._writes_done += 1
        self.stats.bytes_out += len(data)
        return True

    async def _drain(self, timeout: float) -> None:
        """Wait (bounded) until the writer has sent everything queued, e.g. a BYE."""
        if not self._out_drained.is_set():
            try:
                async with asyncio.timeout(timeout):
                    await self._out_drained.wait()
            except TimeoutError:
                logger.debug("proxy %r: %d frames unsent at close", self.name, len(self._out))

    def _count_drop(self, counter: Counter[str], reason: DropReason, what: object) -> None:
        counter[reason.value] += 1
        if logger.isEnabledFor(logging.DEBUG):
            direction = "outbound" if counter is self.stats.dropped_out else "inbound"
            logger.debug("proxy %r dropped %s %r: %s", self.name, direction, what, reason.value)

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

    # ------------------------------------------------------------ closing

    def _on_peer_bye(self, conn: Connection, session: Session, event: ByeReceived) -> None:
        """The peer said BYE: answer it, or, if it answers ours, finish the close.

        The receive loop goes on reading (ACKs, and our peer's last MSGs when
        it answers ours) until the connection closes.
        """
        if self._peer_bye:
            return  # one BYE per side; a second one changes nothing
        self._peer_bye = True
        self._closing = True  # ended on purpose: not a lost link, never resumed
        logger.info("proxy %r: peer said bye (%d %s)", self.name, event.code, event.reason)
        work = (
            self._answer_bye(conn, session)
            if self._bye_sent is None
            else self._finish_close(conn, session)
        )
        self._closer = self.create_task(work, name=f"{self.name}-close")

    async def _answer_bye(self, conn: Connection, session: Session) -> None:
        """The peer closes: deliver and acknowledge what it sent, send what we have, say BYE.

        Within half of ``close_timeout``: every MSG that came before the BYE
        goes to the served worker and is acknowledged; what that worker sends
        while handling them goes out; then our BYE. The peer closes the
        connection once it has our BYE; if it does not within the other half,
        we close it.
        """
        half = self.close_timeout / 2
        try:
            async with asyncio.timeout(half):
                await self._until_delivered()
                self._flush_ack(session)  # the peer learns at once what arrived
                await self._until_local_idle()
        except TimeoutError:
            logger.info(
                "proxy %r: answering BYE after %.1fs with %d message(s) undelivered",
                self.name,
                half,
                len(self._inbound or ()),
            )
        if self._bye_sent is None:  # else we started closing too: our BYE is out
            self._flush_ack(session)
            self._bye_sent = (CloseCode.NORMAL, "bye")
            self._enqueue(session.bye_frame(*self._bye_sent))
        try:
            async with asyncio.timeout(half):
                await self._link_closed.wait()
        except TimeoutError:
            self._close_with = self._bye_sent
            await conn.aclose(*self._bye_sent)

    async def _finish_close(self, conn: Connection, session: Session) -> None:
        """The peer answered our BYE: deliver and acknowledge its last MSGs, then close."""
        try:
            async with asyncio.timeout(self.close_timeout / 2):
                await self._until_delivered()
        except TimeoutError:
            pass
        self._flush_ack(session)
        await self._drain(_CLOSE_DRAIN_SECONDS)
        assert self._bye_sent is not None
        self._close_with = self._bye_sent
        await conn.aclose(*self._bye_sent)

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

    def _flush_ack(self, session: Session) -> None:
        self._ack_timer = None
        if self._session is session:
            frame = session.ack_frame()
            if frame is not None:
                self._enqueue(frame)

    async def _announce_ready(self, data: WorkerReadyData) -> None:
        session = self._session
        if session is not None and not self._ready_sent:
            self._ready_sent = True
            self._enqueue(session.ready_frame(data.name))

    def _write_stalled(self, now: float) -> bool:
        """Whether a write has been in progress, with none finishing, for ``heartbeat_timeout``.

        Checked at each heartbeat, so a stall is found between
        ``heartbeat_timeout`` and ``heartbeat_timeout + 2 * heartbeat_interval``
        after it began.
        """
        if not self._write_pending:
            self._stall_mark, self._stall_since = -1, None
            return False
        if self._writes_done != self._stall_mark:  # progress since the last look
            self._stall_mark, self._stall_since = self._writes_done, now
            return False
        return self._stall_since is not None and now - self._stall_since > self.heartbeat_timeout

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

    async def _close_session(self, code: int, reason: str) -> None:
        """Close the session with the close handshake, and wait (bounded) for it to wind down.

        We say BYE after our last MSG; the peer delivers and acknowledges
        everything, sends what it still has and answers BYE; we deliver and
        acknowledge that, then close the connection with ``code`` and
        ``reason``. Within ``close_timeout``: a peer that does not answer (or
        one that closes without answering) ends it sooner.
        """
        session, conn, task = self._session, self._conn, self._session_task
        self._closing = True
        if session is not None and conn is not None:
            if self._bye_sent is None:
                self._bye_sent = (code, reason)
                self._enqueue(session.bye_frame(code, reason))
            running = task is not None and task is not asyncio.current_task() and not task.done()
            if running and task is not None:
                await asyncio.wait({task}, timeout=self.close_timeout)
            if self._conn is conn:  # no answer in time (or no session task to see one)
                if running:
                    logger.info(
                        "proxy %r: no answer to BYE within %.1fs; closing",
                        self.name,
                        self.close_timeout,
                    )
                await self._drain(_CLOSE_DRAIN_SECONDS)
                self._close_with = self._bye_sent
                await conn.aclose(*self._bye_sent)
        if task is not None and task is not asyncio.current_task() and not task.done():
            if self._opening:
                # No live session to close: abandon the attempt (or the wait
                # to retry, or for a resume) rather than wait for its timeout.
                task.cancel()
            await asyncio.wait({task}, timeout=self.heartbeat_timeout)


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
