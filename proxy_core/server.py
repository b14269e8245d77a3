"""The server side of a proxy: serves a connection, holds a lost session for a resume."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from ._link import _ProxyWorker
from ._link_base import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_SERVER_CODECS,
    CodecSpec,
    _codec_list,
)
from .codecs.base import Codec
from .errors import (
    ConfigurationError,
    MessageTooLarge,
    ProtocolError,
    TransportError,
)
from .inbox import DEFAULT_MAX_QUEUE, DEFAULT_PUT_TIMEOUT, OverflowPolicy
from .messages import BusMessage
from .protocol import (
    CloseCode,
    Hello,
    Reject,
    RejectCode,
    Welcome,
    encode_handshake,
)
from .rules import DropReason
from .session import (
    DEFAULT_MAX_UNACKED_BYTES,
    Session,
    common_features,
    new_session_id,
    server_negotiate,
)
from .transport import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Authenticator,
    Connection,
    check_authentication,
)
from .worker import BaseWorker

__all__ = ["ProxyServer", "SessionTable", "accept_hello"]

logger = logging.getLogger("proxy_core.proxy")


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
        async with asyncio.timeout(timeout):
            first: bytes | ProtocolError = await conn.receive()
    except ProtocolError as exc:
        first = exc  # a text frame: refused below like any malformed HELLO
    except (TransportError, MessageTooLarge, TimeoutError) as exc:
        logger.info("proxy %r: no valid HELLO from %s: %r", log_name, conn.remote_address, exc)
        await conn.aclose(CloseCode.PROTOCOL_ERROR, "no HELLO")
        return None
    # Authenticate first: the reason of any other refusal would tell an
    # unauthenticated peer our worker names or codecs.
    try:
        async with asyncio.timeout(timeout):
            refusal = await check_authentication(authenticate, conn.request_headers)
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
            async with asyncio.timeout(timeout):
                await conn.send(encode_handshake(result))
        except (TransportError, TimeoutError):
            pass
        await conn.aclose(result.code, result.reason)  # the transport cuts it (truncate_reason)
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
        close_timeout: seconds the close handshake may take (our answer to a
            client's BYE comes within half of it; after our own BYE, how long
            we wait for the client's answer).
        sessions: the table through which clients resume (``None``: no resume).
        resume_grace: seconds a lost session is held for a resume.
        hello: the client's HELLO and chosen codec, if already read with
            :func:`accept_hello` (then it is not read again).
    """

    # Slots: one per session (idle memory).
    __slots__ = (
        "_features",
        "_hello",
        "_resumes",
        "authenticate",
        "connection",
        "end_runner_on_disconnect",
        "handshake_timeout",
        "resume_grace",
        "sessions",
    )

    EVENTS = (
        *BaseWorker.EVENTS,
        "on_client_connected",
        "on_client_disconnected",
        "on_session_expired",
    )

    side = "server"

    #: The connections this class serves, and the error for another object
    #: (``{got}``: its type): a backend's class may serve only its own
    #: (``GrpcProxyServer``).
    connection_type: ClassVar[type[Connection]] = Connection  # type: ignore[type-abstract]
    connection_refused: ClassVar[str] = (
        "connection must be a proxy_core Connection, got {got}; "
        "wrap library sockets with transport.adapt(...)"
    )

    def __init__(
        self,
        name: str,
        *,
        connection: Connection,
        worker_name: str,
        remote_worker_name: str,
        forward_messages: Sequence[type[BusMessage]] = (),
        codecs: CodecSpec = DEFAULT_SERVER_CODECS,
        authenticate: Authenticator | None = None,
        end_runner_on_disconnect: bool = True,
        handshake_timeout: float = 10.0,
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
            max_unacked_bytes=max_unacked_bytes,
            close_timeout=close_timeout,
            max_queue=max_queue,
            overflow=overflow,
            put_timeout=put_timeout,
            active=True,
        )
        if not isinstance(connection, self.connection_type):
            got = f"{type(connection).__module__}.{type(connection).__qualname__}"
            raise ConfigurationError(self.connection_refused.format(got=got))
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
        self._resumes: asyncio.Queue[_Resume] | None = None  # made on the first resume

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
            while self._resumes is not None and not self._resumes.empty():
                self._resumes.get_nowait().done.set_result(False)  # too late: a new session
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
            max_unacked_bytes=self.max_unacked_bytes,
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
                    async with asyncio.timeout_at(deadline):
                        request = await self._resume_queue().get()
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

    def _resume_queue(self) -> asyncio.Queue[_Resume]:
        if self._resumes is None:
            self._resumes = asyncio.Queue()
        return self._resumes

    async def _take_over(self, conn: Connection, hello: Hello, codec: Codec) -> bool:
        """Queue ``conn`` to resume this proxy's session; wait until it is done with it.

        Returns ``False`` if the session was not resumed after all (the caller
        then starts a new session on ``conn``).
        """
        task = self._session_task
        if task is None or task.done():
            return False
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._resume_queue().put_nowait(_Resume(conn, hello, codec, done))
        live = self._conn
        if live is not None and live is not conn:
            # The client saw the link die before we did (a half-open link):
            # drop the stale connection, which holds the session for the resume.
            await live.aclose(CloseCode.GOING_AWAY, "replaced by a resumed connection")
        return await done
