"""A fault-injecting TCP relay for tests of any TCP-based transport.

:class:`FaultRelay` listens on 127.0.0.1 (a free port), connects each accepted
client to the upstream server, and copies bytes both ways, while the test
delays, stalls, truncates or cuts the traffic::

    async with serve_proxy("ws://127.0.0.1:0/ws", ...) as service:
        async with FaultRelay.for_url(service.url) as relay:
            client = ProxyClient("proxy", url=relay.url_for(service.url), ...)
            ...
            relay.cut()  # both sides see their TCP connection reset

It knows nothing of the protocol on top, so it works for WebSocket, HTTP/2
(gRPC) or anything else on TCP. Directions: ``"upstream"`` is client to server,
``"downstream"`` server to client. Every task and socket it opened is closed
when the ``async with`` block exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Final, Literal
from urllib.parse import urlsplit

from ..errors import ConfigurationError

__all__ = ["Direction", "FaultRelay"]

logger = logging.getLogger(__name__)

Direction = Literal["upstream", "downstream"]
_DIRECTIONS: Final = ("upstream", "downstream")
_READ_SIZE: Final = 64 * 1024
_CLOSE_TIMEOUT: Final = 5.0


class _Link:
    """One relayed connection: the client's socket, the upstream socket, two pumps."""

    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.pumps: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        """Reset both sockets (no FIN, pending data dropped) and stop the pumps."""
        for _, writer in (self.client, self.upstream):
            writer.transport.abort()
        current = asyncio.current_task()
        for pump in self.pumps:
            if pump is not current:
                pump.cancel()

    async def close(self) -> None:
        """Close both sockets gracefully (bounded), after the pumps are done."""
        for _, writer in (self.client, self.upstream):
            writer.close()
        for _, writer in (self.client, self.upstream):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), _CLOSE_TIMEOUT)


