"""A hostile peer cannot forge its way onto our bus (issue 5, security).

After a valid handshake a peer can put any registered type, any ``source`` and
any ``target`` in a MSG, and any name in a READY. These tests play that peer by
hand (a raw :class:`~proxy_core.Connection` and a codec, on 127.0.0.1, port 0)
against a real runner with a real proxy, a served worker and a bystander, on
the server side (``serve_proxy``) and on the client side (``ProxyClient``),
over every shipped network backend. They prove that the peer cannot:

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
the same session, which keeps order, and the test waits for the marker. A
:class:`BusSpy` endpoint sees every broadcast exactly as the runner does, so
"the spy saw no end or cancel" is "the runner was never asked to stop".
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

import proxy_core.server
from proxy_core import (
    AudioRawFrame,
    AuthenticationError,
    BusActivateWorkerMessage,
    BusCancelMessage,
    BusDataMessage,
    BusDeactivateWorkerMessage,
    BusEndMessage,
    BusEndWorkerMessage,
    BusFrameMessage,
    BusLocalMessage,
    BusMessage,
    BusWorkerReadyMessage,
    ProxyClient,
    ProxyServer,
    TextFrame,
    Transport,
    WorkerReadyData,
    WorkerRunner,
    register_type,
    serve_proxy,
)
from proxy_core.codecs.msgpack import MsgpackCodec
from proxy_core.errors import ConnectionClosed, MessageTooLarge, PluginError, ProtocolError
from proxy_core.plugins import resolve_transport
from proxy_core.protocol import (
    Hello,
    Msg,
    Ping,
    Pong,
    Ready,
    Reject,
    RejectCode,
    Welcome,
    decode_handshake,
    encode_handshake,
)
from proxy_core.session import new_session_id
from proxy_core.testing._harness import RawPeer, Recorder, raw_client, text, wait
from proxy_core.transport import Connection

pytestmark = pytest.mark.usefixtures("proxy_core_no_leaked_tasks")

TIMEOUT = 30.0
TRANSPORTS = ("websockets", "aiohttp", "grpc")
SIDES = ("server", "client")

CLIENT_WORKER = "acme"
SERVER_WORKER = "assistant"
CLIENT_OTHER = "other"
SERVER_OTHER = "helper"
MALLORY = "mallory"  # configured nowhere


@register_type("tests.forgery.local_frame")
@dataclass
class LocalFrame(BusLocalMessage, BusFrameMessage):
    """A user's local type that is *also* an allow-listed one (a BusFrameMessage)."""


@register_type("tests.forgery.note")
@dataclass
class Note(BusMessage):
    """A registered type that no proxy here allow-lists."""

    text: str = ""


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> Transport:
    try:
        return resolve_transport(request.param)
    except PluginError as exc:  # pragma: no cover - depends on what is installed
        pytest.skip(
            f"transport {request.param!r} is not installed here ({exc}); "
            "python3 scripts/dev.py test installs every transport of this repository"
        )


def serve_url(transport: Transport) -> str:
    return f"{transport.schemes[0]}://127.0.0.1:0/ws"


