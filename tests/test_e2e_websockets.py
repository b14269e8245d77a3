"""End to end over real WebSocket connections on 127.0.0.1: the seed scenario and the rules.

Both ends are real runners with real proxies (or, where the peer must misbehave, a
bare ``websockets`` peer that speaks the protocol by hand). See ``_support.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest
from _support import (
    CLIENT_OTHER,
    CLIENT_WORKER,
    SERVER_OTHER,
    SERVER_WORKER,
    TIMEOUT,
    ClientSide,
    Note,
    RawPeer,
    Recorder,
    ServerSide,
    SpyJson,
    SpyMsgpack,
    delta,
    frame,
    hello,
    no_leaked_tasks,  # noqa: F401 -- the fixture, used through pytestmark
    raw_client,
    raw_handshake,
    raw_server,
    ready,
    run_client,
    run_server,
    settled_tasks,
    text_of,
    text_tree,
    wait,
    welcome,
)
from websockets.asyncio.server import ServerConnection

from proxy_core import (
    AudioRawFrame,
    AuthenticationError,
    BaseWorker,
    BusDataMessage,
    BusFrameMessage,
    BusMessage,
    ConnectError,
    WorkerReadyData,
)
from proxy_core.testing.contracts_codec import awkward_data
from proxy_core.testing.contracts_rules import check_outbound_rules
from proxy_core.transport import Connection
from proxy_core_websockets import WebSocketsTransport

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")

SHAPES = ["serve_proxy", "pipecat"]


async def connected_pair(client: ClientSide, server: Any) -> ServerSide:
    """Activate the client's proxy and return the server session it opened."""
    await client.activate()
    side: ServerSide = await server.sessions.next()
    await wait(side.connected.wait())
    return side


async def assert_crosses(sender: BaseWorker, receiver: Recorder, message: BusMessage) -> None:
    """Send ``message`` and wait until it arrives, equal, on the other side."""
    await sender.send_bus_message(message)
    got = await receiver.wait_for(lambda m: m == message)
    assert got == message


# --------------------------------------------------------------------------- the seed


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_seed_scenario(shape: str, codec: str) -> None:
    spies = (SpyMsgpack(), SpyJson())
    async with (
        run_server(shape, codecs=spies) as server,
        run_client(server.url, codec=codec) as client,
    ):
        # As in the seed: acme watches for the remote assistant and activates it.
        watched: asyncio.Future[WorkerReadyData] = asyncio.get_running_loop().create_future()

        async def on_assistant_ready(data: WorkerReadyData) -> None:
            await client.acme.activate_worker(SERVER_WORKER, args={"voice": "calm", "n": 1})
            watched.set_result(data)

        client.runner.registry.watch(SERVER_WORKER, on_assistant_ready)
        assert not client.proxy.connected
        await client.acme.activate_worker("proxy")
        await client.proxy.wait_connected(TIMEOUT)
        data = await wait(watched)
        assert data == WorkerReadyData(SERVER_WORKER, remote=True, via="proxy")
        assert client.runner.registry.is_ready(SERVER_WORKER)
        side = await server.sessions.next()
        assert await wait(side.assistant.activations.get()) == {"voice": "calm", "n": 1}
        assert side.assistant.active

        hello_text = frame(CLIENT_WORKER, SERVER_WORKER, "hello")
        await assert_crosses(client.acme, side.assistant, hello_text)
        audio_out = BusFrameMessage(
            CLIENT_WORKER, SERVER_WORKER, AudioRawFrame(bytes(range(256)) * 4, 16000, 1)
        )
        await assert_crosses(client.acme, side.assistant, audio_out)
        answer = frame(SERVER_WORKER, CLIENT_WORKER, "HELLO")
        await assert_crosses(side.assistant, client.acme, answer)
        audio_back = BusFrameMessage(
            SERVER_WORKER, CLIENT_WORKER, AudioRawFrame(b"\x00\xff" * 800, 24000, 2)
        )
        await assert_crosses(side.assistant, client.acme, audio_back)

        chosen, unused = (spies[1], spies[0]) if codec == "json" else spies
        assert chosen.decoded > 0 and unused.decoded == 0
        assert client.proxy.stats.messages_out >= 3  # activate, text, audio
        assert client.proxy.stats.messages_in == 2
        assert side.server_proxy.stats.messages_in == client.proxy.stats.messages_out
        assert client.proxy.session_id == side.server_proxy.session_id


