"""The TLS contracts of the conformance kit: :class:`TLSContract`, part of ``TransportContract``.

Every transport whose class says ``supports_tls = True`` (the default) must
carry frames and whole sessions over its TLS scheme (``wss``, ``grpcs``: the
``xs`` of an ``x``/``xs`` pair in its ``schemes``) with the backend-neutral
settings :class:`~proxy_core.tls.ClientTLS` and :class:`~proxy_core.tls.ServerTLS`,
refuse a client that does not trust the server's certificate with
:class:`~proxy_core.errors.TLSError`, and refuse a peer that does not speak
TLS promptly, with a ``ConnectError`` rather than a hang.

The certificates are generated for the test session with ``trustme`` (the
``proxy_core_tls`` fixture); without it, the contracts skip and say why. They
do not depend on the codec: they run once per transport, with the first codec.
"""

from __future__ import annotations

import asyncio

import pytest

from ..codecs.base import Codec
from ..errors import ConnectError, TLSError
from ..transport import Connection, Transport
from ._base import LiveContract
from ._harness import (
    CLIENT_WORKER,
    SERVER_WORKER,
    TIMEOUT,
    ClientSide,
    Server,
    running_client,
    running_server,
    text,
    wait,
)
from ._tls import TLSMaterial, plain_scheme, tls_scheme, with_scheme

__all__ = ["TLSContract"]

#: ``open_timeout`` of the refused connections: a refusal must come well before it.
REFUSAL_OPEN_TIMEOUT = 10.0


async def _echo(conn: Connection) -> None:
    async for frame in conn:
        await conn.send(frame)


async def _round_trip(conn: Connection, frames: list[bytes]) -> list[bytes]:
    got = []
    for frame in frames:
        await conn.send(frame)
        got.append(await wait(conn.receive()))
    return got


class TLSContract(LiveContract):
    """TLS on the transport's secure scheme, with ``ClientTLS`` and ``ServerTLS``.

    Included in :class:`~proxy_core.testing.contracts.TransportContract`;
    usable alone (``class TestMyTLS(TLSContract): transport = "somewire"``).
    A transport class declaring ``supports_tls = False`` skips these.

    Attributes:
        transport: the transport under test, by registered name or instance.
    """

    async def _tls_session_works(self, client: ClientSide, server: Server) -> None:
        """Connect ``client``, then send a message each way and see it arrive."""
        side = await self._connected(client, server)
        await self._crosses(client.acme, side.worker, text(CLIENT_WORKER, SERVER_WORKER, "secret"))
        await self._crosses(side.worker, client.acme, text(SERVER_WORKER, CLIENT_WORKER, "answer"))

    async def test_tls_raw_frames_round_trip(
        self, proxy_core_transport: Transport, tls_serve_url: str, proxy_core_tls: TLSMaterial
    ) -> None:
        """Raw frames cross both ways over the TLS scheme, with ``ServerTLS`` and ``ClientTLS``."""
        transport, tls = proxy_core_transport, proxy_core_tls
        frames = [b"\x00", bytes(range(256)), b"\xab" * 100_000]
        async with transport.serve(tls_serve_url, _echo, ssl=tls.server) as listener:
            assert listener.url.split(":", 1)[0] == tls_scheme(transport), listener.url
            async with await wait(transport.connect(listener.url, ssl=tls.client)) as conn:
                assert await _round_trip(conn, frames) == frames

    async def test_tls_session_carries_messages_both_ways(
        self,
        proxy_core_transport: Transport,
        proxy_core_codec: Codec,
        tls_serve_url: str,
        proxy_core_tls: TLSMaterial,
    ) -> None:
        """``serve_proxy(ssl=ServerTLS)`` and ``ProxyClient(ssl=ClientTLS)``: a whole session."""
        transport, codec, tls = proxy_core_transport, proxy_core_codec, proxy_core_tls
        async with running_server(
            transport, tls_serve_url, codecs=[codec], ssl=tls.server
        ) as server:
            async with running_client(transport, server.url, codec=codec, ssl=tls.client) as client:
                await self._tls_session_works(client, server)
                assert client.events == ["connected"]

    async def test_tls_client_with_the_wrong_ca_is_refused(
        self,
        proxy_core_transport: Transport,
        proxy_core_codec: Codec,
        tls_serve_url: str,
        proxy_core_tls: TLSMaterial,
    ) -> None:
        """A client that does not trust the server's CA gets ``TLSError`` (certificate
        verification failed), from ``connect`` and from ``wait_connected``; no session
        starts, and the server goes on serving clients that trust it."""
        transport, codec, tls = proxy_core_transport, proxy_core_codec, proxy_core_tls
        async with running_server(
            transport, tls_serve_url, codecs=[codec], ssl=tls.server
        ) as server:
            with pytest.raises(TLSError) as caught:
                await wait(
                    transport.connect(
                        server.url, ssl=tls.stranger, open_timeout=REFUSAL_OPEN_TIMEOUT
                    )
                )
            assert isinstance(caught.value, ConnectError)
            assert "certificate" in str(caught.value).lower(), caught.value
            async with running_client(
                transport, server.url, codec=codec, ssl=tls.stranger
            ) as client:
                await client.acme.activate_worker(client.proxy.name)
                with pytest.raises(TLSError):
                    await client.proxy.wait_connected(TIMEOUT)
                assert isinstance(client.proxy.last_error, TLSError)
                assert client.events == ["connect_error"]
            assert server.sessions == []
            async with running_client(transport, server.url, codec=codec, ssl=tls.client) as client:
                await self._tls_session_works(client, server)
            assert len(server.sessions) == 1

    @pytest.mark.parametrize("plaintext", ["client", "server"])
    async def test_tls_and_plaintext_peers_are_refused_promptly(
        self,
        proxy_core_transport: Transport,
        tls_serve_url: str,
        proxy_core_tls: TLSMaterial,
        plaintext: str,
    ) -> None:
        """A plaintext client of a TLS server, or a TLS client of a plaintext server, gets a
        ``ConnectError`` well before ``open_timeout``, not a hang; the handler never runs and
        the server goes on serving its own kind."""
        transport, tls = proxy_core_transport, proxy_core_tls
        secure, plain = tls_scheme(transport), plain_scheme(transport)
        if secure is None or plain is None:
            pytest.skip(f"transport {transport.name!r} has no plaintext twin of its TLS scheme")
        handled: list[Connection] = []

        async def handler(conn: Connection) -> None:
            handled.append(conn)
            await _echo(conn)

        if plaintext == "client":
            serve_url, serve_tls, good_tls = tls_serve_url, tls.server, tls.client
            wrong_scheme, wrong_tls = plain, None
        else:
            serve_url, serve_tls, good_tls = with_scheme(tls_serve_url, plain), None, None
            wrong_scheme, wrong_tls = secure, tls.client
        loop = asyncio.get_running_loop()
        async with transport.serve(serve_url, handler, ssl=serve_tls) as listener:
            started = loop.time()
            with pytest.raises(ConnectError) as caught:
                await wait(
                    transport.connect(
                        with_scheme(listener.url, wrong_scheme),
                        ssl=wrong_tls,
                        open_timeout=REFUSAL_OPEN_TIMEOUT,
                    )
                )
            elapsed = loop.time() - started
            assert elapsed < REFUSAL_OPEN_TIMEOUT / 2, (
                f"refused only after {elapsed:.1f}s (a timeout, not a refusal): {caught.value}"
            )
            assert handled == []
            async with await wait(transport.connect(listener.url, ssl=good_tls)) as conn:
                assert await _round_trip(conn, [b"still serving"]) == [b"still serving"]
            assert len(handled) == 1
