"""The interfaces a wire backend implements: ``Connection``, ``Listener``, ``Transport``.

A backend carries ordered, reliable, binary frames between two peers and
nothing more: the session protocol, codecs and filter rules live in the core
and are the same on every backend. Plugin authors subclass these ABCs (a
missing method fails at construction) and register the transport in the
``proxy_core.transports`` entry-point group.

Every method translates the wire library's exceptions into
:mod:`proxy_core.errors` (``raise ConnectError(...) from exc``).
"""

from __future__ import annotations

import errno
import inspect
import logging
import socket
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from ssl import SSLContext
from types import TracebackType
from typing import Any, ClassVar
from urllib.parse import SplitResult, urlsplit

from .errors import AuthenticationError, ConfigurationError, ConnectionClosed, MessageTooLarge
from .tls import ClientTLS, ServerTLS

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MAX_REASON_BYTES",
    "Authenticator",
    "Connection",
    "ConnectionHandler",
    "Listener",
    "Transport",
    "check_authentication",
    "check_max_message_bytes",
    "describe_error",
    "plain_errno",
    "format_address",
    "format_host",
    "lower_headers",
    "parse_url",
    "redact_url",
    "run_connection_handler",
    "truncate_reason",
]

logger = logging.getLogger(__name__)

#: The default limit on one frame, in either direction: 1 MiB.
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024

#: The longest close reason, in bytes of UTF-8: what a WebSocket close frame
#: carries (125 bytes of payload, less the 2-byte code). One limit for every
#: reason that travels: close reasons on every backend, BYE and REJECT reasons.
MAX_REASON_BYTES = 123

#: ``authenticate(headers)``: return true to accept, false (or raise
#: :class:`~proxy_core.errors.AuthenticationError` with a reason) to refuse.
#: Header names are lower-cased. May be a plain or an ``async`` function.
Authenticator = Callable[[Mapping[str, str]], "bool | Awaitable[bool]"]


