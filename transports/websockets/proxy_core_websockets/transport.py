"""The reference wire backend, on the ``websockets`` library (asyncio API, version 14+).

:class:`WebSocketsTransport` opens client connections (``ws://`` and ``wss://``),
serves them, and adopts sockets accepted elsewhere: a ``websockets`` server
connection or a Starlette/FastAPI ``WebSocket``. Each is a connection of
:mod:`proxy_core_websockets.connection`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from ssl import SSLContext
from typing import Any, ClassVar, cast
from urllib.parse import SplitResult

from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import InvalidMessage, InvalidStatus, InvalidURI
from websockets.http11 import Request, Response

from proxy_core.errors import ConfigurationError, ConnectError
from proxy_core.tls import ClientTLS, ServerTLS, client_ssl_context, server_ssl_context
from proxy_core.transport import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Authenticator,
    Connection,
    ConnectionHandler,
    Listener,
    ServedConnections,
    Transport,
    bound_url,
    check_authentication,
    check_tls_scheme,
    connect_error,
    listen_error,
    parse_url,
    refusal_error,
    url_port,
)
from proxy_core.transport import check_max_message_bytes as _check_limit
from proxy_core.transport import lower_headers as _lower_headers
from proxy_core.transport import redact_url as _redact

from .connection import (
    StarletteConnection,
    WebSocketsConnection,
    _is_starlette_websocket,
    _StarletteWebSocket,
)

__all__ = ["StarletteConnection", "WebSocketsConnection", "WebSocketsTransport"]

_SCHEMES = ("ws", "wss")
# The library's default: how long a close waits for the peer's closing frame.
_CLOSE_TIMEOUT = 10.0


class _WebSocketsListener(Listener):
    """The bound server yielded by :meth:`WebSocketsTransport.serve`."""

    def __init__(
        self, server: Server, url: str, served: ServedConnections[WebSocketsConnection]
    ) -> None:
        self._server = server
        self._url = url
        self._served = served

    @property
    def url(self) -> str:
        """The URL clients connect to, with the real port."""
        return self._url

    async def aclose(self) -> None:
        """Stop accepting, close every open connection and wait for the handlers."""
        server = self._server
        server.close()  # idempotent: stops accepting (an opening handshake gets 503)
        await self._served.close_all()  # 1001, as on every backend
        await self._served.finish()
        await server.wait_closed()
        if server.close_task is not None:
            await server.close_task


class WebSocketsTransport(Transport):
    """The ``websockets`` backend: ``ws://`` and ``wss://`` URLs."""

    name: ClassVar[str] = "websockets"
    schemes: ClassVar[tuple[str, ...]] = _SCHEMES

    async def connect(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        ssl: SSLContext | ClientTLS | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        open_timeout: float = 10.0,
    ) -> Connection:
        """Open a WebSocket connection to ``url``.

        Args:
            url: a ``ws://`` or ``wss://`` URL.
            headers: extra handshake headers (credentials for ``authenticate``).
            ssl: the TLS settings for ``wss://``, a ``ClientTLS`` or an
                ``ssl.SSLContext`` (default: the system's trust store).
            max_message_bytes: the limit on incoming frames.
            open_timeout: seconds allowed for TCP, TLS and the WebSocket handshake.

        Raises:
            ConfigurationError: the URL is not ``ws``/``wss``, or ``ssl`` is given for ``ws``.
            AuthenticationError: the server answered HTTP 401 or 403.
            TLSError: the TLS handshake failed (e.g. certificate verification).
            ConnectError: anything else kept the connection from opening.
        """
        parts = _parse_url(url)
        _check_limit(max_message_bytes)
        check_tls_scheme(url, ssl, secure="wss")
        options: dict[str, Any] = {}
        if ssl is not None:
            options["ssl"] = client_ssl_context(ssl)
            if isinstance(ssl, ClientTLS) and ssl.server_hostname is not None:
                options["server_hostname"] = ssl.server_hostname
        try:
            ws = await ws_connect(
                url,
                additional_headers=dict(headers) if headers else None,
                max_size=max_message_bytes,
                open_timeout=open_timeout,
                ping_interval=None,  # the session layer sends heartbeats
                compression=None,
                close_timeout=_CLOSE_TIMEOUT,
                **options,
            )
        except InvalidStatus as exc:
            raise _refusal(url, exc) from exc
        except InvalidURI as exc:
            raise ConfigurationError(f"invalid WebSocket URL {_redact(url)}: {exc}") from exc
        except Exception as exc:
            raise _connect_error(url, parts.scheme, exc) from exc
        return WebSocketsConnection(ws, max_message_bytes=max_message_bytes)

    def serve(
        self,
        url: str,
        handler: ConnectionHandler,
        *,
        authenticate: Authenticator | None = None,
        ssl: SSLContext | ServerTLS | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> AbstractAsyncContextManager[Listener]:
        """Serve ``url`` (port 0 picks a free port), calling ``handler`` per connection.

        A request for another path than the URL's is answered 404 (a URL with
        no path, or ``/``, accepts any path); a client that ``authenticate``
        refuses is answered 401 with the reason as the body. Either way the
        handler is never called. The connection is closed when the handler
        returns (1000) or raises (1011, and the exception is logged; a
        ``ConnectionClosed`` or ``MessageTooLarge`` escaping the handler is
        an ordinary end of the connection, not a handler failure).

        Args:
            url: a ``ws://`` or ``wss://`` URL to listen on.
            handler: awaited with a :class:`WebSocketsConnection` per client.
            authenticate: the hook that sees the request headers first.
            ssl: the server's TLS settings, a ``ServerTLS`` or an
                ``ssl.SSLContext``; required for ``wss://``.
            max_message_bytes: the limit on incoming frames.

        Raises:
            ConfigurationError: a bad URL, ``ssl`` does not match the scheme,
                or its certificate and key do not load.
            ConnectError: the address could not be bound (raised on entering).
        """
        parts = _parse_url(url)
        _check_limit(max_message_bytes)
        check_tls_scheme(url, ssl, secure="wss", serving=True)
        context = server_ssl_context(ssl)
        return self._serve(parts, handler, authenticate, context, max_message_bytes)

    @asynccontextmanager
    async def _serve(
        self,
        parts: SplitResult,
        handler: ConnectionHandler,
        authenticate: Authenticator | None,
        ssl: SSLContext | None,
        limit: int,
    ) -> AsyncIterator[Listener]:
        path = parts.path
        served: ServedConnections[WebSocketsConnection] = ServedConnections()

        async def process_request(ws: ServerConnection, request: Request) -> Response | None:
            if path not in ("", "/") and request.path.partition("?")[0] != path:
                return ws.respond(404, f"no WebSocket endpoint at {request.path}\n")
            if authenticate is not None:
                headers = _lower_headers(request.headers.raw_items())
                reason = await check_authentication(authenticate, headers)
                if reason is not None:
                    return ws.respond(401, reason)
            return None

        async def run_handler(ws: ServerConnection) -> None:
            await served.run(handler, WebSocketsConnection(ws, max_message_bytes=limit))

        port = url_port(parts, secure="wss")
        try:
            server = await ws_serve(
                run_handler,
                parts.hostname,
                port,
                process_request=process_request,
                max_size=limit,
                ping_interval=None,  # the session layer sends heartbeats
                compression=None,
                close_timeout=_CLOSE_TIMEOUT,
                ssl=ssl,
            )
        except OSError as exc:
            raise listen_error(parts.geturl(), exc) from exc
        bound = server.sockets[0].getsockname()[1] if server.sockets else port
        listener = _WebSocketsListener(server, bound_url(parts, bound), served)
        try:
            yield listener
        finally:
            await listener.aclose()

    def adapt(
        self, obj: object, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> Connection:
        """Wrap an already-accepted server-side WebSocket.

        A ``websockets`` ``ServerConnection`` has its incoming limit set to
        ``max_message_bytes``, so that the library enforces it before buffering.

        Args:
            obj: a ``websockets.asyncio.server.ServerConnection``, or a
                Starlette/FastAPI ``WebSocket`` on which ``accept()`` was awaited.
            max_message_bytes: the limit on incoming frames.

        Raises:
            ConfigurationError: ``obj`` is neither of those.
        """
        _check_limit(max_message_bytes)
        if isinstance(obj, ServerConnection):
            obj.protocol.max_message_size = max_message_bytes
            return WebSocketsConnection(obj, max_message_bytes=max_message_bytes)
        if _is_starlette_websocket(obj):
            return StarletteConnection(
                cast(_StarletteWebSocket, obj), max_message_bytes=max_message_bytes
            )
        raise ConfigurationError(
            f"transport {self.name!r} cannot adopt an object of type "
            f"{type(obj).__module__}.{type(obj).__qualname__}; it accepts a "
            "websockets.asyncio.server.ServerConnection or a Starlette/FastAPI WebSocket"
        )


def _parse_url(url: str) -> SplitResult:
    return parse_url(url, transport="websockets", schemes=_SCHEMES)


def _connect_error(url: str, scheme: str, exc: Exception) -> ConnectError:
    """Translate what ``connect`` raised (other than a refusal or a bad URL)."""
    hint = ""
    if scheme == "ws" and isinstance(exc, InvalidMessage):
        # A TLS server drops a plaintext client's request without a word.
        hint = " (if the server expects TLS, use a wss:// URL)"
    elif scheme == "wss" and isinstance(exc, ConnectionResetError):
        # A plaintext server resets a TLS client's handshake.
        hint = " (if the server does not serve TLS, use a ws:// URL)"
    return connect_error(url, exc, hint)


def _refusal(url: str, exc: InvalidStatus) -> Exception:
    response = exc.response
    body = bytes(response.body).decode("utf-8", "replace").strip()
    return refusal_error(url, response.status_code, response.reason_phrase, body)
