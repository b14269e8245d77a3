"""Reconnect and resume: the backoff policy, the session's replay, and the client's choices.

The end-to-end guarantees (N messages, K cuts, exactly once, in order; half-open
links; expiry; refusals never retried) are contracts of the conformance kit
(``proxy_core.testing.contracts_resume``), run on every backend by
``test_conformance.py``. These are the parts around them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from _support import CLIENT_WORKER, SERVER_WORKER, frame, run_client, run_server, wait
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy_core import BusFrameMessage, TextFrame
from proxy_core.backoff import Backoff, is_fatal
from proxy_core.codecs.msgpack import MsgpackCodec
from proxy_core.errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectError,
    HandshakeError,
    ProtocolError,
    SessionLost,
    SessionRejected,
    TLSError,
)
from proxy_core.protocol import FEATURES, Ack, Hello, Welcome, decode_handshake, encode_handshake
from proxy_core.session import Session, client_hello
from proxy_core.testing.contracts_resume import FAST_RECONNECT, QUICK_HEARTBEAT
from proxy_core.testing.relay import FaultRelay

# ---------------------------------------------------------------- the policy


def test_caps_grow_by_the_factor_up_to_the_maximum() -> None:
    policy = Backoff(initial_delay=0.5, factor=3.0, max_delay=10.0, jitter=False)
    assert [policy.cap(n) for n in range(5)] == [0.5, 1.5, 4.5, 10.0, 10.0]
    assert policy.cap(10_000) == 10.0  # a long streak does not overflow


@settings(max_examples=200, deadline=None)
@given(attempt=st.integers(0, 200), draw=st.floats(0, 1, exclude_max=True))
def test_full_jitter_stays_between_zero_and_the_cap(attempt: int, draw: float) -> None:
    policy = Backoff(initial_delay=0.1, max_delay=5.0, max_elapsed=None)
    delay = policy.next_delay(attempt, 0.0, ConnectError("refused"), rng=lambda: draw)
    assert delay is not None and 0.0 <= delay <= policy.cap(attempt) <= 5.0


def test_limits_end_the_retries() -> None:
    error = ConnectError("refused")
    by_count = Backoff(max_attempts=3, jitter=False, max_elapsed=None)
    assert by_count.next_delay(0, 0.0, error) is not None
    assert by_count.next_delay(1, 0.0, error) is not None
    assert by_count.next_delay(2, 0.0, error) is None
    by_time = Backoff(initial_delay=1.0, max_delay=1.0, max_elapsed=10.0, jitter=False)
    assert by_time.next_delay(5, 8.5, error) == 1.0
    assert by_time.next_delay(5, 9.5, error) is None


@pytest.mark.parametrize(
    ("error", "fatal"),
    [
        (AuthenticationError("bad token", 4001), True),
        (SessionRejected(4004, "unknown worker"), True),
        (TLSError("certificate verification failed"), True),
        (ConfigurationError("bad url"), True),
        (ConnectError("refused"), False),
        (HandshakeError("handshake timed out"), False),
        (SessionLost("s", 3), False),
    ],
)
def test_the_default_classifier(error: Exception, fatal: bool) -> None:
    assert is_fatal(error) is fatal
    assert (Backoff().next_delay(0, 0.0, error) is None) is fatal


def test_a_custom_classifier() -> None:
    policy = Backoff(fatal=lambda e: isinstance(e, ConnectError))
    assert policy.next_delay(0, 0.0, ConnectError("no")) is None
    assert policy.next_delay(0, 0.0, AuthenticationError("no", 4001)) is not None


@pytest.mark.parametrize(
    "options",
    [
        {"initial_delay": -1},
        {"initial_delay": 5, "max_delay": 1},
        {"factor": 0.5},
        {"max_attempts": 0},
        {"max_elapsed": 0},
        {"reset_after": -1},
    ],
)
def test_bad_policies_are_configuration_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Backoff(**options)


# ---------------------------------------------------------------- the handshake and the session


def test_resume_fields_travel_in_hello_and_welcome() -> None:
    codec = MsgpackCodec()
    hello = decode_handshake(
        client_hello(
            [codec],
            client_worker="acme",
            server_worker="assistant",
            max_message_bytes=4096,
            resume=("ab" * 16, 41),
        )
    )
    assert isinstance(hello, Hello)
    assert (hello.resume_session_id, hello.resume_received, hello.features) == (
        "ab" * 16,
        41,
        FEATURES,
    )
    welcome = Welcome("msgpack", "ab" * 16, (), 4096, features=FEATURES, resumed=True, received=7)
    assert decode_handshake(encode_handshake(welcome)) == welcome
    plain = decode_handshake(encode_handshake(Welcome("msgpack", "s", (), 4096)))
    assert isinstance(plain, Welcome) and not plain.resumed and plain.received == 0


@pytest.mark.parametrize(
    "extra", ['"resume_received":-1', '"resume_received":true', '"resume_session_id":5']
)
def test_bad_resume_fields_are_handshake_errors(extra: str) -> None:
    data = (
        '{"protocol":"proxy-core","type":"hello","version":1,"codecs":["json"],'
        '"client_worker":"a","server_worker":"b","max_message_bytes":2048,' + extra + "}"
    )
    with pytest.raises(HandshakeError):
        decode_handshake(data.encode())


def new_session() -> Session:
    return Session(MsgpackCodec(), session_id="s", peer_max_message_bytes=1 << 20, now=0.0)


def say(session: Session, n: int) -> bytes:
    return session.send_message(
        BusFrameMessage(source=CLIENT_WORKER, target=SERVER_WORKER, frame=TextFrame(str(n)))
    )


def test_resume_replays_what_the_peer_did_not_receive_in_order() -> None:
    session = new_session()
    frames = [say(session, n) for n in range(1, 11)]
    session.receive(session.codec.encode(Ack(3)), 1.0)  # the peer acknowledged 1..3
    assert session.resume(6, 2.0) == frames[6:]  # it had received up to 6
    assert session.unacked == 4
    assert session.data_to_send() == []  # the handshake told the peer what we received
    assert session.resume(10, 3.0) == []  # a second resume, everything received


@pytest.mark.parametrize(
    ("received", "message"), [(11, "only 10 were sent"), (2, "had acknowledged up to 3")]
)
def test_resume_refuses_impossible_claims(received: int, message: str) -> None:
    session = new_session()
    for n in range(1, 11):
        say(session, n)
    session.receive(session.codec.encode(Ack(3)), 1.0)
    with pytest.raises(ProtocolError, match=message):
        session.resume(received, 2.0)


# ---------------------------------------------------------------- the client's choices


def test_client_options_are_checked() -> None:
    base = {"url": "ws://127.0.0.1:1/ws", "local_worker_name": "a", "remote_worker_name": "b"}
    from proxy_core import ProxyClient

    with pytest.raises(ConfigurationError, match="'new' or 'error'"):
        ProxyClient("p", on_session_expired="maybe", **base)
    with pytest.raises(ConfigurationError, match="Backoff or None"):
        ProxyClient("p", reconnect=3, **base)  # type: ignore[arg-type]


async def test_a_client_without_retries_does_not_offer_resume() -> None:
    async with run_server() as server, run_client(server.url) as client:
        await client.activate()
        side = server.sessions.of(client)
        assert side.server_proxy._features == ("batch",)


async def test_first_connect_retries_until_the_path_opens() -> None:
    """With the default policy the first connect retries too: a server that cannot be
    reached at first is reached later, and each failed attempt is an
    ``on_connect_error`` followed by an ``on_reconnecting``."""
    async with (
        run_server() as server,
        FaultRelay.for_url(server.url) as relay,
        run_client(relay.url_for(server.url), reconnect=FAST_RECONNECT, open_timeout=0.3) as client,
    ):
        retries: list[int] = []
        retried = asyncio.Event()

        @client.proxy.event_handler("on_reconnecting")
        def on_retry(_: Any, attempt: int, delay: float) -> None:
            retries.append(attempt)
            if attempt >= 2:
                retried.set()

        relay.stall()  # every attempt times out in its handshake
        await client.acme.activate_worker(client.proxy.name)
        await wait(retried.wait())
        relay.resume()
        await client.proxy.wait_connected(30)
        assert client.events.count("connect_error") >= 2
        assert retries[:2] == [1, 2]
        assert client.proxy.stats.reconnects == 0  # the first session, reached late


async def test_on_session_expired_error_stops_and_raises() -> None:
    async with (
        run_server(resume_grace=0.2, **QUICK_HEARTBEAT) as server,
        FaultRelay.for_url(server.url) as relay,
        run_client(
            relay.url_for(server.url),
            reconnect=FAST_RECONNECT,
            on_session_expired="error",
            open_timeout=1.0,
            **QUICK_HEARTBEAT,
        ) as client,
    ):
        lost: list[SessionLost] = []
        client.proxy.event_handler("on_session_lost")(lambda _, e: lost.append(e))
        await client.activate()
        side = server.sessions.of(client)
        relay.stall()
        await client.say("never acknowledged")
        await wait(side.ended.wait())
        relay.resume()
        lost_event = asyncio.Event()
        client.proxy.event_handler("on_session_lost")(lambda *_: lost_event.set())
        await wait(lost_event.wait())
        with pytest.raises(SessionLost) as caught:
            await client.proxy.wait_connected(30)
        assert caught.value.unacked == 1 and lost == [caught.value]
        assert not client.proxy.connected
        assert client.proxy.last_error is caught.value
        # The proxy gave up: the runner ends with the error (no on_gave_up handler).
        assert client.task is not None
        with pytest.raises(SessionLost):
            await wait(asyncio.shield(client.task))
        client.task = None


async def test_ending_while_waiting_to_resume_counts_the_unacknowledged() -> None:
    async with (
        run_server(**QUICK_HEARTBEAT) as server,
        FaultRelay.for_url(server.url) as relay,
        run_client(
            relay.url_for(server.url), reconnect=FAST_RECONNECT, open_timeout=1.0, **QUICK_HEARTBEAT
        ) as client,
    ):
        await client.activate()
        relay.stall()
        await client.say("stuck")
        await wait(client.disconnected.wait())
        await client.end()
        assert client.proxy.stats.dropped_out["session_lost"] == 1
        relay.resume()


async def test_a_message_to_a_stalled_link_is_not_lost_when_it_resumes() -> None:
    """The frame written into a dead socket is sent again after the resume."""
    async with (
        run_server(**QUICK_HEARTBEAT) as server,
        FaultRelay.for_url(server.url) as relay,
        run_client(
            relay.url_for(server.url), reconnect=FAST_RECONNECT, open_timeout=1.0, **QUICK_HEARTBEAT
        ) as client,
    ):
        await client.activate()
        side = server.sessions.of(client)
        relay.stall()
        await client.say("one")
        reply = frame(SERVER_WORKER, CLIENT_WORKER, "two")
        await side.assistant.send_bus_message(reply)
        await wait(client.disconnected.wait())
        relay.cut()  # the old link dies for good; the held bytes never arrive
        relay.resume()
        await side.assistant.wait_text("one")
        await client.acme.wait_text("two")
        assert side.assistant.texts() == ["one"] and client.acme.texts() == ["two"]
        assert client.proxy.stats.replayed >= 1 and side.server_proxy.stats.replayed >= 1
