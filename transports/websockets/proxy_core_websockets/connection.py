"""The connections of the ``websockets`` backend: a ``websockets`` socket, or a Starlette one.

:class:`WebSocketsConnection` wraps a ``websockets`` asyncio connection, client
or server side; :class:`StarletteConnection` an accepted Starlette/FastAPI
``WebSocket`` (starlette is imported only if such an object is handed over,
so this module imports without it).

Every frame is binary; a text frame is a :class:`~proxy_core.errors.ProtocolError`
and the connection stays usable. ``max_message_bytes`` is enforced on incoming
frames before they are buffered (by the library) or decoded (Starlette, which
has no limit of its own); an oversized frame closes the connection with code
1009 and raises :class:`~proxy_core.errors.MessageTooLarge` on the receiving side.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, NoReturn, Protocol, cast

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConcurrencyError, PayloadTooBig, WebSocketException
from websockets.exceptions import ConnectionClosed as WsConnectionClosed

from proxy_core.errors import ConfigurationError, ConnectionClosed, MessageTooLarge, ProtocolError
from proxy_core.transport import DEFAULT_MAX_MESSAGE_BYTES, Connection, truncate_reason
from proxy_core.transport import format_address as _format_address
from proxy_core.transport import lower_headers as _lower_headers

__all__ = ["StarletteConnection", "WebSocketsConnection"]

logger = logging.getLogger(__name__)

_MESSAGE_TOO_BIG = 1009
_ABNORMAL_CLOSURE = 1006


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