def delta(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    return {k: v for k, v in (Counter(after) - Counter(before)).items() if v}


# --------------------------------------------------------------------------- the victim


class Served(Recorder):
    """A recorder that also records what lifecycle messages did to it."""

    def __init__(self, name: str, *, active: bool = True) -> None:
        super().__init__(name, active=active)
        self.lifecycle: list[str] = []

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        self.lifecycle.append(f"activated {args}")

    async def on_deactivated(self) -> None:
        self.lifecycle.append("deactivated")

    async def on_end(self, reason: str | None) -> None:
        self.lifecycle.append(f"ended {reason}")
        await super().on_end(reason)


class BusSpy:
    """A nameless endpoint: the bus gives it every broadcast, exactly as it gives the runner."""

    name = "spy"

    def __init__(self) -> None:
        self.seen: list[BusMessage] = []

    def deliver(self, message: BusMessage) -> None:
        self.seen.append(message)

    def offer(self, message: BusMessage) -> bool:
        self.deliver(message)
        return True

    async def put(self, message: BusMessage) -> None:
        self.deliver(message)


@dataclass
class Victim:
    """Our side of a session with a hostile peer: runner, proxy, workers, and the peer."""

    side: str
    runner: WorkerRunner
    proxy: ProxyClient | ProxyServer
    served: Served
    bystander: Served
    spy: BusSpy
    ended: asyncio.Event
    peer: RawPeer
    markers: list[BusMessage] = field(default_factory=list)

    @property
    def local(self) -> str:
        return self.served.name

    @property
    def remote(self) -> str:
        return self.proxy.rules.remote_worker

    @property
    def local_names(self) -> tuple[str, ...]:
        return (self.proxy.name, self.served.name, self.bystander.name)

    def next_marker(self) -> BusFrameMessage:
        """Return the next legitimate message, remote worker to served worker."""
        message = text(self.remote, self.local, f"marker {len(self.markers)}")
        self.markers.append(message)
        return message

    async def marker(self) -> None:
        """Send a legitimate message after whatever was sent before, and wait until it arrives."""
        message = self.next_marker()
        await self.peer.send_msg(message)
        assert await self.served.wait_for(lambda m: m == message) == message

    async def expect_drops(self, cases: Sequence[tuple[BusMessage, str]]) -> None:
        """Send each forged message, then a marker; each is dropped and counted by reason."""
        for message, reason in cases:
            before = Counter(self.proxy.stats.dropped_in)
            await self.peer.send_msg(message)
            await self.marker()
            assert delta(self.proxy.stats.dropped_in, before) == {reason: 1}, message
        assert self.proxy.stats.messages_in == len(self.markers)
        self.assert_untouched()
        await self.assert_alive()

    def foreign(self, seen: list[BusMessage], name: str) -> list[BusMessage]:
        """What an endpoint got besides the markers and the runner's own ready broadcasts."""
        rest = [m for m in seen if m not in self.markers]
        for worker in self.local_names:
            if worker != name:
                rest.remove(BusWorkerReadyMessage(worker, None, worker))
        return rest

    def assert_untouched(self) -> None:
        """Nothing forged reached a worker or the bus; no lifecycle hook ran."""
        assert self.foreign(self.served.seen, self.served.name) == []
        assert self.foreign(self.bystander.seen, self.bystander.name) == []
        assert self.foreign(self.spy.seen, self.spy.name) == []  # so the runner saw none either
        assert self.served.lifecycle == [] and self.bystander.lifecycle == []
        assert set(self.runner.registry.ready_workers()) <= {*self.local_names, self.remote}

    async def assert_alive(self) -> None:
        """The runner runs, the proxy is active and connected, and the session works both ways."""
        assert not self.ended.is_set()
        assert self.proxy.active and self.proxy.connected
        body = f"reply {len(self.markers)}"
        reply = text(self.local, self.remote, body)
        await self.served.send_bus_message(reply)
        assert (await self.peer.next_text(body)).message == reply  # type: ignore[union-attr]

    async def ping(self, nonce: int) -> None:
        """Prove the session is read and answered, whatever the served worker's state."""
        await self.peer.send(Ping(nonce))
        await self.peer.next_envelope(lambda e: isinstance(e, Pong) and e.nonce == nonce)


def _flag_end(runner: WorkerRunner, ended: asyncio.Event) -> None:
    # serve_proxy runs the runner itself and offers no hook: follow the call.
    run = runner.run

    async def run_and_flag() -> None:
        try:
            await run()
        finally:
            ended.set()

    runner.run = run_and_flag  # type: ignore[method-assign]


@contextlib.asynccontextmanager
async def server_victim(transport: Transport, **options: Any) -> AsyncIterator[Victim]:
    """A ``serve_proxy`` server (its runner is the victim) with a raw client as the peer."""
    codec = MsgpackCodec()
    opened: asyncio.Queue[tuple[WorkerRunner, Served, Served, BusSpy, asyncio.Event]]
    opened = asyncio.Queue()

    async def setup(runner: WorkerRunner) -> None:
        served, bystander, spy = Served(SERVER_WORKER), Served(SERVER_OTHER), BusSpy()
        ended = asyncio.Event()
        _flag_end(runner, ended)
        runner.bus.listen(spy)
        await runner.add_workers(served, bystander)
        opened.put_nowait((runner, served, bystander, spy, ended))

    options.setdefault("forward_messages", (BusFrameMessage,))
    async with (
        serve_proxy(
            serve_url(transport),
            transport=transport,
            codecs=[codec],
            worker_name=SERVER_WORKER,
            remote_worker_name=CLIENT_WORKER,
            setup=setup,
            **options,
        ) as service,
        raw_client(transport, service.url, codec) as (peer, _),
    ):
        runner, served, bystander, spy, ended = await wait(opened.get())
        (proxy,) = [w for w in runner.workers if isinstance(w, ProxyServer)]
        yield Victim("server", runner, proxy, served, bystander, spy, ended, peer)


@contextlib.asynccontextmanager
async def hostile_server(
    transport: Transport, ready: Sequence[str] = ()
) -> AsyncIterator[tuple[str, asyncio.Queue[RawPeer]]]:
    """Serve raw connections that answer HELLO with a WELCOME announcing ``ready``."""
    codec = MsgpackCodec()
    peers: asyncio.Queue[RawPeer] = asyncio.Queue()

    async def handler(conn: Connection) -> None:
        hello = decode_handshake(await wait(conn.receive()))
        assert isinstance(hello, Hello), hello
        welcome = Welcome(codec.name, "f" * 32, tuple(ready), 1 << 22)
        await conn.send(encode_handshake(welcome))
        inbox: asyncio.Queue[bytes | Exception] = asyncio.Queue()
        peers.put_nowait(RawPeer(conn, codec, inbox))
        while True:  # read all the time, as a real proxy does
            try:
                inbox.put_nowait(await conn.receive())
            except ConnectionClosed as exc:
                inbox.put_nowait(exc)
                return
            except (MessageTooLarge, ProtocolError) as exc:
                inbox.put_nowait(exc)

    async with transport.serve(serve_url(transport), handler) as listener:
        yield listener.url, peers


@contextlib.asynccontextmanager
async def client_victim(
    transport: Transport, *, ready: Sequence[str] = (), **options: Any
) -> AsyncIterator[Victim]:
    """A ``ProxyClient`` runner (the victim) connected to a hostile raw server."""
    options.setdefault("forward_messages", (BusFrameMessage,))
    async with hostile_server(transport, ready) as (url, peers):
        runner = WorkerRunner(handle_sigint=False)
        proxy = ProxyClient(
            "proxy",
            url=url,
            transport=transport,
            codec=MsgpackCodec(),
            local_worker_name=CLIENT_WORKER,
            remote_worker_name=SERVER_WORKER,
            **options,
        )
        served, bystander, spy = Served(CLIENT_WORKER), Served(CLIENT_OTHER), BusSpy()
        runner.bus.listen(spy)
        await runner.add_workers(served, bystander, proxy)
        ended = asyncio.Event()
        _flag_end(runner, ended)
        task = asyncio.create_task(runner.run(), name="victim-client-runner")
        try:
            await served.activate_worker(proxy.name)
            await proxy.wait_connected(TIMEOUT)
            peer = await wait(peers.get())
            yield Victim("client", runner, proxy, served, bystander, spy, ended, peer)
        finally:
            await runner.end("test over")
            await wait(task)


def victim_of(side: str, transport: Transport, **options: Any) -> Any:
    return (server_victim if side == "server" else client_victim)(transport, **options)


# --------------------------------------------------------------------------- (a) local types


@pytest.mark.parametrize("side", SIDES)
async def test_forged_local_messages_never_reach_the_bus(side: str, transport: Transport) -> None:
    """BusEndMessage, BusCancelMessage, BusWorkerReadyMessage and a user's BusLocalMessage
    (even one whose type is allow-listed) are dropped as ``local``, whatever they address."""
    async with victim_of(side, transport) as v:
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


# --------------------------------------------------------------------------- (b) sources


@pytest.mark.parametrize("side", SIDES)
async def test_only_the_configured_remote_worker_may_speak(side: str, transport: Transport) -> None:
    """A message claiming any source but the remote worker (a stranger, one of our own
    workers, our proxy, the served worker itself) is dropped as ``wrong_source``, not
    rewritten; lifecycle messages included."""
    async with victim_of(side, transport) as v:
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


# --------------------------------------------------------------------------- (c) targets


@pytest.mark.parametrize("side", SIDES)
async def test_only_the_served_worker_can_be_reached(side: str, transport: Transport) -> None:
    """A message for any worker but the served one (a bystander, the proxy, the remote
    worker's own name, a stranger) is dropped as ``wrong_target`` before the bus sees it."""
    async with victim_of(side, transport) as v:
        r, other, proxy = v.remote, v.bystander.name, v.proxy.name
        undeliverable = v.runner.bus.undeliverable
        await v.expect_drops(
            [
                *((text(r, target, f"to {target!r}"), "wrong_target") for target in (other, proxy)),
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


# --------------------------------------------------------------------------- (d) lifecycle


STOPPERS: tuple[type[BusMessage], ...] = (
    BusEndMessage,
    BusCancelMessage,
    BusEndWorkerMessage,
    BusDeactivateWorkerMessage,
)


@pytest.mark.parametrize("side", SIDES)
async def test_the_peer_cannot_stop_the_runner_or_any_other_worker(
    side: str, transport: Transport
) -> None:
    """Every runner- or worker-stopping message, from every source to every target, is
    dropped, except the two the peer is allowed: deactivate or end *the served worker*.
    Those two then work (the positive control) and touch nothing else."""
    async with victim_of(side, transport) as v:
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


# --------------------------------------------------------------------------- (e) readiness


@pytest.mark.parametrize("side", SIDES)
async def test_the_peer_can_announce_only_the_configured_remote_worker(
    side: str, transport: Transport
) -> None:
    """READY (and, from a server, WELCOME's ``ready``) naming anyone but the configured remote
    worker marks nothing ready and fires no watch; it is counted as ``wrong_source``. The
    configured name then becomes ready, remote, via the proxy."""
    welcome_forged = (MALLORY, CLIENT_OTHER, CLIENT_WORKER, "proxy") if side == "client" else ()
    options = {"ready": welcome_forged} if side == "client" else {}
    async with victim_of(side, transport, **options) as v:
        forged = [MALLORY, "", v.bystander.name, v.local, v.proxy.name, v.remote.upper()]
        fired: dict[str, list[WorkerReadyData]] = {name: [] for name in [*forged, v.remote]}
        remote_ready: asyncio.Future[WorkerReadyData] = asyncio.get_running_loop().create_future()

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


@pytest.mark.parametrize("names", [(MALLORY, SERVER_WORKER), (CLIENT_WORKER, MALLORY)])
async def test_hello_naming_unconfigured_workers_opens_no_session(
    transport: Transport, names: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A HELLO that names a client worker or a server worker the server was not configured
    with is refused with REJECT 4004: no session id, no session, nothing marked ready."""
    allocated = _count_session_ids(monkeypatch)
    codec = MsgpackCodec()
    runners: list[tuple[WorkerRunner, asyncio.Event]] = []

    async def setup(runner: WorkerRunner) -> None:
        ended = asyncio.Event()
        _flag_end(runner, ended)
        runners.append((runner, ended))
        await runner.add_workers(Served(SERVER_WORKER))

    async with serve_proxy(
        serve_url(transport),
        transport=transport,
        codecs=[codec],
        worker_name=SERVER_WORKER,
        remote_worker_name=CLIENT_WORKER,
        setup=setup,
    ) as service:
        conn = await wait(transport.connect(service.url))
        async with conn:
            client_worker, server_worker = names
            hello = Hello((codec.name,), client_worker, server_worker, 1 << 20)
            await conn.send(encode_handshake(hello))
            answer = decode_handshake(await wait(conn.receive()))
        assert isinstance(answer, Reject) and answer.code == RejectCode.UNKNOWN_WORKER
        # Refused at HELLO, before setup: no runner, no worker, no session id.
        assert runners == [] and allocated == []
        assert service.sessions_served == 0 and not service.runners


# --------------------------------------------------------------------------- (f) broadcasts


@pytest.mark.parametrize("side", SIDES)
async def test_broadcasts_from_the_peer_are_never_delivered(
    side: str, transport: Transport
) -> None:
    """Without ``forward_broadcasts`` no broadcast from the peer crosses: not an allow-listed
    one, not a lifecycle one, not one with a spoofed source (step 2 comes before step 4)."""
    async with victim_of(side, transport) as v:
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
    side: str, transport: Transport
) -> None:
    """With ``forward_broadcasts=True`` an allow-listed broadcast from the remote worker reaches
    the served worker and nobody else on the bus (not a bystander, not the runner); every other
    broadcast is still dropped by reason."""
    async with victim_of(side, transport, forward_broadcasts=True) as v:
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


# --------------------------------------------------------------------------- (g) allow-list


@pytest.mark.parametrize("side", SIDES)
async def test_types_outside_the_allow_list_are_dropped(side: str, transport: Transport) -> None:
    """Correctly addressed messages of a type outside ``forward_messages`` are dropped as
    ``not_allowed``; an allow-listed type other than the markers' crosses (the control)."""
    async with victim_of(side, transport) as v:
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


# --------------------------------------------------------------------------- (h) stats and logs


@pytest.mark.parametrize("side", SIDES)
async def test_every_drop_is_counted_and_logged_with_its_reason(
    side: str, transport: Transport, caplog: pytest.LogCaptureFixture
) -> None:
    """One forged message per rule: each is in ``stats.dropped_in`` and in a DEBUG record of
    ``proxy_core.proxy`` naming the direction and the reason; a forged READY is a warning."""
    caplog.set_level(logging.DEBUG, logger="proxy_core.proxy")
    async with victim_of(side, transport) as v:
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
        assert any(f"READY {MALLORY}" in line and line.endswith(": wrong_source") for line in drops)
        warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
        assert any(MALLORY in rec.getMessage() for rec in warnings)


# --------------------------------------------------------------------------- BATCH


@pytest.mark.parametrize("side", SIDES)
async def test_forgeries_inside_a_batch_meet_the_same_rules(
    side: str, transport: Transport
) -> None:
    """A BATCH is only packaging: each MSG and READY it carries is checked like a lone one
    (a peer may send a BATCH even where none was negotiated)."""
    async with victim_of(side, transport) as v:
        r, me, codec = v.remote, v.local, v.peer.codec
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


# --------------------------------------------------------------------------- (i) authentication


def _count_session_ids(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every session id the server proxies allocate from now on."""
    allocated: list[str] = []

    def spy() -> str:
        session_id = new_session_id()
        allocated.append(session_id)
        return session_id

    # The proxy module calls the name it imported: replace that one.
    monkeypatch.setattr(proxy_core.server, "new_session_id", spy)
    return allocated


@contextlib.asynccontextmanager
async def refused_client(url: str, transport: Transport) -> AsyncIterator[ProxyClient]:
    """Run a client whose credentials the server refuses; yield its proxy after the refusal."""
    runner = WorkerRunner(handle_sigint=False)
    proxy = ProxyClient(
        "proxy",
        url=url,
        transport=transport,
        codec=MsgpackCodec(),
        local_worker_name=CLIENT_WORKER,
        remote_worker_name=SERVER_WORKER,
        headers={"Authorization": "Bearer forged"},
    )
    errors: list[BaseException] = []
    proxy.event_handler("on_connect_error")(lambda _, error: errors.append(error))
    acme = Served(CLIENT_WORKER)
    await runner.add_workers(acme, proxy)
    task = asyncio.create_task(runner.run(), name="refused-client-runner")
    try:
        await acme.activate_worker(proxy.name)
        with pytest.raises(AuthenticationError) as caught:
            await proxy.wait_connected(TIMEOUT)
        assert caught.value.code == RejectCode.UNAUTHORIZED
        assert proxy.last_error is caught.value and errors == [caught.value]
        assert not proxy.connected and proxy.session_id is None and proxy.stats.sessions == 0
        assert not runner.registry.is_ready(SERVER_WORKER)
        yield proxy
    finally:
        await runner.end("test over")
        # The refusal is final: the runner ends with the same error.
        with pytest.raises(AuthenticationError) as ended:
            await wait(task)
    assert ended.value is proxy.last_error
    assert errors == [proxy.last_error]  # one attempt: the client did not try again


async def test_authenticate_refusal_before_serve_proxy_creates_anything(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``serve_proxy`` a refused client is turned away by the transport: ``setup`` never
    runs, no runner, proxy or session id exists, the hook ran once, and the client gets
    ``AuthenticationError`` without retrying."""
    allocated = _count_session_ids(monkeypatch)
    calls: list[dict[str, str]] = []
    setups: list[WorkerRunner] = []

    def authenticate(headers: Mapping[str, str]) -> bool:
        calls.append(dict(headers))
        return headers.get("authorization") == "Bearer good"

    async def setup(runner: WorkerRunner) -> None:
        setups.append(runner)
        await runner.add_workers(Served(SERVER_WORKER))

    async with serve_proxy(
        serve_url(transport),
        transport=transport,
        worker_name=SERVER_WORKER,
        remote_worker_name=CLIENT_WORKER,
        setup=setup,
        authenticate=authenticate,
    ) as service:
        async with refused_client(service.url, transport):
            assert setups == [] and service.sessions_served == 0
            assert not service.runners and not service.proxies
        assert [c.get("authorization") for c in calls] == ["Bearer forged"]
        assert setups == [] and allocated == []


async def test_authenticate_refusal_on_an_accepted_connection_opens_no_session(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``ProxyServer`` given an accepted connection refuses with REJECT 4001 before any
    session state: no session id, no session counted, no connected event, the client's
    worker never ready, the served worker never activated; the hook ran once."""
    allocated = _count_session_ids(monkeypatch)
    calls: list[dict[str, str]] = []
    done: asyncio.Queue[tuple[ProxyServer, WorkerRunner, Served, list[str]]] = asyncio.Queue()

    def authenticate(headers: Mapping[str, str]) -> bool:
        calls.append(dict(headers))
        return False

    async def handler(conn: Connection) -> None:
        runner = WorkerRunner(handle_sigint=False)
        proxy = ProxyServer(
            "gateway",
            connection=conn,
            worker_name=SERVER_WORKER,
            remote_worker_name=CLIENT_WORKER,
            codecs=[MsgpackCodec()],
            authenticate=authenticate,
        )
        events: list[str] = []
        proxy.event_handler("on_client_connected")(lambda *_: events.append("connected"))
        proxy.event_handler("on_client_disconnected")(lambda *_: events.append("disconnected"))
        served = Served(SERVER_WORKER, active=False)
        await runner.add_workers(proxy, served)
        await runner.run()  # ended by the proxy once it has refused the client
        done.put_nowait((proxy, runner, served, events))

    async with transport.serve(serve_url(transport), handler) as listener:
        async with refused_client(listener.url, transport):
            proxy, runner, served, events = await wait(done.get())
        assert [c.get("authorization") for c in calls] == ["Bearer forged"]
        assert allocated == [] and proxy.session_id is None and proxy.stats.sessions == 0
        assert events == [] and proxy.stats.messages_in == 0
        assert not runner.registry.is_ready(CLIENT_WORKER)
        assert served.lifecycle == ["ended client disconnected"] and not served.active
        assert done.empty()


async def test_refused_hello_is_a_reject_not_a_session(transport: Transport) -> None:
    """The raw view of the refusal above: the answer to HELLO is REJECT 4001, nothing else."""
    codec = MsgpackCodec()
    finished = asyncio.Event()

    async def handler(conn: Connection) -> None:
        runner = WorkerRunner(handle_sigint=False)
        proxy = ProxyServer(
            "gateway",
            connection=conn,
            worker_name=SERVER_WORKER,
            remote_worker_name=CLIENT_WORKER,
            codecs=[codec],
            authenticate=lambda headers: False,
        )
        await runner.add_workers(proxy, Served(SERVER_WORKER))
        await runner.run()
        finished.set()

    async with transport.serve(serve_url(transport), handler) as listener:
        conn = await wait(transport.connect(listener.url))
        async with conn:
            await conn.send(
                encode_handshake(Hello((codec.name,), CLIENT_WORKER, SERVER_WORKER, 1 << 20))
            )
            answer = decode_handshake(await wait(conn.receive()))
            assert answer == Reject(RejectCode.UNAUTHORIZED, "unauthorized")
            peer = RawPeer(conn, codec)
            await peer.closed()
            assert peer.received == []  # the REJECT was the last word: no WELCOME, no READY
        await wait(finished.wait())
