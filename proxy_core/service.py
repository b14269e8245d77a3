"""``serve_proxy``: a server that gives every accepted connection its own runner and proxy."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from ssl import SSLContext
from typing import Any

from .bus import BaseBus
from .errors import ConnectionClosed
from .messages import BusMessage
from .plugins import resolve_transport
from .protocol import CloseCode
from .proxy import (
    DEFAULT_SERVER_CODECS,
    CodecSpec,
    ProxyServer,
    SessionTable,
    _codec_list,
    accept_hello,
)
from .runner import WorkerRunner
from .tls import ServerTLS
from .transport import DEFAULT_MAX_MESSAGE_BYTES, Authenticator, Connection, Transport

__all__ = ["ProxyService", "serve_proxy"]

logger = logging.getLogger(__name__)

SetupHook = Callable[[WorkerRunner], Awaitable[None]]

#: How long leaving ``serve_proxy`` waits for the cancelled sessions to shut down.
_SHUTDOWN_SECONDS = 10.0


class _NoConnection(Connection):
    """Stands in for a connection when ``serve_proxy`` checks its options on entry."""

    async def send(self, data: bytes) -> None:
        raise ConnectionClosed()

    async def receive(self) -> bytes:
        raise ConnectionClosed()

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        return None


_NO_CONNECTION = _NoConnection()


class ProxyService:
    """A running :func:`serve_proxy` server.

    Attributes:
        url: the URL clients connect to (with the real port if 0 was asked for).
        runners: the runners of the sessions open now.
        proxies: the server proxies of the sessions open now.
        sessions_served: how many connections were handed a runner so far.
        sessions: the sessions held for a resume (see ``resume_grace``).
    """

    def __init__(self) -> None:
        self.url = ""
        self.runners: set[WorkerRunner] = set()
        self.proxies: set[ProxyServer] = set()
        self.sessions_served = 0
        self.sessions = SessionTable()
        self._idle = asyncio.Event()  # set while no runner is running
        self._idle.set()


@asynccontextmanager
async def serve_proxy(
    url: str,
    *,
    worker_name: str,
    remote_worker_name: str,
    setup: SetupHook,
    transport: str | Transport = "websockets",
    codecs: CodecSpec = DEFAULT_SERVER_CODECS,
    forward_messages: Sequence[type[BusMessage]] = (),
    authenticate: Authenticator | None = None,
    ssl: SSLContext | ServerTLS | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    proxy_name: str = "proxy",
    bus_factory: Callable[[], BaseBus] | None = None,
    **proxy_options: Any,
) -> AsyncIterator[ProxyService]:
    """Serve proxy sessions on ``url`` while the ``async with`` block runs.

    Every accepted connection gets its own :class:`WorkerRunner`, a
    :class:`ProxyServer` named ``proxy_name`` and the workers that
    ``await setup(runner)`` adds, so sessions never share a bus. Leaving the
    block stops accepting, cancels every open session and closes its socket.

    Args:
        url: where to listen, e.g. ``"ws://127.0.0.1:0/ws"`` (port 0 picks one).
        worker_name: the worker ``setup`` adds that talks to the client.
        remote_worker_name: the client's worker.
        setup: ``async def setup(runner)`` that adds this session's workers.
        transport: a transport name or instance.
        codecs: the codecs accepted, by name or instance.
        forward_messages: the message types allowed to cross, both ways.
        authenticate: ``authenticate(headers)``, run before a session exists.
        ssl: the server's TLS settings for a secure URL (``wss://``,
            ``grpcs://``): a :class:`~proxy_core.tls.ServerTLS`, which every
            backend takes, or an ``ssl.SSLContext`` (the WebSocket backends only).
        max_message_bytes: the frame limit, enforced before decoding.
        proxy_name: the name of the proxy worker in each session.
        bus_factory: returns the bus of each session's runner (default: a new
            in-process bus). With a shared bus (``lambda: RedisBus(url,
            channel=...)``), ``worker_name`` may live in another process on
            that bus; the session's proxy holds ``remote_worker_name`` (and its
            own name) on the bus while it runs, so one session at a time.
        **proxy_options: more :class:`ProxyServer` options (heartbeats...).
    """
    backend = resolve_transport(transport)
    codecs = _codec_list(codecs)  # an unknown codec name fails here, not per client
    # Likewise every other option: build one proxy now, so that a bad option is a
    # ConfigurationError on entry instead of a 1011 for every client.
    ProxyServer(
        proxy_name,
        connection=_NO_CONNECTION,
        worker_name=worker_name,
        remote_worker_name=remote_worker_name,
        forward_messages=forward_messages,
        codecs=codecs,
        max_message_bytes=max_message_bytes,
        **proxy_options,
    )
    service = ProxyService()
    counter = itertools.count(1)
    table = service.sessions
    handshake_timeout = proxy_options.get("handshake_timeout", 10.0)

    async def handle(conn: Connection) -> None:
        # HELLO first (before any session exists): it may ask
        # to resume a session this server holds, which then takes ``conn`` over.
        accepted = await accept_hello(
            conn,
            codecs=codecs,
            authenticate=None,  # the transport ran it before accepting the connection
            worker_name=worker_name,
            remote_worker_name=remote_worker_name,
            timeout=handshake_timeout,
            log_name=proxy_name,
        )
        if accepted is None:
            return
        if accepted[0].resume_session_id is not None and await table.route(conn, accepted):
            return
        number = next(counter)
        runner = WorkerRunner(
            name=f"session-{number}",
            bus=bus_factory() if bus_factory is not None else None,
            handle_sigint=False,
        )
        proxy = ProxyServer(
            proxy_name,
            connection=conn,
            worker_name=worker_name,
            remote_worker_name=remote_worker_name,
            forward_messages=forward_messages,
            codecs=codecs,
            max_message_bytes=max_message_bytes,
            sessions=table,
            hello=accepted,
            **proxy_options,
        )
        try:
            await setup(runner)
            await runner.add_workers(proxy)
        except Exception:
            logger.exception("setup of session %d failed; closing the connection", number)
            await conn.aclose(CloseCode.INTERNAL_ERROR, "session setup failed")
            await runner.bus.aclose()  # a shared bus may hold a connection already
            return
        service.sessions_served += 1
        service.runners.add(runner)
        service.proxies.add(proxy)
        service._idle.clear()
        try:
            await runner.run()
        finally:
            service.runners.discard(runner)
            service.proxies.discard(proxy)
            if not service.runners:
                service._idle.set()

    async with backend.serve(
        url, handle, authenticate=authenticate, ssl=ssl, max_message_bytes=max_message_bytes
    ) as listener:
        service.url = listener.url
        try:
            yield service
        finally:
            runners = list(service.runners)
            for runner in runners:
                await runner.cancel("server closing")
            # Each session's handler returns once its runner has shut down.
            try:
                await asyncio.wait_for(service._idle.wait(), _SHUTDOWN_SECONDS)
            except TimeoutError:
                logger.warning(
                    "%d session(s) still running %.0fs after the server closed",
                    len(service.runners),
                    _SHUTDOWN_SECONDS,
                )
