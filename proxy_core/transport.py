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

import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from ssl import SSLContext
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

# The helpers every backend needs (URLs, limits, errors): one copy, kept in a
# module of their own and imported from here.
from ._transport_util import (
    MAX_REASON_BYTES,
    bound_url,
    check_max_message_bytes,
    check_tls_scheme,
    connect_error,
    describe_error,
    format_address,
    format_host,
    listen_error,
    lower_headers,
    parse_url,
    plain_errno,
    redact_url,
    refusal_error,
    truncate_reason,
    url_port,
)
from .errors import AuthenticationError, ConfigurationError, ConnectionClosed, MessageTooLarge
from .tls import ClientTLS, ServerTLS

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MAX_REASON_BYTES",
    "SHUTDOWN_GRACE",
    "Authenticator",
    "Connection",
    "ConnectionHandler",
    "Listener",
    "ServedConnections",
    "Transport",
    "bound_url",
    "check_authentication",
    "check_max_message_bytes",
    "check_tls_scheme",
    "connect_error",
    "describe_error",
    "format_address",
    "format_host",
    "listen_error",
    "listening",
    "lower_headers",
    "parse_url",
    "plain_errno",
    "redact_url",
    "refusal_error",
    "run_connection_handler",
    "truncate_reason",
    "url_port",
]

logger = logging.getLogger(__name__)

#: The default limit on one frame, in either direction: 1 MiB.
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024

#: Seconds a closing listener gives its handlers once it has closed their
#: connections, before it cancels those still running: a handler that awaits
#: something other than its connection would keep the server open for ever.
SHUTDOWN_GRACE = 10.0

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


L = TypeVar("L", bound=Listener)


@asynccontextmanager
async def listening(open_listener: Callable[[], Awaitable[L]]) -> AsyncIterator[L]:
    """Open a listener with ``open_listener()``, yield it, and close it however the block ends.

    What a backend's ``serve`` returns once it has checked its arguments, so
    that a bad argument raises from ``serve`` itself and binding raises on
    entering: ``return listening(lambda: self._listen(...))``.
    """
    listener = await open_listener()
    try:
        yield listener
    finally:
        await listener.aclose()


C = TypeVar("C", bound=Connection)


class ServedConnections(Generic[C]):
    """A listener's open connections and the task running each one's handler.

    The shutdown every backend's :class:`Listener` shares: stop accepting,
    :meth:`close_all` (1001), then :meth:`finish`, which gives the handlers
    :data:`SHUTDOWN_GRACE` seconds and cancels those still running.

    Its methods import asyncio when called, not this module: ``proxy_core``
    imports this module, and its pure parts import without asyncio.
    """

    def __init__(self) -> None:
        self._tasks: dict[C, asyncio.Task[Any]] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def connections(self) -> list[C]:
        """The connections whose handler is running."""
        return list(self._tasks)

    async def run(self, handler: ConnectionHandler, connection: C) -> None:
        """Run ``handler`` on ``connection`` in this task (:func:`run_connection_handler`)."""
        import asyncio

        task = asyncio.current_task()
        if task is not None:
            self._tasks[connection] = task
        try:
            await run_connection_handler(handler, connection)
        finally:
            self._tasks.pop(connection, None)

    def start(self, handler: ConnectionHandler, connection: C, name: str) -> asyncio.Task[None]:
        """Run ``handler`` on ``connection`` in a task of its own, and return the task."""
        import asyncio

        task = asyncio.create_task(run_connection_handler(handler, connection), name=name)
        self._tasks[connection] = task
        task.add_done_callback(lambda _: self._tasks.pop(connection, None))
        return task

    async def close_all(self, code: int = 1001, reason: str = "server shutting down") -> None:
        """Close every connection, all at once; each close is bounded by its own timeout."""
        import asyncio

        await asyncio.gather(*(conn.aclose(code, reason) for conn in self.connections))

    async def finish(self, grace: float | None = None) -> None:
        """Wait for the handlers; cancel those still running after ``grace`` seconds.

        Args:
            grace: seconds to wait (default :data:`SHUTDOWN_GRACE`), then as
                long again for the cancelled handlers to end.
        """
        import asyncio

        grace = SHUTDOWN_GRACE if grace is None else grace
        tasks = set(self._tasks.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=grace)
