"""An in-process transport: the shipped fake for unit tests (``memory://name/path``).

:class:`MemoryTransport` carries frames between two :class:`MemoryConnection`
objects through a pair of bounded in-process buffers, with the whole
:class:`~proxy_core.transport.Connection` contract: ordered binary frames,
:class:`~proxy_core.errors.ConnectionClosed` at the end with the close code and
reason the peer chose, :class:`~proxy_core.errors.MessageTooLarge` on the
receiver for a frame over its limit, request headers, and an ``authenticate``
refusal raised by ``connect`` as :class:`~proxy_core.errors.AuthenticationError`.

A served name lives in a table of the running event loop, so any
``MemoryTransport`` instance on that loop finds it; nothing leaves the process
and no port is used. As with TCP, a URL whose authority ends in ``:0``
(``memory://127.0.0.1:0/ws``) asks for a fresh name: the listener's ``url``
tells which one (``memory://127.0.0.1:1/ws``).

Use it by name (``transport="memory"``, registered in the
``proxy_core.transports`` entry-point group) or by instance::

    transport = MemoryTransport()
    async with serve_proxy("memory://gateway/ws", transport=transport, ...) as service:
        client = ProxyClient("proxy", url=service.url, transport=transport, ...)
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from ssl import SSLContext
from typing import ClassVar, Final
from urllib.parse import SplitResult, urlsplit

from ..errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectError,
    ConnectionClosed,
    MessageTooLarge,
)
from ..tls import ClientTLS, ServerTLS
from ..transport import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Authenticator,
    Connection,
    ConnectionHandler,
    Listener,
    ServedConnections,
    Transport,
    check_authentication,
    check_max_message_bytes,
    listening,
    redact_url,
    truncate_reason,
)

__all__ = ["MemoryConnection", "MemoryListener", "MemoryTransport", "served_names"]

logger = logging.getLogger(__name__)

SCHEME: Final = "memory"
#: Frames a direction buffers before ``send`` waits for the receiver.
DEFAULT_BUFFER_FRAMES: Final = 256
_ABNORMAL_CLOSURE = 1006
_TOO_LARGE = 1009

_client_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class _Oversized:
    """Stands in the buffer for a frame the receiver refuses (its bytes are not kept)."""

    size: int


class _Pipe:
    """One direction: a bounded FIFO of frames, closable from either end."""

    def __init__(self, max_frames: int, reader_limit: int) -> None:
        self.reader_limit = reader_limit
        self._frames: deque[bytes | _Oversized] = deque()
        self._max = max_frames
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        # (code, reason) once the writer closed: the reader drains, then sees it.
        self.writer_closed: tuple[int | None, str] | None = None
        # (code, reason) once the reader closed: writes fail with it.
        self.reader_closed: tuple[int | None, str] | None = None

    async def put(self, item: bytes | _Oversized) -> None:
        while True:
            self._raise_if_unwritable()
            if len(self._frames) < self._max:
                break
            self._writable.clear()
            await self._writable.wait()
        self._frames.append(item)
        self._readable.set()

    def _raise_if_unwritable(self) -> None:
        # Our own close comes first: after it, the peer's state is no business of ours.
        if self.writer_closed is not None:
            raise ConnectionClosed(*self.writer_closed)
        if self.reader_closed is not None:
            raise ConnectionClosed(*self.reader_closed)

    async def get(self) -> bytes | _Oversized:
        while not self._frames:
            if self.reader_closed is not None:
                raise ConnectionClosed(*self.reader_closed)
            if self.writer_closed is not None:
                raise ConnectionClosed(*self.writer_closed)
            self._readable.clear()
            await self._readable.wait()
        if self.reader_closed is not None:
            raise ConnectionClosed(*self.reader_closed)
        item = self._frames.popleft()
        self._writable.set()
        return item

    def close_writer(self, code: int | None, reason: str, *, discard: bool = False) -> None:
        if self.writer_closed is None:
            self.writer_closed = (code, reason)
        if discard:
            self._frames.clear()
        self._wake()

    def close_reader(self, code: int | None, reason: str) -> None:
        if self.reader_closed is None:
            self.reader_closed = (code, reason)
        self._frames.clear()
        self._wake()

    def _wake(self) -> None:
        self._readable.set()
        self._writable.set()


class MemoryConnection(Connection):
    """One end of an in-process connection made by :class:`MemoryTransport`.

    Frames are ``bytes``, delivered whole and in order; each direction buffers
    a bounded number of frames, then ``send`` waits for the receiver.
    """

    def __init__(
        self,
        inbound: _Pipe,
        outbound: _Pipe,
        *,
        headers: Mapping[str, str] | None = None,
        remote_address: str | None = None,
    ) -> None:
        self._inbound = inbound
        self._outbound = outbound
        self._headers = {k.lower(): v for k, v in (headers or {}).items()}
        self._remote_address = remote_address
        self._closed: tuple[int | None, str] | None = None
        self._receiving = False

    async def send(self, data: bytes) -> None:
        """Send one binary frame; wait while the peer's buffer is full.

        Raises:
            ConnectionClosed: the connection is closed (the code and reason of
                whichever side closed it).
            ConfigurationError: ``data`` is not bytes-like.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ConfigurationError(f"frames are bytes, not {type(data).__qualname__}")
        frame = bytes(data)
        if len(frame) > self._outbound.reader_limit:
            await self._outbound.put(_Oversized(len(frame)))
        else:
            await self._outbound.put(frame)

    async def receive(self) -> bytes:
        """Receive the next frame.

        Raises:
            ConnectionClosed: the connection is over (after every frame sent
                before the close was received).
            MessageTooLarge: the peer sent a frame over this end's limit; the
                connection is then closed with 1009.
            ConfigurationError: another ``receive`` is waiting (misuse, as on
                the socket backends).
        """
        if self._receiving:
            raise ConfigurationError("receive() called while another receive() waits")
        self._receiving = True
        try:
            item = await self._inbound.get()
        finally:
            self._receiving = False
        if isinstance(item, _Oversized):
            await self.aclose(_TOO_LARGE, "message too big")
            raise MessageTooLarge(item.size, self._inbound.reader_limit)
        return item

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close both directions; the peer sees ``code`` and ``reason`` (cut as every
        backend cuts it: ``truncate_reason``). Idempotent."""
        self._close(code, truncate_reason(reason), discard=False)

    def abort(self) -> None:
        """Drop the connection as a dead network would: no flush, the peer sees code 1006.

        Frames still buffered toward the peer are lost.
        """
        self._close(_ABNORMAL_CLOSURE, "", discard=True)

    def _close(self, code: int | None, reason: str, *, discard: bool) -> None:
        if self._closed is not None:
            return
        self._closed = (code, reason)
        self._outbound.close_writer(code, reason, discard=discard)
        self._inbound.close_reader(code, reason)

    @property
    def closed(self) -> bool:
        """Whether this end was closed (by :meth:`aclose`, :meth:`abort`, or an oversized frame)."""
        return self._closed is not None

    @property
    def request_headers(self) -> Mapping[str, str]:
        """The client's headers, names lower-cased, on the server's end; empty on the client's."""
        return self._headers

    @property
    def remote_address(self) -> str | None:
        """A printable name of the peer."""
        return self._remote_address