# --------------------------------------------------------------------------- connecting


class CountingTransport(WebSocketsTransport):
    """The websockets transport, counting connection attempts."""

    def __init__(self) -> None:
        self.attempts = 0

    async def connect(self, url: str, **options: Any) -> Connection:
        self.attempts += 1
        return await super().connect(url, **options)


def client_session_tasks() -> list[asyncio.Task[Any]]:
    """The client proxies' connection tasks alive now (connecting or connected)."""
    return [
        t
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "") == "ProxyClient._client_main"
    ]


async def test_connects_when_activated_and_only_once() -> None:
    async with run_server() as server, run_client(server.url) as client:
        counting = CountingTransport()
        client.proxy.transport = counting
        # The runner is up and the proxy started (its on_start ran): still no connection.
        other_side = frame(CLIENT_WORKER, CLIENT_OTHER, "local round trip")
        await client.acme.send_bus_message(other_side)
        await client.other.wait_for(lambda m: m == other_side)
        assert counting.attempts == 0
        assert not client.proxy.connected
        assert client_session_tasks() == []
        assert server.service is not None and server.service.sessions_served == 0

        await client.acme.activate_worker("proxy")
        await client.acme.activate_worker("proxy")  # queued behind the first: a no-op
        await client.proxy.wait_connected(TIMEOUT)
        side = await server.sessions.next()
        # Both activations were handled before this message (one queue, in order).
        await assert_crosses(client.acme, side.assistant, frame(CLIENT_WORKER, SERVER_WORKER, "x"))
        await client.acme.activate_worker("proxy")  # while connected: a no-op too
        await assert_crosses(client.acme, side.assistant, frame(CLIENT_WORKER, SERVER_WORKER, "y"))
        assert counting.attempts == 1
        assert len(client_session_tasks()) == 1
        assert server.service.sessions_served == 1
        assert len(server.sessions.all) == 1
        assert client.proxy.stats.sessions == 1


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_awkward_values_cross_equal(codec: str) -> None:
    allowed = (BusFrameMessage, BusDataMessage)
    async with (
        run_server(forward_messages=allowed) as server,
        run_client(server.url, codec=codec, forward_messages=allowed) as client,
    ):
        side = await connected_pair(client, server)
        data = awkward_data()
        for message in (
            BusDataMessage(CLIENT_WORKER, SERVER_WORKER, data),
            frame(CLIENT_WORKER, SERVER_WORKER, "\U0001f916" * 100 + "\x00"),
            BusFrameMessage(CLIENT_WORKER, SERVER_WORKER, AudioRawFrame(b"", 8000, 0)),
        ):
            await assert_crosses(client.acme, side.assistant, message)
        back = BusDataMessage(SERVER_WORKER, CLIENT_WORKER, data)
        await assert_crosses(side.assistant, client.acme, back)
        assert not client.proxy.stats.dropped_in and not side.server_proxy.stats.dropped_in


async def test_backpressure_holds_messages_until_acknowledged() -> None:
    async with run_server(max_unacked=4) as server:
        ws, peer = await raw_handshake(server.url)
        async with ws:
            side = await server.sessions.next()
            for n in range(10):
                await side.assistant.send_bus_message(frame(SERVER_WORKER, CLIENT_WORKER, f"{n}"))

            async def take(count: int) -> list[int]:
                return [(await peer.next_frame(lambda f: f[0] == 1))[1] for _ in range(count)]

            assert await take(4) == [1, 2, 3, 4]
            # The outbox is full: the fifth waits for an ACK. Prove nothing else left
            # by pinging: the PONG comes back on the same ordered connection.
            await peer.send([4, 77])
            await peer.next_frame(lambda f: f == [5, 77])
            assert [f[1] for f in peer.frames if f[0] == 1] == [1, 2, 3, 4]
            await peer.send([2, 2])
            assert await take(2) == [5, 6]
            await peer.send([2, 6])
            assert await take(4) == [7, 8, 9, 10]
            assert side.server_proxy.stats.messages_out == 10
            assert not side.server_proxy.stats.dropped_out.get("not_connected")


