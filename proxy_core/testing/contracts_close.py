"""The close-handshake contracts of the kit: :class:`CloseContract`, part of ``TransportContract``.

The side that says BYE has sent its last message. The other side delivers
everything that came before the BYE, acknowledges it, sends what it still has
(what its worker says while handling those messages included) and answers BYE;
then the side that said BYE first acknowledges what it got and closes the
connection with its BYE's code. So a peer that says BYE right after its last
message learns that all of it was delivered, and the replies in flight are not
cut. See docs/protocol.md, section 9.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from ..codecs.base import Codec
from ..messages import BusFrameMessage, BusMessage
from ..protocol import Ack, Bye, Envelope, Msg
from ..proxy import ProxyClient, ProxyServer
from ..runner import WorkerRunner
from ..service import serve_proxy
from ..transport import Transport
from ._base import LiveContract
from ._harness import (
    CLIENT_WORKER,
    SERVER_WORKER,
    Recorder,
    running_client,
    text,
    text_of,
    wait,
)
from ._raw import raw_client, raw_server, ready_peer

__all__ = ["CloseContract"]

#: Messages sent just before the BYE.
_BURST = 20


class _Echo(Recorder):
    """Records what it gets and answers each text from the client at once."""

    async def on_bus_message(self, message: BusMessage) -> None:
        await super().on_bus_message(message)
        body = text_of(message)
        if body is not None and message.source == CLIENT_WORKER:
            await self.send_bus_message(text(self.name, CLIENT_WORKER, f"echo {body}"))


class _EchoServer:
    """A ``serve_proxy`` whose sessions run an :class:`_Echo`; keeps each session's parts."""

    def __init__(self) -> None:
        self.echoes: list[_Echo] = []
        self.proxies: list[ProxyServer] = []
        self.ended: list[asyncio.Event] = []

    async def setup(self, runner: WorkerRunner) -> None:
        echo = _Echo(SERVER_WORKER)
        self.echoes.append(echo)
        ended = asyncio.Event()
        self.ended.append(ended)
        add_workers, run = runner.add_workers, runner.run

        async def add_and_keep(*workers: object) -> None:
            self.proxies.extend(w for w in workers if isinstance(w, ProxyServer))
            await add_workers(*workers)  # type: ignore[arg-type]

        async def run_and_flag() -> None:
            try:
                await run()
            finally:
                ended.set()

        runner.add_workers = add_and_keep  # type: ignore[method-assign]
        runner.run = run_and_flag  # type: ignore[method-assign]
        await add_workers(echo)


@contextlib.asynccontextmanager
async def _echo_server(
    transport: Transport, url: str, codec: Codec
) -> AsyncIterator[tuple[str, _EchoServer]]:
    server = _EchoServer()
    async with serve_proxy(
        url,
        transport=transport,
        codecs=[codec],
        worker_name=SERVER_WORKER,
        remote_worker_name=CLIENT_WORKER,
        forward_messages=(BusFrameMessage,),
        setup=server.setup,
    ) as service:
        yield service.url, server


def _before_bye(received: list[Envelope | bytes]) -> list[Envelope]:
    """The frames received before the first BYE (every one of them must decode)."""
    out: list[Envelope] = []
    for item in received:
        assert not isinstance(item, bytes), f"an undecodable frame arrived: {item!r}"
        if isinstance(item, Bye):
            return out
        out.append(item)
    raise AssertionError("no BYE arrived")


def _lost(proxy: ProxyClient | ProxyServer) -> dict[str, int]:
    """What the proxy dropped, but for readiness news, which always stays local."""
    stats = proxy.stats
    drops = {f"out {k}": n for k, n in stats.dropped_out.items() if k != "local"}
    drops.update({f"in {k}": n for k, n in stats.dropped_in.items()})
    return drops


def _texts(frames: list[Envelope]) -> list[str | None]:
    return [text_of(f.message) for f in frames if isinstance(f, Msg)]


def _acked(frames: list[Envelope]) -> int:
    return max((f.seq for f in frames if isinstance(f, Ack)), default=0)