class MemoryListener(Listener):
    """A served name, as yielded by :meth:`MemoryTransport.serve`."""

    def __init__(
        self,
        name: str,
        parts: SplitResult,
        handler: ConnectionHandler,
        authenticate: Authenticator | None,
        limit: int,
        buffer_frames: int,
    ) -> None:
        self.name = name
        self._url = parts._replace(netloc=name).geturl()
        self._path = parts.path
        self._handler = handler
        self._authenticate = authenticate
        self._limit = limit
        self._buffer_frames = buffer_frames
        self._served: ServedConnections[MemoryConnection] = ServedConnections()
        self._closing = False

    @property
    def url(self) -> str:
        """The URL clients connect to (with the chosen name when ``:0`` was asked for)."""
        return self._url

    async def _accept(
        self, path: str, headers: Mapping[str, str], client_limit: int
    ) -> MemoryConnection:
        if self._path not in ("", "/") and path != self._path:
            raise ConnectError(f"no endpoint at {path or '/'} on {self._url}")
        refusal = await check_authentication(self._authenticate, headers)
        if refusal is not None:
            raise AuthenticationError(refusal)
        if self._closing:
            raise ConnectError(f"{self._url} is closing")
        to_server = _Pipe(self._buffer_frames, self._limit)
        to_client = _Pipe(self._buffer_frames, client_limit)
        client_name = f"memory-client-{next(_client_ids)}"
        server_end = MemoryConnection(
            to_server, to_client, headers=headers, remote_address=client_name
        )
        client_end = MemoryConnection(to_client, to_server, remote_address=self.name)
        self._served.start(self._handler, server_end, name=f"memory-handler-{client_name}")
        return client_end

    async def aclose(self) -> None:
        """Stop accepting, close every open connection (1001) and wait for the handlers
        (cancelling, as every backend does, those still running after
        :data:`~proxy_core.transport.SHUTDOWN_GRACE`)."""
        self._closing = True
        _unregister(self.name, self)
        await self._served.close_all()
        await self._served.finish()


# The served names of each running event loop. An entry leaves the table when
# its listener closes, and a loop's table when it is empty: nothing outlives a test.
_SERVERS: dict[asyncio.AbstractEventLoop, dict[str, MemoryListener]] = {}
_AUTO_NAMES = itertools.count(1)


