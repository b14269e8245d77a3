"""The reference wire backend, on the ``websockets`` library (asyncio API, version 14+).

:class:`WebSocketsTransport` opens client connections (``ws://`` and ``wss://``),
serves them, and adopts sockets accepted elsewhere: a ``websockets`` server
connection or a Starlette/FastAPI ``WebSocket``. Each is a connection of
:mod:`proxy_core_websockets.connection`.
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import InvalidMessage, InvalidStatus, InvalidURI
from websockets.http11 import Request, Response

from proxy_core.errors import ConfigurationError, ConnectError
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
    StarletteConnection,
    WebSocketsConnection,
    _is_starlette_websocket,
    _StarletteWebSocket,
)

__all__ = ["StarletteConnection", "WebSocketsConnection", "WebSocketsTransport"]

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


class WebSocketsTransport(WebSocketTransportBase):
    """The ``websockets`` backend: ``ws://`` and ``wss://`` URLs.

    ``connect`` and ``serve`` are those of every WebSocket backend
    (:class:`~proxy_core.websocket.WebSocketTransportBase`); a served
    connection is a :class:`WebSocketsConnection`.
    """

    name: ClassVar[str] = "websockets"

    async def _dial(self, request: DialRequest) -> Connection:
        url = request.url
        options: dict[str, Any] = {}
        if request.ssl is not None:
            options["ssl"] = request.ssl
        if request.server_hostname is not None:
            options["server_hostname"] = request.server_hostname
        try:
            ws = await ws_connect(
                url,
                additional_headers=request.headers,
                max_size=request.max_message_bytes,
                open_timeout=request.open_timeout,
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
            raise _connect_error(url, request.parts.scheme, exc) from exc
        return WebSocketsConnection(ws, max_message_bytes=request.max_message_bytes)

    async def _listen(self, request: ServeRequest) -> Listener:
        parts, handler, limit = request.parts, request.handler, request.max_message_bytes
        path = parts.path
        served: ServedConnections[WebSocketsConnection] = ServedConnections()

        async def process_request(ws: ServerConnection, http: Request) -> Response | None:
            if path not in ("", "/") and http.path.partition("?")[0] != path:
                return ws.respond(404, f"no WebSocket endpoint at {http.path}\n")
            reason = await request.refusal(http.headers.raw_items())
            return None if reason is None else ws.respond(401, reason)

        async def run_handler(ws: ServerConnection) -> None:
            await served.run(handler, WebSocketsConnection(ws, max_message_bytes=limit))

        try:
            server = await ws_serve(
                run_handler,
                parts.hostname,
                request.port,
                process_request=process_request,
                max_size=limit,
                ping_interval=None,  # the session layer sends heartbeats
                compression=None,
                close_timeout=_CLOSE_TIMEOUT,
                ssl=request.ssl,
            )
        except OSError as exc:
            raise listen_error(parts.geturl(), exc) from exc
        bound = server.sockets[0].getsockname()[1] if server.sockets else request.port
        return _WebSocketsListener(server, request.bound_url(bound), served)

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