class CloseContract(LiveContract):
    """The close handshake, on every transport (with the first codec).

    Included in :class:`~proxy_core.testing.contracts.TransportContract`;
    usable alone (``class TestMyClose(CloseContract): transport = "somewire"``).

    Attributes:
        transport: the transport under test, by registered name or instance.
    """

    async def test_bye_right_after_the_last_message_loses_nothing(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """A peer sends 20 MSGs and BYE at once: before the server's BYE it gets an ACK for
        all 20 and the 20 replies the server's worker sent, in order; then it closes."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with _echo_server(transport, serve_url, codec) as (url, server):
            async with raw_client(transport, url, codec, answer_bye=False) as (peer, _):
                for i in range(_BURST):
                    await peer.send_msg(text(CLIENT_WORKER, SERVER_WORKER, f"m{i}"))
                await peer.send(Bye(1000, "done"))
                bye = await peer.next_envelope(lambda e: isinstance(e, Bye))
                assert isinstance(bye, Bye) and bye.code == 1000, bye
                before = _before_bye(peer.received)
                assert _acked(before) == _BURST, f"acknowledged {_acked(before)} of {_BURST}"
                assert _texts(before) == [f"echo m{i}" for i in range(_BURST)]
                replies = [f.seq for f in before if isinstance(f, Msg)]
                await peer.send(Ack(max(replies)))  # the initiator acknowledges, then closes
                await peer.conn.aclose(1000, "done")
            await wait(server.ended[0].wait())
        echo, proxy = server.echoes[0], server.proxies[0]
        assert echo.texts() == [f"m{i}" for i in range(_BURST)]
        assert proxy.stats.messages_out == _BURST
        assert _lost(proxy) == {}

    async def test_client_bye_waits_for_the_servers_replies(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """A client worker sends 20 messages and deactivates its proxy at once: every message
        reaches the server's worker and every reply reaches the client's, nothing is
        dropped on either side, and neither side reconnects."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with (
            _echo_server(transport, serve_url, codec) as (url, server),
            running_client(transport, url, codec=codec) as client,
        ):
            await client.activate()
            for i in range(_BURST):
                await client.say(f"m{i}")
            await client.acme.deactivate_worker("proxy")
            await wait(client.disconnected.wait())
            await wait(server.ended[0].wait())
            assert client.acme.texts() == [f"echo m{i}" for i in range(_BURST)]
            assert server.echoes[0].texts() == [f"m{i}" for i in range(_BURST)]
            assert _lost(client.proxy) == {} and _lost(server.proxies[0]) == {}
            assert client.proxy.stats.messages_in == _BURST
            assert client.events == ["connected", "disconnected"]
            assert len(server.proxies) == 1

    async def test_answering_bye_delivers_and_acknowledges_first(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """A server sends three MSGs and BYE at once: the client delivers all three, acknowledges
        them before its answering BYE (1000), and closes once the server has closed."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with (
            raw_server(transport, serve_url, codec, answer_bye=False) as (url, peers),
            running_client(transport, url, codec=codec) as client,
        ):
            peer = await ready_peer(client, peers)
            for i in range(3):
                await peer.send_msg(text(SERVER_WORKER, CLIENT_WORKER, f"last {i}"))
            await peer.send(Bye(1001, "closing time"))
            bye = await peer.next_envelope(lambda e: isinstance(e, Bye))
            assert isinstance(bye, Bye) and bye.code == 1000, bye
            assert _acked(_before_bye(peer.received)) == 3
            assert client.acme.texts() == ["last 0", "last 1", "last 2"]
            await peer.conn.aclose(1001, "closing time")
            await wait(client.disconnected.wait())
            assert _lost(client.proxy) == {}
            assert client.events == ["connected", "disconnected"]  # closed on purpose: no retry

    async def test_a_peer_that_never_answers_bye_is_closed_after_close_timeout(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """A peer that reads the BYE but never answers: the client closes anyway, with its
        BYE's code, once ``close_timeout`` has passed."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with (
            raw_server(transport, serve_url, codec, answer_bye=False) as (url, peers),
            running_client(transport, url, codec=codec, close_timeout=0.2) as client,
        ):
            peer = await ready_peer(client, peers)
            await client.acme.deactivate_worker("proxy")
            bye = await peer.next_envelope(lambda e: isinstance(e, Bye))
            assert isinstance(bye, Bye) and bye.code == 1000
            closed = await peer.closed()
            assert closed.code in (1000, None), closed  # gRPC carries no client close code
            await wait(client.disconnected.wait())