def served_names() -> list[str]:
    """Return the names served on the running event loop, sorted (for leak checks)."""
    return sorted(_SERVERS.get(asyncio.get_running_loop(), {}))


def _claim_name(parts: SplitResult) -> str:
    table = _SERVERS.get(asyncio.get_running_loop(), {})
    if parts.port == 0:
        host = parts.hostname or "memory"
        return next(n for n in (f"{host}:{i}" for i in _AUTO_NAMES) if n not in table)
    name = _name_of(parts)
    if name in table:
        raise ConnectError(f"memory name {name!r} is already served on this event loop")
    return name


def _register(listener: MemoryListener) -> None:
    _SERVERS.setdefault(asyncio.get_running_loop(), {})[listener.name] = listener


def _unregister(name: str, listener: MemoryListener) -> None:
    loop = asyncio.get_running_loop()
    table = _SERVERS.get(loop)
    if table is not None and table.get(name) is listener:
        del table[name]
        if not table:
            del _SERVERS[loop]


def _name_of(parts: SplitResult) -> str:
    return parts.netloc.rpartition("@")[2]


def _parse_url(url: str) -> SplitResult:
    parts = urlsplit(url)
    if parts.scheme != SCHEME:
        raise ConfigurationError(
            f"transport 'memory' cannot use {redact_url(url)!r}: the URL scheme must be {SCHEME}"
        )
    try:
        parts.port  # noqa: B018 -- validates the port
    except ValueError as exc:
        raise ConfigurationError(f"invalid port in {redact_url(url)!r}") from exc
    if not _name_of(parts) or not parts.hostname:
        raise ConfigurationError(f"the URL {redact_url(url)!r} has no name (memory://name/path)")
    return parts


def _check_options(ssl: SSLContext | ClientTLS | ServerTLS | None, max_message_bytes: int) -> None:
    if ssl is not None:
        raise ConfigurationError("the memory transport has no TLS; pass ssl=None")
    check_max_message_bytes(max_message_bytes)


class MemoryTransport(Transport):
    """The in-process transport: ``memory://name/path`` URLs, no sockets, no ports.

    Args:
        buffer_frames: how many frames each direction holds before ``send``
            waits for the receiver (bounded, as a socket's buffers are).
    """

    name: ClassVar[str] = "memory"
    schemes: ClassVar[tuple[str, ...]] = (SCHEME,)
    supports_tls: ClassVar[bool] = False  # in-process: nothing to encrypt

    def __init__(self, *, buffer_frames: int = DEFAULT_BUFFER_FRAMES) -> None:
        if buffer_frames < 1:
            raise ConfigurationError("buffer_frames must be at least 1")
        self.buffer_frames = buffer_frames

    def check_url(self, url: str) -> None:
        """Refuse anything but a ``memory://name/path`` URL (``ConfigurationError``)."""
        _parse_url(url)

    async def connect(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        ssl: SSLContext | ClientTLS | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        open_timeout: float = 10.0,
    ) -> Connection:
        """Connect to the name served on this event loop.

        Raises:
            ConfigurationError: not a ``memory://`` URL, or ``ssl`` was given.
            ConnectError: nothing serves that name (or path) on this event loop.
            AuthenticationError: the server's ``authenticate`` refused ``headers``.
        """
        parts = _parse_url(url)
        _check_options(ssl, max_message_bytes)
        name = _name_of(parts)
        listener = _SERVERS.get(asyncio.get_running_loop(), {}).get(name)
        if listener is None:
            raise ConnectError(f"nothing serves {redact_url(url)!r} on this event loop")
        lowered = {k.lower(): v for k, v in (headers or {}).items()}
        try:
            async with asyncio.timeout(open_timeout):
                return await listener._accept(parts.path, lowered, max_message_bytes)
        except TimeoutError as exc:
            raise ConnectError(f"connecting to {redact_url(url)!r} timed out") from exc

    def serve(
        self,
        url: str,
        handler: ConnectionHandler,
        *,
        authenticate: Authenticator | None = None,
        ssl: SSLContext | ServerTLS | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> AbstractAsyncContextManager[Listener]:
        """Serve ``url``'s name on the running event loop while the ``async with`` block runs.

        A path other than the URL's (unless it is empty or ``/``) is refused
        with :class:`~proxy_core.errors.ConnectError` on the client; so is a
        client that ``authenticate`` refuses (with ``AuthenticationError``),
        and the handler is never called for either.

        Raises:
            ConfigurationError: a bad URL, or ``ssl`` was given.
            ConnectError: the name is already served on this loop (on entering).
        """
        parts = _parse_url(url)
        _check_options(ssl, max_message_bytes)
        limit = max_message_bytes

        async def open_listener() -> Listener:
            name = _claim_name(parts)
            listener = MemoryListener(name, parts, handler, authenticate, limit, self.buffer_frames)
            _register(listener)
            return listener

        return listening(open_listener)
