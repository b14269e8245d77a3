"""The reference wire backend, on the ``websockets`` library (asyncio API, version 14+).

:class:`WebSocketsTransport` opens client connections (``ws://`` and ``wss://``),
serves them, and adopts sockets accepted elsewhere: a ``websockets`` server
connection or a Starlette/FastAPI ``WebSocket`` (starlette is imported only if
such an object is handed over, so this module imports without it).

Every frame is binary; a text frame is a :class:`~proxy_core.errors.ProtocolError`
and the connection stays usable. ``max_message_bytes`` is enforced on incoming
frames before they are buffered (by the library) or decoded (Starlette, which
has no limit of its own); an oversized frame closes the connection with code
1009 and raises :class:`~proxy_core.errors.MessageTooLarge` on the receiving side.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from ssl import SSLContext
from typing import Any, ClassVar, NoReturn, Protocol, cast
from urllib.parse import SplitResult

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import (
    ConcurrencyError,
    InvalidMessage,
    InvalidStatus,
    InvalidURI,
    PayloadTooBig,
    WebSocketException,
)
from websockets.exceptions import ConnectionClosed as WsConnectionClosed
from websockets.http11 import Request, Response

from proxy_core.errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectError,
    ConnectionClosed,
    MessageTooLarge,
    ProtocolError,
    TLSError,
)
from proxy_core.tls import ClientTLS, ServerTLS, client_ssl_context, server_ssl_context, tls_failure
from proxy_core.transport import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Authenticator,
    Connection,
    ConnectionHandler,
    Listener,
    Transport,
    check_authentication,
    parse_url,
    run_connection_handler,
    truncate_reason,
)
from proxy_core.transport import check_max_message_bytes as _check_limit
from proxy_core.transport import describe_error as _describe
from proxy_core.transport import format_address as _format_address
from proxy_core.transport import format_host as _format_host
from proxy_core.transport import lower_headers as _lower_headers
from proxy_core.transport import redact_url as _redact

__all__ = ["StarletteConnection", "WebSocketsConnection", "WebSocketsTransport"]

logger = logging.getLogger(__name__)

_SCHEMES = ("ws", "wss")
_MESSAGE_TOO_BIG = 1009
_ABNORMAL_CLOSURE = 1006
_INTERNAL_ERROR = 1011
# The library's default: how long a close waits for the peer's closing frame.
_CLOSE_TIMEOUT = 10.0
# After this long, a server shutting down cancels handlers that ignore the close.
_SHUTDOWN_GRACE = _CLOSE_TIMEOUT + 5.0


class WebSocketsConnection(Connection):
    """A :class:`~proxy_core.transport.Connection` over a ``websockets`` asyncio connection.

    Args:
        ws: a ``ClientConnection`` or ``ServerConnection`` that is open.
        max_message_bytes: the limit on incoming frames; the library enforces it
            (see :meth:`WebSocketsTransport.adapt` for adopted connections).
    """

    __slots__ = ("_limit", "_too_large_reported", "_ws")

    #: websockets and aiohttp (uncompressed) write a frame to the transport
    #: before they wait for it to drain: a proxy may write in a sender's task.
    cancel_safe_send: bool = True

    def __init__(
        self,
        ws: ClientConnection | ServerConnection,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._ws = ws
        self._limit = max_message_bytes
        self._too_large_reported = False

    async def send(self, data: bytes) -> None:
        """Send one binary frame.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        try:
            await self._ws.send(data)
        except WsConnectionClosed as exc:
            raise self._translate_closed(exc) from exc

    async def receive(self) -> bytes:
        """Receive the next binary frame.

        Raises:
            ConnectionClosed: the connection is over.
            MessageTooLarge: the peer sent a frame over the limit (we closed with 1009).
            ProtocolError: the peer sent a text frame; the connection stays usable.
        """
        try:
            data = await self._ws.recv()
        except WsConnectionClosed as exc:
            raise self._translate_closed(exc) from exc
        except ConcurrencyError as exc:
            raise ConfigurationError("receive() called while another receive() waits") from exc
        if type(data) is bytes:
            return data
        raise ProtocolError(
            f"received a text frame ({len(data)} characters); "
            "this transport carries binary frames only"
        )

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection with ``code`` and ``reason``; idempotent, never raises."""
        try:
            await self._ws.close(code, truncate_reason(reason))
        except Exception:
            # An invalid close code (1005, 1006...) or a broken transport: the
            # goal is a closed connection, so drop it rather than raise.
            self._ws.transport.abort()

    @property
    def request_headers(self) -> Mapping[str, str]:
        """The handshake request headers, names lower-cased; empty on a client."""
        # Built on each call, not kept: it is read once or twice per session
        # (the HELLO check), and a copy kept for the session's life costs ~1 KiB.
        request = getattr(self._ws, "request", None)
        if isinstance(self._ws, ClientConnection) or request is None:
            return {}
        return _lower_headers(request.headers.raw_items())

    @property
    def remote_address(self) -> str | None:
        """The peer as ``"host:port"``, or ``None`` when the socket is gone."""
        return _format_address(self._ws.remote_address)

    def _translate_closed(self, exc: WsConnectionClosed) -> Exception:
        sent, rcvd = exc.sent, exc.rcvd
        if sent is not None and sent.code == _MESSAGE_TOO_BIG and not exc.rcvd_then_sent:
            # We sent 1009 first: the library refused a frame from the peer.
            # Report it once; later calls see a plain closed connection.
            if not self._too_large_reported:
                self._too_large_reported = True
                return MessageTooLarge(_refused_size(exc.__cause__), self._limit)
            return ConnectionClosed(sent.code, sent.reason)
        close = rcvd if rcvd is not None else sent
        if close is None:
            return ConnectionClosed(_ABNORMAL_CLOSURE, "")
        return ConnectionClosed(close.code, close.reason)


class _StarletteWebSocket(Protocol):
    """The part of ``starlette.websockets.WebSocket`` that we use."""

    async def receive(self) -> Mapping[str, Any]: ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...

    @property
    def headers(self) -> Any: ...

    @property
    def client(self) -> Any: ...


class StarletteConnection(Connection):
    """A :class:`~proxy_core.transport.Connection` over an accepted Starlette/FastAPI ``WebSocket``.

    Starlette applies no size limit of its own (the ASGI server may, with a
    larger default), so :meth:`receive` checks ``max_message_bytes`` first.

    Args:
        ws: a Starlette ``WebSocket`` on which ``accept()`` was awaited.
        max_message_bytes: the limit on incoming frames.
    """

    __slots__ = ("_close", "_errors", "_headers", "_limit", "_ws")

    def __init__(
        self, ws: _StarletteWebSocket, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> None:
        self._ws = ws
        self._limit = max_message_bytes
        self._headers: dict[str, str] | None = None
        # (code, reason) once the connection is known to be over.
        self._close: tuple[int | None, str] | None = None
        self._errors = _starlette_send_errors()

    async def send(self, data: bytes) -> None:
        """Send one binary frame.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        try:
            await self._ws.send_bytes(data)
        except self._errors as exc:
            raise self._closed_error(exc) from exc

    async def receive(self) -> bytes:
        """Receive the next binary frame.

        Raises:
            ConnectionClosed: the connection is over.
            MessageTooLarge: the peer sent a frame over the limit (we closed with 1009).
            ProtocolError: the peer sent a text frame; the connection stays usable.
        """
        if self._close is not None:
            raise ConnectionClosed(*self._close)
        try:
            message = await self._ws.receive()
        except self._errors as exc:
            raise self._closed_error(exc) from exc
        data = message.get("bytes")
        if data is not None:
            if len(data) > self._limit:
                await self._refuse(len(data))
            return cast(bytes, data)
        return await self._receive_other(message)

    async def _receive_other(self, message: Mapping[str, Any]) -> bytes:
        kind = message.get("type")
        if kind == "websocket.disconnect":
            code = message.get("code")
            self._close = (code if isinstance(code, int) else None, message.get("reason") or "")
            raise ConnectionClosed(*self._close)
        text = message.get("text")
        if text is not None:
            size = len(text.encode("utf-8", "surrogatepass"))
            if size > self._limit:
                await self._refuse(size)
            raise ProtocolError(
                f"received a text frame ({size} bytes); this transport carries binary frames only"
            )
        raise ProtocolError(f"unexpected ASGI message {kind!r}")

    async def _refuse(self, size: int) -> NoReturn:
        await self.aclose(_MESSAGE_TOO_BIG, "message too big")
        raise MessageTooLarge(size, self._limit)

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection with ``code`` and ``reason``; idempotent, never raises."""
        if self._close is not None:
            return
        self._close = (code, reason)
        try:
            await self._ws.close(code, truncate_reason(reason))
        except Exception:
            # Already closed by the peer or the server: that was the goal.
            logger.debug("closing a Starlette WebSocket failed", exc_info=True)

    @property
    def request_headers(self) -> Mapping[str, str]:
        """The handshake request headers, names lower-cased."""
        if self._headers is None:
            self._headers = _lower_headers(self._ws.headers.items())
        return self._headers

    @property
    def remote_address(self) -> str | None:
        """The peer as ``"host:port"``, when the ASGI server reports it."""
        client = self._ws.client
        return None if client is None else _format_address(tuple(client))

    def _closed_error(self, exc: BaseException) -> ConnectionClosed:
        if self._close is None:
            code = getattr(exc, "code", None)
            self._close = (
                code if isinstance(code, int) else _ABNORMAL_CLOSURE,
                getattr(exc, "reason", None) or "",
            )
        return ConnectionClosed(*self._close)


class _WebSocketsListener(Listener):
    """The bound server yielded by :meth:`WebSocketsTransport.serve`."""

    def __init__(self, server: Server, url: str, handlers: set[asyncio.Task[Any]]) -> None:
        self._server = server
        self._url = url
        self._handlers = handlers

    @property
    def url(self) -> str:
        """The URL clients connect to, with the real port."""
        return self._url

    async def aclose(self) -> None:
        """Stop accepting, close every open connection and wait for the handlers."""
        server = self._server
        server.close()  # idempotent: closes connections with 1001 (going away)
        try:
            async with asyncio.timeout(_SHUTDOWN_GRACE):
                await server.wait_closed()
        except TimeoutError:
            # A handler that awaits something other than its connection would
            # keep the server open forever: cancel the stragglers.
            for task in list(self._handlers):
                task.cancel()
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
        options: dict[str, Any] = {}
        if ssl is not None:
            if parts.scheme != "wss":
                raise ConfigurationError(f"TLS settings need a wss:// URL, not {_redact(url)}")
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
        if (parts.scheme == "wss") != (ssl is not None):
            raise ConfigurationError(
                f"serving {_redact(url)}: wss:// needs TLS settings (ssl=ServerTLS(...)) "
                "and ws:// takes none"
            )
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
        handlers: set[asyncio.Task[Any]] = set()

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
            task = asyncio.current_task()
            if task is not None:
                handlers.add(task)
            connection = WebSocketsConnection(ws, max_message_bytes=limit)
            try:
                await run_connection_handler(handler, connection)
            finally:
                if task is not None:
                    handlers.discard(task)

        host = parts.hostname
        port = parts.port if parts.port is not None else (443 if parts.scheme == "wss" else 80)
        try:
            server = await ws_serve(
                run_handler,
                host,
                port,
                process_request=process_request,
                max_size=limit,
                ping_interval=None,  # the session layer sends heartbeats
                compression=None,
                close_timeout=_CLOSE_TIMEOUT,
                ssl=ssl,
            )
        except OSError as exc:
            raise ConnectError(
                f"could not listen on {_redact(parts.geturl())}: {_describe(exc)}"
            ) from exc
        bound = server.sockets[0].getsockname()[1] if server.sockets else port
        listener = _WebSocketsListener(
            server, f"{parts.scheme}://{_format_host(host)}:{bound}{path}", handlers
        )
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
    failure = tls_failure(exc)
    if failure is not None:
        return TLSError(f"TLS handshake with {_redact(url)} failed: {failure}")
    message = f"could not connect to {_redact(url)}: {_describe(exc)}"
    if scheme == "ws" and isinstance(exc, InvalidMessage):
        # A TLS server drops a plaintext client's request without a word.
        message += " (if the server expects TLS, use a wss:// URL)"
    elif scheme == "wss" and isinstance(exc, ConnectionResetError):
        # A plaintext server resets a TLS client's handshake.
        message += " (if the server does not serve TLS, use a ws:// URL)"
    return ConnectError(message)


def _refusal(url: str, exc: InvalidStatus) -> Exception:
    response = exc.response
    body = bytes(response.body).decode("utf-8", "replace").strip()
    if response.status_code in (401, 403):
        return AuthenticationError(body or f"HTTP {response.status_code} {response.reason_phrase}")
    detail = f"HTTP {response.status_code} {response.reason_phrase}"
    if body:
        detail = f"{detail}: {body}"
    return ConnectError(f"could not connect to {_redact(url)}: the server answered {detail}")


def _refused_size(cause: BaseException | None) -> int | None:
    """Return the size of the message the library refused, when it is known."""
    if not isinstance(cause, PayloadTooBig) or cause.size is None:
        return None
    # For a fragmented message, the fragments received before the one refused.
    return cause.size + (cause.current_size or 0)


def _is_starlette_websocket(obj: object) -> bool:
    if not (hasattr(obj, "receive") and hasattr(obj, "send_bytes")):
        return False
    return any(
        cls.__module__.partition(".")[0] in ("starlette", "fastapi") for cls in type(obj).__mro__
    )


def _starlette_send_errors() -> tuple[type[BaseException], ...]:
    """Return what Starlette and its ASGI server raise on a closed socket."""
    errors: tuple[type[BaseException], ...] = (RuntimeError, OSError, WebSocketException)
    try:
        from starlette.websockets import WebSocketDisconnect
    except ImportError:  # pragma: no cover -- the object came from starlette
        return errors
    return (WebSocketDisconnect, *errors)
