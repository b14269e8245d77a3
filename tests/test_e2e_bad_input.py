"""Hostile and broken peers over real sockets: the proxy refuses, counts, and keeps serving.

Server-side cases use a bare ``websockets`` client against a ``serve_proxy``
server and end by checking that a normal client on the same server still works
(other sessions are unaffected) and that nothing failed with an error log.
Client-side cases use a bare ``websockets`` server against a proxy client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _support import (
    CLIENT_WORKER,
    SERVER_WORKER,
    TIMEOUT,
    Server,
    frame,
    hello,
    msg,
    no_leaked_tasks,  # noqa: F401 -- the fixture, used through pytestmark
    pack,
    raw_client,
    raw_handshake,
    raw_server,
    run_client,
    run_server,
    text_tree,
    wait,
    welcome,
)
from websockets.asyncio.server import ServerConnection

from proxy_core import (
    AudioRawFrame,
    BusFrameMessage,
    ConnectError,
    HandshakeError,
    SessionRejected,
)

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")

LIMIT = 4096


@pytest.fixture
async def server(caplog: pytest.LogCaptureFixture) -> AsyncIterator[Server]:
    """A ``serve_proxy`` server with a small frame limit.

    On the way out: a normal client still works, and nothing was logged as an error.
    """
    caplog.set_level(logging.INFO)
    async with run_server(max_message_bytes=LIMIT) as server:
        yield server
        await assert_still_serves(server)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


async def assert_still_serves(server: Server) -> None:
    """A well-behaved client gets a session and a round trip both ways."""
    async with run_client(server.url) as client:
        await client.activate()
        side = server.sessions.of(client)
        sent = await client.say("still serving")
        assert await side.assistant.wait_text("still serving") == sent
        reply = frame(SERVER_WORKER, CLIENT_WORKER, "yes")
        await side.assistant.send_bus_message(reply)
        assert await client.acme.wait_text("yes") == reply


async def rejected(server: Server, first: bytes | str) -> tuple[dict[str, Any], int | None, str]:
    """Send ``first`` as the opening frame; return the REJECT and the close code and reason."""
    async with raw_client(server.url) as ws:
        await ws.send(first)
        answer = json.loads(await wait(ws.recv()))
        await wait(ws.wait_closed())
        return answer, ws.close_code, ws.close_reason or ""


def assert_no_session(server: Server) -> None:
    """The HELLO was refused before anything started: no runner, no worker, no session."""
    assert server.service is not None
    assert server.service.sessions_served == 0
    assert server.sessions.all == []


# --------------------------------------------------------------------------- handshake


async def test_garbage_hello_is_rejected_4000(server: Server) -> None:
    answer, code, _ = await rejected(server, b"\x00\xffnot json at all\x81")
    assert answer["type"] == "reject" and answer["code"] == 4000
    assert code == 4000
    assert_no_session(server)


async def test_json_that_is_not_a_hello_is_rejected_4000(server: Server) -> None:
    answer, code, _ = await rejected(server, json.dumps({"protocol": "proxy-core"}).encode())
    assert (answer["code"], code) == (4000, 4000)
    answer, code, _ = await rejected(server, json.dumps([1, 1, {}]).encode())
    assert (answer["code"], code) == (4000, 4000)


async def test_text_hello_is_rejected_4000(server: Server) -> None:
    answer, code, _ = await rejected(server, hello().decode())
    assert answer["type"] == "reject" and answer["code"] == 4000
    assert "binary" in answer["reason"]
    assert code == 4000
    assert_no_session(server)


async def test_unsupported_version_is_rejected_4002(server: Server) -> None:
    answer, code, _ = await rejected(server, hello(version=2))
    assert (answer["code"], code) == (4002, 4002)
    assert "version 2" in answer["reason"]
    assert_no_session(server)


async def test_no_common_codec_is_rejected_4003_listing_ours(server: Server) -> None:
    answer, code, _ = await rejected(server, hello(codecs=["cbor"]))
    assert (answer["code"], code) == (4003, 4003)
    assert "cbor" in answer["reason"]
    assert "json" in answer["reason"] and "msgpack" in answer["reason"]
    assert_no_session(server)


@pytest.mark.parametrize(
    "names",
    [
        {"server_worker": "root"},
        {"client_worker": "mallory"},
        {"server_worker": CLIENT_WORKER, "client_worker": SERVER_WORKER},
    ],
)
async def test_wrong_worker_names_are_rejected_4004(server: Server, names: dict[str, str]) -> None:
    answer, code, _ = await rejected(server, hello(**names))
    assert (answer["code"], code) == (4004, 4004)
    assert_no_session(server)


async def test_silent_client_is_dropped_after_the_handshake_timeout() -> None:
    async with run_server(handshake_timeout=0.5) as server:
        async with raw_client(server.url) as ws:
            await wait(ws.wait_closed())  # after the server's handshake_timeout
            assert ws.close_code == 1002
        assert server.sessions.all == []  # no HELLO, no runner
        await assert_still_serves(server)


# --------------------------------------------------------------------------- after the handshake


async def test_undecodable_frames_are_counted_and_the_session_goes_on(server: Server) -> None:
    ws, peer = await raw_handshake(server.url)
    async with ws:
        side = await server.sessions.next()
        good = pack(msg(1, text_tree(CLIENT_WORKER, SERVER_WORKER, "one")))
        await ws.send(good)
        await side.assistant.wait_text("one")
        peer.seq = 1
        await ws.send(b"\xc1\xc1\xc1 random garbage \x00\xff")  # 0xc1 is never valid msgpack
        await ws.send(good[: len(good) // 2])  # truncated msgpack: its seq, 1, is a duplicate
        await ws.send(pack({"not": "a frame"}))  # valid msgpack, not a frame
        await ws.send(pack([99, 1]))  # unknown frame kind
        await ws.send("a text frame")
        await ws.send(json.dumps(msg(2, text_tree(CLIENT_WORKER, SERVER_WORKER, "x"))))
        await peer.send_msg({"$type": "evil.module:Thing", "source": CLIENT_WORKER})
        await peer.send_msg(
            {
                "$type": "bus.frame",
                "source": CLIENT_WORKER,
                "target": SERVER_WORKER,
                "frame": {"$type": "builtins:eval", "code": "1"},
            }  # fmt: skip
        )
        await peer.send_msg(text_tree(CLIENT_WORKER, SERVER_WORKER, "after"))
        assert await side.assistant.wait_text("after") == frame(
            CLIENT_WORKER, SERVER_WORKER, "after"
        )
        assert side.server_proxy.stats.dropped_in == Counter(malformed=5, unknown_type=2)
        assert side.server_proxy.stats.duplicates == 1
        assert side.assistant.texts() == ["one", "after"]
        # And the other way still works on this very session.
        await side.assistant.send_bus_message(frame(SERVER_WORKER, CLIENT_WORKER, "back"))
        await peer.next_text("back")
        assert side.events == ["connected"]


async def test_oversized_frame_closes_the_session_with_1009(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    ws, peer = await raw_handshake(server.url)
    async with ws:
        side = await server.sessions.next()
        audio = {"$type": "frame.audio_raw", "audio": b"\x00" * LIMIT, "sample_rate": 16000}
        await peer.send_msg(
            {"$type": "bus.frame", "source": CLIENT_WORKER, "target": SERVER_WORKER, "frame": audio}
        )
        code, _ = await peer.closed()
        assert code == 1009
    await wait(side.disconnected.wait())
    await wait(side.ended.wait())
    assert side.assistant.crossed() == []
    assert any(
        r.name == "proxy_core.proxy" and f"exceeds max_message_bytes={LIMIT}" in r.getMessage()
        for r in caplog.records
    ), "the proxy did not see a MessageTooLarge"


async def test_sequence_gap_closes_the_session_with_1002(server: Server) -> None:
    ws, peer = await raw_handshake(server.url)
    async with ws:
        side = await server.sessions.next()
        await peer.send_msg(text_tree(CLIENT_WORKER, SERVER_WORKER, "one"))
        await peer.send(msg(3, text_tree(CLIENT_WORKER, SERVER_WORKER, "three")))
        code, _ = await peer.closed()
        assert code == 1002
        assert [f for f in peer.frames if f[0] == 6] == [[6, 1002, "expected message 2, got 3"]]
    await wait(side.disconnected.wait())
    await wait(side.ended.wait())
    assert side.assistant.texts() == ["one"]


async def test_peer_vanishing_mid_stream_ends_the_session(server: Server) -> None:
    ws, peer = await raw_handshake(server.url)
    side = await server.sessions.next()
    for n in range(5):
        await peer.send_msg(text_tree(CLIENT_WORKER, SERVER_WORKER, f"n{n}"))
    await side.assistant.wait_text("n4")
    # Half a frame, then the TCP connection drops without a close frame.
    ws.transport.write(b"\x82\x7e\x10\x00partial")
    ws.transport.abort()
    await wait(side.disconnected.wait())
    await wait(side.ended.wait())
    assert side.events == ["connected", "disconnected"]
    await wait(ws.wait_closed())


# --------------------------------------------------------------------------- the client's side


async def answer_hello_with(answer: bytes | str | None) -> Any:
    """A bare server handler: read HELLO, then send ``answer`` (or just close)."""

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        if answer is not None:
            await ws.send(answer)
        await ws.close()

    return handler


@pytest.mark.parametrize(
    "answer",
    [
        b"\x00garbage",
        b"{}",
        json.dumps({"protocol": "proxy-core", "type": "hello"}).encode(),
        welcome(codec="cbor"),
        welcome().decode(),  # a text frame
    ],
)
async def test_garbage_welcome_is_a_handshake_error(answer: bytes | str) -> None:
    async with raw_server(await answer_hello_with(answer)) as url, run_client(url) as client:
        await client.acme.activate_worker("proxy")
        with pytest.raises(HandshakeError) as caught:
            await client.proxy.wait_connected(TIMEOUT)
        assert not isinstance(caught.value, SessionRejected)
        assert client.proxy.last_error is caught.value
        assert client.connect_errors == [caught.value]
        assert not client.proxy.connected


@pytest.mark.parametrize("when", ["before_hello", "after_hello"])
async def test_server_closing_at_once_is_a_typed_error(when: str) -> None:
    async def handler(ws: ServerConnection) -> None:
        if when == "after_hello":
            await ws.recv()
        await ws.close()

    async with raw_server(handler) as url, run_client(url) as client:
        await client.acme.activate_worker("proxy")
        with pytest.raises((ConnectError, HandshakeError)) as caught:
            await client.proxy.wait_connected(TIMEOUT)
        assert client.connect_errors == [caught.value]
        assert client.proxy.last_error is caught.value


async def test_closed_port_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        async with run_client(f"ws://127.0.0.1:{port}/ws") as client:
            await client.acme.activate_worker("proxy")
            with pytest.raises(ConnectError):
                await client.proxy.wait_connected(TIMEOUT)
            assert client.events == ["connect_error"]


async def test_frame_over_the_clients_limit_closes_its_session() -> None:
    peers: asyncio.Queue[ServerConnection] = asyncio.Queue()

    async def handler(ws: ServerConnection) -> None:
        first = json.loads(await ws.recv())
        await ws.send(welcome(first["codecs"][0]))
        await ws.send(pack([3, SERVER_WORKER]))
        peers.put_nowait(ws)
        await ws.wait_closed()

    async with (
        raw_server(handler) as url,
        run_client(url, codec="msgpack", max_message_bytes=LIMIT) as client,
    ):
        await client.activate()
        ws = await wait(peers.get())
        small = BusFrameMessage(SERVER_WORKER, CLIENT_WORKER, AudioRawFrame(b"\x01" * 100, 8000))
        tree = {
            "$type": "bus.frame",
            "source": SERVER_WORKER,
            "target": CLIENT_WORKER,
            "frame": {"$type": "frame.audio_raw", "audio": b"\x01" * 100, "sample_rate": 8000},
        }
        await ws.send(pack(msg(1, tree)))
        assert await client.acme.wait_for(lambda m: m == small) == small
        tree["frame"]["audio"] = b"\x02" * LIMIT
        await ws.send(pack(msg(2, tree)))
        await wait(client.disconnected.wait())
        await wait(ws.wait_closed())
        assert ws.close_code == 1009
        assert client.events == ["connected", "disconnected"]
        assert not client.runner.registry.is_ready(SERVER_WORKER)
        assert [m for m in client.acme.crossed()] == [small]


async def test_duplicates_are_discarded_and_counted(server: Server) -> None:
    ws, peer = await raw_handshake(server.url)
    async with ws:
        side = await server.sessions.next()
        first = msg(1, text_tree(CLIENT_WORKER, SERVER_WORKER, "once"))
        await peer.send(first)
        await peer.send(first)  # a replay
        await peer.send(msg(1, text_tree(CLIENT_WORKER, SERVER_WORKER, "forged replay")))
        await peer.send(msg(2, text_tree(CLIENT_WORKER, SERVER_WORKER, "two")))
        await side.assistant.wait_text("two")
        assert side.assistant.texts() == ["once", "two"]
        assert side.server_proxy.stats.duplicates == 2


@pytest.mark.parametrize(
    "frame_tree",
    [
        [2, 1],  # an ACK for a message never sent
        msg(0, text_tree(CLIENT_WORKER, SERVER_WORKER, "zero")),  # numbering starts at 1
        msg(5, text_tree(CLIENT_WORKER, SERVER_WORKER, "gap")),
    ],
)
async def test_numbering_violations_close_with_1002(server: Server, frame_tree: Any) -> None:
    ws, peer = await raw_handshake(server.url)
    async with ws:
        side = await server.sessions.next()
        await peer.send(frame_tree)
        code, _ = await peer.closed()
        assert code == 1002
        assert any(f[0] == 6 and f[1] == 1002 for f in peer.frames), peer.frames  # BYE first
    await wait(side.disconnected.wait())
    assert side.assistant.crossed() == []


async def test_message_over_the_servers_limit_is_dropped_by_the_client(server: Server) -> None:
    # The client's own limit is 1 MiB, but WELCOME said the server takes 4 KiB.
    async with run_client(server.url) as client:
        await client.activate()
        side = server.sessions.of(client)
        big = BusFrameMessage(CLIENT_WORKER, SERVER_WORKER, AudioRawFrame(b"\x00" * LIMIT, 8000))
        await client.acme.send_bus_message(big)
        sent = await client.say("small")
        assert await side.assistant.wait_text("small") == sent
        assert client.proxy.stats.dropped_out["too_large"] == 1
        assert side.assistant.crossed() == [sent]
        assert client.proxy.connected


async def test_silent_peer_is_dropped_by_the_heartbeat() -> None:
    async with run_server(heartbeat_interval=0.2, heartbeat_timeout=1.0) as server:
        ws, peer = await raw_handshake(server.url)
        async with ws:
            side = await server.sessions.next()
            await peer.send_msg(text_tree(CLIENT_WORKER, SERVER_WORKER, "then silence"))
            await side.assistant.wait_text("then silence")
            code, _ = await peer.closed()  # PINGs go unanswered
            assert code == 4008
            assert any(f[0] == 4 for f in peer.frames)  # it was pinged
        await wait(side.disconnected.wait())
        await wait(side.ended.wait())
        await assert_still_serves(server)  # a live client answers PINGs and stays


async def test_peer_that_never_acknowledges_is_dropped() -> None:
    async with run_server(max_unacked=2, heartbeat_interval=0.2, heartbeat_timeout=1.0) as server:
        ws, peer = await raw_handshake(server.url)
        async with ws:
            side = await server.sessions.next()

            async def answer_pings() -> None:  # alive, but acknowledges nothing
                while True:
                    ping = await peer.next_frame(lambda f: f[0] == 4)
                    await peer.send([5, ping[1]])

            pinger = asyncio.create_task(answer_pings())
            for n in range(3):
                await side.assistant.send_bus_message(frame(SERVER_WORKER, CLIENT_WORKER, f"{n}"))
            await wait(side.disconnected.wait())
            pinger.cancel()
            await asyncio.gather(pinger, return_exceptions=True)
            code, _ = await peer.closed()
            assert code == 4008
            assert [f[1] for f in peer.frames if f[0] == 1] == [1, 2]
        await wait(side.ended.wait())
        await assert_still_serves(server)


async def test_server_silent_after_hello_is_a_handshake_timeout() -> None:
    async def silent(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.wait_closed()

    async with raw_server(silent) as url, run_client(url, open_timeout=0.5) as client:
        await client.acme.activate_worker("proxy")
        with pytest.raises(HandshakeError, match="timed out"):
            await client.proxy.wait_connected(TIMEOUT)
        assert client.events == ["connect_error"]


async def test_server_ending_before_hello_does_not_wait_for_it() -> None:
    async with run_server("pipecat", handshake_timeout=120) as server:
        async with raw_client(server.url) as ws:
            side = await server.sessions.next()
            await asyncio.wait_for(side.runner.end("shutting down"), 10)
            await asyncio.wait_for(side.ended.wait(), 10)
            await wait(ws.wait_closed())
        assert side.events == []
        await assert_still_serves(server)


async def test_client_drops_a_silent_server_by_heartbeat() -> None:
    async def mute_after_welcome(ws: ServerConnection) -> None:
        first = json.loads(await ws.recv())
        await ws.send(welcome(first["codecs"][0], ready=[SERVER_WORKER]))
        async for _ in ws:  # read (PINGs included), never answer
            pass

    async with (
        raw_server(mute_after_welcome) as url,
        run_client(url, heartbeat_interval=0.2, heartbeat_timeout=1.0) as client,
    ):
        await client.activate()
        await wait(client.disconnected.wait())
        assert client.events == ["connected", "disconnected"]
        assert not client.runner.registry.is_ready(SERVER_WORKER)