# --------------------------------------------------------------------------- filter rules


@pytest.mark.parametrize("direction", ["client_to_server", "server_to_client"])
async def test_outbound_rules_on_a_pipecat_server(direction: str) -> None:
    """The kit's outbound cases (run by it with ``serve_proxy`` on every backend), on the
    server shape of the Pipecat documentation."""
    async with run_server("pipecat") as server, run_client(server.url) as client:
        side = await connected_pair(client, server)
        await check_outbound_rules(
            direction, client, side.assistant, side.helper, side.server_proxy
        )
        # A message targeted at a worker nobody serves never reaches the proxy at all.
        sender = client.acme if direction == "client_to_server" else side.assistant
        undeliverable = sender.bus.undeliverable
        await sender.send_bus_message(frame(sender.name, "nobody", "lost"))
        assert sender.bus.undeliverable == undeliverable + 1


async def test_server_allowlist_narrower_than_the_clients_drops_inbound() -> None:
    async with (
        run_server(forward_messages=(BusFrameMessage,)) as server,
        run_client(server.url, forward_messages=(BusFrameMessage, BusDataMessage)) as client,
    ):
        side = await connected_pair(client, server)
        out_before = client.proxy.stats.messages_out
        await client.acme.send_bus_message(BusDataMessage(CLIENT_WORKER, SERVER_WORKER, {"a": 1}))
        await assert_crosses(client.acme, side.assistant, frame(CLIENT_WORKER, SERVER_WORKER, "m"))
        # The client let it out; the server refused it at its door.
        assert client.proxy.stats.messages_out == out_before + 2
        assert side.server_proxy.stats.dropped_in == Counter(not_allowed=1)
        assert side.assistant.crossed() == [frame(CLIENT_WORKER, SERVER_WORKER, "m")]
        # The other way, the server's own allow-list keeps it home.
        await side.assistant.send_bus_message(BusDataMessage(SERVER_WORKER, CLIENT_WORKER, {}))
        await assert_crosses(side.assistant, client.acme, frame(SERVER_WORKER, CLIENT_WORKER, "n"))
        assert side.server_proxy.stats.dropped_out["not_allowed"] == 1
        assert client.acme.crossed() == [frame(SERVER_WORKER, CLIENT_WORKER, "n")]
        assert not client.proxy.stats.dropped_in


@pytest.mark.parametrize("direction", ["client_to_server", "server_to_client"])
async def test_forward_broadcasts_lets_allow_listed_broadcasts_cross(direction: str) -> None:
    async with (
        run_server(forward_broadcasts=True) as server,
        run_client(server.url, forward_broadcasts=True) as client,
    ):
        side = await connected_pair(client, server)
        if direction == "client_to_server":
            sender, proxy, receiver, far_other = (
                client.acme,
                client.proxy,
                side.assistant,
                side.helper,
            )
            bystander = client.other
        else:
            sender, proxy, receiver, far_other = (
                side.assistant,
                side.server_proxy,
                client.acme,
                client.other,
            )
            bystander = side.helper
        before = Counter(proxy.stats.dropped_out)
        await sender.send_bus_message(Note(sender.name, None, "not allow-listed"))
        shout = frame(sender.name, None, "to everyone")
        await sender.send_bus_message(shout)
        # Across the link, the broadcast reaches the served worker only, equal...
        assert await receiver.wait_for(lambda m: text_of(m) == "to everyone") == shout
        assert [m for m in receiver.crossed()] == [shout]
        # ...and no other worker on the far bus: delivery is synchronous, so a
        # broadcast to everyone would already sit in that worker's queue.
        assert far_other.crossed() == [] and far_other.queue_stats.depth == 0
        assert await bystander.wait_for(lambda m: m == shout) == shout  # the near bus gets it
        assert delta(proxy.stats.dropped_out, before) == {"broadcast": 1}


