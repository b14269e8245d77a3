"""A WebSocket backend on aiohttp: client, server, and adoption of an app's own sockets.

:class:`AiohttpTransport` opens client connections (``ws://`` and ``wss://``),
serves them with an ``aiohttp.web`` application of its own, and adopts a
``web.WebSocketResponse`` that an existing aiohttp application prepared in its
own handler. It is plain WebSocket (no subprotocol, no compression), so it
interoperates with the ``websockets`` backend in either direction. Each
connection is an :class:`~proxy_core_aiohttp.connection.AiohttpConnection`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

import aiohttp
from aiohttp import web

from proxy_core.errors import ConfigurationError
from proxy_core.transport import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Connection,
    Listener,
    ServedConnections,
    connect_error,
    listen_error,
    refusal_error,
)
from proxy_core.transport import check_max_message_bytes as _check_limit
from proxy_core.transport import redact_url as _redact
from proxy_core.websocket import DialRequest, ServeRequest, WebSocketTransportBase

from .connection import (
    AiohttpConnection,
    _close_quietly,
)

__all__ = ["AiohttpConnection", "AiohttpTransport"]

logger = logging.getLogger(__name__)

# How long a close waits for the peer's closing frame, by default (the libraries' default).
_CLOSE_TIMEOUT = 10.0
# aiohttp's own wait for the requests that are still open once we have waited
# for ours: only a request accepted while the server was stopping can be.
_RUNNER_SHUTDOWN_TIMEOUT = 1.0
# How much of a refusal's body the client reads (for the error message), and how long it may take.
_MAX_REFUSAL_BODY = 4096
_REFUSAL_BODY_TIMEOUT = 2.0
# aiohttp's C frame parser keeps its limit in an unsigned 32-bit integer.
_LIBRARY_MAX_LIMIT = 2**32 - 1


class _AiohttpListener(Listener):
    """The bound server yielded by :meth:`AiohttpTransport.serve`.

    Args:
        runner: the application's runner.
        site: the site listening on the URL's address.
        url: the URL clients connect to.
        served: the open connections and the tasks running their handlers.
    """

    def __init__(
        self,
        runner: web.AppRunner,
        site: web.TCPSite,
        url: str,
        served: ServedConnections[AiohttpConnection],
    ) -> None:
        self._runner = runner
        self._site = site
        self._url = url
        self._served = served
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def url(self) -> str:
        """The URL clients connect to, with the real port."""
        return self._url

    async def aclose(self) -> None:
        """Stop accepting, close every open connection (1001) and wait for the handlers.

        Handlers still running :data:`~proxy_core.transport.SHUTDOWN_GRACE`
        seconds after their connections were closed are cancelled.
        """
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            await self._site.stop()
            await self._served.close_all()
            await self._served.finish()
            # Whatever is left (a request accepted while the site stopped) is
            # closed by on_shutdown and waited for, briefly, by aiohttp itself.
            await self._runner.cleanup()


class AiohttpTransport(WebSocketTransportBase):
    """The aiohttp backend: ``ws://`` and ``wss://`` URLs.

    ``connect`` and ``serve`` are those of every WebSocket backend
    (:class:`~proxy_core.websocket.WebSocketTransportBase`); a connection is
    an :class:`AiohttpConnection`, and a client's has a ``ClientSession`` of
    its own, closed with it.

    aiohttp answers a peer's closing frame only from inside ``receive()``, so
    ``aclose`` waits up to ``close_timeout`` for a peer that is not reading
    (a proxy always is) before it closes the TCP connection anyway; the
    frames before the close were all sent by then.

    Args:
        close_timeout: seconds a close waits for the peer's closing frame.
    """

    name: ClassVar[str] = "aiohttp"

    def __init__(self, *, close_timeout: float = _CLOSE_TIMEOUT) -> None:
        if not close_timeout > 0:
            raise ConfigurationError(f"close_timeout must be positive, not {close_timeout}")
        self.close_timeout = close_timeout

    async def _dial(self, request: DialRequest) -> Connection:
        """Open the connection, with a ``ClientSession`` of its own, closed with it."""
        options: dict[str, Any] = {}
        if request.server_hostname is not None:
            options["server_hostname"] = request.server_hostname
        session = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(),
            raise_for_status=_refuse_upgrade_failure,  # reads the body of a refusal
            timeout=aiohttp.ClientTimeout(total=None),  # open_timeout bounds the handshake
        )
        try:
            async with asyncio.timeout(request.open_timeout):
                ws = await session.ws_connect(
                    request.url,
                    headers=request.headers,
                    max_msg_size=_library_limit(request.max_message_bytes),
                    ssl=request.ssl if request.ssl is not None else True,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self.close_timeout),
                    heartbeat=None,  # the session layer sends heartbeats
                    autoping=True,
                    autoclose=True,
                    compress=0,
                    **options,
                )
        except BaseException as exc:
            await _close_quietly(session)
            if isinstance(exc, Exception):
                raise _connect_error(request.url, exc, request.open_timeout) from exc
            raise
        limit = request.max_message_bytes
        return AiohttpConnection(ws, max_message_bytes=limit, session=session)

    async def _listen(self, request: ServeRequest) -> Listener:
        parts, handler, limit = request.parts, request.handler, request.max_message_bytes
        path = parts.path
        served: ServedConnections[AiohttpConnection] = ServedConnections()

        async def endpoint(http: web.Request) -> web.StreamResponse:
            reason = await request.refusal(http.headers.items())
            if reason is not None:
                raise web.HTTPUnauthorized(text=reason)
            ws = web.WebSocketResponse(
                max_msg_size=_library_limit(limit),
                compress=False,
                heartbeat=None,  # the session layer sends heartbeats
                autoping=True,
                timeout=self.close_timeout,
            )
            await ws.prepare(http)
            await served.run(handler, AiohttpConnection(ws, max_message_bytes=limit, request=http))
            return ws

        async def close_connections(app: web.Application) -> None:
            await served.close_all()

        app = web.Application()
        app.on_shutdown.append(close_connections)
        route = path if path not in ("", "/") else "/{tail:.*}"
        app.router.add_route("GET", route, endpoint)
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=_RUNNER_SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        site = web.TCPSite(runner, parts.hostname, request.port, ssl_context=request.ssl)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise listen_error(parts.geturl(), exc) from exc
        addresses = runner.addresses
        bound = addresses[0][1] if addresses else request.port
        return _AiohttpListener(runner, site, request.bound_url(bound), served)

    def adapt(
        self, obj: object, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> Connection:
        """Wrap a WebSocket that an aiohttp application prepared in its own handler.

        aiohttp fixed the socket's own limit (``max_msg_size``, 4 MiB by
        default) when it was created; ``max_message_bytes`` is checked on
        every frame as well, so the smaller of the two applies. Create the
        response with ``web.WebSocketResponse(max_msg_size=max_message_bytes + 1)``
        to have large frames refused before they are buffered.

        Args:
            obj: an ``aiohttp.web.WebSocketResponse`` on which ``prepare()`` was awaited.
            max_message_bytes: the limit on incoming frames.

        Raises:
            ConfigurationError: ``obj`` is not such a response, or is not prepared yet.
        """
        _check_limit(max_message_bytes)
        if not isinstance(obj, web.WebSocketResponse):
            raise ConfigurationError(
                f"transport {self.name!r} cannot adopt an object of type "
                f"{type(obj).__module__}.{type(obj).__qualname__}; it accepts an "
                "aiohttp.web.WebSocketResponse on which prepare() was awaited"
            )
        if not obj.prepared:
            raise ConfigurationError(
                "the aiohttp.web.WebSocketResponse is not prepared: "
                "await ws.prepare(request) before adopting it"
            )
        # aiohttp keeps the upgraded request on the response, but offers no public accessor.
        request = getattr(obj, "_req", None)
        return AiohttpConnection(
            obj,
            max_message_bytes=max_message_bytes,
            request=request if isinstance(request, web.BaseRequest) else None,
        )


class _UpgradeRefused(Exception):
    """The server answered the upgrade request with another status than 101."""

    def __init__(self, status: int, reason: str, body: str) -> None:
        super().__init__(f"HTTP {status} {reason}")
        self.status = status
        self.reason = reason
        self.body = body


async def _refuse_upgrade_failure(response: aiohttp.ClientResponse) -> None:
    """The session's ``raise_for_status`` hook: keep the body of a refused upgrade.

    ``ws_connect`` closes a refused response before raising, so its body (an
    ``authenticate`` hook's reason) is read here, while it can be.
    """
    if response.status == 101:
        return
    body = b""
    try:
        async with asyncio.timeout(_REFUSAL_BODY_TIMEOUT):
            while len(body) < _MAX_REFUSAL_BODY:
                chunk = await response.content.read(_MAX_REFUSAL_BODY - len(body))
                if not chunk:
                    break
                body += chunk
    except (TimeoutError, aiohttp.ClientError, OSError):
        pass  # the status alone will do
    text = body.decode("utf-8", "replace").strip()
    raise _UpgradeRefused(response.status, response.reason or "", text)


def _connect_error(url: str, exc: Exception, open_timeout: float) -> Exception:
    """Translate what ``ws_connect`` raised."""
    status: int | None = None
    reason, body = "", ""
    if isinstance(exc, _UpgradeRefused):
        status, reason, body = exc.status, exc.reason, exc.body
    elif isinstance(exc, aiohttp.WSServerHandshakeError):
        status, reason = exc.status, exc.message
    if status is not None:
        return refusal_error(url, status, reason, body)
    if isinstance(exc, aiohttp.InvalidURL):
        return ConfigurationError(f"invalid WebSocket URL {_redact(url)}: {exc}")
    hint = ""
    if url.startswith("ws:") and isinstance(exc, aiohttp.ServerDisconnectedError):
        # A TLS server drops a plaintext client's request without a word.
        hint = " (if the server expects TLS, use a wss:// URL)"
    return connect_error(url, exc, hint, timeout=open_timeout)


def _library_limit(max_message_bytes: int) -> int:
    """Return aiohttp's ``max_msg_size`` for our limit.

    aiohttp refuses a message whose size *reaches* ``max_msg_size``, while
    ``max_message_bytes`` is the largest size accepted: hence the + 1. Past
    what its parser can hold, aiohttp gets no limit (0) and ours alone applies.
    """
    return max_message_bytes + 1 if max_message_bytes < _LIBRARY_MAX_LIMIT else 0
