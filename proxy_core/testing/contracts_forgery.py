"""The anti-forgery contracts of the kit: :class:`ForgeryContract`, part of ``TransportContract``.

After a valid handshake a peer can put any registered type, any ``source`` and
any ``target`` in a MSG, and any name in a READY. These contracts play that peer
by hand (a raw :class:`~proxy_core.Connection` opened with the transport's own
``connect``, or served with its own ``serve``) against a real runner with a real
proxy, a served worker and a bystander, on the server side (``serve_proxy``) and
on the client side (``ProxyClient``). They prove that the peer cannot:

- put a ``BusLocalMessage`` (runner end/cancel, readiness, a user's local type)
  on our bus;
- speak as anyone but the configured remote worker;
- reach any worker but the served one, or broadcast;
- end or cancel our runner, or stop, deactivate or end any other worker (the
  proxy included);
- announce a worker that was not configured (READY, WELCOME's ``ready``, HELLO);
- send types outside ``forward_messages``;
- get past a refusing ``authenticate`` hook into any session state.

Each drop is checked against its reason in ``stats.dropped_in``. Nothing
sleeps: to show that a message did not arrive, a marker is sent after it on
the same session, which keeps order, and the contract waits for the marker. A
:class:`~proxy_core.testing._victim.BusSpy` endpoint sees every broadcast
exactly as the runner does, so "the spy saw no end or cancel" is "the runner
was never asked to stop". They run once per transport, with the first codec.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter
from typing import Any

import pytest

from ..codecs.base import Codec
from ..messages import (
    AudioRawFrame,
    BusActivateWorkerMessage,
    BusCancelMessage,
    BusDataMessage,
    BusDeactivateWorkerMessage,
    BusEndMessage,
    BusEndWorkerMessage,
    BusFrameMessage,
    BusMessage,
    BusWorkerReadyMessage,
    TextFrame,
)
from ..protocol import (
    Msg,
    Ready,
)
from ..registry import WorkerReadyData
from ..transport import Transport
from ._base import delta
from ._harness import CLIENT_OTHER, CLIENT_WORKER, text, wait
from ._victim import (
    MALLORY,
    LocalFrame,
    Note,
    client_victim,
    server_victim,
)
from .contracts_forgery_hello import HelloForgeryContract

__all__ = ["ForgeryContract"]

SIDES = ("server", "client")

STOPPERS: tuple[type[BusMessage], ...] = (
    BusEndMessage,
    BusCancelMessage,
    BusEndWorkerMessage,
    BusDeactivateWorkerMessage,
)


class ForgeryContract(HelloForgeryContract):
    """A hostile peer, on either side of a session, cannot forge its way onto the bus.

    Included in :class:`~proxy_core.testing.contracts.TransportContract`;
    usable alone (``class TestMyForgery(ForgeryContract): transport = "somewire"``).
    Includes the handshake's part,
    :class:`~proxy_core.testing.contracts_forgery_hello.HelloForgeryContract`.
    Runs with the first codec of ``codecs`` (or the ``proxy_core_codec`` fixture's).

    Attributes:
        transport: the transport under test, by registered name or instance.
    """

    @staticmethod
    def _victim(side: str, transport: Transport, url: str, codec: Codec, **options: Any) -> Any:
        """Our runner on ``side`` of a session whose peer is a raw, hostile one."""
        victim = server_victim if side == "server" else client_victim
        return victim(transport, url, codec, **options)

    # ================================================================ (a) local types

    @pytest.mark.parametrize("side", SIDES)
    async def test_forged_local_messages_never_reach_the_bus(
        self,
        proxy_core_transport: Transport,
        proxy_core_codec: Codec,
        serve_url: str,
        side: str,
    ) -> None:
        """BusEndMessage, BusCancelMessage, BusWorkerReadyMessage and a user's BusLocalMessage
        (even one whose type is allow-listed) are dropped as ``local``, whatever they address."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with self._victim(side, transport, serve_url, codec) as v:
            r, me, other = v.remote, v.local, v.bystander.name
            await v.expect_drops(
                [
                    (BusEndMessage(r, None, "end your runner"), "local"),
                    (BusEndMessage(r, me, "end your runner"), "local"),
                    (BusCancelMessage(r, None, "cancel your runner"), "local"),
                    (BusCancelMessage(r, me, "cancel your runner"), "local"),
                    (BusWorkerReadyMessage(r, None, MALLORY, True), "local"),
                    (BusWorkerReadyMessage(other, None, other), "local"),  # a replica of ours
                    (LocalFrame(r, me, TextFrame("local but allow-listed")), "local"),
                ]
            )
            assert not v.runner.registry.is_ready(MALLORY)

    # ================================================================ (b) sources

    @pytest.mark.parametrize("side", SIDES)
    async def test_only_the_configured_remote_worker_may_speak(
        self,
        proxy_core_transport: Transport,
        proxy_core_codec: Codec,
        serve_url: str,
        side: str,
    ) -> None:
        """A message claiming any source but the remote worker (a stranger, one of our own
        workers, our proxy, the served worker itself) is dropped as ``wrong_source``, not
        rewritten; lifecycle messages included."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with self._victim(side, transport, serve_url, codec) as v:
            me, other = v.local, v.bystander.name
            sources = [MALLORY, other, me, v.proxy.name, ""]
            await v.expect_drops(
                [
                    *((text(source, me, f"from {source!r}"), "wrong_source") for source in sources),
                    (BusActivateWorkerMessage(other, me, {"forged": True}), "wrong_source"),
                    (BusDeactivateWorkerMessage(me, me), "wrong_source"),
                    (BusEndWorkerMessage(MALLORY, me, "forged"), "wrong_source"),
                ]
            )
            # The positive control: everything that did arrive came from the remote worker.
            assert {m.source for m in v.served.crossed()} == {v.remote}

    # ================================================================ (c) targets

    @pytest.mark.parametrize("side", SIDES)
    async def test_only_the_served_worker_can_be_reached(
        self,
        proxy_core_transport: Transport,
        proxy_core_codec: Codec,
        serve_url: str,
        side: str,
    ) -> None:
        """A message for any worker but the served one (a bystander, the proxy, the remote
        worker's own name, a stranger) is dropped as ``wrong_target`` before the bus sees it."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with self._victim(side, transport, serve_url, codec) as v:
            r, other, proxy = v.remote, v.bystander.name, v.proxy.name
            undeliverable = v.runner.bus.undeliverable
            await v.expect_drops(
                [
                    *(
                        (text(r, target, f"to {target!r}"), "wrong_target")
                        for target in (other, proxy)
                    ),
                    (text(r, r, "to your copy of me"), "wrong_target"),
                    (text(r, MALLORY, "to nobody"), "wrong_target"),
                    (text(r, "", "to nobody"), "wrong_target"),
                    (BusActivateWorkerMessage(r, other, {"forged": True}), "wrong_target"),
                    (BusEndWorkerMessage(r, other, "forged"), "wrong_target"),
                    (BusDeactivateWorkerMessage(r, proxy), "wrong_target"),
                    (BusEndWorkerMessage(r, proxy, "forged"), "wrong_target"),
                ]
            )
            assert v.runner.bus.undeliverable == undeliverable  # none even reached the bus

    # ================================================================ (d) lifecycle

    @pytest.mark.parametrize("side", SIDES)
    async def test_the_peer_cannot_stop_the_runner_or_any_other_worker(
        self,
        proxy_core_transport: Transport,
        proxy_core_codec: Codec,
        serve_url: str,
        side: str,
    ) -> None:
        """Every runner- or worker-stopping message, from every source to every target, is
        dropped, except the two the peer is allowed: deactivate or end *the served worker*.
        Those two then work (the positive control) and touch nothing else."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with self._victim(side, transport, serve_url, codec) as v:
            r, me = v.remote, v.local
            names = [None, r, me, v.bystander.name, v.proxy.name, MALLORY]
            forged = [
                kind(source, target)
                for kind, source, target in itertools.product(STOPPERS, names[1:], names)
                if not (
                    kind in (BusEndWorkerMessage, BusDeactivateWorkerMessage)
                    and (source, target) == (r, me)
                )
            ]
            assert len(forged) == len(STOPPERS) * 5 * 6 - 2
            for message in forged:
                await v.peer.send_msg(message)
            await v.marker()
            dropped = v.proxy.stats.dropped_in
            assert sum(dropped.values()) == len(forged)
            assert set(dropped) == {"local", "broadcast", "wrong_target", "wrong_source"}
            v.assert_untouched()
            await v.assert_alive()

            await v.peer.send_msg(BusDeactivateWorkerMessage(r, me))
            await v.marker()
            assert v.served.lifecycle == ["deactivated"] and not v.served.active
            await v.peer.send_msg(BusEndWorkerMessage(r, me, "the peer may end its counterpart"))
            await wait(v.served.ended.wait())
            assert v.served.lifecycle == ["deactivated", "ended the peer may end its counterpart"]
            await v.ping(1)
            assert v.bystander.lifecycle == [] and v.runner.registry.is_ready(v.bystander.name)
            assert not v.ended.is_set() and v.proxy.active and v.proxy.connected
            assert not any(isinstance(m, BusEndMessage | BusCancelMessage) for m in v.spy.seen)

    # ================================================================ (e) readiness

    @pytest.mark.parametrize("side", SIDES)
    async def test_the_peer_can_announce_only_the_configured_remote_worker(
        self,
        proxy_core_transport: Transport,
        proxy_core_codec: Codec,
        serve_url: str,
        side: str,
    ) -> None:
        """READY (and, from a server, WELCOME's ``ready``) naming anyone but the configured remote
        worker marks nothing ready and fires no watch; it is counted as ``wrong_source``. The
        configured name then becomes ready, remote, via the proxy."""
        transport, codec = proxy_core_transport, proxy_core_codec
        welcome_forged = (MALLORY, CLIENT_OTHER, CLIENT_WORKER, "proxy") if side == "client" else ()
        options = {"ready": welcome_forged} if side == "client" else {}
        async with self._victim(side, transport, serve_url, codec, **options) as v:
            forged = [MALLORY, "", v.bystander.name, v.local, v.proxy.name, v.remote.upper()]
            fired: dict[str, list[WorkerReadyData]] = {name: [] for name in [*forged, v.remote]}
            remote_ready: asyncio.Future[WorkerReadyData] = (
                asyncio.get_running_loop().create_future()
            )

            def recorder(name: str) -> Any:
                async def callback(data: WorkerReadyData) -> None:
                    fired[name].append(data)
                    if name == v.remote and not remote_ready.done():
                        remote_ready.set_result(data)

                return callback

            for name in fired:
                v.runner.registry.watch(name, recorder(name))
            for name in forged:
                await v.peer.send(Ready(name))
            await v.peer.send(Ready(v.remote))
            assert await wait(asyncio.shield(remote_ready)) == WorkerReadyData(
                v.remote, remote=True, via=v.proxy.name
            )
            await v.peer.send(Ready(MALLORY))  # after the real one, still refused
            await v.marker()
            expected = len(forged) + 1 + len(welcome_forged)
            assert v.proxy.stats.dropped_in == Counter({"wrong_source": expected})
            assert fired[MALLORY] == [] and fired[""] == [] and fired[v.remote.upper()] == []
            for name in v.local_names:  # ours stay ours: local, not taken over by the peer
                assert v.runner.registry.get(name) == WorkerReadyData(name)
                assert fired[name] == [WorkerReadyData(name)]
            assert set(v.runner.registry.ready_workers()) == {*v.local_names, v.remote}
            assert fired[v.remote] == [WorkerReadyData(v.remote, remote=True, via=v.proxy.name)]
            v.assert_untouched()
            await v.assert_alive()

    # ================================================================ (f) broadcasts

    @pytest.mark.parametrize("side", SIDES)
    async def test_broadcasts_from_the_peer_are_never_delivered(
        self,
        proxy_core_transport: Transport,
        proxy_core_codec: Codec,
        serve_url: str,
        side: str,
    ) -> None:
        """Without ``forward_broadcasts`` no broadcast from the peer crosses: not an allow-listed
        one, not a lifecycle one, not one with a spoofed source (step 2 comes before step 4)."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with self._victim(side, transport, serve_url, codec) as v:
            r = v.remote
            await v.expect_drops(
                [
                    (text(r, None, "to everyone"), "broadcast"),
                    (text(MALLORY, None, "to everyone"), "broadcast"),
                    (BusDataMessage(r, None, {"k": "v"}), "broadcast"),
                    (BusActivateWorkerMessage(r, None, {"forged": True}), "broadcast"),
                    (BusDeactivateWorkerMessage(r, None), "broadcast"),
                    (BusEndWorkerMessage(r, None, "everyone stop"), "broadcast"),
                ]
            )

    @pytest.mark.parametrize("side", SIDES)
    async def test_opted_in_broadcasts_reach_the_served_worker_only(
        self,
        proxy_core_transport: Transport,
        proxy_core_codec: Codec,
        serve_url: str,
        side: str,
    ) -> None:
        """With ``forward_broadcasts=True`` an allow-listed broadcast from the remote worker reaches
        the served worker and nobody else on the bus (not a bystander, not the runner); every other
        broadcast is still dropped by reason."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with self._victim(side, transport, serve_url, codec, forward_broadcasts=True) as v:
            r = v.remote
            allowed = text(r, None, "opted-in broadcast")
            cases = [
                (text(MALLORY, None, "spoofed broadcast"), "wrong_source"),
                (BusEndWorkerMessage(r, None, "everyone stop"), "broadcast"),
                (BusDataMessage(r, None, {"k": "v"}), "broadcast"),
                (BusCancelMessage(r, None, "cancel"), "local"),
            ]
            for message, reason in cases:
                before = Counter(v.proxy.stats.dropped_in)
                await v.peer.send_msg(message)
                await v.marker()
                assert delta(v.proxy.stats.dropped_in, before) == {reason: 1}, message
            await v.peer.send_msg(allowed)
            await v.marker()
            assert v.foreign(v.served.seen, v.served.name) == [allowed]
            assert v.foreign(v.bystander.seen, v.bystander.name) == []
            assert v.foreign(v.spy.seen, v.spy.name) == []
            assert v.served.lifecycle == []
            await v.assert_alive()

    # ================================================================ (g) allow-list

    @pytest.mark.parametrize("side", SIDES)
    async def test_types_outside_the_allow_list_are_dropped(
        self,
        proxy_core_transport: Transport,
        proxy_core_codec: Codec,
        serve_url: str,
        side: str,
    ) -> None:
        """Correctly addressed messages of a type outside ``forward_messages`` are dropped as
        ``not_allowed``; an allow-listed type other than the markers' crosses (the control)."""
        transport, codec = proxy_core_transport, proxy_core_codec
        async with self._victim(side, transport, serve_url, codec) as v:
            r, me = v.remote, v.local
            await v.expect_drops(
                [
                    (BusDataMessage(r, me, {"k": "v"}), "not_allowed"),
                    (BusMessage(r, me), "not_allowed"),
                    (Note(r, me, "registered, not allow-listed"), "not_allowed"),
                ]
            )
            audio = BusFrameMessage(r, me, AudioRawFrame(b"\x00\x01", 16000))
            await v.peer.send_msg(audio)
            assert await v.served.wait_for(lambda m: m == audio) == audio

    # ================================================================ (h) stats and logs

    @pytest.mark.parametrize("side", SIDES)
    async def test_every_drop_is_counted_and_logged_with_its_reason(
        self,
        proxy_core_transport: Transport,
        proxy_core_codec: Codec,
        serve_url: str,
        side: str,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """One forged message per rule: each is in ``stats.dropped_in`` and in a DEBUG record of
        ``proxy_core.proxy`` naming the direction and the reason; a forged READY is a warning."""
        transport, codec = proxy_core_transport, proxy_core_codec
        caplog.set_level(logging.DEBUG, logger="proxy_core.proxy")
        async with self._victim(side, transport, serve_url, codec) as v:
            r, me = v.remote, v.local
            forged = {
                "local": BusCancelMessage(r, None, "cancel"),
                "broadcast": text(r, None, "to everyone"),
                "wrong_target": text(r, v.bystander.name, "to the bystander"),
                "wrong_source": text(MALLORY, me, "spoofed"),
                "not_allowed": BusDataMessage(r, me, {}),
            }
            for message in forged.values():
                await v.peer.send_msg(message)
            await v.peer.send(Ready(MALLORY))
            await v.marker()
            expected = Counter(forged.keys())
            expected["wrong_source"] += 1
            assert v.proxy.stats.dropped_in == expected
            assert v.proxy.stats.snapshot()["dropped_in"] == dict(expected)
            drops = [
                rec.getMessage()
                for rec in caplog.records
                if rec.name == "proxy_core.proxy" and "dropped inbound" in rec.getMessage()
            ]
            for reason, message in forged.items():
                assert any(line.endswith(f": {reason}") and repr(message) in line for line in drops)
            assert any(
                f"READY {MALLORY}" in line and line.endswith(": wrong_source") for line in drops
            )
            warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
            assert any(MALLORY in rec.getMessage() for rec in warnings)

    # ================================================================ BATCH

    @pytest.mark.parametrize("side", SIDES)
    async def test_forgeries_inside_a_batch_meet_the_same_rules(
        self,
        proxy_core_transport: Transport,
        proxy_core_codec: Codec,
        serve_url: str,
        side: str,
    ) -> None:
        """A BATCH is only packaging: each MSG and READY it carries is checked like a lone one
        (a peer may send a BATCH even where none was negotiated). Skipped for a codec
        without batches."""
        transport, codec = proxy_core_transport, proxy_core_codec
        if not codec.supports_batch:
            pytest.skip(f"codec {codec.name!r} has no BATCH frames")
        async with self._victim(side, transport, serve_url, codec) as v:
            r, me = v.remote, v.local
            cases = [
                (BusCancelMessage(r, None, "cancel"), "local"),
                (BusEndMessage(r, me, "end"), "local"),
                (text(r, None, "to everyone"), "broadcast"),
                (text(r, v.bystander.name, "to the bystander"), "wrong_target"),
                (BusDeactivateWorkerMessage(r, v.proxy.name), "wrong_target"),
                (text(MALLORY, me, "spoofed"), "wrong_source"),
                (BusDataMessage(r, me, {}), "not_allowed"),
            ]
            frames = []
            for message in [*(m for m, _ in cases), v.next_marker()]:
                v.peer.seq += 1
                frames.append(codec.encode(Msg(v.peer.seq, message)))
            frames.insert(len(cases), codec.encode(Ready(MALLORY)))
            await v.peer.conn.send(codec.encode_batch(frames))
            assert await v.served.wait_for(lambda m: m == v.markers[-1]) == v.markers[-1]
            expected = Counter(reason for _, reason in cases)
            expected["wrong_source"] += 1
            assert v.proxy.stats.dropped_in == expected and v.proxy.stats.batches_in == 1
            assert not v.runner.registry.is_ready(MALLORY)
            assert v.proxy.stats.messages_in == len(v.markers)
            v.assert_untouched()
            await v.assert_alive()
