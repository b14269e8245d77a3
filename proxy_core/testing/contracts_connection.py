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
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from ..errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectError,
    ConnectionClosed,
    MessageTooLarge,
)
from ..transport import Connection, Transport
from ._base import LIMIT, LiveContract, assert_close_code
from ._harness import wait

__all__ = ["ConnectionContract"]


class ConnectionContract(LiveContract):
    """The raw ``Connection`` contract of a transport (no proxies, no codec).

    Included in :class:`~proxy_core.testing.contracts.TransportContract`;
    usable alone (``class TestMyWire(ConnectionContract): transport = "somewire"``).

    Attributes:
        transport: the transport under test, by registered name or instance.
    """

    @contextlib.asynccontextmanager
    async def _pair(
        self, transport: Transport, url: str, **serve: Any
    ) -> Any:  # AsyncIterator[tuple[Connection, Connection, Any]]
        """Serve ``url``; yield (client end, server end, listener) of one raw connection."""
        accepted: asyncio.Queue[Connection] = asyncio.Queue()
        release = asyncio.Event()
        connect_options = serve.pop("connect", {})

        async def handler(conn: Connection) -> None:
            accepted.put_nowait(conn)
            await release.wait()

        async with transport.serve(url, handler, **serve) as listener:
            try:
                client = await wait(transport.connect(listener.url, **connect_options))
                server: Connection | None = None
                try:
                    server = await wait(accepted.get())
                    yield client, server, listener
                finally:
                    # Both at once: a backend's close may wait for the peer to answer it.
                    ends = [client] if server is None else [client, server]
                    await wait(asyncio.gather(*(end.aclose() for end in ends)))
            finally:
                release.set()

    async def test_frames_cross_whole_and_in_order(
        self, proxy_core_transport: Transport, serve_url: str
    ) -> None:
        """Binary frames of any size and content arrive whole, equal and in order, both ways."""
        rng = random.Random(7)
        sizes = [1, 2, 125, 126, 127, 65535, 65536, 100_000, *range(1, 200)]
        frames = [bytes(range(256)), *(rng.randbytes(n) for n in sizes)]
        async with self._pair(proxy_core_transport, serve_url) as (client, server, listener):
            assert listener.url.split(":", 1)[0] in proxy_core_transport.schemes
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
            _,
        ):
            assert server.request_headers.get("authorization") == "Bearer Token-42"
            assert server.request_headers.get("x-tenant") == "Acme-Corp"
            assert all(name == name.lower() for name in server.request_headers)
            assert dict(client.request_headers) == {}

    @pytest.mark.parametrize("hook", ["plain", "async", "raising"])
    async def test_authenticate_refusal_is_an_authentication_error(
        self, proxy_core_transport: Transport, serve_url: str, hook: str
    ) -> None:
        """A refused client gets ``AuthenticationError`` from ``connect``; no handler runs."""
        seen: list[dict[str, str]] = []

        def check(headers: Mapping[str, str]) -> bool:
            seen.append(dict(headers))
            if hook == "raising" and headers.get("x-key") != "sesame":
                raise AuthenticationError("bad key")
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
        self, proxy_core_transport: Transport, serve_url: str
    ) -> None:
        """The server closes a connection when its handler returns (1000) or fails (1011), and
        every connection when the listener closes."""
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
            with pytest.raises(ConnectionClosed):
                await wait(held.receive())
            with pytest.raises(ConnectError):
                await wait(transport.connect(listener.url, open_timeout=5))
        finally:
            if held is not None:
                await held.aclose()

    async def test_bad_urls_are_configuration_errors(self, proxy_core_transport: Transport) -> None:
        """A URL of another scheme is local misuse: ``ConfigurationError``, connect or serve."""

        async def handler(conn: Connection) -> None:
            pass

        with pytest.raises(ConfigurationError):
            await wait(proxy_core_transport.connect("proxy-core-kit-bogus://127.0.0.1:1/x"))
        with pytest.raises(ConfigurationError):
            async with proxy_core_transport.serve("proxy-core-kit-bogus://127.0.0.1:0/x", handler):
                pass