@contextlib.asynccontextmanager
async def hand_spoken_server(
    ready_in_welcome: list[str] | None = None,
) -> AsyncIterator[tuple[str, asyncio.Future[RawPeer]]]:
    """A bare server that completes the handshake by hand and gives the test its peer."""
    peers: asyncio.Future[RawPeer] = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        first = json.loads(await ws.recv())
        assert first["type"] == "hello", first
        codec = first["codecs"][0]
        await ws.send(welcome(codec, ready=ready_in_welcome))
        if not peers.done():
            peers.set_result(RawPeer(ws, codec))
        await ws.wait_closed()

    async with raw_server(handler) as url:
        yield url, peers


def inbound_cases(remote: str, local: str, bystander: str) -> list[tuple[dict[str, Any], str]]:
    """Messages a hostile peer sends, each with the reason the receiving proxy must drop it."""
    return [
        (
            {"$type": "tests.e2e.local_note", "source": remote, "target": local, "text": "x"},
            "local",
        ),
        ({"$type": "bus.cancel", "source": remote, "target": None, "reason": "die"}, "local"),
        ({"$type": "bus.end", "source": remote, "target": local, "reason": "die"}, "local"),
        ({"$type": "bus.ready", "source": remote, "target": None, "worker": "x"}, "local"),
        (text_tree(remote, None, "broadcast"), "broadcast"),
        (text_tree(remote, bystander, "wrong target"), "wrong_target"),
        ({"$type": "bus.activate", "source": remote, "target": bystander}, "wrong_target"),
        (text_tree("mallory", local, "spoofed source"), "wrong_source"),
        (
            {"$type": "tests.e2e.note", "source": remote, "target": local, "text": "x"},
            "not_allowed",
        ),
        ({"$type": "bus.data", "source": remote, "target": local, "data": {}}, "not_allowed"),
        ({"$type": "evil.module:Thing", "source": remote, "target": local}, "unknown_type"),
        (
            {
                "$type": "bus.frame",
                "source": remote,
                "target": local,
                "frame": {"$type": "os:system"},
            },
            "unknown_type",
        ),
    ]


async def check_inbound_rules(
    peer: RawPeer, proxy: Any, receiver: Any, bystander: Any, runner_ended: Callable[[], bool]
) -> None:
    remote = CLIENT_WORKER if receiver.name == SERVER_WORKER else SERVER_WORKER
    expected = []
    for number, (tree, reason) in enumerate(inbound_cases(remote, receiver.name, bystander.name)):
        before = Counter(proxy.stats.dropped_in)
        await peer.send_msg(tree)
        await peer.send_msg(text_tree(remote, receiver.name, f"marker {number}"))
        marker = frame(remote, receiver.name, f"marker {number}")
        expected.append(marker)
        assert await receiver.wait_for(lambda m, marker=marker: m == marker) == marker
        assert delta(proxy.stats.dropped_in, before) == {reason: 1}, tree
    assert receiver.crossed() == expected
    assert bystander.crossed() == []
    assert not runner_ended()


async def test_inbound_rules_on_the_server() -> None:
    async with run_server() as server:
        ws, peer = await raw_handshake(server.url)
        async with ws:
            side = await server.sessions.next()
            await peer.wait_ready(SERVER_WORKER)
            await check_inbound_rules(
                peer, side.server_proxy, side.assistant, side.helper, side.ended.is_set
            )
            assert side.assistant.activations.empty()


