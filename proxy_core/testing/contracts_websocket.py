"""The WebSocket contract of the kit: :class:`WebSocketContract`, part of ``TransportContract``.

What a backend of the ``ws``/``wss`` schemes owes a WebSocket peer that is not
a proxy: a text frame is a ``ProtocolError`` that leaves the connection usable,
a message fragmented past the limit is refused whole, a request for another
path is answered 404 (a URL without a path accepts any), and TLS takes an
``ssl.SSLContext`` as well. The peer is the ``websockets`` library (the
reference backend's), imported when a contract runs; a transport without the
``ws`` scheme skips these. See ``docs/conformance.md``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from ..errors import ConnectError, MessageTooLarge, ProtocolError, TLSError
from ..transport import Transport
from ._base import LIMIT, LiveContract
from ._harness import wait
from ._raw import Probe
from ._tls import TLSMaterial

__all__ = ["WebSocketContract"]

_NEEDS_WEBSOCKETS = "the WebSocket contracts talk to the backend with websockets: pip install it"


class WebSocketContract(LiveContract):
    """A WebSocket backend against a bare WebSocket peer (``ws``/``wss`` transports only).

    Included in :class:`~proxy_core.testing.contracts.TransportContract`;
    usable alone (``class TestMyWire(WebSocketContract): transport = "somewire"``).

    Attributes:
        transport: the transport under test, by registered name or instance.
    """

    @staticmethod
    def _require_websocket(transport: Transport) -> None:
        if "ws" not in transport.schemes:
            pytest.skip(f"transport {transport.name!r} does not serve ws:// URLs")
        pytest.importorskip("websockets", reason=_NEEDS_WEBSOCKETS)

    async def test_ws_text_frame_from_a_client_is_a_protocol_error(
        self, proxy_core_transport: Transport, serve_url: str
    ) -> None:
        """A text frame from the client is a ``ProtocolError`` on the server; the next binary
        frame still arrives."""
        self._require_websocket(proxy_core_transport)
        from websockets.asyncio.client import connect

        probe = Probe()
        async with proxy_core_transport.serve(serve_url, probe.echo) as listener:
            async with connect(listener.url, compression=None) as ws:
                await ws.send("not binary")
                await ws.send(b"still works")
                assert await wait(ws.recv()) == b"still works"
        assert len(probe.protocol_errors) == 1
        assert "text frame" in str(probe.protocol_errors[0])

    async def test_ws_text_frame_from_a_server_is_a_protocol_error(
        self, proxy_core_transport: Transport
    ) -> None:
        """A text frame from the server is a ``ProtocolError`` on the client; the connection
        goes on both ways."""
        self._require_websocket(proxy_core_transport)

        async def handler(ws: Any) -> None:
            await ws.send("not binary")
            await ws.send(b"binary")
            await ws.send(await ws.recv())

        async with _bare_server(handler) as url:
            async with await wait(proxy_core_transport.connect(url)) as conn:
                with pytest.raises(ProtocolError, match="text frame"):
                    await wait(conn.receive())
                assert await wait(conn.receive()) == b"binary"
                await conn.send(b"back")
                assert await wait(conn.receive()) == b"back"

    async def test_ws_fragmented_message_over_the_limit_is_refused_whole(
        self, proxy_core_transport: Transport, serve_url: str
    ) -> None:
        """Fragments each under the limit, together over it: ``MessageTooLarge`` on the server
        (with the whole size, when the backend knows it)."""
        self._require_websocket(proxy_core_transport)
        from websockets.asyncio.client import connect

        probe = Probe()
        half = LIMIT // 2 + 100
        transport = proxy_core_transport
        async with transport.serve(serve_url, probe.echo, max_message_bytes=LIMIT) as listener:
            async with connect(listener.url, compression=None) as ws:
                await ws.send([b"a" * half, b"b" * half])
                refused = await wait(probe.outcome)
        assert isinstance(refused, MessageTooLarge), repr(refused)
        assert refused.limit == LIMIT
        assert refused.size in (2 * half, None)

    async def test_ws_another_path_is_answered_404(
        self, proxy_core_transport: Transport, serve_url: str
    ) -> None:
        """A client asking for another path than the served URL's gets a ``ConnectError``
        naming the URL and the 404; no handler runs."""
        self._require_websocket(proxy_core_transport)
        transport, probe = proxy_core_transport, Probe()
        async with transport.serve(serve_url, probe.echo) as listener:
            wrong = urlsplit(listener.url)._replace(path="/elsewhere").geturl()
            with pytest.raises(ConnectError, match="404") as failed:
                await wait(transport.connect(wrong))
        assert wrong in str(failed.value)
        assert probe.calls == 0

    async def test_ws_a_url_without_a_path_accepts_any_path(
        self, proxy_core_transport: Transport
    ) -> None:
        """Serving ``ws://host:port`` (no path) accepts a client on any path."""
        self._require_websocket(proxy_core_transport)
        transport, probe = proxy_core_transport, Probe()
        async with transport.serve("ws://127.0.0.1:0", probe.echo) as listener:
            async with await wait(transport.connect(listener.url + "/any/path?q=1")) as conn:
                await conn.send(b"x")
                assert await wait(conn.receive()) == b"x"

    async def test_ws_wss_takes_ssl_contexts(
        self, proxy_core_transport: Transport, tls_serve_url: str, proxy_core_tls: TLSMaterial
    ) -> None:
        """``wss://`` with an ``ssl.SSLContext`` on both ends; without one, the client trusts
        the system's store, which does not know the test CA: ``TLSError``."""
        self._require_websocket(proxy_core_transport)
        transport, probe = proxy_core_transport, Probe()
        server_context = proxy_core_tls.server.ssl_context()
        client_context = proxy_core_tls.client.ssl_context()
        async with transport.serve(tls_serve_url, probe.echo, ssl=server_context) as listener:
            assert listener.url.startswith("wss://127.0.0.1:")
            async with await wait(transport.connect(listener.url, ssl=client_context)) as conn:
                await conn.send(b"secret")
                assert await wait(conn.receive()) == b"secret"
            with pytest.raises(TLSError, match="certificate verification failed"):
                await wait(transport.connect(listener.url))


@contextlib.asynccontextmanager
async def _bare_server(handler: Any) -> AsyncIterator[str]:
    """Serve ``handler`` with the ``websockets`` library on 127.0.0.1; yield its URL."""
    from websockets.asyncio.server import serve

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