class FaultRelay:
    """A TCP relay on 127.0.0.1 that injects faults on command.

    Args:
        upstream_host: the server's host.
        upstream_port: the server's port.
        host: the address to listen on.
        connect_timeout: seconds allowed to reach the upstream per client.

    Attributes:
        bytes_upstream: bytes forwarded from clients to the server.
        bytes_downstream: bytes forwarded from the server to clients.
        connections_accepted: client connections accepted so far.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        host: str = "127.0.0.1",
        connect_timeout: float = 10.0,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = host
        self.connect_timeout = connect_timeout
        self.bytes_upstream = 0
        self.bytes_downstream = 0
        self.connections_accepted = 0
        self._delay = 0.0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._truncate: dict[str, int] = {}
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._accepted = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._port: int | None = None

    @classmethod
    def for_url(
        cls, url: str, *, host: str = "127.0.0.1", connect_timeout: float = 10.0
    ) -> FaultRelay:
        """Return a relay to the host and port of ``url`` (the default port of its scheme if none).

        Raises:
            ConfigurationError: the URL names no host or port.
        """
        parts = urlsplit(url)
        defaults = {"ws": 80, "http": 80, "wss": 443, "https": 443}
        port = parts.port if parts.port is not None else defaults.get(parts.scheme)
        if not parts.hostname or port is None:
            raise ConfigurationError(f"cannot relay {url!r}: it names no TCP host and port")
        return cls(parts.hostname, port, host=host, connect_timeout=connect_timeout)

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> FaultRelay:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Listen on a free port of :attr:`host`."""
        if self._server is not None:
            raise ConfigurationError("this relay is already started")
        self._server = await asyncio.start_server(self._on_client, self.host, 0)
        self._port = self._server.sockets[0].getsockname()[1]

    async def aclose(self) -> None:
        """Stop listening, reset every relayed connection, and wait for every task."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self._flowing.set()
        self.cut()
        handlers = list(self._handlers)
        if handlers:
            await asyncio.wait(handlers, timeout=_CLOSE_TIMEOUT * 2)
        for task in handlers:
            if not task.done():
                task.cancel()
        if handlers:
            await asyncio.gather(*handlers, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    # ------------------------------------------------------------ addresses

    @property
    def port(self) -> int:
        """The port the relay listens on.

        Raises:
            ConfigurationError: the relay is not started.
        """
        if self._port is None:
            raise ConfigurationError("the relay is not started: use `async with FaultRelay(...)`")
        return self._port

    def url_for(self, url: str) -> str:
        """Return ``url`` with its host and port replaced by the relay's."""
        parts = urlsplit(url)
        userinfo, _, _ = parts.netloc.rpartition("@")
        host = f"[{self.host}]" if ":" in self.host else self.host
        netloc = f"{userinfo}@{host}:{self.port}" if userinfo else f"{host}:{self.port}"
        return parts._replace(netloc=netloc).geturl()

    @property
    def connections_open(self) -> int:
        """How many relayed connections are open now."""
        return len(self._links)

    async def wait_connections(self, count: int, timeout: float = 30.0) -> None:
        """Wait until :attr:`connections_accepted` reaches ``count``.

        Raises:
            TimeoutError: it did not within ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout), self._accepted:
            await self._accepted.wait_for(lambda: self.connections_accepted >= count)

    # ------------------------------------------------------------ faults

    def delay(self, seconds: float) -> None:
        """Hold every chunk for ``seconds`` before forwarding it (0 turns it off)."""
        if seconds < 0:
            raise ConfigurationError("the delay cannot be negative")
        self._delay = seconds

    def stall(self) -> None:
        """Stop forwarding in both directions, keeping every connection open (half-open)."""
        self._flowing.clear()

    def resume(self) -> None:
        """Forward again after :meth:`stall`; what was held goes on in order."""
        self._flowing.set()

    def cut(self) -> None:
        """Reset every relayed connection at once, on both sides. New clients are still relayed."""
        for link in list(self._links):
            link.abort()

    def truncate_next(self, direction: Direction, keep_bytes: int) -> None:
        """Forward only the first ``keep_bytes`` of the next chunk in ``direction``, then cut.

        Raises:
            ConfigurationError: an unknown direction or a negative count.
        """
        if direction not in _DIRECTIONS:
            raise ConfigurationError(f"direction must be one of {_DIRECTIONS}, not {direction!r}")
        if keep_bytes < 0:
            raise ConfigurationError("keep_bytes cannot be negative")
        self._truncate[direction] = keep_bytes

    # ------------------------------------------------------------ relaying

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._relay(reader, writer)
        finally:
            self._handlers.discard(task)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._accepted:
            self.connections_accepted += 1
            self._accepted.notify_all()
        try:
            upstream = await asyncio.wait_for(
                asyncio.open_connection(self.upstream_host, self.upstream_port),
                self.connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            logger.info(
                "relay could not reach %s:%s: %r", self.upstream_host, self.upstream_port, exc
            )
            writer.transport.abort()
            writer.close()
            return
        link = _Link((reader, writer), upstream)
        if self._server is None:  # closed while we connected
            link.abort()
            await link.close()
            return
        self._links.add(link)
        link.pumps = [
            asyncio.create_task(self._pump(link, "upstream", reader, upstream[1])),
            asyncio.create_task(self._pump(link, "downstream", upstream[0], writer)),
        ]
        try:
            await asyncio.gather(*link.pumps, return_exceptions=True)
        finally:
            self._links.discard(link)
            await link.close()

    async def _pump(
        self,
        link: _Link,
        direction: Direction,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        try:
            while data := await reader.read(_READ_SIZE):
                await self._flowing.wait()
                if self._delay:
                    await asyncio.sleep(self._delay)
                keep = self._truncate.pop(direction, None)
                if keep is not None:
                    data = data[:keep]
                writer.write(data)
                await writer.drain()
                self._count(direction, len(data))
                if keep is not None:
                    link.abort()
                    return
            if writer.can_write_eof():  # a half-close goes on as a half-close
                writer.write_eof()
        except (OSError, RuntimeError):
            # A reset on one side resets the other: that is what a vanishing peer looks like.
            link.abort()

    def _count(self, direction: Direction, size: int) -> None:
        if direction == "upstream":
            self.bytes_upstream += size
        else:
            self.bytes_downstream += size