async def test_inbound_rules_on_the_client() -> None:
    async with hand_spoken_server() as (url, peers), run_client(url) as client:
        await client.acme.activate_worker("proxy")
        await client.proxy.wait_connected(TIMEOUT)
        peer = await wait(peers)
        await peer.send(ready(SERVER_WORKER))
        await wait(asyncio.shield(client.remote_ready))
        assert client.task is not None
        await check_inbound_rules(peer, client.proxy, client.acme, client.other, client.task.done)


# --------------------------------------------------------------------------- readiness


async def test_watch_fires_only_for_the_configured_remote_worker_on_the_client() -> None:
    async with (
        hand_spoken_server(ready_in_welcome=["mallory"]) as (url, peers),
        run_client(url) as client,
    ):
        fired: list[str] = []

        async def note(data: WorkerReadyData) -> None:
            fired.append(data.name)

        client.runner.registry.watch("mallory", note)
        client.runner.registry.watch(CLIENT_OTHER, note)
        await client.acme.activate_worker("proxy")
        await client.proxy.wait_connected(TIMEOUT)
        peer = await wait(peers)
        await peer.send(ready("mallory"))
        await peer.send(ready(CLIENT_OTHER))  # a name that is ready locally: still not theirs
        await peer.send(ready(SERVER_WORKER))
        data = await wait(asyncio.shield(client.remote_ready))
        assert data == WorkerReadyData(SERVER_WORKER, remote=True, via="proxy")
        # The watch on our own local worker fired when it started; nothing else did.
        assert fired == [CLIENT_OTHER]
        registry = client.runner.registry
        assert not registry.is_ready("mallory")
        assert registry.get(CLIENT_OTHER) == WorkerReadyData(CLIENT_OTHER)  # not made remote
        assert client.proxy.stats.dropped_in == Counter(wrong_source=3)  # welcome + 2 READY


async def test_watch_fires_only_for_the_configured_remote_worker_on_the_server() -> None:
    async with run_server() as server:
        ws, peer = await raw_handshake(server.url)
        async with ws:
            side = await server.sessions.next()
            fired: list[WorkerReadyData] = []
            acme_ready = asyncio.Event()

            async def note(data: WorkerReadyData) -> None:
                fired.append(data)
                acme_ready.set()

            registry = side.runner.registry
            registry.watch("mallory", note)
            registry.watch(CLIENT_WORKER, note)
            await peer.send(ready("mallory"))
            await peer.send(ready(CLIENT_WORKER))
            await wait(acme_ready.wait())
            assert fired == [
                WorkerReadyData(CLIENT_WORKER, remote=True, via=side.server_proxy.name)
            ]
            assert not registry.is_ready("mallory")
            assert side.server_proxy.stats.dropped_in == Counter(wrong_source=1)


# --------------------------------------------------------------------------- isolation


async def test_two_clients_on_one_server_stay_isolated() -> None:
    async with run_server() as server, run_client(server.url) as a, run_client(server.url) as b:
        side_a = await connected_pair(a, server)
        side_b = await connected_pair(b, server)
        assert side_a.runner is not side_b.runner
        assert side_a.assistant is not side_b.assistant
        assert side_a.server_proxy is not side_b.server_proxy
        assert side_a.runner.bus is not side_b.runner.bus
        assert a.proxy.session_id != b.proxy.session_id
        assert server.service is not None
        assert server.service.proxies == {side_a.server_proxy, side_b.server_proxy}

        for round_ in (1, 2):
            sent_a = await a.say(f"A{round_}")
            sent_b = await b.say(f"B{round_}")
            assert await side_a.assistant.wait_for(lambda m, s=sent_a: m == s) == sent_a
            assert await side_b.assistant.wait_for(lambda m, s=sent_b: m == s) == sent_b
            reply_a = frame(SERVER_WORKER, CLIENT_WORKER, f"to A{round_}")
            reply_b = frame(SERVER_WORKER, CLIENT_WORKER, f"to B{round_}")
            await side_a.assistant.send_bus_message(reply_a)
            await side_b.assistant.send_bus_message(reply_b)
            assert await a.acme.wait_for(lambda m, r=reply_a: m == r) == reply_a
            assert await b.acme.wait_for(lambda m, r=reply_b: m == r) == reply_b
        # A server-side broadcast stays in its own session's bus.
        await side_a.assistant.send_bus_message(frame(SERVER_WORKER, None, "A only"))
        await side_a.helper.wait_text("A only")
        await side_b.helper.send_bus_message(frame(SERVER_OTHER, SERVER_WORKER, "B marker"))
        await side_b.assistant.wait_text("B marker")

        assert side_a.assistant.texts() == ["A1", "A2"]
        assert side_b.assistant.texts() == ["B1", "B2", "B marker"]
        assert side_b.helper.texts() == []
        assert a.acme.texts() == ["to A1", "to A2"]
        assert b.acme.texts() == ["to B1", "to B2"]

        # Ending one session leaves the other working.
        await a.end()
        await wait(side_a.ended.wait())
        await b.say("still here")
        await side_b.assistant.wait_text("still here")
        assert not side_b.ended.is_set()


