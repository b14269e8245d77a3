"""What the WebSocket backends share: ``ws``/``wss`` URLs, their checks, TLS on Python's ``ssl``.

The ``websockets`` and ``aiohttp`` backends (and a third party's, on another
WebSocket library) differ only in how their library dials, listens and frames.
:class:`WebSocketTransportBase` does the rest once: ``connect`` and ``serve``
check the URL, the frame limit and the TLS settings against the scheme, turn
the TLS settings into an ``ssl.SSLContext``, and hand what they were asked for
to the subclass as a :class:`DialRequest` (``_dial``) or a
:class:`ServeRequest` (``_listen``); the listener is closed however the
``async with`` block ends.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from ssl import SSLContext
from typing import ClassVar
from urllib.parse import SplitResult

from .tls import ClientTLS, ServerTLS, client_ssl_context, server_ssl_context
from .transport import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Authenticator,
    Connection,
    ConnectionHandler,
    Listener,
    Transport,
    bound_url,
    check_authentication,
    check_max_message_bytes,
    check_tls_scheme,
    listening,
    lower_headers,
    parse_url,
    url_port,
)

__all__ = ["DialRequest", "ServeRequest", "WebSocketTransportBase"]

_SECURE = "wss"


@dataclass(frozen=True, slots=True)
class DialRequest:
    """A checked ``connect`` call, for :meth:`WebSocketTransportBase._dial`.

    Attributes:
        url: the URL to connect to, as given.
        parts: ``url``, split (its scheme, host and port checked).
        headers: the extra handshake headers, or ``None``.
        ssl: the TLS context for ``wss://`` (``None``: plaintext, or the
            library's default trust).
        server_hostname: the name to verify instead of the URL's host, if any.
        max_message_bytes: the limit on incoming frames.
        open_timeout: seconds allowed for TCP, TLS and the WebSocket handshake.
    """

    url: str
    parts: SplitResult
    headers: dict[str, str] | None
    ssl: SSLContext | None
    server_hostname: str | None
    max_message_bytes: int
    open_timeout: float


@dataclass(frozen=True, slots=True)
class ServeRequest:
    """A checked ``serve`` call, for :meth:`WebSocketTransportBase._listen`.

    Attributes:
        parts: the URL to serve, split (its scheme, host and port checked).
        handler: awaited with a connection per client.
        authenticate: the hook that sees the request headers first, or ``None``.
        ssl: the server's TLS context (``wss://``), or ``None``.
        max_message_bytes: the limit on incoming frames.
    """

    parts: SplitResult
    handler: ConnectionHandler
    authenticate: Authenticator | None
    ssl: SSLContext | None
    max_message_bytes: int

    @property
    def port(self) -> int:
        """The port to bind: the URL's, else 443 for ``wss`` and 80 for ``ws``."""
        return url_port(self.parts, secure=_SECURE)

    def bound_url(self, port: int) -> str:
        """Return the URL clients connect to, with the ``port`` really bound."""
        return bound_url(self.parts, port)

    async def refusal(self, headers: Iterable[tuple[str, str]]) -> str | None:
        """Run ``authenticate`` on the request's headers: ``None`` accepts, else the reason.

        Answer a refusal with HTTP 401 and the reason as the body, before the upgrade.
        """
        if self.authenticate is None:
            return None
        return await check_authentication(self.authenticate, lower_headers(headers))


class WebSocketTransportBase(Transport):
    """The base of a WebSocket backend: ``ws://`` and ``wss://`` URLs.

    A subclass sets ``name`` and implements :meth:`_dial` and :meth:`_listen`
    (and ``adapt``, to wrap its library's accepted sockets); ``connect`` and
    ``serve`` are the same for every WebSocket backend and checked here.
    """

    schemes: ClassVar[tuple[str, ...]] = ("ws", _SECURE)

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
        parts = parse_url(url, transport=self.name, schemes=self.schemes)
        check_max_message_bytes(max_message_bytes)
        check_tls_scheme(url, ssl, secure=_SECURE)
        hostname = ssl.server_hostname if isinstance(ssl, ClientTLS) else None
        request = DialRequest(
            url=url,
            parts=parts,
            headers=dict(headers) if headers else None,
            ssl=client_ssl_context(ssl),
            server_hostname=hostname,
            max_message_bytes=max_message_bytes,
            open_timeout=open_timeout,
        )
        return await self._dial(request)

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
        refuses is answered 401 with the reason as the body, before the
        upgrade. Either way the handler is never called. The connection is
        closed when the handler returns (1000) or raises (1011, and the
        exception is logged; a ``ConnectionClosed`` or ``MessageTooLarge``
        escaping the handler is an ordinary end of the connection). Leaving
        the context closes every open connection with 1001.

        Args:
            url: a ``ws://`` or ``wss://`` URL to listen on.
            handler: awaited with a connection per client.
            authenticate: the hook that sees the request headers first.
            ssl: the server's TLS settings, a ``ServerTLS`` or an
                ``ssl.SSLContext``; required for ``wss://``.
            max_message_bytes: the limit on incoming frames.

        Raises:
            ConfigurationError: a bad URL, ``ssl`` does not match the scheme,
                or its certificate and key do not load.
            ConnectError: the address could not be bound (raised on entering).
        """
        parts = parse_url(url, transport=self.name, schemes=self.schemes)
        check_max_message_bytes(max_message_bytes)
        check_tls_scheme(url, ssl, secure=_SECURE, serving=True)
        request = ServeRequest(
            parts, handler, authenticate, server_ssl_context(ssl), max_message_bytes
        )
        return listening(lambda: self._listen(request))

    @abstractmethod
    async def _dial(self, request: DialRequest) -> Connection:
        """Open the connection ``request`` describes, translating the library's errors.

        Raises:
            AuthenticationError: the server answered HTTP 401 or 403.
            TLSError: the TLS handshake failed.
            ConnectError: anything else kept the connection from opening.
        """

    @abstractmethod
    async def _listen(self, request: ServeRequest) -> Listener:
        """Bind ``request.parts``'s address and start serving; return the listener.

        Raises:
            ConnectError: the address could not be bound.
        """
