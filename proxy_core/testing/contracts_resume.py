"""The resume contracts of the kit: :class:`ResumeContract`, part of ``TransportContract``.

A link that is cut, or that goes half-open, must not cost a message: the client
reconnects by itself (``reconnect=Backoff(...)``), the server still holds the
session (``resume_grace``), both sides send again what the other did not
acknowledge, and every message arrives exactly once and in order, both ways. A
session the server no longer holds is reported to the client, never silently
replaced. An authentication refusal is never retried.

The faults come from :class:`~proxy_core.testing.relay.FaultRelay`, so these
contracts need a TCP transport; they run once per transport, with the first codec.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from ..backoff import Backoff
from ..codecs.base import Codec
from ..errors import AuthenticationError, SessionLost, TransportError
from ..protocol import Ack, Msg, Ping, Ready
from ..proxy import ProxyClient
from ..transport import Transport
from ._base import LiveContract
from ._harness import (
    CLIENT_WORKER,
    SERVER_WORKER,
    TIMEOUT,
    ClientSide,
    Server,
    ServerSide,
    running_client,
    running_server,
    text,
    wait,
)
from ._raw import raw_client
from .relay import FaultRelay

__all__ = ["FAST_RECONNECT", "ResumeContract"]

#: Retries that come back at once: a contract waits on events, not on the clock.
FAST_RECONNECT = Backoff(initial_delay=0.01, max_delay=0.2, max_elapsed=TIMEOUT)

#: Heartbeats quick enough to find a half-open link within a contract's time.
QUICK_HEARTBEAT: dict[str, Any] = {"heartbeat_interval": 0.2, "heartbeat_timeout": 1.5}


def _mutate(data: bytes, rng: random.Random) -> bytes:
    """Flip, set, insert, delete or cut a few bytes of ``data``."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(4)
        at = rng.randrange(len(out) + 1)
        if choice == 0 and out:
            out[at % len(out)] ^= 1 << rng.randrange(8)
        elif choice == 1:
            out.insert(at, rng.randrange(256))
        elif choice == 2 and out:
            del out[at % len(out)]
        else:
            del out[at:]
    return bytes(out)


async def _crosses_once(client: ClientSide, side: ServerSide, body: str) -> None:
    await client.say(body)
    await side.worker.wait_text(body)


class _Events:
    """Counts a client proxy's reconnect events and lets a contract wait for the next one."""

    def __init__(self, proxy: ProxyClient) -> None:
        self.reconnected = 0
        self.lost: list[SessionLost] = []
        self._changed = asyncio.Event()
        proxy.event_handler("on_reconnected")(self._on_reconnected)
        proxy.event_handler("on_session_lost")(self._on_lost)

    def _on_reconnected(self, *_: Any) -> None:
        self.reconnected += 1
        self._changed.set()

    def _on_lost(self, _: Any, error: SessionLost) -> None:
        self.lost.append(error)
        self._changed.set()

    async def until(self, predicate: Any) -> None:
        async def loop() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

        await wait(loop())