# --------------------------------------------------------------------------- authentication


async def test_a_refused_client_is_no_session_served() -> None:
    """What the kit's refusal contract (``SessionContract``) leaves out: the client's
    ``on_connect_error`` carries the error, and the service counts only sessions served."""

    def authenticate(headers: Mapping[str, str]) -> bool:
        return headers.get("authorization") == "Bearer good"

    async with run_server(authenticate=authenticate) as server:
        assert server.service is not None
        async with run_client(server.url, headers={"Authorization": "Bearer bad"}) as client:
            await client.acme.activate_worker("proxy")
            with pytest.raises(AuthenticationError) as caught:
                await client.proxy.wait_connected(TIMEOUT)
            assert client.connect_errors == [caught.value]
            assert not client.proxy.connected
        assert server.service.sessions_served == 0
        assert server.sessions.all == []  # setup never ran: no session, no runner
        async with run_client(server.url, headers={"Authorization": "Bearer good"}) as client:
            await connected_pair(client, server)
        assert server.service.sessions_served == 1


async def test_adapter_authentication_refusal_is_reject_4001() -> None:
    def authenticate(headers: Mapping[str, str]) -> bool:
        return headers.get("x-api-key") == "sesame"

    async with run_server("pipecat", authenticate=authenticate) as server:
        async with run_client(server.url, headers={"X-Api-Key": "wrong"}) as client:
            await client.acme.activate_worker("proxy")
            with pytest.raises(AuthenticationError) as caught:
                await client.proxy.wait_connected(TIMEOUT)
            assert caught.value.code == 4001
            assert caught.value.reason == "unauthorized"
            assert client.proxy.last_error is caught.value
            assert client.connect_errors == [caught.value]
            side = await server.sessions.next()
            await wait(side.ended.wait())
            assert side.events == []  # never connected, so never disconnected either
        async with run_client(server.url, headers={"X-Api-Key": "sesame"}) as client:
            side = await connected_pair(client, server)
            await assert_crosses(
                side.assistant, client.acme, frame(SERVER_WORKER, CLIENT_WORKER, "hi")
            )


async def test_adapter_authenticates_before_telling_anything() -> None:
    """An unauthenticated peer learns neither the worker names nor the codecs."""

    def authenticate(headers: Mapping[str, str]) -> bool:
        return headers.get("x-api-key") == "sesame"

    async with run_server("pipecat", authenticate=authenticate) as server:
        for probe in (hello(server_worker="guess"), hello(codecs=["cbor"]), b"garbage"):
            async with raw_client(server.url, headers={"X-Api-Key": "wrong"}) as ws:
                await ws.send(probe)
                answer = json.loads(await wait(ws.recv()))
                await wait(ws.wait_closed())
            assert (answer["type"], answer["code"], ws.close_code) == ("reject", 4001, 4001)
            for secret in (SERVER_WORKER, CLIENT_WORKER, "msgpack", "json"):
                assert secret not in answer["reason"] and secret not in (ws.close_reason or "")


