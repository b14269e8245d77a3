"""The client side of a proxy: connects, reconnects, resumes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from ssl import SSLContext
from typing import Any

from ._link import _ProxyWorker
from ._link_base import (
    _DEFAULT_BACKOFF,
    _NO_RESUME,
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_CODEC,
    CodecSpec,
    _codec_list,
)
from .backoff import Backoff
from .errors import (
    ConfigurationError,
    ConnectError,
    HandshakeError,
    MessageTooLarge,
    ProtocolError,
    ProxyError,
    SessionLost,
    TransportError,
)
from .inbox import DEFAULT_MAX_QUEUE, DEFAULT_PUT_TIMEOUT, OverflowPolicy
from .messages import BusMessage
from .plugins import resolve_transport
from .protocol import (
    FEATURES,
    CloseCode,
    Welcome,
)
from .rules import DropReason
from .session import (
    DEFAULT_MAX_UNACKED_BYTES,
    Session,
    client_accept,
    client_hello,
    common_features,
)
from .tls import ClientTLS
from .transport import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Connection,
    Transport,
    redact_url,
)
from .worker import BaseWorker

__all__ = ["ProxyClient"]

logger = logging.getLogger("proxy_core.proxy")


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
    - ``on_connect_error(proxy, error)``: an attempt failed;
    - ``on_gave_up(proxy, error)``: the client stopped trying (the server
      refused it, the retries ran out, or a session it could not resume was
      lost with ``on_session_expired="error"``). By default the failure ends
      the runner and ``runner.run()`` raises ``error``; registering a handler
      for this event replaces that default (the runner goes on, and the
      proxy connects again when it is next activated).

    Reconnecting: a refused connection, a timeout or a dropped link is tried
    again following ``reconnect``; by default (``Backoff()``) for up to 5
    minutes of failures in a row, with waits growing from 0.1 s to 10 s. The
    first failure of a streak is logged once as a warning that says so, the
    next ones at debug level. A refusal (bad token, no common codec, unknown
    worker) or a certificate that does not verify is never retried.

    Args:
        name: this worker's name.
        url: the server's URL (``ws://host:port/ws``), checked here against
            the transport (a scheme it cannot use is a ``ConfigurationError``).
        local_worker_name: the worker on this bus that talks to the remote one.
        remote_worker_name: the worker on the server's bus.
        forward_messages: the message types allowed to cross, both ways.
        headers: sent with the connection request (e.g. an auth token).
        transport: a transport name or instance (default ``"websockets"``).
        codec: a codec name or instance, or several in order of preference
            (default ``"msgpack"``, as for every client class; ``"json"`` by name).
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
        close_timeout: seconds the close handshake may take: after our BYE,
            how long to wait for the server's answer before closing anyway.
        forward_broadcasts, max_message_bytes, heartbeat_interval,
        heartbeat_timeout, max_unacked, max_unacked_bytes: see ``docs/concepts.md``.
        active: connect as soon as the runner starts.
    """

    # Slots, as for the server.
    __slots__ = (
        "_outcome",
        "headers",
        "last_error",
        "on_session_expired",
        "open_timeout",
        "reconnect",
        "ssl",
        "transport",
        "url",
    )

    EVENTS = (
        *BaseWorker.EVENTS,
        "on_connected",
        "on_reconnected",
        "on_disconnected",
        "on_reconnecting",
        "on_session_lost",
        "on_connect_error",
        "on_gave_up",
    )

    side = "client"

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
        codec: CodecSpec = DEFAULT_CODEC,
        ssl: SSLContext | ClientTLS | None = None,
        open_timeout: float = 10.0,
        reconnect: Backoff | None = _DEFAULT_BACKOFF,
        on_session_expired: str = "new",
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
            max_unacked_bytes=max_unacked_bytes,
            close_timeout=close_timeout,
            max_queue=max_queue,
            overflow=overflow,
            put_timeout=put_timeout,
            active=active,
        )
        self.url = url
        self.headers = dict(headers or {})
        self.transport = resolve_transport(transport)
        self.transport.check_url(url)  # a URL this backend cannot use fails here, not later
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
                    await self._call_event("on_connect_error", error)
                    now = loop.time()
                    streak_start = now if streak_start is None else streak_start
                    delay = None
                    if policy is not None and (ever_connected or policy.retry_first_connect):
                        delay = policy.next_delay(attempt, now - streak_start, error)
                    if delay is None:
                        if held is not None:
                            await self._lose(held, "gave up reconnecting")
                        await self._give_up(error, attempt + 1)
                        return
                    if attempt == 0:
                        assert policy is not None  # a delay comes from a policy
                        logger.warning(
                            "proxy %r: %s; trying again in the background %s "
                            "(reconnect=Backoff(...) changes this, reconnect=None fails at once)",
                            self.name,
                            error,
                            policy.describe(),
                        )
                    else:
                        logger.debug(
                            "proxy %r: attempt %d failed: %s", self.name, attempt + 1, error
                        )
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
                            await self._give_up(lost, attempt + 1)
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
                    "proxy %r %s %s (session %s%s)",
                    self.name,
                    "resumed its session on" if resumed else "connected to",
                    self.url,
                    session.session_id,
                    f", after {attempt + 1} attempts" if attempt else "",
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

    async def _give_up(self, error: ProxyError, attempts: int) -> None:
        """Stop trying: tell ``wait_connected``, then ``on_gave_up`` or the runner."""
        self.last_error = error
        tried = f" after {attempts} attempts" if attempts > 1 else ""
        url = redact_url(self.url)
        self._settle(error)
        if self._handlers is not None and self._handlers.get("on_gave_up"):
            logger.warning(
                "proxy %r: giving up on %s%s (on_gave_up decides what next): %s",
                *(self.name, url, tried, error),
            )
            await self._call_event("on_gave_up", error)
            return
        # The error reaches the program through run(); logging it as an error
        # here as well would report one failure twice.
        logger.info(
            "proxy %r: giving up on %s%s; runner.run() raises: %s", self.name, url, tried, error
        )
        error.add_note(f"proxy {self.name!r} gave up on {url}{tried}")
        self.runner.fail(error, f"proxy {self.name!r} gave up")

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
            async with asyncio.timeout(self.open_timeout):
                return await self._handshake(conn, held)
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
            max_unacked_bytes=self.max_unacked_bytes,
            batch="batch" in common_features(welcome.features, codec),
            now=now,
        )
        return conn, session, welcome, []
