"""``AiohttpConnection``: one aiohttp WebSocket, client or server side, as a proxy-core connection.

Every frame is binary; a text frame is a :class:`~proxy_core.errors.ProtocolError`
and the connection stays usable. A frame over ``max_message_bytes`` closes the
connection with code 1009 and raises :class:`~proxy_core.errors.MessageTooLarge`
on the receiving side, whether aiohttp's parser refused it (before buffering
it) or the connection's own check did.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import aiohttp
from aiohttp import WSMsgType, web

from proxy_core.errors import ConfigurationError, ConnectionClosed, MessageTooLarge, ProtocolError
from proxy_core.transport import DEFAULT_MAX_MESSAGE_BYTES, Connection, truncate_reason
from proxy_core.transport import format_address as _format_address
from proxy_core.transport import lower_headers as _lower_headers

if TYPE_CHECKING:
    _WebSocket = aiohttp.ClientWebSocketResponse[Any] | web.WebSocketResponse[Any]

__all__ = ["AiohttpConnection"]

logger = logging.getLogger(__name__)

_NORMAL_CLOSURE = 1000
_ABNORMAL_CLOSURE = 1006
_MESSAGE_TOO_BIG = 1009
# The codes an endpoint may put in a close frame (RFC 6455 section 7.4, and the
# IANA registry); 1005, 1006 and 1015 only ever describe a close locally.
_SENDABLE_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)
_REFUSED_SIZE = re.compile(r"[Mm]essage size (\d+)")


class AiohttpConnection(Connection):
    """A :class:`~proxy_core.transport.Connection` over an aiohttp WebSocket.

    It wraps either side: a client ``aiohttp.ClientWebSocketResponse`` (whose
    ``ClientSession`` it then owns and closes) or a prepared server
    ``aiohttp.web.WebSocketResponse``.

    Args:
        ws: the open WebSocket.
        max_message_bytes: the limit on incoming frames. aiohttp enforces the
            limit it was configured with; this one is checked on every frame
            as well (an adopted socket may have been prepared with a larger one).
        request: the server-side request that was upgraded (for its headers,
            its peer address and to drop the socket); ``None`` on a client.
        session: the client session to close with the connection.
    """

    __slots__ = (
        "_aclosed",
        "_close",
        "_limit",
        "_receiving",
        "_remote",
        "_request",
        "_session",
        "_ws",
    )

    #: websockets and aiohttp (uncompressed) write a frame to the transport
    #: before they wait for it to drain: a proxy may write in a sender's task.
    cancel_safe_send: bool = True

    def __init__(
        self,
        ws: _WebSocket,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        request: web.BaseRequest | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._ws = ws
        self._limit = max_message_bytes
        self._request = request
        self._session = session
        # (code, reason) once the connection is known to be over; what receive and send report.
        self._close: tuple[int, str] | None = None
        self._aclosed = False
        self._receiving = False
        # Kept from the start: the address is still worth logging once the socket is gone.
        self._remote = _format_address(_peer_name(ws, request))

    async def send(self, data: bytes) -> None:
        """Send one binary frame.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        if self._close is not None or self._ws.closed:
            raise self._closed_error()
        try:
            await self._ws.send_bytes(data)
        except (OSError, RuntimeError, aiohttp.ClientError) as exc:
            # ConnectionResetError (ClientConnectionResetError): the transport is closing.
            raise self._closed_error() from exc

    async def receive(self) -> bytes:
        """Receive the next binary frame.

        Raises:
            ConnectionClosed: the connection is over.
            MessageTooLarge: the peer sent a frame over the limit (we closed with 1009).
            ProtocolError: the peer sent a text frame; the connection stays usable.
            ConfigurationError: another ``receive()`` is waiting already.
        """
        if self._receiving:
            raise ConfigurationError("receive() called while another receive() waits")
        self._receiving = True
        # One coroutine, not two: an idle session always has a receive() waiting.
        try:
            while True:
                if self._close is not None:
                    raise ConnectionClosed(*self._close)
                try:
                    msg = await self._ws.receive()
                except RuntimeError as exc:  # aiohttp's word for a socket that is closed
                    raise self._closed_error() from exc
                kind = msg.type
                if kind is WSMsgType.BINARY:
                    data: bytes = msg.data
                    if len(data) > self._limit:
                        await self._refuse(len(data))
                    return data
                if kind is WSMsgType.TEXT:
                    await self._reject_text(msg.data)
                elif kind is WSMsgType.PING:  # only with a socket prepared with autoping=False
                    await self._ws.pong(msg.data)
                elif kind is not WSMsgType.PONG:
                    self._record_end(msg)
        finally:
            self._receiving = False

    async def _reject_text(self, text: str | bytes) -> NoReturn:
        size = len(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
        if size > self._limit:
            await self._refuse(size)
        raise ProtocolError(
            f"received a text frame ({size} bytes); this transport carries binary frames only"
        )

    def _record_end(self, msg: aiohttp.WSMessage) -> NoReturn:
        """Remember how the connection ended and raise it (CLOSE, CLOSING, CLOSED, ERROR)."""
        kind = msg.type
        if kind is WSMsgType.CLOSE:
            # The peer's closing frame: aiohttp has answered it already.
            self._close = (int(msg.data), msg.extra or "")
            raise ConnectionClosed(*self._close)
        if kind is WSMsgType.ERROR:
            exc = msg.data
            code = getattr(exc, "code", None)
            if isinstance(exc, aiohttp.WebSocketError) and code == _MESSAGE_TOO_BIG:
                # aiohttp refused the peer's frame and closed with 1009. Report
                # it once; later calls see a plain closed connection.
                self._close = (_MESSAGE_TOO_BIG, "message too big")
                raise MessageTooLarge(_refused_size(exc), self._limit) from exc
            if not isinstance(code, int):
                code = self._ws.close_code or _ABNORMAL_CLOSURE
            self._close = (code, "")
            raise ConnectionClosed(*self._close) from exc
        # CLOSING: our own close (from another task) interrupted this receive;
        # CLOSED: the socket is gone (the peer vanished, or it was closed before).
        raise self._closed_error()

    async def _refuse(self, size: int) -> NoReturn:
        await self.aclose(_MESSAGE_TOO_BIG, "message too big")
        raise MessageTooLarge(size, self._limit)

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection with ``code`` and ``reason``; idempotent, never raises.

        A code that may not be sent in a close frame (1005, 1006...) drops the
        connection instead, so the peer sees an abnormal closure.
        """
        if self._aclosed:
            return
        self._aclosed = True
        sendable = _can_send(code)
        if self._close is None:
            self._close = (code, reason) if sendable else (_ABNORMAL_CLOSURE, "")
        try:
            if sendable:
                await self._ws.close(code=code, message=truncate_reason(reason).encode())
            else:
                await self._drop()
        except Exception:
            # A broken transport: the goal is a closed connection, so drop it rather than raise.
            logger.debug("closing an aiohttp WebSocket failed", exc_info=True)
            await self._drop()
        finally:
            if self._session is not None:
                await _close_quietly(self._session)

    async def _drop(self) -> None:
        """Close the socket without a closing handshake."""
        try:
            transport = self._request.transport if self._request is not None else None
            if transport is not None:
                transport.abort()
            elif self._session is not None:
                await self._session.close()  # closes the connections it holds
            # Settles the WebSocket object, whose close frame can no longer be
            # written. (An adopted socket whose request aiohttp no longer holds
            # cannot be dropped: this closes it normally.)
            await self._ws.close(code=_NORMAL_CLOSURE)
        except Exception:
            logger.debug("dropping an aiohttp WebSocket failed", exc_info=True)

    @property
    def request_headers(self) -> Mapping[str, str]:
        """The handshake request headers, names lower-cased; empty on a client."""
        # Built on each call, not kept: it is read once or twice per session
        # (the HELLO check), and a copy kept for the session's life costs ~1 KiB.
        request = self._request
        return {} if request is None else _lower_headers(request.headers.items())

    @property
    def remote_address(self) -> str | None:
        """The peer as ``"host:port"``, when it is known."""
        return self._remote

    def _closed_error(self) -> ConnectionClosed:
        if self._close is None:
            self._close = (self._ws.close_code or _ABNORMAL_CLOSURE, "")
        return ConnectionClosed(*self._close)


async def _close_quietly(session: aiohttp.ClientSession) -> None:
    try:
        await session.close()
    except Exception:
        logger.debug("closing an aiohttp ClientSession failed", exc_info=True)


def _peer_name(ws: _WebSocket, request: web.BaseRequest | None) -> Any:
    if request is not None:
        transport = request.transport
        return None if transport is None else transport.get_extra_info("peername")
    return ws.get_extra_info("peername")


def _can_send(code: int) -> bool:
    """Whether ``code`` may be sent in a close frame (3000-4999: libraries and applications)."""
    return code in _SENDABLE_CODES or 3000 <= code <= 4999


def _refused_size(exc: BaseException) -> int | None:
    """Return the size of the message aiohttp refused, when its message says."""
    match = _REFUSED_SIZE.search(str(exc))
    return int(match.group(1)) if match else None