# --------------------------------------------------------------------------- session ends


@pytest.mark.parametrize("shape", SHAPES)
async def test_client_bye_ends_the_server_session(shape: str) -> None:
    async with run_server(shape) as server, run_client(server.url) as client:
        side = await connected_pair(client, server)
        assert client.events == ["connected"]
        assert side.events == ["connected"]
        await client.end()
        await wait(side.disconnected.wait())
        await wait(side.ended.wait())  # end_runner_on_disconnect
        assert side.events == ["connected", "disconnected"]
        assert side.assistant.ended.is_set()  # a graceful end: on_end ran
        assert client.events == ["connected", "disconnected"]
        assert not client.runner.registry.is_ready(SERVER_WORKER)
        assert not side.runner.registry.is_ready(CLIENT_WORKER)


@pytest.mark.parametrize("shape", SHAPES)
async def test_client_vanishing_ends_the_server_session(shape: str) -> None:
    async with run_server(shape) as server:
        ws, peer = await raw_handshake(server.url)
        side = await server.sessions.next()
        await peer.send(ready(CLIENT_WORKER))
        await peer.send_msg(text_tree(CLIENT_WORKER, SERVER_WORKER, "last words"))
        await side.assistant.wait_text("last words")
        assert side.runner.registry.is_ready(CLIENT_WORKER)
        ws.transport.abort()  # no close frame, no BYE: the TCP connection just drops
        await wait(side.disconnected.wait())
        await wait(side.ended.wait())
        assert side.events == ["connected", "disconnected"]
        assert not side.runner.registry.is_ready(CLIENT_WORKER)
        await wait(ws.wait_closed())


@pytest.mark.parametrize("how", ["cancel", "end"])
@pytest.mark.parametrize("shape", SHAPES)
async def test_server_runner_stop_ends_the_client_session(shape: str, how: str) -> None:
    async with run_server(shape) as server, run_client(server.url) as client:
        side = await connected_pair(client, server)
        assert client.runner.registry.is_ready(SERVER_WORKER)
        if how == "cancel":
            await side.runner.cancel("server going down")
        else:
            await side.runner.end("server going down")
        await wait(side.disconnected.wait())
        await wait(side.ended.wait())
        await wait(client.disconnected.wait())
        assert side.events == ["connected", "disconnected"]
        assert side.assistant.ended.is_set() == (how == "end")  # on_end only when graceful
        assert client.events == ["connected", "disconnected"]
        assert not client.proxy.connected
        assert not client.runner.registry.is_ready(SERVER_WORKER)
        # The client runner goes on; what acme sends to the remote is now dropped.
        handled = asyncio.Event()
        client.proxy.event_handler("on_deactivated")(lambda *_: handled.set())
        await client.say("anyone?")
        await client.acme.deactivate_worker("proxy")  # handled after the message, in order
        await wait(handled.wait())
        assert client.proxy.stats.dropped_out["not_connected"] == 1
        assert client.task is not None and not client.task.done()


async def test_leaving_serve_proxy_disconnects_its_clients() -> None:
    async with run_client("ws://unused") as client:
        async with run_server() as server:
            client.proxy.url = server.url
            side = await connected_pair(client, server)
        # serve_proxy cancelled the session's runner and closed the socket.
        assert side.ended.is_set()
        assert side.events == ["connected", "disconnected"]
        await wait(client.disconnected.wait())
        assert not client.runner.registry.is_ready(SERVER_WORKER)


