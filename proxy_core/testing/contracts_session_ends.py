"""The contracts of how a session ends: :class:`SessionEndsContract`.

Part of :class:`~proxy_core.testing.contracts_session.SessionContract` (and so
of ``TransportContract``). Real runners and proxies on both sides, or a raw
peer where the BYE itself is checked: how each side's end (a runner ended or
cancelled, a proxy deactivated) reaches the other, with BYE and its close
code; and, through a :class:`~proxy_core.testing.relay.FaultRelay` (TCP
backends), a link that vanishes mid-stream or stalls and then crawls.
"""

from __future__ import annotations

import asyncio

import pytest

from ..codecs.base import Codec
from ..protocol import Bye
from ..transport import Transport
from ._base import LiveContract, assert_close_code
from ._harness import (
    CLIENT_WORKER,
    SERVER_WORKER,
    running_client,
    running_server,
    text,
    wait,
)
from ._raw import raw_client, raw_server, ready_peer
from .relay import FaultRelay

__all__ = ["SessionEndsContract"]


class SessionEndsContract(LiveContract):
    """Ends and lost links: each side's end reaches the other; a cut or stalled link is survived.

    Attributes:
        transport: the transport under test, by registered name or instance.
        tcp: whether a relay can sit in the middle (``None``: all but memory).
    """

    # ================================================================ ends

    async def test_client_end_ends_the_server_session(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """Ending the client runner: the server sees on_client_disconnected and its runner ends."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with running_server(transport, serve_url, codecs=[codec]) as server:
            async with running_client(transport, server.url, codec=codec) as client:
                side = await self._connected(client, server)
                await client.end()
                await wait(side.disconnected.wait())
                await wait(side.ended.wait())
                assert side.events == ["connected", "disconnected"]
                assert side.worker.ended.is_set()  # a graceful end: on_end ran
                assert client.events == ["connected", "disconnected"]
                assert not side.runner.registry.is_ready(CLIENT_WORKER)

    async def test_client_says_bye_before_closing(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """A deactivated client proxy sends BYE 1000, then closes with 1000."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with (
            raw_server(transport, serve_url, codec) as (url, peers),
            running_client(transport, url, codec=codec) as client,
        ):
            peer = await ready_peer(client, peers)
            await client.acme.deactivate_worker("proxy")
            bye = await peer.next_envelope(lambda e: isinstance(e, Bye))
            assert isinstance(bye, Bye) and bye.code == 1000
            assert_close_code(await peer.closed(), 1000)
            await wait(client.disconnected.wait())
            assert not client.runner.registry.is_ready(SERVER_WORKER)

    @pytest.mark.parametrize("how", ["end", "cancel"])
    async def test_server_runner_end_reaches_the_client(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str, how: str
    ) -> None:
        """Ending (or cancelling) the server's runner: the client's on_disconnected fires and the
        remote worker leaves its registry; the client runner goes on."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with (
            running_server(transport, serve_url, codecs=[codec]) as server,
            running_client(transport, server.url, codec=codec) as client,
        ):
            side = await self._connected(client, server)
            assert client.runner.registry.is_ready(SERVER_WORKER)
            stop = side.runner.end if how == "end" else side.runner.cancel
            await stop("server going down")
            await wait(side.disconnected.wait())
            await wait(side.ended.wait())
            await wait(client.disconnected.wait())
            assert side.events == ["connected", "disconnected"]
            assert client.events == ["connected", "disconnected"]
            assert not client.proxy.connected
            assert not client.runner.registry.is_ready(SERVER_WORKER)
            assert client.task is not None and not client.task.done()

    async def test_server_says_bye_before_closing(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """A server whose runner ends sends BYE 1001, then closes with 1001."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with running_server(transport, serve_url, codecs=[codec]) as server:
            async with raw_client(transport, server.url, codec) as (peer, _):
                side = await server.next_session()
                await wait(side.connected.wait())
                await side.runner.end("closing time")
                bye = await peer.next_envelope(lambda e: isinstance(e, Bye))
                assert isinstance(bye, Bye) and bye.code == 1001
                assert_close_code(await peer.closed(), 1001)
            await wait(side.ended.wait())

    # ================================================================ faults on the wire

    @pytest.mark.parametrize("fault", ["cut", "truncate"])
    async def test_peer_vanishing_mid_stream_is_noticed_by_both_sides(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str, fault: str
    ) -> None:
        """The TCP connection drops mid-stream (reset, or half a frame then reset): both sides'
        events fire, the remote workers are gone, and the client can connect again."""
        transport, codec = proxy_core_transport, proxy_core_codec
        self._require_tcp(transport)
        async with running_server(transport, serve_url, codecs=[codec]) as server:
            async with (
                FaultRelay.for_url(server.url) as relay,
                running_client(transport, relay.url_for(server.url), codec=codec) as client,
            ):
                side = await self._connected(client, server)
                streaming = asyncio.ensure_future(
                    self._send_numbered(client.acme, SERVER_WORKER, 2000)
                )
                await side.worker.wait_text("20")
                if fault == "cut":
                    relay.cut()
                else:
                    relay.truncate_next("downstream", 3)
                    await side.worker.send_bus_message(
                        text(SERVER_WORKER, CLIENT_WORKER, "x" * 200)
                    )
                await wait(streaming)
                await wait(client.disconnected.wait())
                await wait(side.disconnected.wait())
                await wait(side.ended.wait())
                assert client.events == ["connected", "disconnected"]
                assert side.events == ["connected", "disconnected"]
                assert not client.runner.registry.is_ready(SERVER_WORKER)
                assert not side.runner.registry.is_ready(CLIENT_WORKER)
                texts = side.worker.texts()
                assert texts == [str(n) for n in range(len(texts))]  # a prefix, in order
                again = await self._connected(client, server)
                assert again is not side
                await self._crosses(
                    client.acme, again.worker, text(CLIENT_WORKER, SERVER_WORKER, "back")
                )
                assert relay.connections_accepted == 2

    async def test_stalled_and_slow_link_delivers_in_order(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """A link that stalls (half-open) and then crawls loses and reorders nothing."""
        transport, codec = proxy_core_transport, proxy_core_codec
        self._require_tcp(transport)
        count = 300
        async with running_server(transport, serve_url, codecs=[codec]) as server:
            async with (
                FaultRelay.for_url(server.url) as relay,
                running_client(transport, relay.url_for(server.url), codec=codec) as client,
            ):
                side = await self._connected(client, server)
                relay.stall()
                await asyncio.gather(
                    self._send_numbered(client.acme, SERVER_WORKER, count),
                    self._send_numbered(side.worker, CLIENT_WORKER, count),
                )
                relay.delay(0.001)
                relay.resume()
                await asyncio.gather(side.worker.wait_count(count), client.acme.wait_count(count))
                expected = [str(n) for n in range(count)]
                assert side.worker.texts() == expected and client.acme.texts() == expected
                assert relay.bytes_upstream > 0 and relay.bytes_downstream > 0
                assert client.proxy.connected
