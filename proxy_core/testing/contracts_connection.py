r"""The Connection contract of the kit: :class:`ConnectionContract`, part of ``TransportContract``.

A transport's raw :class:`~proxy_core.Connection`\ s, with no proxy on them:
binary frames of any size cross whole and in order, a close reaches the peer
after the frames before it, request headers and ``authenticate`` reach the
server, a frame over the receiver's limit is ``MessageTooLarge`` there, the
listener closes what it served, and a URL of another scheme is local misuse.
See ``docs/conformance.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any
from urllib.parse import urlsplit

import pytest

from .. import transport as _transport_module
from ..errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectError,
    ConnectionClosed,
    MessageTooLarge,
    ProxyError,
)
from ..tls import ClientTLS, ServerTLS
from ..transport import Connection, Listener, Transport
from ._base import LIMIT, LiveContract, assert_close_code
from ._harness import wait, waiting_receive
from ._raw import connection_pair
from ._tls import tls_scheme

__all__ = ["ConnectionContract"]


class ConnectionContract(LiveContract):
    """The raw ``Connection`` contract of a transport (no proxies, no codec).

    Included in :class:`~proxy_core.testing.contracts.TransportContract`;
    usable alone (``class TestMyWire(ConnectionContract): transport = "somewire"``).

    Attributes:
        transport: the transport under test, by registered name or instance.
    """

    @staticmethod
    def _pair(
        transport: Transport, url: str, **serve: Any
    ) -> AbstractAsyncContextManager[tuple[Connection, Connection, Listener]]:
        """Serve ``url``; yield (client end, server end, listener) of one raw connection."""
        return connection_pair(transport, url, **serve)

    async def test_frames_cross_whole_and_in_order(
        self, proxy_core_transport: Transport, serve_url: str
    ) -> None:
        """Binary frames of any size and content arrive whole, equal and in order, both ways."""
        rng = random.Random(7)
        sizes = [0, 1, 2, 125, 126, 127, 65535, 65536, 100_000, *range(1, 200)]
        frames = [bytes(range(256)), *(rng.randbytes(n) for n in sizes)]
        async with self._pair(proxy_core_transport, serve_url) as (client, server, listener):
            assert listener.url.split(":", 1)[0] in proxy_core_transport.schemes
            assert urlsplit(listener.url).port != 0, "Listener.url must have the real port"
            for sender, receiver in ((client, server), (server, client)):
                sending = asyncio.ensure_future(self._send_all(sender, frames))
                got = [await wait(receiver.receive()) for _ in frames]
                await wait(sending)
                assert [len(g) for g in got] == [len(f) for f in frames]
                assert got == frames

    @staticmethod
    async def _send_all(conn: Connection, frames: Sequence[bytes]) -> None:
        for frame in frames:
            await conn.send(frame)

    @pytest.mark.parametrize("closer", ["client", "server"])
    async def test_close_reaches_the_peer_after_the_frames_before_it(
        self, proxy_core_transport: Transport, serve_url: str, closer: str
    ) -> None:
        """Frames sent before ``aclose`` arrive, then ``receive`` raises ConnectionClosed."""
        async with self._pair(proxy_core_transport, serve_url) as (client, server, _):
            closing, peer = (client, server) if closer == "client" else (server, client)
            # The peer reads all the time, as a proxy does: some backends only finish a
            # close once the other end has read up to it.
            reading = asyncio.ensure_future(self._receive_until_closed(peer))
            for n in range(3):
                await closing.send(b"frame %d" % n)
            await wait(closing.aclose(4321, "see you"))
            await wait(closing.aclose(4321, "see you"))  # idempotent
            frames, ended = await wait(reading)
            assert frames == [b"frame 0", b"frame 1", b"frame 2"]
            assert_close_code(ended, 4321)
            if ended.code is not None:
                assert ended.reason == "see you"
            with pytest.raises(ConnectionClosed):
                await wait(peer.receive())  # over is over
            with pytest.raises(ConnectionClosed):
                await wait(closing.receive())
            with pytest.raises(ConnectionClosed):
                await wait(closing.send(b"after close"))
            with pytest.raises(ConnectionClosed):
                for _ in range(100):  # the peer learns, at the latest on its next sends
                    await wait(peer.send(b"to a closed peer"))
            async for _ in peer:  # iteration ends at the close
                raise AssertionError("no frame after the close")

    @staticmethod
    async def _receive_until_closed(conn: Connection) -> tuple[list[bytes], ConnectionClosed]:
        frames: list[bytes] = []
        while True:
            try:
                frames.append(await conn.receive())
            except ConnectionClosed as exc:
                return frames, exc

    async def test_request_headers_reach_the_server_lower_cased(
        self, proxy_core_transport: Transport, serve_url: str
    ) -> None:
        """The server end sees the client's headers with lower-cased names; the client sees none."""
        headers = {"Authorization": "Bearer Token-42", "X-Tenant": "Acme-Corp"}
        async with self._pair(proxy_core_transport, serve_url, connect={"headers": headers}) as (
            client,
            server,
            listener,
        ):
            assert server.request_headers.get("authorization") == "Bearer Token-42"
            assert server.request_headers.get("x-tenant") == "Acme-Corp"
            assert all(name == name.lower() for name in server.request_headers)
            assert dict(client.request_headers) == {}
            # Optional ("when the backend knows it"), but right when given.
            assert client.remote_address in (None, urlsplit(listener.url).netloc)
            if self._is_tcp(proxy_core_transport) and server.remote_address is not None:
                assert server.remote_address.startswith("127.0.0.1:"), server.remote_address

    @pytest.mark.parametrize("hook", ["plain", "async", "raising", "crashing"])
    async def test_authenticate_refusal_is_an_authentication_error(
        self, proxy_core_transport: Transport, serve_url: str, hook: str
    ) -> None:
        """A refused client gets ``AuthenticationError`` from ``connect``; no handler runs.

        A hook that fails (raises anything but ``AuthenticationError``) refuses too.
        """
        seen: list[dict[str, str]] = []

        def check(headers: Mapping[str, str]) -> bool:
            seen.append(dict(headers))
            if hook == "raising" and headers.get("x-key") != "sesame":
                raise AuthenticationError("bad key")
            if hook == "crashing" and headers.get("x-key") != "sesame":
                raise ZeroDivisionError("a deliberately failing hook (the kit's test)")
            return headers.get("x-key") == "sesame"

        async def check_async(headers: Mapping[str, str]) -> bool:
            return check(headers)

        handled: list[Connection] = []

        async def handler(conn: Connection) -> None:
            handled.append(conn)
            await conn.send(b"welcome")

        transport = proxy_core_transport
        authenticate = check_async if hook == "async" else check
        async with transport.serve(serve_url, handler, authenticate=authenticate) as listener:
            with pytest.raises(AuthenticationError) as caught:
                await wait(transport.connect(listener.url, headers={"X-Key": "wrong"}))
            if hook == "raising":
                assert "bad key" in caught.value.reason
            assert handled == []
            conn = await wait(transport.connect(listener.url, headers={"X-Key": "sesame"}))
            async with conn:
                assert await wait(conn.receive()) == b"welcome"
        assert [h.get("x-key") for h in seen] == ["wrong", "sesame"]

    @pytest.mark.parametrize("receiver", ["server", "client"])
    async def test_frame_over_the_limit_is_message_too_large_on_the_receiver(
        self, proxy_core_transport: Transport, serve_url: str, receiver: str
    ) -> None:
        """A frame at the receiver's limit arrives; one byte over raises MessageTooLarge there."""
        options: dict[str, Any] = {"max_message_bytes": 1 << 20}
        if receiver == "server":
            options["max_message_bytes"] = LIMIT
        else:
            options["connect"] = {"max_message_bytes": LIMIT}
        async with self._pair(proxy_core_transport, serve_url, **options) as (client, server, _):
            sender, peer = (client, server) if receiver == "server" else (server, client)
            await sender.send(b"\x01" * LIMIT)
            assert await wait(peer.receive()) == b"\x01" * LIMIT
            with contextlib.suppress(ConnectionClosed):  # the sender may learn of the close first
                await sender.send(b"\x02" * (LIMIT + 1))
            with pytest.raises(MessageTooLarge) as caught:
                await wait(peer.receive())
            assert caught.value.limit == LIMIT
            assert caught.value.size in (LIMIT + 1, None)
            with pytest.raises(ConnectionClosed):
                await wait(peer.receive())
            with pytest.raises(ConnectionClosed) as closed:
                for _ in range(100):
                    await wait(sender.receive())
            assert_close_code(closed.value, 1009)

    async def test_handler_end_and_listener_close_close_the_connections(
        self, proxy_core_transport: Transport, serve_url: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The server closes a connection when its handler returns (1000) or fails (1011, and
        the failure is logged), and every connection when the listener closes (1001)."""
        transport = proxy_core_transport

        async def handler(conn: Connection) -> None:
            command = await conn.receive()
            if command == b"fail":
                raise RuntimeError("a deliberately failing handler (the kit's test)")
            if command == b"hold":
                await conn.send(b"holding")
                with contextlib.suppress(ConnectionClosed):
                    await conn.receive()

        held: Connection | None = None
        try:
            async with transport.serve(serve_url, handler) as listener:
                for command, code in ((b"return", 1000), (b"fail", 1011)):
                    async with await wait(transport.connect(listener.url)) as conn:
                        await conn.send(command)
                        with pytest.raises(ConnectionClosed) as caught:
                            await wait(conn.receive())
                        assert_close_code(caught.value, code)
                held = await wait(transport.connect(listener.url))
                await held.send(b"hold")
                assert await wait(held.receive()) == b"holding"
            with pytest.raises(ConnectionClosed) as going_away:
                await wait(held.receive())
            assert_close_code(going_away.value, 1001)
            failure = "a deliberately failing handler"
            assert any(failure in (r.exc_text or "") for r in caplog.records), "not logged"
            with pytest.raises(ConnectError):
                await wait(transport.connect(listener.url, open_timeout=5))
        finally:
            if held is not None:
                await held.aclose()

    @pytest.mark.parametrize("url", ["other-scheme", "no-scheme", "no-host"])
    async def test_bad_urls_are_configuration_errors(
        self, proxy_core_transport: Transport, url: str
    ) -> None:
        """A URL of another scheme, or without one or a host, is local misuse:
        ``ConfigurationError``, from connect or serve."""
        scheme = proxy_core_transport.schemes[0]
        bad = {
            "other-scheme": "proxy-core-kit-bogus://127.0.0.1:1/x",
            "no-scheme": "127.0.0.1:80",
            "no-host": f"{scheme}://:80/x",
        }[url]
        with pytest.raises(ConfigurationError):
            await wait(proxy_core_transport.connect(bad))
        with pytest.raises(ConfigurationError):
            async with proxy_core_transport.serve(bad, _never_called):
                pass

    # ------------------------------------------------------------ failures and shutdown

    async def test_nothing_listening_is_a_connect_error_naming_the_url(
        self, proxy_core_transport: Transport, serve_url: str
    ) -> None:
        """Connecting where nothing listens (any more) is a ``ConnectError`` naming the URL;
        its cause, when one is chained, is the operating system's error."""
        transport = proxy_core_transport
        async with transport.serve(serve_url, _never_called) as listener:
            url = listener.url
        with pytest.raises(ConnectError) as caught:
            await wait(transport.connect(url, open_timeout=5))
        assert url in str(caught.value)
        cause = caught.value.__cause__
        assert cause is None or isinstance(cause, OSError), f"caused by {cause!r}"

    async def test_credentials_in_the_url_stay_out_of_errors(
        self, proxy_core_transport: Transport, serve_url: str
    ) -> None:
        """A password in the URL never appears in the error of a failed ``connect``."""
        transport = proxy_core_transport
        async with transport.serve(serve_url, _never_called) as listener:
            parts = urlsplit(listener.url)
        url = parts._replace(netloc=f"user:hunter2@{parts.netloc}").geturl()
        with pytest.raises(ProxyError) as caught:
            await wait(transport.connect(url, open_timeout=5))
        assert "hunter2" not in str(caught.value)

    async def test_serving_a_busy_address_is_a_connect_error(
        self, proxy_core_transport: Transport, serve_url: str
    ) -> None:
        """``serve`` on an address already taken is a ``ConnectError`` (on entering): a port
        another socket listens on (TCP), or a name still served (otherwise)."""
        transport = proxy_core_transport
        if self._is_tcp(transport):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                sock.listen()
                with pytest.raises(ConnectError):
                    busy = _with_port(serve_url, sock.getsockname()[1])
                    async with transport.serve(busy, _never_called):
                        pass
        else:
            async with transport.serve(serve_url, _never_called) as listener:
                with pytest.raises(ConnectError):
                    async with transport.serve(listener.url, _never_called):
                        pass

    async def test_silent_server_is_a_connect_error_after_open_timeout(
        self, proxy_core_transport: Transport, serve_url: str
    ) -> None:
        """A server that accepts the TCP connection and never answers: ``connect`` gives up
        after ``open_timeout`` with a ``ConnectError`` caused by ``TimeoutError``."""
        self._require_tcp(proxy_core_transport, "the kit's silent server is a TCP server")
        async with _silent_tcp_server() as port:
            with pytest.raises(ConnectError) as caught:
                url = _with_port(serve_url, port)
                await wait(proxy_core_transport.connect(url, open_timeout=0.5))
        assert isinstance(caught.value.__cause__, TimeoutError), repr(caught.value.__cause__)

    async def test_listener_aclose_is_idempotent(
        self, proxy_core_transport: Transport, serve_url: str
    ) -> None:
        """``Listener.aclose`` may be called again, and leaving ``serve`` after it is quiet."""
        async with proxy_core_transport.serve(serve_url, _never_called) as listener:
            await wait(listener.aclose())
            await wait(listener.aclose())

    async def test_closing_listener_cancels_a_handler_that_ignores_its_connection(
        self, proxy_core_transport: Transport, serve_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A handler still running once the listener closed its connection is cancelled after
        ``proxy_core.transport.SHUTDOWN_GRACE`` seconds (shortened here); the client sees
        the close."""
        monkeypatch.setattr(_transport_module, "SHUTDOWN_GRACE", 0.5)
        transport = proxy_core_transport
        started, cancelled = asyncio.Event(), asyncio.Event()

        async def stubborn(conn: Connection) -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        async def scenario() -> None:
            async with transport.serve(serve_url, stubborn) as listener:
                conn = await wait(transport.connect(listener.url))
                await wait(started.wait())
                reading = asyncio.ensure_future(self._receive_until_closed(conn))
            assert cancelled.is_set(), "leaving serve returned with the handler still running"
            frames, _ = await wait(reading)
            assert frames == []
            await conn.aclose()

        await wait(scenario())

    @pytest.mark.parametrize("end", ["client", "server"])
    async def test_second_concurrent_receive_is_a_configuration_error(
        self, proxy_core_transport: Transport, serve_url: str, end: str
    ) -> None:
        """Only one ``receive`` may wait at a time: a second is ``ConfigurationError``, and
        the first one goes on unharmed."""
        async with self._pair(proxy_core_transport, serve_url) as (client, server, _):
            conn, peer = (client, server) if end == "client" else (server, client)
            pending = await waiting_receive(conn)
            with pytest.raises(ConfigurationError):
                await wait(conn.receive())
            await peer.send(b"wake")
            assert await wait(pending) == b"wake"
            await peer.send(b"again")
            assert await wait(conn.receive()) == b"again"

    @pytest.mark.parametrize("code", [1005, 1006])
    @pytest.mark.parametrize("closer", ["client", "server"])
    async def test_aclose_with_a_code_no_peer_may_send_still_closes(
        self, proxy_core_transport: Transport, serve_url: str, closer: str, code: int
    ) -> None:
        """``aclose(1005)`` or ``aclose(1006)`` (codes that never travel) does not raise: the
        connection ends all the same and the peer learns it."""
        async with self._pair(proxy_core_transport, serve_url) as (client, server, _):
            closing, peer = (client, server) if closer == "client" else (server, client)
            reading = asyncio.ensure_future(self._receive_until_closed(peer))
            await wait(closing.aclose(code))
            with pytest.raises(ConnectionClosed):
                await wait(closing.receive())
            frames, _ = await wait(reading)
            assert frames == []

    async def test_ssl_settings_that_do_not_fit_the_url_are_configuration_errors(
        self, proxy_core_transport: Transport, serve_url: str
    ) -> None:
        """``ssl=`` with a plaintext URL (or on a transport without TLS), and serving the TLS
        scheme without ``ssl=``, are ``ConfigurationError``: nothing falls back silently."""
        transport = proxy_core_transport
        server_tls = ServerTLS(_NOT_A_CERT, _NOT_A_KEY)  # refused before it is read
        with pytest.raises(ConfigurationError):
            await wait(transport.connect(_with_port(serve_url, 1), ssl=ClientTLS()))
        with pytest.raises(ConfigurationError):
            async with transport.serve(serve_url, _never_called, ssl=server_tls):
                pass
        secure = tls_scheme(transport) if transport.supports_tls else None
        if secure is not None:
            with pytest.raises(ConfigurationError):
                async with transport.serve(f"{secure}://127.0.0.1:0/ws", _never_called):
                    pass


_NOT_A_CERT = b"-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n"
_NOT_A_KEY = b"-----BEGIN PRIVATE KEY-----\nnot one\n-----END PRIVATE KEY-----\n"


async def _never_called(conn: Connection) -> None:
    raise AssertionError("no connection was expected to reach this handler")


def _with_port(url: str, port: int) -> str:
    """``url`` on 127.0.0.1 at ``port``."""
    return urlsplit(url)._replace(netloc=f"127.0.0.1:{port}").geturl()


@contextlib.asynccontextmanager
async def _silent_tcp_server() -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 that accepts and never says a word; yield its port."""
    accepted: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        async with server:
            yield server.sockets[0].getsockname()[1]
    finally:
        for writer in accepted:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in accepted), return_exceptions=True)