async def test_reactivating_after_a_disconnect_opens_a_new_session() -> None:
    async with run_server() as server, run_client(server.url) as client:
        first = await connected_pair(client, server)
        first_id = client.proxy.session_id
        ready_again = asyncio.get_running_loop().create_future()

        async def note(data: WorkerReadyData) -> None:
            if not ready_again.done():
                ready_again.set_result(data)

        await first.runner.cancel()
        await wait(client.disconnected.wait())
        client.runner.registry.watch(SERVER_WORKER, note)  # not ready now: does not fire
        assert not ready_again.done()
        await client.acme.activate_worker("proxy")
        await client.proxy.wait_connected(TIMEOUT)
        assert await wait(ready_again) == WorkerReadyData(SERVER_WORKER, remote=True, via="proxy")
        second = await server.sessions.next()
        assert second is not first and client.proxy.session_id != first_id
        # The new server session learns that acme is ready, as the first one did.
        acme_ready = asyncio.get_running_loop().create_future()

        async def acme_is_ready(data: WorkerReadyData) -> None:
            if not acme_ready.done():
                acme_ready.set_result(data)

        second.runner.registry.watch(CLIENT_WORKER, acme_is_ready)
        assert await wait(acme_ready) == WorkerReadyData(CLIENT_WORKER, remote=True, via="proxy")
        await assert_crosses(
            client.acme, second.assistant, frame(CLIENT_WORKER, SERVER_WORKER, "2")
        )
        assert client.proxy.stats.sessions == 2
        assert client.events == ["connected", "disconnected", "connected"]


@pytest.mark.parametrize("stop", ["end", "deactivate"])
@pytest.mark.parametrize("phase", ["opening", "handshake"])
async def test_stopping_the_client_while_it_connects_is_prompt(phase: str, stop: str) -> None:
    """Ending the runner (or deactivating the proxy) abandons a pending connection at once."""
    accepted = asyncio.Event()
    gone = asyncio.Event()

    async def mute_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await reader.read()  # until the client goes away
        gone.set()
        writer.close()

    async def mute_websocket(ws: ServerConnection) -> None:
        await ws.recv()  # HELLO, never answered
        accepted.set()
        await ws.wait_closed()
        gone.set()

    if phase == "opening":
        tcp = await asyncio.start_server(mute_tcp, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{tcp.sockets[0].getsockname()[1]}/ws"
        serving: Any = tcp
    else:
        serving = raw_server(mute_websocket)
        url = await serving.__aenter__()
    try:
        # Long timeouts: only abandoning the attempt can make the stop quick.
        async with run_client(url, open_timeout=120, heartbeat_timeout=120) as client:
            await client.acme.activate_worker("proxy")
            await wait(accepted.wait())
            waiter = asyncio.create_task(client.proxy.wait_connected(TIMEOUT))
            if stop == "end":
                await asyncio.wait_for(client.end(), 10)
            else:
                stopped = asyncio.Event()
                client.proxy.event_handler("on_deactivated")(lambda *_: stopped.set())
                await client.acme.deactivate_worker("proxy")
                await asyncio.wait_for(stopped.wait(), 10)
            await wait(gone.wait())  # the half-open connection was closed
            with pytest.raises(ConnectError):
                await waiter
            assert client.events == []  # stopping on purpose is no connect error
            assert client.proxy.last_error is None
    finally:
        if phase == "opening":
            serving.close()
            await serving.wait_closed()
        else:
            await serving.__aexit__(None, None, None)


# --------------------------------------------------------------------------- leaks


@pytest.mark.parametrize("shape", SHAPES)
async def test_no_tasks_left_behind(shape: str) -> None:
    baseline = asyncio.all_tasks()
    async with run_server(shape) as server:
        async with run_client(server.url) as client:
            side = await connected_pair(client, server)
            await assert_crosses(
                client.acme, side.assistant, frame(CLIENT_WORKER, SERVER_WORKER, "a")
            )
            await assert_crosses(
                side.assistant, client.acme, frame(SERVER_WORKER, CLIENT_WORKER, "b")
            )
        async with run_client(server.url) as client:
            side = await connected_pair(client, server)
            await side.runner.cancel()
            await wait(client.disconnected.wait())
        ws, _ = await raw_handshake(server.url)
        ws.transport.abort()
        await wait(ws.wait_closed())
    assert await settled_tasks(baseline) == set()
    assert asyncio.all_tasks() <= baseline | {asyncio.current_task()}