class Connection(ABC):
    """One ordered, reliable, binary, message-framed duplex connection.

    ``receive`` returns whole frames as ``bytes`` and raises
    :class:`~proxy_core.errors.ConnectionClosed` once the connection is over,
    :class:`~proxy_core.errors.MessageTooLarge` when the peer sent a frame over
    the limit (the connection is then closed), and
    :class:`~proxy_core.errors.ProtocolError` for a frame that is not binary
    (the connection stays usable).
    """

    #: Whether :meth:`send` hands its frame to the library's buffer before it
    #: first waits (for that buffer to drain), so that a send cancelled while
    #: it waits has still sent the frame, whole, and the connection stays
    #: usable. When ``True``, a proxy writes a message in the task of the
    #: worker that sent it, sparing a task switch per message; when ``False``
    #: (the safe default), only the proxy's own tasks write. A library that
    #: cancels more than the write (grpc.aio cancels the whole call) or may
    #: wait before writing leaves it ``False``.
    cancel_safe_send: bool = False

    @abstractmethod
    async def send(self, data: bytes) -> None:
        """Send one binary frame.

        Raises:
            ConnectionClosed: the connection is closed.
        """

    @abstractmethod
    async def receive(self) -> bytes:
        """Receive the next binary frame.

        Raises:
            ConnectionClosed: the connection is over.
            MessageTooLarge: the peer sent a frame over the limit.
            ProtocolError: the peer sent a frame that is not binary.
        """

    @abstractmethod
    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection; idempotent. ``code`` follows WebSocket close codes."""

    @property
    def request_headers(self) -> Mapping[str, str]:
        """The headers (or metadata) the client sent, names lower-cased; empty on a client."""
        return {}

    @property
    def remote_address(self) -> str | None:
        """A printable address of the peer, when the backend knows it."""
        return None

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Connection:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.receive()
        except ConnectionClosed:
            raise StopAsyncIteration from None


#: Called once per accepted connection; the connection is closed when it returns.
ConnectionHandler = Callable[[Connection], Awaitable[None]]


class Listener(ABC):
    """A bound server, as yielded by :meth:`Transport.serve`."""

    @property
    @abstractmethod
    def url(self) -> str:
        """The URL clients connect to, with the real port when port 0 was asked for."""

    @abstractmethod
    async def aclose(self) -> None:
        """Stop accepting and close every open connection."""


class Transport(ABC):
    """A wire backend: opens client connections and serves accepted ones.

    Attributes:
        name: the registered name (``"websockets"``).
        schemes: the URL schemes this transport understands (``("ws", "wss")``).
        supports_tls: whether ``connect`` and ``serve`` take TLS settings
            (``ssl=`` a :class:`~proxy_core.tls.ClientTLS` or
            :class:`~proxy_core.tls.ServerTLS`) for the secure scheme of a
            pair like ``ws``/``wss``; the conformance kit's TLS contracts
            skip a transport that says ``False``.
    """

    name: ClassVar[str]
    schemes: ClassVar[tuple[str, ...]]
    supports_tls: ClassVar[bool] = True

    @abstractmethod
    async def connect(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        ssl: SSLContext | ClientTLS | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        open_timeout: float = 10.0,
    ) -> Connection:
        """Open a connection to ``url``.

        ``ssl`` is the TLS configuration for a secure URL: a
        :class:`~proxy_core.tls.ClientTLS`, which every TLS-capable backend
        takes, or an ``ssl.SSLContext`` where the backend is built on
        Python's ``ssl`` module; ``None`` trusts the system's store.

        Raises:
            ConnectError: the connection could not be opened.
            TLSError: the TLS handshake failed (a ``ConnectError``; e.g. the
                server's certificate did not verify).
            AuthenticationError: the server refused the headers.
            ConfigurationError: the URL is not one this transport serves, or
                ``ssl`` is not usable here.
        """

    @abstractmethod
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

        ``authenticate`` runs on the request headers before any session
        exists; a refusal is answered in the backend's own terms (HTTP 401,
        gRPC UNAUTHENTICATED) and the handler is never called. ``ssl`` is
        required for a secure URL: a :class:`~proxy_core.tls.ServerTLS`, or
        an ``ssl.SSLContext`` where the backend is built on Python's ``ssl``.
        """

    def check_url(self, url: str) -> None:
        """Refuse, before any I/O, a URL this transport cannot connect to.

        ``ProxyClient`` calls it when it is constructed, so that a wrong scheme
        fails there and not at the first connection. The default checks that
        the scheme is one of :attr:`schemes` and that the URL has a host and
        a valid port; a backend with other rules overrides it.

        Raises:
            ConfigurationError: the URL does not fit (the message says what would).
        """
        parse_url(url, transport=self.name, schemes=self.schemes)

    def adapt(
        self, obj: object, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> Connection:
        """Wrap an already-accepted server-side socket of this backend's library.

        Raises:
            ConfigurationError: ``obj`` is not a socket this backend can adopt.
        """
        raise ConfigurationError(
            f"transport {self.name!r} cannot adopt an object of type {type(obj).__qualname__}"
        )


async def check_authentication(
    authenticate: Authenticator | None, headers: Mapping[str, str]
) -> str | None:
    """Run an ``authenticate`` hook; return ``None`` to accept or the refusal reason.

    A hook that raises anything but :class:`AuthenticationError` refuses too (and
    the exception is logged), so a buggy hook never lets a client in.
    """
    if authenticate is None:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        result = authenticate(lowered)
        if inspect.isawaitable(result):
            result = await result
    except AuthenticationError as exc:
        return exc.reason or "unauthorized"
    except Exception:
        logger.exception("authenticate hook raised; refusing the client")
        return "authentication failed"
    return None if result else "unauthorized"


# ---------------------------------------------------------------- helpers for backends
# Small pieces every backend needs in the same form: one copy here, so that
# URLs, limits, addresses and errors read the same whichever backend is in use.


def parse_url(url: str, *, transport: str, schemes: Sequence[str]) -> SplitResult:
    """Split ``url`` and check it has one of ``schemes``, a valid port and a host.

    Raises:
        ConfigurationError: the URL does not fit (the message names what would).
    """
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise ConfigurationError(
            f"transport {transport!r} cannot use {redact_url(url)}: "
            f"the URL scheme must be one of {', '.join(schemes)}"
        )
    try:
        parts.port  # noqa: B018 -- validates the port
    except ValueError as exc:
        raise ConfigurationError(f"invalid port in {redact_url(url)}") from exc
    if not parts.hostname:
        raise ConfigurationError(f"the URL {redact_url(url)} has no host")
    return parts


def redact_url(url: str) -> str:
    """Return ``url`` without user credentials, for messages and logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def check_max_message_bytes(max_message_bytes: int) -> None:
    """Refuse a frame limit that is not positive.

    Raises:
        ConfigurationError: ``max_message_bytes`` < 1.
    """
    if max_message_bytes < 1:
        raise ConfigurationError(f"max_message_bytes must be positive, not {max_message_bytes}")


def truncate_reason(reason: str) -> str:
    """Return ``reason`` cut to at most 123 bytes of UTF-8, on a character boundary.

    The one rule for every reason that travels (``docs/protocol.md``, section
    1): a close reason on any backend, and the reason of a BYE or a REJECT.
    A character cut in the middle is left out whole. A lone surrogate, which
    UTF-8 cannot carry, becomes ``?``.
    """
    # Only the last character can be cut, so "ignore" drops just that one.
    return reason.encode("utf-8", "replace")[:MAX_REASON_BYTES].decode("utf-8", "ignore")


#: Socket errors said in plain words, the same on every backend.
_PLAIN_ERRNO = {
    errno.ECONNREFUSED: "connection refused (is the server running, on that port?)",
    errno.EADDRINUSE: "address already in use (another process listens on that port)",
    errno.EADDRNOTAVAIL: "address not available on this machine",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
    errno.ENETUNREACH: "network unreachable",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ECONNRESET: "connection reset by the peer",
}


def describe_error(exc: BaseException) -> str:
    """Return a short description of ``exc`` for an error message.

    A socket error anywhere in its chain (``__cause__``, ``__context__``, or
    aiohttp's ``os_error``) is said in plain words (``connection refused
    (...)``, ``address already in use (...)``, an unknown host); anything
    else is ``"Type: message"`` (or just the type).
    """
    os_error = _os_error_in(exc)
    if isinstance(os_error, socket.gaierror):
        return f"cannot resolve the host name ({os_error.strerror or os_error})"
    if os_error is not None and os_error.errno in _PLAIN_ERRNO:
        return _PLAIN_ERRNO[os_error.errno]
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def plain_errno(code: int) -> str | None:
    """Return the plain words for socket error ``code`` (an ``errno``), if there are any."""
    return _PLAIN_ERRNO.get(code)


def _os_error_in(exc: BaseException) -> OSError | None:
    """Return the first socket error (one with an ``errno``) in the chain of ``exc``."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(seen) < 8 and current not in seen:
        seen.append(current)
        if isinstance(current, OSError) and current.errno is not None:
            return current
        inner = getattr(current, "os_error", None)  # aiohttp's ClientConnectorError
        if isinstance(inner, OSError) and inner.errno is not None:
            return inner
        current = current.__cause__ or current.__context__
    return None


def format_host(host: str | None) -> str:
    """Return ``host`` as it appears in a URL (IPv6 addresses in brackets)."""
    if host is None:
        return ""
    return f"[{host}]" if ":" in host else host


def format_address(address: Any) -> str | None:
    """Return a socket address tuple as ``host:port``, anything else as a string."""
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{format_host(str(address[0]))}:{address[1]}"
    return None if address is None else str(address)


def lower_headers(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Return headers as a dict with lower-cased names; repeated names are joined by ", "."""
    headers: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


async def run_connection_handler(handler: ConnectionHandler, connection: Connection) -> None:
    """Run a server's per-connection handler and close the connection however it ends.

    The policy every backend shares: 1000 when the handler returns; a peer that
    went away (``ConnectionClosed``) or sent too much (``MessageTooLarge``,
    already closed with 1009) is an ordinary end, not a handler failure; any
    other exception is logged and closes with 1011.
    """
    try:
        await handler(connection)
    except ConnectionClosed:
        await connection.aclose()
    except MessageTooLarge as exc:
        logger.warning("connection handler ended: %s", exc)
        await connection.aclose(1009, "message too big")
    except Exception:
        logger.exception("connection handler failed; closing with 1011")
        await connection.aclose(1011, "internal error")
    else:
        await connection.aclose()
