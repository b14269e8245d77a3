"""The filter-rule contracts of the kit: :class:`RulesContract`, part of ``TransportContract``.

Only what the rules allow crosses a link, and every drop is counted by reason:
outbound from a real proxy on either side, inbound from a raw peer that breaks
each rule once, and malformed frames that must be dropped without ending the
session. The anti-forgery contracts
(:class:`~proxy_core.testing.contracts_forgery.ForgeryContract`) then try every
way a hostile peer could get onto the bus.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from ..codecs.base import Codec
from ..errors import UnknownMessageType
from ..messages import (
    BusActivateWorkerMessage,
    BusCancelMessage,
    BusDataMessage,
    BusEndMessage,
    BusMessage,
    BusWorkerReadyMessage,
)
from ..transport import Transport
from ._base import LiveContract, delta, per_codec
from ._harness import (
    CLIENT_WORKER,
    SERVER_WORKER,
    Recorder,
    running_client,
    running_server,
    text,
    wait,
)
from ._raw import (
    GARBAGE,
    TEXT_LIKE,
    RawPeer,
    classify,
    raw_client,
    raw_server,
    ready_peer,
    unknown_type_frame,
)

__all__ = ["RulesContract", "check_outbound_rules"]


async def check_outbound_rules(
    direction: str, client: Any, worker: Any, helper: Any, server_proxy: Any
) -> None:
    """Break each outbound rule once, from one side of a connected session; check the drops.

    After each message that must stay home, a marker from the served worker
    must cross: only the markers arrive, in order, each drop is counted at the
    sender by its reason, and nothing is dropped inbound.

    Args:
        direction: ``"client_to_server"`` or ``"server_to_client"``.
        client: the client side (``acme``, ``other``, ``proxy``).
        worker: the server's served worker (a recorder: ``wait_for``, ``crossed``).
        helper: another worker on the server's bus.
        server_proxy: the server's proxy.
    """
    if direction == "client_to_server":
        sender, other, proxy = client.acme, client.other, client.proxy
        receiver, receiver_proxy = worker, server_proxy
    else:
        sender, other, proxy = worker, helper, server_proxy
        receiver, receiver_proxy = client.acme, client.proxy
    me, peer = sender.name, receiver.name
    cases: list[tuple[Any, BusMessage, str]] = [
        (sender, BusEndMessage(me, peer, "end them"), "local"),
        (sender, BusCancelMessage(me, peer, "cancel them"), "local"),
        (sender, text(me, None, "broadcast"), "broadcast"),
        (sender, text(me, proxy.name, "to the proxy itself"), "wrong_target"),
        (other, text(other.name, peer, "leak"), "wrong_source"),
        (sender, BusDataMessage(me, peer, {"k": "v"}), "not_allowed"),
        (sender, BusMessage(me, peer), "not_allowed"),
    ]
    messages_in = receiver_proxy.stats.messages_in
    for number, (who, message, reason) in enumerate(cases):
        before = Counter(proxy.stats.dropped_out)
        await who.send_bus_message(message)
        marker = text(me, peer, f"marker {number}")
        await sender.send_bus_message(marker)
        assert await receiver.wait_for(lambda m, marker=marker: m == marker) == marker
        assert delta(proxy.stats.dropped_out, before) == {reason: 1}, message
    assert receiver.crossed() == [text(me, peer, f"marker {n}") for n in range(len(cases))]
    assert receiver_proxy.stats.messages_in - messages_in == len(cases)
    assert not receiver_proxy.stats.dropped_in


class RulesContract(LiveContract):
    """The filter rules across a live link, outbound and inbound, and malformed input.

    Included in :class:`~proxy_core.testing.contracts.TransportContract`.

    Attributes:
        transport: the transport under test, by registered name or instance.
    """

    # ================================================================ filter rules

    @pytest.mark.parametrize("direction", ["client_to_server", "server_to_client"])
    async def test_outbound_filter_rules_across_the_link(
        self,
        proxy_core_transport: Transport,
        proxy_core_codec: Codec,
        serve_url: str,
        direction: str,
    ) -> None:
        """Only allow-listed messages from the served worker to the remote worker leave; every
        other one is dropped at the sender, counted by reason."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with (
            running_server(transport, serve_url, codecs=[codec]) as server,
            running_client(transport, server.url, codec=codec) as client,
        ):
            side = await self._connected(client, server)
            await check_outbound_rules(
                direction, client, side.worker, side.helper, side.server_proxy
            )

    @staticmethod
    def _inbound_cases(remote: str, local: str, bystander: str) -> list[tuple[BusMessage, str]]:
        return [
            (BusEndMessage(remote, local, "die"), "local"),
            (BusCancelMessage(remote, None, "die"), "local"),
            (BusWorkerReadyMessage(remote, None, "x"), "local"),
            (text(remote, None, "broadcast"), "broadcast"),
            (text(remote, bystander, "wrong target"), "wrong_target"),
            (BusActivateWorkerMessage(remote, bystander), "wrong_target"),
            (text("mallory", local, "spoofed source"), "wrong_source"),
            (BusDataMessage(remote, local, {}), "not_allowed"),
            (BusMessage(remote, local), "not_allowed"),
        ]

    async def _check_inbound(
        self, peer: RawPeer, proxy: Any, receiver: Recorder, bystander: Recorder
    ) -> None:
        remote = CLIENT_WORKER if receiver.name == SERVER_WORKER else SERVER_WORKER
        cases = self._inbound_cases(remote, receiver.name, bystander.name)
        markers = []
        for number, (message, reason) in enumerate(cases):
            before = Counter(proxy.stats.dropped_in)
            await peer.send_msg(message)
            marker = text(remote, receiver.name, f"marker {number}")
            markers.append(marker)
            await peer.send_msg(marker)
            assert await receiver.wait_text(f"marker {number}") == marker
            assert delta(proxy.stats.dropped_in, before) == {reason: 1}, message
        assert receiver.crossed() == markers
        assert bystander.crossed() == []

    @per_codec
    async def test_inbound_filter_rules_on_the_server(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """A hostile client's messages that break a rule are dropped by the server, by reason."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with running_server(transport, serve_url, codecs=[codec]) as server:
            async with raw_client(transport, server.url, codec) as (peer, _):
                side = await server.next_session()
                await wait(side.connected.wait())
                await self._check_inbound(peer, side.server_proxy, side.worker, side.helper)
                assert not side.ended.is_set()

    @per_codec
    async def test_inbound_filter_rules_on_the_client(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """A hostile server's messages that break a rule are dropped by the client, by reason."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with (
            raw_server(transport, serve_url, codec) as (url, peers),
            running_client(transport, url, codec=codec) as client,
        ):
            peer = await ready_peer(client, peers)
            await self._check_inbound(peer, client.proxy, client.acme, client.other)
            assert client.task is not None and not client.task.done()

    # ================================================================ malformed input

    @per_codec
    async def test_malformed_frames_are_dropped_and_the_session_goes_on(
        self, proxy_core_transport: Transport, proxy_core_codec: Codec, serve_url: str
    ) -> None:
        """Garbage, text-like payloads and unknown type tags from a raw peer are dropped and
        counted; the session keeps working both ways."""
        transport, codec = proxy_core_transport, proxy_core_codec
        garbage = [(g, classify(codec, g)) for g in (*GARBAGE, *TEXT_LIKE)]
        refused = [(g, reason) for g, reason in garbage if reason is not None]
        assert any(g in GARBAGE for g, _ in refused), f"{codec} decodes every garbage sample"
        async with running_server(transport, serve_url, codecs=[codec]) as server:
            async with raw_client(transport, server.url, codec) as (peer, _):
                side = await server.next_session()
                await wait(side.connected.wait())
                await peer.send_msg(text(CLIENT_WORKER, SERVER_WORKER, "one"))
                await side.worker.wait_text("one")
                expected: Counter[str] = Counter()
                for data, reason in refused:
                    await peer.conn.send(data)
                    expected[reason] += 1
                unknown = unknown_type_frame(codec, peer.seq + 1, CLIENT_WORKER, SERVER_WORKER)
                if unknown is not None:
                    with pytest.raises(UnknownMessageType) as caught:
                        codec.decode(unknown)
                    assert caught.value.seq == peer.seq + 1, "the codec must report seq="
                    peer.seq += 1
                    await peer.conn.send(unknown)
                    expected["unknown_type"] += 1
                await peer.send_msg(text(CLIENT_WORKER, SERVER_WORKER, "after"))
                await side.worker.wait_text("after")
                assert Counter(side.server_proxy.stats.dropped_in) == expected
                assert side.worker.texts() == ["one", "after"]
                await side.worker.send_bus_message(text(SERVER_WORKER, CLIENT_WORKER, "back"))
                await peer.next_text("back")
                assert side.events == ["connected"]
