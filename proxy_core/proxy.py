"""The proxy workers: the only place in the core that awaits I/O.

A proxy is a worker that claims the remote worker's name on its local bus.
Messages it sees go through the outbound filter rules and, if they pass, are
numbered by the sans-I/O :class:`~proxy_core.session.Session` and written to
the connection; frames it receives are decoded by the session, checked by the
inbound rules and put on the local bus. :class:`ProxyClient` connects when it
is activated; :class:`ProxyServer` serves one accepted connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import Any, TypeAlias

from .backoff import Backoff
from .codecs.base import Codec, batch_size_bound
from .errors import (
    CodecError,
    ConfigurationError,
    ConnectError,
    ConnectionClosed,
    HandshakeError,
    MessageTooLarge,
    ProtocolError,
    ProxyError,
    SessionLost,
    TransportError,
)
from .messages import BusMessage
from .plugins import resolve_codec, resolve_transport
from .protocol import (
    FEATURES,
    CloseCode,
    Hello,
    Reject,
    RejectCode,
    Welcome,
    encode_handshake,
)
from .registry import Watch, WorkerReadyData
from .rules import Drop, DropReason, FilterRules
from .session import (
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
    client_accept,
    client_hello,
    common_features,
    new_session_id,
    server_negotiate,
)
from .tls import ClientTLS
from .transport import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Authenticator,
    Connection,
    Transport,
    check_authentication,
)
from .worker import BaseWorker

__all__ = ["ProxyClient", "ProxyServer", "ProxyStats"]

logger = logging.getLogger(__name__)

#: How long a closing session waits for its queued frames (its BYE) to be written.
_CLOSE_DRAIN_SECONDS = 2.0

_NO_RESUME = tuple(f for f in FEATURES if f != "resume")

#: The reconnect policy of a client that names none.
_DEFAULT_BACKOFF = Backoff()

#: The most bytes of frames the writer puts in one BATCH (within the peer's limit).
_BATCH_MAX_BYTES = 256 * 1024

CodecSpec: TypeAlias = str | Codec | Sequence[str | Codec]


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
        active: bool,
    ) -> None:
        super().__init__(name, active=active)
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
        if heartbeat_interval <= 0 or heartbeat_timeout <= heartbeat_interval:
            raise ConfigurationError("need 0 < heartbeat_interval < heartbeat_timeout")
        self.rules = FilterRules(
            local_worker_name, remote_worker_name, tuple(forward_messages), forward_broadcasts
        )
        self.stats = ProxyStats()
        self.max_message_bytes = max_message_bytes
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.max_unacked = max_unacked
        self._conn: Connection | None = None
        self._session: Session | None = None
        self._session_task: asyncio.Task[None] | None = None
        # Every frame of a session goes through one writer task, so that the
        # receive loop never waits on a write: with both directions saturated,
        # a receive loop blocked writing an ACK would stop reading, and the two
        # peers would deadlock. The queue is bounded by max_unacked MSG frames
        # plus the few control frames the receive loop owes.
        self._out: deque[bytes] = deque()
        self._out_wakeup = asyncio.Event()
        self._out_drained = asyncio.Event()
        self._outbox_space = asyncio.Event()
        self._ack_timer: asyncio.TimerHandle | None = None
        self._ready_sent = False
        self._remote_ready_warned = False
        # No live connection: connecting, in the handshake, waiting to retry,
        # or holding a lost session for a resume. Closing then abandons the wait.
        self._opening = False
        self._closing = False  # we are closing on purpose: not a lost link
        self._link_lost = False  # the last connection ended without a BYE either way

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

    # ------------------------------------------------------------ outbound

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
                await asyncio.wait_for(self._outbox_space.wait(), self.heartbeat_timeout)
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
        if session is None:
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
        if self._conn is not None:
            self._enqueue(data)
        # else the link is lost: the frame waits in the outbox for the resume.

    def _enqueue(self, data: bytes) -> None:
        """Queue a frame for the session's writer task; never blocks."""
        self._out.append(data)
        self._out_drained.clear()
        self._out_wakeup.set()

    async def _writer(self, conn: Connection, session: Session, first: bytes | None) -> None:
        """Write the session's frames in order; coalesce them when the sender is ahead.

        Whatever is queued when the writer gets to run goes out together, in
        one BATCH (if the session has them) up to the peer's limit: a lone
        frame leaves at once, alone, and no timer ever holds one back.
        """
        out, wakeup, stats = self._out, self._out_wakeup, self.stats
        limit = min(session.peer_max_message_bytes, _BATCH_MAX_BYTES) if session.batch else 0
        if first is not None and not await self._write(conn, first):
            return
        while True:
            await wakeup.wait()
            wakeup.clear()
            while out:
                data = out.popleft()
                if out and batch_size_bound(len(data) + len(out[0]), 2) <= limit:
                    frames = [data]
                    total = len(data)
                    while out and batch_size_bound(total + len(out[0]), len(frames) + 1) <= limit:
                        frame = out.popleft()
                        frames.append(frame)
                        total += len(frame)
                    data = session.batch_frame(frames)
                    stats.batches_out += 1
                if not await self._write(conn, data):
                    return
            self._out_drained.set()

    async def _write(self, conn: Connection, data: bytes) -> bool:
        """Send one transport message; ``False`` when the connection is done for."""
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
        self.stats.bytes_out += len(data)
        return True

    async def _drain(self, timeout: float) -> None:
        """Wait (bounded) until the writer has sent everything queued, e.g. a BYE."""
        if not self._out_drained.is_set():
            try:
                await asyncio.wait_for(self._out_drained.wait(), timeout)
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
        self._closing = self._link_lost = False
        self._outbox_space.set()
        self._out.clear()
        self._out.extend(replay)
        self._out_drained.set()
        if replay:
            self._out_drained.clear()
            self._out_wakeup.set()
            self.stats.replayed += len(replay)
        self.stats.sessions += 1
        writer = self.create_task(self._writer(conn, session, first), name=f"{self.name}-writer")
        heartbeat = self.create_task(self._heartbeat(conn, session), name=f"{self.name}-heartbeat")
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
            try:
                if code == CloseCode.PROTOCOL_ERROR:
                    await self._drain(_CLOSE_DRAIN_SECONDS)  # let our BYE out first
            finally:
                writer.cancel()
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
            try:
                data = await conn.receive()
            except ConnectionClosed as exc:
                self._link_lost = not self._closing
                return (exc.code or CloseCode.GOING_AWAY), "connection closed"
            except MessageTooLarge as exc:
                logger.warning("proxy %r: peer sent an oversized frame: %s", self.name, exc)
                return CloseCode.TOO_LARGE, "frame too large"
            except ProtocolError as exc:
                self._count_drop(self.stats.dropped_in, DropReason.MALFORMED, exc)
                continue
            self.stats.bytes_in += len(data)
            if len(data) > limit:  # backends enforce this too; never decode past the limit
                logger.warning("proxy %r: peer sent %d bytes > %d", self.name, len(data), limit)
                return CloseCode.TOO_LARGE, "frame too large"
            try:
                event = session.receive(data, loop.time())
            except ProtocolError as exc:
                logger.warning("proxy %r: protocol error from peer: %s", self.name, exc)
                self._enqueue(session.bye_frame(CloseCode.PROTOCOL_ERROR, str(exc)))
                return CloseCode.PROTOCOL_ERROR, "protocol error"
            if isinstance(event, BatchReceived):
                self.stats.batches_in += 1
                for item in event.events:
                    if isinstance(item, ByeReceived):
                        return self._bye(item)
                    await self._on_event(item)
            elif event is not None:
                if isinstance(event, ByeReceived):
                    return self._bye(event)
                await self._on_event(event)
            for frame in session.data_to_send():
                self._enqueue(frame)
            if not session.outbox_full:
                self._outbox_space.set()
            if self._ack_timer is None and session.last_received_seq:
                self._ack_timer = loop.call_later(session.ack_delay, self._flush_ack, session)

    def _bye(self, event: ByeReceived) -> tuple[int, str]:
        logger.info("proxy %r: peer said bye (%d %s)", self.name, event.code, event.reason)
        return CloseCode.NORMAL, "bye"

    async def _on_event(self, event: FrameEvent) -> None:
        if isinstance(event, MessageReceived):
            message = event.message
            decision = self.rules.inbound(message)
            if isinstance(decision, Drop):
                self._count_drop(self.stats.dropped_in, decision.reason, message)
                return
            self.stats.messages_in += 1
            if message.target is None:
                # An allow-listed broadcast (forward_broadcasts): it is for the
                # served worker only, never for every worker on this bus.
                self.bus.deliver_to(self.rules.local_worker, message)
            else:
                await self.bus.send(message)
        elif isinstance(event, MessageUndecodable):
            self._count_drop(self.stats.dropped_in, event.reason, event.error)
        elif isinstance(event, DuplicateDiscarded):
            self.stats.duplicates += 1
        elif isinstance(event, RemoteReady):
            self._remote_ready(event.worker)
        elif isinstance(event, PongReceived):
            self.stats.heartbeat_rtt = event.rtt

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

    async def _heartbeat(self, conn: Connection, session: Session) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            now = loop.time()
            if session.is_dead(now, self.heartbeat_timeout):
                logger.warning(
                    "proxy %r: nothing heard for %.1fs; closing the link",
                    self.name,
                    self.heartbeat_timeout,
                )
                await conn.aclose(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")
                return
            self._enqueue(session.ping_frame(now))

    async def _close_session(self, code: int, reason: str) -> None:
        """Say BYE, close the connection, and wait (bounded) for the session to wind down."""
        session, conn, task = self._session, self._conn, self._session_task
        self._closing = True
        if session is not None and conn is not None:
            self._enqueue(session.bye_frame(code, reason))
            await self._drain(_CLOSE_DRAIN_SECONDS)
            await conn.aclose(code, reason)
        if task is not None and task is not asyncio.current_task() and not task.done():
            if self._opening:
                # No live session to close: abandon the attempt (or the wait
                # to retry, or for a resume) rather than wait for its timeout.
                task.cancel()
            await asyncio.wait({task}, timeout=self.heartbeat_timeout)


class ProxyClient(_ProxyWorker):
    """The client side of a proxy: connects to a server when activated.

    Activate it (``await worker.activate_worker("proxy")``) to connect; it
    never opens a second connection while one is open or opening. A lost link
    (no BYE) is reconnected by itself, following ``reconnect``, and the session
    resumed where the server holds it: what either side had not acknowledged
    is sent again and duplicates are discarded, so every message arrives once
    and in order. Events:

    - ``on_connected(proxy, connection)``: a new session is open;
    - ``on_reconnected(proxy, connection)``: the session was resumed;
    - ``on_disconnected(proxy, connection)``: a connection ended, however;
    - ``on_reconnecting(proxy, attempt, delay)``: retry number ``attempt``
      (from 1) follows in ``delay`` seconds;
    - ``on_session_lost(proxy, error)``: a :class:`~proxy_core.errors.SessionLost`
      (the server no longer held the session, or the link was lost where no
      resume is possible): its unacknowledged messages are gone;
    - ``on_connect_error(proxy, error)``: an attempt failed.

    Args:
        name: this worker's name.
        url: the server's URL (``ws://host:port/ws``).
        local_worker_name: the worker on this bus that talks to the remote one.
        remote_worker_name: the worker on the server's bus.
        forward_messages: the message types allowed to cross, both ways.
        headers: sent with the connection request (e.g. an auth token).
        transport: a transport name or instance (default ``"websockets"``).
        codec: a codec name or instance, or several in order of preference.
        ssl: TLS settings for a secure URL (``wss://``, ``grpcs://``): a
            :class:`~proxy_core.tls.ClientTLS`, which every backend takes, or an
            ``ssl.SSLContext`` (the WebSocket backends only); default: the
            system's trust store. A server whose certificate does not verify is
            a :class:`~proxy_core.errors.TLSError`.
        open_timeout: seconds allowed to connect and complete the handshake.
        reconnect: the :class:`~proxy_core.backoff.Backoff` policy for retries,
            or ``None`` to never retry (one attempt; a lost link ends the session).
        on_session_expired: what to do when the server no longer holds the
            session being resumed: ``"new"`` (go on with a new session) or
            ``"error"`` (stop; ``wait_connected`` raises ``SessionLost``).
        forward_broadcasts, max_message_bytes, heartbeat_interval,
        heartbeat_timeout, max_unacked: see ``docs/concepts.md``.
        active: connect as soon as the runner starts.
    """

    EVENTS = (
        *BaseWorker.EVENTS,
        "on_connected",
        "on_reconnected",
        "on_disconnected",
        "on_reconnecting",
        "on_session_lost",
        "on_connect_error",
    )

    def __init__(
        self,
        name: str,
        *,
        url: str,
        local_worker_name: str,
        remote_worker_name: str,
        forward_messages: Sequence[type[BusMessage]] = (),
        headers: dict[str, str] | None = None,
        transport: str | Transport = "websockets",
        codec: CodecSpec = "msgpack",
        ssl: SSLContext | ClientTLS | None = None,
        open_timeout: float = 10.0,
        reconnect: Backoff | None = _DEFAULT_BACKOFF,
        on_session_expired: str = "new",
        forward_broadcasts: bool = False,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        heartbeat_interval: float = 10.0,
        heartbeat_timeout: float = 30.0,
        max_unacked: int = 4096,
        active: bool = False,
    ) -> None:
        super().__init__(
            name,
            local_worker_name=local_worker_name,
            remote_worker_name=remote_worker_name,
            forward_messages=forward_messages,
            forward_broadcasts=forward_broadcasts,
            max_message_bytes=max_message_bytes,
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout,
            max_unacked=max_unacked,
            active=active,
        )
        self.url = url
        self.headers = dict(headers or {})
        self.transport = resolve_transport(transport)
        self.codecs = _codec_list(codec)
        self.ssl = ssl
        self.open_timeout = open_timeout
        if reconnect is not None and not isinstance(reconnect, Backoff):
            raise ConfigurationError(
                f"reconnect must be a proxy_core.Backoff or None, got {reconnect!r}"
            )
        if on_session_expired not in ("new", "error"):
            raise ConfigurationError(
                f"on_session_expired must be 'new' or 'error', got {on_session_expired!r}"
            )
        self.reconnect = reconnect
        self.on_session_expired = on_session_expired
        self.last_error: ProxyError | None = None
        self._outcome: asyncio.Future[None] | None = None

    async def on_start(self) -> None:
        if self.active:
            self._connect()

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        self._connect()

    async def on_deactivated(self) -> None:
        await self._close_session(CloseCode.NORMAL, "deactivated")

    async def on_end(self, reason: str | None) -> None:
        await self._close_session(CloseCode.NORMAL, reason or "end")

    async def wait_connected(self, timeout: float = 30.0) -> None:
        """Wait until the current connection attempt succeeds, or raise why it failed.

        Raises:
            AuthenticationError: the server refused our headers.
            SessionRejected: the server refused the session for another reason.
            HandshakeError: the server closed the connection or answered nonsense.
            ConnectError: the server could not be reached.
            SessionLost: the session could not be resumed and
                ``on_session_expired`` is ``"error"``.
            TimeoutError: no outcome within ``timeout`` seconds.
        """
        if self.connected:
            return
        await asyncio.wait_for(asyncio.shield(self._get_outcome()), timeout)

    def _get_outcome(self) -> asyncio.Future[None]:
        if self._outcome is None:
            self._outcome = asyncio.get_running_loop().create_future()
        return self._outcome

    def _connect(self) -> None:
        if self._session_task is not None and not self._session_task.done():
            logger.debug("proxy %r is already connected or connecting", self.name)
            return
        if self._outcome is not None and self._outcome.done():
            self._outcome = None
        self._get_outcome()
        self._session_task = self.create_task(self._client_main(), name=f"{self.name}-session")

    def _settle(self, error: ProxyError | None = None) -> None:
        """Resolve what ``wait_connected`` waits for: connected, or why not.

        A failure stays there for later waiters, until the next activation.
        """
        outcome = self._outcome if error is None else self._get_outcome()
        if outcome is None or outcome.done():
            return
        if error is None:
            outcome.set_result(None)
        else:
            outcome.set_exception(error)
            outcome.add_done_callback(lambda f: f.exception())  # retrieved: no GC warning

    async def _client_main(self) -> None:
        loop = asyncio.get_running_loop()
        policy = self.reconnect
        held: Session | None = None  # a lost session to resume
        attempt = 0  # failed attempts in this streak
        streak_start: float | None = None
        ever_connected = False
        try:
            while True:
                self._opening = True
                try:
                    opened = await self._open(held)
                finally:
                    self._opening = False
                if isinstance(opened, ProxyError):
                    error = opened
                    self.last_error = error
                    logger.warning(
                        "proxy %r could not connect to %s: %s", self.name, self.url, error
                    )
                    await self._call_event("on_connect_error", error)
                    now = loop.time()
                    streak_start = now if streak_start is None else streak_start
                    delay = None
                    if policy is not None and (ever_connected or policy.retry_first_connect):
                        delay = policy.next_delay(attempt, now - streak_start, error)
                    if delay is None:
                        if held is not None:
                            await self._lose(held, "gave up reconnecting")
                        logger.error("proxy %r: giving up on %s: %s", self.name, self.url, error)
                        self._settle(error)
                        return
                    attempt += 1
                    await self._call_event("on_reconnecting", attempt, delay)
                    self._opening = True
                    try:
                        await asyncio.sleep(delay)
                    finally:
                        self._opening = False
                    continue
                conn, session, welcome, replay = opened
                try:
                    if held is not None and session is not held:
                        lost = await self._lose(held, "the server no longer holds it")
                        if self.on_session_expired == "error":
                            await conn.aclose(CloseCode.NORMAL, "session lost")
                            self.last_error = lost
                            self._settle(lost)
                            return
                except BaseException:
                    await conn.aclose(CloseCode.GOING_AWAY, "stopped")
                    raise
                resumed, held = session is held, None
                self.last_error = None
                if ever_connected:
                    self.stats.reconnects += 1
                if resumed:
                    self.stats.resumes += 1
                ever_connected = True
                self._settle()
                logger.info(
                    "proxy %r %s %s (session %s)",
                    self.name,
                    "resumed its session on" if resumed else "connected to",
                    self.url,
                    session.session_id,
                )
                self._ready_sent = False  # a new connection: announce our worker again
                connected_at = loop.time()

                async def announce(
                    conn: Connection = conn, welcome: Welcome = welcome, resumed: bool = resumed
                ) -> None:
                    await self._call_event("on_reconnected" if resumed else "on_connected", conn)
                    for worker in welcome.ready:
                        self._remote_ready(worker)

                can_resume = policy is not None and "resume" in welcome.features
                try:
                    kept = await self._run_session(
                        conn, session, replay=replay, on_open=announce, resumable=can_resume
                    )
                finally:
                    if self._outcome is not None and self._outcome.done():
                        self._outcome = None  # wait_connected now waits for the next attempt
                    await self._call_event("on_disconnected", conn)
                if kept:
                    held = session
                elif policy is None or not self._link_lost or self._closing:
                    return  # closed on purpose, by either side, or no retries
                else:
                    await self._lose(session, "the link was lost and cannot be resumed")
                if policy is not None and loop.time() - connected_at >= policy.reset_after:
                    attempt, streak_start = 0, None
        except asyncio.CancelledError:
            self._settle(ConnectError("the proxy stopped before it connected"))
            raise
        finally:
            if held is not None:  # stopped while waiting to resume: its messages are gone
                if held.unacked:
                    self.stats.dropped_out[DropReason.SESSION_LOST.value] += held.unacked
                if self._session is held:
                    self._session = None
                    self._outbox_space.set()

    async def _lose(self, session: Session, why: str) -> SessionLost:
        """Report that ``session`` is gone with its unacknowledged messages."""
        lost = SessionLost(session.session_id, session.unacked)
        logger.warning(
            "proxy %r: session %s lost (%s): %s", self.name, session.session_id, why, lost
        )
        if session.unacked:
            self.stats.dropped_out[DropReason.SESSION_LOST.value] += session.unacked
        if self._session is session:
            self._session = None
            self._outbox_space.set()
        await self._call_event("on_session_lost", lost)
        return lost

    async def _open(
        self, held: Session | None
    ) -> tuple[Connection, Session, Welcome, list[bytes]] | ProxyError:
        """Connect and handshake, resuming ``held`` if the server still has it.

        Returns the connection, the session (``held`` itself when resumed), the
        WELCOME and the frames to send again; or the error of this attempt.
        """
        try:
            conn = await self.transport.connect(
                self.url,
                headers=self.headers,
                ssl=self.ssl,
                max_message_bytes=self.max_message_bytes,
                open_timeout=self.open_timeout,
            )
        except ProxyError as exc:
            return exc
        try:
            return await asyncio.wait_for(self._handshake(conn, held), self.open_timeout)
        except (ProxyError, TimeoutError) as exc:
            await conn.aclose(CloseCode.PROTOCOL_ERROR, "handshake failed")
            return exc if isinstance(exc, ProxyError) else HandshakeError("handshake timed out")
        except asyncio.CancelledError:
            await conn.aclose(CloseCode.GOING_AWAY, "stopped")
            raise

    async def _handshake(
        self, conn: Connection, held: Session | None
    ) -> tuple[Connection, Session, Welcome, list[bytes]]:
        hello = client_hello(
            self.codecs,
            client_worker=self.rules.local_worker,
            server_worker=self.rules.remote_worker,
            max_message_bytes=self.max_message_bytes,
            # Only a client that comes back after a lost link can resume.
            features=FEATURES if self.reconnect is not None else _NO_RESUME,
            resume=(held.session_id, held.last_received_seq) if held is not None else None,
        )
        try:
            await conn.send(hello)
            answer = await conn.receive()
        except (TransportError, MessageTooLarge, ProtocolError) as exc:
            # The server hung up, or answered with a frame that cannot be a WELCOME.
            raise HandshakeError(f"no WELCOME from the server: {exc}") from exc
        welcome, codec = client_accept(answer, self.codecs)
        now = asyncio.get_running_loop().time()
        if held is not None and welcome.resumed:
            if welcome.session_id != held.session_id or codec.name != held.codec.name:
                raise HandshakeError(
                    f"the server resumed session {welcome.session_id} with codec "
                    f"{codec.name!r}; we asked for {held.session_id} ({held.codec.name!r})"
                )
            try:
                replay = held.resume(welcome.received, now)
            except ProtocolError as exc:
                raise HandshakeError(f"cannot resume: {exc}") from exc
            return conn, held, welcome, replay
        session = Session(
            codec,
            session_id=welcome.session_id,
            peer_max_message_bytes=min(welcome.max_message_bytes, self.max_message_bytes),
            max_unacked=self.max_unacked,
            batch="batch" in common_features(welcome.features, codec),
            now=now,
        )
        return conn, session, welcome, []


class SessionTable:
    """The sessions of one server that a client may resume, by session id.

    :func:`~proxy_core.serve_proxy` keeps one for all its connections; give the
    same table to the :class:`ProxyServer` of every connection if you accept
    connections yourself, and call :meth:`route` before building a runner.
    """

    def __init__(self) -> None:
        self._proxies: dict[str, ProxyServer] = {}

    def __len__(self) -> int:
        return len(self._proxies)

    def get(self, session_id: str) -> ProxyServer | None:
        """Return the proxy holding ``session_id``, if it is held."""
        return self._proxies.get(session_id)

    def _add(self, session_id: str, proxy: ProxyServer) -> None:
        self._proxies[session_id] = proxy

    def _remove(self, session_id: str, proxy: ProxyServer) -> None:
        if self._proxies.get(session_id) is proxy:
            del self._proxies[session_id]

    async def route(self, conn: Connection, accepted: tuple[Hello, Codec]) -> bool:
        """Hand ``conn`` to the session its HELLO asks to resume, if it is held.

        Returns ``False`` (the caller starts a new session) when there is no
        such session; otherwise waits until the resumed session lets go of
        ``conn`` and returns ``True``.
        """
        hello, codec = accepted
        proxy = self._proxies.get(hello.resume_session_id or "")
        if proxy is None:
            return False
        return await proxy._take_over(conn, hello, codec)


async def accept_hello(
    conn: Connection,
    *,
    codecs: Sequence[Codec],
    authenticate: Authenticator | None,
    worker_name: str,
    remote_worker_name: str,
    timeout: float,
    log_name: str,
) -> tuple[Hello, Codec] | None:
    """Read a client's HELLO, authenticate it and pick the codec; or refuse.

    On refusal the REJECT is sent (bounded by ``timeout``), ``conn`` is
    closed and ``None`` returned. No session exists before this succeeds.
    """
    result: tuple[Hello, Codec] | Reject
    try:
        first: bytes | ProtocolError = await asyncio.wait_for(conn.receive(), timeout)
    except ProtocolError as exc:
        first = exc  # a text frame: refused below like any malformed HELLO
    except (TransportError, MessageTooLarge, TimeoutError) as exc:
        logger.info("proxy %r: no valid HELLO from %s: %r", log_name, conn.remote_address, exc)
        await conn.aclose(CloseCode.PROTOCOL_ERROR, "no HELLO")
        return None
    # Authenticate first: the reason of any other refusal would tell an
    # unauthenticated peer our worker names or codecs.
    try:
        refusal = await asyncio.wait_for(
            check_authentication(authenticate, conn.request_headers), timeout
        )
    except TimeoutError:
        logger.warning("proxy %r: the authenticate hook timed out; refusing", log_name)
        refusal = "authentication timed out"
    if refusal is not None:
        result = Reject(RejectCode.UNAUTHORIZED, refusal)
    elif isinstance(first, ProtocolError):
        result = Reject(RejectCode.BAD_HELLO, f"HELLO must be a binary frame: {first}")
    else:
        result = server_negotiate(
            first, codecs, worker_name=worker_name, remote_worker_name=remote_worker_name
        )
    if isinstance(result, Reject):
        logger.info("proxy %r rejected %s: %s", log_name, conn.remote_address, result.reason)
        try:
            await asyncio.wait_for(conn.send(encode_handshake(result)), timeout)
        except (TransportError, TimeoutError):
            pass
        await conn.aclose(result.code, result.reason[:120])
        return None
    return result


@dataclass
class _Resume:
    """A connection that asks to take a held session over."""

    conn: Connection
    hello: Hello
    codec: Codec
    #: Set when the session lets go of ``conn``: whether it was resumed on it.
    done: asyncio.Future[bool]


class ProxyServer(_ProxyWorker):
    """The server side of a proxy: serves one accepted connection in its own runner.

    It starts serving when its runner starts. Events:
    ``on_client_connected(proxy, connection)`` after a successful handshake
    (and again after a resume), ``on_client_disconnected(proxy, connection)``
    whenever a connection ends, however it ends, and
    ``on_session_expired(proxy, session_id)`` when a lost session was not
    resumed in time. By default the runner is ended when the session ends.

    With a :class:`SessionTable` (``serve_proxy`` gives one) and
    ``resume_grace`` > 0, a connection lost without a BYE does not end the
    session: its runner, workers and unacknowledged messages are kept for
    ``resume_grace`` seconds, and a client that comes back with the session id
    resumes it, both sides sending again what the other did not acknowledge.

    Args:
        name: this worker's name.
        connection: an accepted :class:`~proxy_core.transport.Connection`.
        worker_name: the worker on this bus that talks to the client's.
        remote_worker_name: the client's worker.
        forward_messages: the message types allowed to cross, both ways.
        codecs: codec names or instances this server accepts; the client's
            order of preference decides.
        authenticate: ``authenticate(headers)`` run before the session exists.
        end_runner_on_disconnect: end the runner when the session ends.
        handshake_timeout: seconds the client has to send HELLO.
        sessions: the table through which clients resume (``None``: no resume).
        resume_grace: seconds a lost session is held for a resume.
        hello: the client's HELLO and chosen codec, if already read with
            :func:`accept_hello` (then it is not read again).
    """

    EVENTS = (
        *BaseWorker.EVENTS,
        "on_client_connected",
        "on_client_disconnected",
        "on_session_expired",
    )

    def __init__(
        self,
        name: str,
        *,
        connection: Connection,
        worker_name: str,
        remote_worker_name: str,
        forward_messages: Sequence[type[BusMessage]] = (),
        codecs: CodecSpec = ("msgpack", "json"),
        authenticate: Authenticator | None = None,
        end_runner_on_disconnect: bool = True,
        handshake_timeout: float = 10.0,
        forward_broadcasts: bool = False,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        heartbeat_interval: float = 10.0,
        heartbeat_timeout: float = 30.0,
        max_unacked: int = 4096,
        sessions: SessionTable | None = None,
        resume_grace: float = 30.0,
        hello: tuple[Hello, Codec] | None = None,
    ) -> None:
        super().__init__(
            name,
            local_worker_name=worker_name,
            remote_worker_name=remote_worker_name,
            forward_messages=forward_messages,
            forward_broadcasts=forward_broadcasts,
            max_message_bytes=max_message_bytes,
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout,
            max_unacked=max_unacked,
            active=True,
        )
        if not isinstance(connection, Connection):
            raise ConfigurationError(
                f"connection must be a proxy_core Connection, got {type(connection).__qualname__}; "
                "wrap library sockets with transport.adapt(...)"
            )
        if resume_grace < 0:
            raise ConfigurationError("resume_grace must not be negative")
        self.connection = connection
        self.codecs = _codec_list(codecs)
        self.authenticate = authenticate
        self.end_runner_on_disconnect = end_runner_on_disconnect
        self.handshake_timeout = handshake_timeout
        self.sessions = sessions
        self.resume_grace = resume_grace
        self._hello = hello
        self._features: tuple[str, ...] = ()
        self._resumes: asyncio.Queue[_Resume] = asyncio.Queue()

    @property
    def resumable(self) -> bool:
        """Whether a lost session of this proxy is held for a resume."""
        return self.sessions is not None and self.resume_grace > 0

    async def on_start(self) -> None:
        self._session_task = self.create_task(self._server_main(), name=f"{self.name}-session")

    async def on_end(self, reason: str | None) -> None:
        await self._close_session(CloseCode.GOING_AWAY, reason or "server ending")

    async def _server_main(self) -> None:
        conn = self.connection
        session: Session | None = None
        done: asyncio.Future[bool] | None = None
        try:
            self._opening = True
            try:
                accepted = self._hello or await accept_hello(
                    conn,
                    codecs=self.codecs,
                    authenticate=self.authenticate,
                    worker_name=self.rules.local_worker,
                    remote_worker_name=self.rules.remote_worker,
                    timeout=self.handshake_timeout,
                    log_name=self.name,
                )
            finally:
                self._opening = False
            if accepted is None:
                return
            session, first = self._new_session(*accepted)
            replay: list[bytes] = []
            if self.sessions is not None:
                self.sessions._add(session.session_id, self)
            while True:

                async def announce(conn: Connection = conn) -> None:
                    await self._call_event("on_client_connected", conn)

                try:
                    kept = await self._run_session(
                        conn,
                        session,
                        first=first,
                        replay=replay,
                        on_open=announce,
                        # Only a client that speaks "resume" can come back for it.
                        resumable="resume" in self._features,
                    )
                finally:
                    await self._call_event("on_client_disconnected", conn)
                    if done is not None and not done.done():
                        done.set_result(True)
                if not kept:
                    return
                resumed = await self._wait_for_resume(session)
                if resumed is None:
                    return
                conn, first, replay, done = resumed
        finally:
            if session is not None and self.sessions is not None:
                self.sessions._remove(session.session_id, self)
            if done is not None and not done.done():
                done.set_result(True)
            if self._session is session:
                self._session = None
            self._outbox_space.set()
            while not self._resumes.empty():  # too late: they start new sessions
                self._resumes.get_nowait().done.set_result(False)
            await conn.aclose()
            if self.end_runner_on_disconnect:
                await self.runner.end("client disconnected")

    def _new_session(self, hello: Hello, codec: Codec) -> tuple[Session, bytes]:
        """Open a new session for an accepted HELLO; return it and the WELCOME to send."""
        # Announce our worker in WELCOME if it is ready already; READY follows otherwise.
        self._ready_sent = self.registry.is_ready(self.rules.local_worker)
        features = common_features(hello.features, codec)
        if not self.resumable:
            features = tuple(f for f in features if f != "resume")
        session = Session(
            codec,
            session_id=new_session_id(),
            peer_max_message_bytes=min(hello.max_message_bytes, self.max_message_bytes),
            max_unacked=self.max_unacked,
            batch="batch" in features,
            now=asyncio.get_running_loop().time(),
        )
        self._features = features
        welcome = Welcome(
            codec=codec.name,
            session_id=session.session_id,
            ready=(self.rules.local_worker,) if self._ready_sent else (),
            max_message_bytes=self.max_message_bytes,
            features=features,
        )
        return session, encode_handshake(welcome)

    async def _wait_for_resume(
        self, session: Session
    ) -> tuple[Connection, bytes, list[bytes], asyncio.Future[bool]] | None:
        """Hold the lost ``session`` for ``resume_grace`` seconds; return the resume, if any."""
        self._opening = True  # no live connection: closing abandons the wait
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.resume_grace
        try:
            while True:
                try:
                    request = await asyncio.wait_for(
                        self._resumes.get(), max(0.0, deadline - loop.time())
                    )
                except TimeoutError:
                    lost = session.unacked
                    logger.info(
                        "proxy %r: session %s not resumed within %.1fs; ending it "
                        "(%d unacknowledged message(s) lost)",
                        self.name,
                        session.session_id,
                        self.resume_grace,
                        lost,
                    )
                    if lost:
                        self.stats.dropped_out[DropReason.SESSION_LOST.value] += lost
                    await self._call_event("on_session_expired", session.session_id)
                    return None
                accepted = self._resume(session, request)
                if accepted is not None:
                    return accepted
        finally:
            self._opening = False

    def _resume(
        self, session: Session, request: _Resume
    ) -> tuple[Connection, bytes, list[bytes], asyncio.Future[bool]] | None:
        hello = request.hello
        try:
            if request.codec.name != session.codec.name:
                raise ProtocolError(
                    f"the session uses codec {session.codec.name!r}, the client now offers "
                    f"{list(hello.codecs)}"
                )
            replay = session.resume(hello.resume_received, asyncio.get_running_loop().time())
        except ProtocolError as exc:
            logger.warning("proxy %r: refused to resume %s: %s", self.name, session.session_id, exc)
            # The connection will start a new session instead.
            request.done.set_result(False)
            return None
        self.stats.resumes += 1
        self.stats.reconnects += 1
        self._ready_sent = self.registry.is_ready(self.rules.local_worker)
        welcome = Welcome(
            codec=session.codec.name,
            session_id=session.session_id,
            ready=(self.rules.local_worker,) if self._ready_sent else (),
            max_message_bytes=self.max_message_bytes,
            features=self._features,
            resumed=True,
            received=session.last_received_seq,
        )
        logger.info(
            "proxy %r: session %s resumed from %s (%d frame(s) to send again)",
            self.name,
            session.session_id,
            request.conn.remote_address,
            len(replay),
        )
        return request.conn, encode_handshake(welcome), replay, request.done

    async def _take_over(self, conn: Connection, hello: Hello, codec: Codec) -> bool:
        """Queue ``conn`` to resume this proxy's session; wait until it is done with it.

        Returns ``False`` if the session was not resumed after all (the caller
        then starts a new session on ``conn``).
        """
        task = self._session_task
        if task is None or task.done():
            return False
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._resumes.put_nowait(_Resume(conn, hello, codec, done))
        live = self._conn
        if live is not None and live is not conn:
            # The client saw the link die before we did (a half-open link):
            # drop the stale connection, which holds the session for the resume.
            await live.aclose(CloseCode.GOING_AWAY, "replaced by a resumed connection")
        return await done
