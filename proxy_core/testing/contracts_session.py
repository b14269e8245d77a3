"""The session contracts of the kit: :class:`SessionContract`, part of ``TransportContract``.

Real runners and proxies on both sides (or, where the peer must misbehave, a
raw peer speaking the protocol by hand): the handshake and its refusals, order
under load (10,000 messages, one way and both ways at once), the frame limit,
``authenticate`` through the proxies, and concurrent sessions kept apart; and,
from :mod:`.contracts_session_ends`, how each side's end reaches the other and
a link that vanishes or stalls. See ``docs/conformance.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Mapping

import pytest

from ..codecs.base import Codec
from ..codecs.json import JsonCodec
from ..codecs.msgpack import MsgpackCodec
from ..errors import AuthenticationError, CodecError, ConnectionClosed, SessionRejected
from ..protocol import Batch, Envelope, Reject, decode_handshake
from ..registry import WorkerReadyData
from ..transport import Transport
from ._base import LIMIT, assert_close_code, delta, drops, per_codec
from ._harness import (
    CLIENT_WORKER,
    SERVER_WORKER,
    TIMEOUT,
    running_client,
    running_server,
    text,
    wait,
    wait_counts,
)
from ._raw import raw_client, raw_server, ready_peer, sized_message
from .contracts_session_ends import SessionEndsContract

__all__ = ["ORDERING_COUNT", "STALL_SECONDS", "SessionContract"]

#: Messages per direction in the ordering contracts.
ORDERING_COUNT = 10_000

#: How long the ordering contracts let a link go without any message crossing
#: before they call it stalled (a deadlock fails fast, with the counts so far).
STALL_SECONDS = 10.0


def _other_codec(codec: Codec) -> Codec:
    """A second codec both sides have, distinct from ``codec``."""
    return MsgpackCodec() if codec.name == "json" else JsonCodec()


def _counting(codec: Codec) -> Codec:
    """Wrap ``codec`` to count what it decodes (to tell which codec a session uses)."""

    class Counting(Codec):
        name = codec.name
        decoded = 0

        def encode(self, envelope: Envelope) -> bytes:
            return codec.encode(envelope)

        def decode(self, data: bytes) -> Envelope | Batch:
            type(self).decoded += 1
            return codec.decode(data)

    return Counting()


class _Unshared(Codec):
    """A codec only the server has: no client offers it."""

    name = "proxy-core-kit-unshared"

    def encode(self, envelope: Envelope) -> bytes:
        raise CodecError("never negotiated")

    def decode(self, data: bytes) -> Envelope:
        raise CodecError("never negotiated")


class SessionContract(SessionEndsContract):
    """Sessions bus to bus over a transport, with each codec of ``codecs`` where it matters.

    Included in :class:`~proxy_core.testing.contracts.TransportContract`, which
    runs the ``per_codec`` contracts once per codec; usable alone with
    :class:`~proxy_core.testing._base.Parametrized` for that. The contracts of
    how a session ends, and of lost links, are in
    :class:`~proxy_core.testing.contracts_session_ends.SessionEndsContract`.

    Attributes:
        transport: the transport under test, by registered name or instance.
        tcp: whether a relay can sit in the middle (``None``: all but memory).
    """

    # ================================================================ handshake

    @per_codec
    async def test_handshake_follows_the_clients_preference(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """The server picks the client's first codec it has, whatever its own order."""
        transport, codec = proxy_core_transport, proxy_core_codec
        other = _other_codec(codec)
        mine, theirs = _counting(codec), _counting(other)
        async with running_server(transport, serve_url, codecs=[theirs, mine]) as server:
            for offer, chosen in (([codec, other], codec), ([other, codec], other)):
                names = [c.name for c in offer]
                async with raw_client(transport, server.url, chosen, offer=names) as (_, welcome):
                    assert welcome.codec == chosen.name
            async with running_client(transport, server.url, codec=[codec, other]) as client:
                await client.acme.activate_worker("proxy")
                await client.proxy.wait_connected(TIMEOUT)
                ready = await wait(asyncio.shield(client.remote_ready))
                assert ready == WorkerReadyData(SERVER_WORKER, remote=True, via="proxy")
                side = await server.of(client)
                before = type(theirs).decoded  # type: ignore[attr-defined]
                await self._crosses(
                    client.acme, side.worker, text(CLIENT_WORKER, SERVER_WORKER, "a")
                )
                await self._crosses(
                    side.worker, client.acme, text(SERVER_WORKER, CLIENT_WORKER, "b")
                )
                assert type(mine).decoded > 0  # type: ignore[attr-defined]
                assert type(theirs).decoded == before  # type: ignore[attr-defined]
                assert client.proxy.session_id == side.server_proxy.session_id

    @per_codec
    async def test_no_common_codec_is_session_rejected_4003(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """A client and a server with no codec in common: ``SessionRejected(4003)``, no session."""
        transport = proxy_core_transport
        async with running_server(transport, serve_url, codecs=[_Unshared()]) as server:
            async with running_client(transport, server.url, codec=proxy_core_codec) as client:
                await client.acme.activate_worker("proxy")
                with pytest.raises(SessionRejected) as caught:
                    await client.proxy.wait_connected(TIMEOUT)
                assert caught.value.code == 4003
                assert not isinstance(caught.value, AuthenticationError)
                assert client.events == ["connect_error"]  # refusals are never retried
                assert not client.proxy.connected
                # Refused at HELLO: no runner, no worker was ever started for it.
                assert server.sessions == []

    @pytest.mark.parametrize(
        "first", [b"\x00\xffnot a hello\x81", b'{"protocol": "proxy-core"}', b"[1, 1, {}]"]
    )
    async def test_garbage_hello_is_rejected_4000(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str, first: bytes
    ) -> None:
        """A first frame that is not a HELLO is answered REJECT 4000; the server keeps serving."""
        transport = proxy_core_transport
        async with running_server(transport, serve_url, codecs=[proxy_core_codec]) as server:
            async with await wait(transport.connect(server.url)) as conn:
                await conn.send(first)
                answer = decode_handshake(await wait(conn.receive()))
                assert isinstance(answer, Reject) and answer.code == 4000, answer
                with pytest.raises(ConnectionClosed) as caught:
                    await wait(conn.receive())
                assert_close_code(caught.value, 4000)
            assert server.sessions == []  # refused before any runner or worker started
            await self._assert_still_serves(transport, server, proxy_core_codec)

    # ================================================================ ordering

    @per_codec
    async def test_ten_thousand_messages_keep_their_order(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """10,000 messages bus to bus, client to server: every one arrives, once, in order."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with (
            running_server(transport, serve_url, codecs=[codec]) as server,
            running_client(transport, server.url, codec=codec) as client,
        ):
            side = await self._connected(client, server)
            dropped = drops(client.proxy, side.server_proxy)
            await self._send_numbered(client.acme, SERVER_WORKER, ORDERING_COUNT)
            await wait_counts([side.worker], ORDERING_COUNT, stall=STALL_SECONDS)
            assert side.worker.texts() == [str(n) for n in range(ORDERING_COUNT)]
            assert client.proxy.stats.messages_out == ORDERING_COUNT
            assert side.server_proxy.stats.messages_in == ORDERING_COUNT
            assert drops(client.proxy, side.server_proxy) == dropped

    @per_codec
    async def test_ten_thousand_messages_each_way_at_once(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """10,000 messages each way at the same time: counts and order exact on both sides."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with (
            running_server(transport, serve_url, codecs=[codec]) as server,
            running_client(transport, server.url, codec=codec) as client,
        ):
            side = await self._connected(client, server)
            dropped = drops(client.proxy, side.server_proxy)
            await asyncio.gather(
                self._send_numbered(client.acme, SERVER_WORKER, ORDERING_COUNT),
                self._send_numbered(side.worker, CLIENT_WORKER, ORDERING_COUNT),
            )
            # Both directions saturated at once: the receive loops must keep reading
            # while the senders wait for room (a proxy that blocks there deadlocks).
            await wait_counts([side.worker, client.acme], ORDERING_COUNT, stall=STALL_SECONDS)
            expected = [str(n) for n in range(ORDERING_COUNT)]
            assert side.worker.texts() == expected
            assert client.acme.texts() == expected
            for proxy in (client.proxy, side.server_proxy):
                assert proxy.stats.messages_out == proxy.stats.messages_in == ORDERING_COUNT
            assert drops(client.proxy, side.server_proxy) == dropped

    # ================================================================ sizes

    @per_codec
    @pytest.mark.parametrize("direction", ["client_to_server", "server_to_client"])
    async def test_message_at_the_limit_crosses_one_byte_over_is_dropped(
        self,
        proxy_core_transport: Transport,
        proxy_core_codec: Codec,
        serve_url: str,
        direction: str,
    ) -> None:
        """A MSG frame of exactly the peer's limit crosses; one byte more is dropped: too_large."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with (
            running_server(transport, serve_url, codecs=[codec], max_message_bytes=LIMIT) as server,
            running_client(transport, server.url, codec=codec, max_message_bytes=LIMIT) as client,
        ):
            side = await self._connected(client, server)
            if direction == "client_to_server":
                sender, receiver, proxy = client.acme, side.worker, client.proxy
            else:
                sender, receiver, proxy = side.worker, client.acme, side.server_proxy
            me, peer = sender.name, receiver.name
            seq = proxy.stats.messages_out + 1
            at = sized_message(codec, seq, LIMIT, me, peer)
            over = sized_message(codec, seq + 1, LIMIT + 1, me, peer)
            if at is None or over is None:
                pytest.skip(f"no text message encodes to exactly {LIMIT} (+1) bytes with {codec}")
            before = Counter(proxy.stats.dropped_out)
            await self._crosses(sender, receiver, at)
            await sender.send_bus_message(over)
            await self._crosses(sender, receiver, text(me, peer, "marker"))
            assert delta(proxy.stats.dropped_out, before) == {"too_large": 1}
            assert receiver.crossed() == [at, text(me, peer, "marker")]
            assert proxy.connected

    async def test_oversized_raw_frame_closes_the_servers_session_only(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """A raw frame over the server's limit closes that session (1009); the server serves on."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with running_server(
            transport, serve_url, codecs=[codec], max_message_bytes=LIMIT
        ) as server:
            async with raw_client(transport, server.url, codec) as (peer, _):
                side = await server.next_session()
                await wait(side.connected.wait())
                await peer.send_msg(text(CLIENT_WORKER, SERVER_WORKER, "fits"))
                await side.worker.wait_text("fits")
                with contextlib.suppress(ConnectionClosed):
                    await peer.conn.send(b"\x00" * (LIMIT + 1))
                assert_close_code(await peer.closed(), 1009)
            await wait(side.disconnected.wait())
            await wait(side.ended.wait())
            assert side.events == ["connected", "disconnected"]
            assert side.worker.texts() == ["fits"]
            await self._assert_still_serves(transport, server, codec)

    async def test_oversized_raw_frame_closes_the_clients_session(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """A raw frame over the client's limit closes its session (1009); the remote is gone."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with (
            raw_server(transport, serve_url, codec) as (url, peers),
            running_client(transport, url, codec=codec, max_message_bytes=LIMIT) as client,
        ):
            peer = await ready_peer(client, peers)
            with contextlib.suppress(ConnectionClosed):
                await peer.conn.send(b"\x00" * (LIMIT + 1))
            await wait(client.disconnected.wait())
            assert_close_code(await peer.closed(), 1009)
            assert client.events == ["connected", "disconnected"]
            assert not client.runner.registry.is_ready(SERVER_WORKER)

    # ================================================================ headers and auth

    async def test_authenticate_sees_headers_and_refusal_reaches_the_client(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """``authenticate`` sees the client's headers lower-cased; a refusal is an
        ``AuthenticationError`` on the client and no session on the server."""
        transport, codec = proxy_core_transport, proxy_core_codec
        seen: list[dict[str, str]] = []

        def authenticate(headers: Mapping[str, str]) -> bool:
            seen.append(dict(headers))
            if headers.get("authorization") != "Bearer good":
                raise AuthenticationError("bad token")
            return True

        bad = {"Authorization": "Bearer bad", "X-Tenant": "Acme-Corp"}
        async with running_server(
            transport, serve_url, codecs=[codec], authenticate=authenticate
        ) as server:
            async with running_client(transport, server.url, codec=codec, headers=bad) as client:
                await client.acme.activate_worker("proxy")
                with pytest.raises(AuthenticationError) as caught:
                    await client.proxy.wait_connected(TIMEOUT)
                assert "bad token" in caught.value.reason
                assert client.proxy.last_error is caught.value
                assert client.events == ["connect_error"]
                assert not client.runner.registry.is_ready(SERVER_WORKER)
            assert server.sessions == []  # refused before any session or runner existed
            assert seen[0].get("authorization") == "Bearer bad"
            assert seen[0].get("x-tenant") == "Acme-Corp"
            assert all(name == name.lower() for name in seen[0])
            good = {"Authorization": "Bearer good"}
            async with running_client(transport, server.url, codec=codec, headers=good) as client:
                side = await self._connected(client, server)
                await self._crosses(
                    client.acme, side.worker, text(CLIENT_WORKER, SERVER_WORKER, "in")
                )
            assert len(server.sessions) == 1

    # ================================================================ isolation

    async def test_concurrent_sessions_stay_isolated(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """Three clients on one server: each conversation stays on its own runner."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with (
            running_server(transport, serve_url, codecs=[codec]) as server,
            contextlib.AsyncExitStack() as stack,
        ):
            clients = [
                await stack.enter_async_context(running_client(transport, server.url, codec=codec))
                for _ in range(3)
            ]
            sides = await asyncio.gather(*(self._connected(c, server) for c in clients))
            assert len({id(s.runner) for s in sides}) == 3
            assert len({c.proxy.session_id for c in clients}) == 3
            for round_ in range(3):
                await asyncio.gather(
                    *(c.say(f"{i}:{round_}") for i, c in enumerate(clients)),
                    *(
                        s.worker.send_bus_message(
                            text(SERVER_WORKER, CLIENT_WORKER, f"to {i}:{round_}")
                        )
                        for i, s in enumerate(sides)
                    ),
                )
            for i, (client, side) in enumerate(zip(clients, sides, strict=True)):
                await side.worker.wait_count(3)
                await client.acme.wait_count(3)
                assert side.worker.texts() == [f"{i}:{r}" for r in range(3)]
                assert client.acme.texts() == [f"to {i}:{r}" for r in range(3)]
            await clients[0].end()
            await wait(sides[0].ended.wait())
            await self._crosses(
                clients[1].acme, sides[1].worker, text(CLIENT_WORKER, SERVER_WORKER, "on")
            )
            assert not sides[2].ended.is_set()