class ResumeContract(LiveContract):
    """Reconnect and resume over a faulty TCP link, for every TCP transport.

    Included in :class:`~proxy_core.testing.contracts.TransportContract`;
    usable alone (``class TestMyResume(ResumeContract): transport = "somewire"``).

    Attributes:
        transport: the transport under test, by registered name or instance.
    """

    @staticmethod
    @contextlib.asynccontextmanager
    async def _relayed(
        transport: Transport,
        serve_url: str,
        codec: Codec,
        server_options: Mapping[str, Any],
        **client_options: Any,
    ) -> AsyncIterator[tuple[Server, FaultRelay, ClientSide]]:
        """A server, a fault relay in front of it, and a client that goes through the relay."""
        async with running_server(transport, serve_url, codecs=[codec], **server_options) as server:
            async with (
                FaultRelay.for_url(server.url) as relay,
                running_client(
                    transport, relay.url_for(server.url), codec=codec, **client_options
                ) as client,
            ):
                yield server, relay, client

    @staticmethod
    async def _open(client: ClientSide, server: Server) -> tuple[ServerSide, _Events]:
        events = _Events(client.proxy)
        await client.activate()
        side = await server.of(client)
        await wait(side.connected.wait())
        return side, events

    async def test_resume_n_messages_k_cuts_exactly_once_in_order(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """600 messages each way with the TCP link reset 5 times while they flow: every
        message arrives exactly once and in order, both ways, in one resumed session."""
        transport, codec = proxy_core_transport, proxy_core_codec
        self._require_tcp(transport)
        count, cuts = 600, 5
        per_cut = count // cuts
        async with self._relayed(transport, serve_url, codec, {}, reconnect=FAST_RECONNECT) as (
            server,
            relay,
            client,
        ):
            side, events = await self._open(client, server)
            session_id = client.proxy.session_id
            for cut in range(cuts):
                for n in range(cut * per_cut, (cut + 1) * per_cut):
                    await client.say(f"up {n}")
                    await side.worker.send_bus_message(
                        text(SERVER_WORKER, CLIENT_WORKER, f"down {n}")
                    )
                relay.cut()  # whatever was in flight is lost on the wire
                await events.until(lambda cut=cut: events.reconnected == cut + 1)
            await side.worker.wait_text(f"up {count - 1}")
            await client.acme.wait_text(f"down {count - 1}")
            assert side.worker.texts() == [f"up {n}" for n in range(count)]
            assert client.acme.texts() == [f"down {n}" for n in range(count)]
            assert events.lost == []
            assert client.proxy.session_id == session_id
            assert len(server.sessions) == 1  # one session, one runner, resumed
            assert client.proxy.stats.resumes == cuts
            assert side.server_proxy.stats.resumes == cuts
            assert relay.connections_accepted == cuts + 1

    async def test_half_open_link_is_detected_and_resumed(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """The relay stops forwarding without closing anything: the heartbeats find the
        dead link, the client comes back when the path does, and what was sent meanwhile
        arrives exactly once, both ways."""
        transport, codec = proxy_core_transport, proxy_core_codec
        self._require_tcp(transport)
        async with self._relayed(
            transport,
            serve_url,
            codec,
            QUICK_HEARTBEAT,
            reconnect=FAST_RECONNECT,
            open_timeout=2.0,
            **QUICK_HEARTBEAT,
        ) as (server, relay, client):
            side, events = await self._open(client, server)
            await client.say("before")
            await side.worker.wait_text("before")
            relay.stall()
            await client.say("during")
            await side.worker.send_bus_message(text(SERVER_WORKER, CLIENT_WORKER, "back"))
            await wait(client.disconnected.wait())  # the client's heartbeat noticed
            relay.resume()
            await events.until(lambda: events.reconnected == 1)
            await client.say("after")
            await side.worker.wait_text("after")
            await client.acme.wait_text("back")
            assert side.worker.texts() == ["before", "during", "after"]
            assert client.acme.texts() == ["back"]
            assert events.lost == []
            assert len(server.sessions) == 1

    async def test_expired_session_is_reported_never_silent(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """The client comes back after the server's grace period: the server ended that
        session; the client gets ``on_session_lost`` (with the messages it had not seen
        acknowledged), counts them, and goes on with a new session."""
        transport, codec = proxy_core_transport, proxy_core_codec
        self._require_tcp(transport)
        async with self._relayed(
            transport,
            serve_url,
            codec,
            {"resume_grace": 0.2, **QUICK_HEARTBEAT},
            reconnect=FAST_RECONNECT,
            open_timeout=1.0,
            **QUICK_HEARTBEAT,
        ) as (server, relay, client):
            side, events = await self._open(client, server)
            old_session = client.proxy.session_id
            relay.stall()
            await client.say("into the void")
            await wait(side.ended.wait())  # lost, held for 0.2 s, ended
            relay.resume()
            await events.until(lambda: len(events.lost) == 1)
            (lost,) = events.lost
            assert lost.session_id == old_session and lost.unacked >= 1
            assert client.proxy.stats.dropped_out["session_lost"] == lost.unacked
            await client.proxy.wait_connected(TIMEOUT)
            again = await server.of(client)
            assert again is not side and client.proxy.session_id != old_session
            await client.say("fresh start")
            await again.worker.wait_text("fresh start")
            assert again.worker.texts() == ["fresh start"]

    async def test_stalled_peer_keeps_memory_bounded_and_loses_nothing(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """A link that carries nothing while a producer offers 20,000 messages (4 MB): the
        producer is held back, every queue on the way stays within its bound, and when the
        link flows again all of them arrive, once each and in order."""
        transport, codec = proxy_core_transport, proxy_core_codec
        self._require_tcp(transport)
        count, window, inbox = 20_000, 64, 32
        payload = "x" * 190
        async with self._relayed(
            transport, serve_url, codec, {}, max_unacked=window, max_queue=inbox
        ) as (server, relay, client):
            side, _ = await self._open(client, server)
            relay.stall()
            sent = 0

            async def produce() -> None:
                nonlocal sent
                for n in range(count):
                    await client.acme.send_bus_message(
                        text(CLIENT_WORKER, SERVER_WORKER, f"{n} {payload}")
                    )
                    sent = n + 1

            producing = asyncio.ensure_future(produce())
            proxy = client.proxy
            # The producer has no event to say "I am blocked": poll, bounded (30 s).
            for _ in range(3000):
                if proxy.queue_stats.waiting and proxy._session is not None:
                    if proxy._session.outbox_full:
                        break
                await asyncio.sleep(0.01)
            assert proxy.queue_stats.waiting == 1 and not producing.done()
            held = sent
            assert held <= window + inbox + 2  # outbox + inbox + one in hand + one waiting
            assert proxy.queue_stats.high_water <= inbox
            assert proxy._session is not None and proxy._session.unacked <= window
            relay.resume()
            await wait(producing)
            last = f"{count - 1} {payload}"
            await side.worker.wait_text(last)
            texts = side.worker.texts()
            assert len(texts) == count and texts == [f"{n} {payload}" for n in range(count)]
            assert proxy.queue_stats.dropped == {}

    async def test_random_and_mutated_frames_never_stop_the_server(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """A peer completes the handshake, then sends 400 frames of seeded garbage: random
        bytes, and real frames (MSG, ACK, PING, BATCH) with bytes flipped, cut or inserted.
        The server drops or closes (1002, 1009), never crashes or hangs, and a
        well-behaved client is served meanwhile and after."""
        transport, codec = proxy_core_transport, proxy_core_codec
        rng = random.Random(20261125)
        seeds = [
            codec.encode(Msg(1, text(CLIENT_WORKER, SERVER_WORKER, "seed"))),
            codec.encode(Ack(0)),
            codec.encode(Ping(7)),
            codec.encode(Ready(CLIENT_WORKER)),
        ]
        if codec.supports_batch:
            seeds.append(codec.encode_batch(seeds[:3]))
        frames: list[bytes] = []
        for _ in range(400):
            if rng.random() < 0.25:
                frames.append(rng.randbytes(rng.randint(0, 64)))
            else:
                frames.append(_mutate(rng.choice(seeds), rng))
        # A mutated frame may read as a BYE: the server then waits close_timeout
        # for the hostile peer to close; keep that short.
        async with running_server(
            transport, serve_url, codecs=[codec], close_timeout=0.5
        ) as server:
            async with running_client(transport, server.url, codec=codec) as client:
                await client.activate()
                good = await server.of(client)
                sent = reconnects = 0
                while sent < len(frames) and reconnects < 100:
                    async with raw_client(transport, server.url, codec) as (peer, _):
                        try:
                            while sent < len(frames):
                                await peer.conn.send(frames[sent])
                                sent += 1
                                if sent % 50 == 0:  # the good client goes on meanwhile
                                    await _crosses_once(client, good, f"during {sent}")
                        except TransportError:
                            reconnects += 1  # the server closed the hostile session: again
                    reconnects += 1
                assert sent == len(frames)
                await _crosses_once(client, good, "after")
                assert client.events == ["connected"]

    async def test_authentication_refusal_is_never_retried(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """A refused client with a retry policy gives up at once: one attempt, an
        ``AuthenticationError``, no session on the server."""
        transport, codec = proxy_core_transport, proxy_core_codec
        attempts: list[Mapping[str, str]] = []

        def authenticate(headers: Mapping[str, str]) -> bool:
            attempts.append(headers)
            return False

        async with running_server(
            transport, serve_url, codecs=[codec], authenticate=authenticate
        ) as server:
            async with running_client(
                transport, server.url, codec=codec, reconnect=FAST_RECONNECT
            ) as client:
                await client.acme.activate_worker(client.proxy.name)
                with pytest.raises(AuthenticationError):
                    await client.proxy.wait_connected(TIMEOUT)
                assert client.events == ["connect_error"]
                assert len(attempts) == 1
                assert server.sessions == []
                # The client gave up: its runner ends with the error, which reaches run().
                assert client.task is not None
                with pytest.raises(AuthenticationError):
                    await wait(asyncio.shield(client.task))
