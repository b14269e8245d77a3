"""The session protocol without I/O: handshake frames, negotiation, and two sessions wired
back to back in a plain loop with a fake clock (no asyncio, no sockets).

Session tests are parametrized over which side sends (client or server) and over both
built-in codecs, as websockets and wsproto test their protocol objects.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy_core.codecs.base import Codec
from proxy_core.codecs.json import JsonCodec
from proxy_core.codecs.msgpack import MsgpackCodec
from proxy_core.errors import (
    AuthenticationError,
    CodecError,
    HandshakeError,
    MessageTooLarge,
    ProtocolError,
    SessionRejected,
)
from proxy_core.messages import (
    BusDataMessage,
    BusFrameMessage,
    BusMessage,
    TextFrame,
    TypeRegistry,
    register_type,
)
from proxy_core.protocol import (
    FEATURES,
    PROTOCOL_NAME,
    PROTOCOL_VERSION,
    Ack,
    Envelope,
    Hello,
    Ping,
    Pong,
    Reject,
    RejectCode,
    Welcome,
    decode_handshake,
    encode_handshake,
)
from proxy_core.rules import DropReason
from proxy_core.session import (
    MIN_MESSAGE_BYTES,
    ByeReceived,
    DuplicateDiscarded,
    Event,
    MessageReceived,
    MessageUndecodable,
    PongReceived,
    RemoteReady,
    Session,
    client_accept,
    client_hello,
    server_negotiate,
)

CLIENT_WORKER = "acme"
SERVER_WORKER = "assistant"
CODEC_TYPES: dict[str, type[Codec]] = {"json": JsonCodec, "msgpack": MsgpackCodec}


class CborCodec(Codec):
    """A codec only one side has; never asked to encode anything."""

    name = "cbor"

    def encode(self, envelope: Envelope) -> bytes:  # pragma: no cover - never called
        raise NotImplementedError

    def decode(self, data: bytes) -> Envelope:  # pragma: no cover - never called
        raise NotImplementedError


# ================================================================ handshake frames

texts = st.text(max_size=12)
ints = st.integers(-(2**70), 2**70)
handshakes = st.one_of(
    st.builds(
        Hello,
        codecs=st.lists(texts, max_size=4).map(tuple),
        client_worker=texts,
        server_worker=texts,
        max_message_bytes=ints,
        version=ints,
    ),
    st.builds(
        Welcome,
        codec=texts,
        session_id=texts,
        ready=st.lists(texts, max_size=4).map(tuple),
        max_message_bytes=ints,
        version=ints,
    ),
    st.builds(Reject, code=ints, reason=texts),
)


@settings(max_examples=200, deadline=None)
@given(frame=handshakes)
def test_handshake_round_trip(frame: Hello | Welcome | Reject) -> None:
    data = encode_handshake(frame)
    body = json.loads(data)
    assert body["protocol"] == PROTOCOL_NAME
    decoded = decode_handshake(data)
    assert type(decoded) is type(frame)
    assert decoded == frame


def test_handshake_defaults_to_the_current_version() -> None:
    hello = decode_handshake(encode_handshake(Hello(("json",), "a", "b", 10)))
    assert isinstance(hello, Hello) and hello.version == PROTOCOL_VERSION == 1


VALID_BODIES: dict[str, dict[str, Any]] = {
    "hello": {
        "protocol": PROTOCOL_NAME,
        "type": "hello",
        "version": 1,
        "codecs": ["json"],
        "client_worker": "a",
        "server_worker": "b",
        "max_message_bytes": 100,
    },
    "welcome": {
        "protocol": PROTOCOL_NAME,
        "type": "welcome",
        "version": 1,
        "codec": "json",
        "session_id": "s",
        "ready": ["b"],
        "max_message_bytes": 100,
    },
    "reject": {"protocol": PROTOCOL_NAME, "type": "reject", "code": 4000, "reason": "no"},
}
# Wrong values for each field, by the type the field should have.
WRONG_VALUES: dict[type, list[Any]] = {
    int: [None, True, False, 1.0, "1", [1], {"v": 1}],
    str: [None, 1, True, ["a"], {"a": "b"}],
    list: [None, "json", 1, {"a": 1}, [1], ["a", None], [["a"]]],
}


def _broken_bodies() -> Iterable[Any]:
    for kind, body in VALID_BODIES.items():
        for key, good in body.items():
            if key in ("protocol", "type"):
                continue
            missing = {k: v for k, v in body.items() if k != key}
            yield pytest.param(missing, id=f"{kind}-missing-{key}")
            for i, bad in enumerate(WRONG_VALUES[type(good)]):
                yield pytest.param({**body, key: bad}, id=f"{kind}-{key}-bad{i}")
        yield pytest.param({**body, "protocol": "pipecat"}, id=f"{kind}-wrong-protocol")
        yield pytest.param(
            {k: v for k, v in body.items() if k != "protocol"}, id=f"{kind}-no-proto"
        )
    yield pytest.param({**VALID_BODIES["hello"], "type": "goodbye"}, id="unknown-type")
    yield pytest.param({**VALID_BODIES["hello"], "type": None}, id="null-type")
    yield pytest.param({**VALID_BODIES["hello"], "type": ["hello"]}, id="list-type")
    yield pytest.param([VALID_BODIES["hello"]], id="array")
    yield pytest.param("hello", id="string")
    yield pytest.param(None, id="null")


@pytest.mark.parametrize("body", list(_broken_bodies()))
def test_ill_formed_handshake_bodies_raise_handshake_error(body: Any) -> None:
    with pytest.raises(HandshakeError):
        decode_handshake(json.dumps(body).encode())


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"\xff\xfe\x00", b"{", b"[" * 100_000 + b"]" * 100_000, b"NaN"],
    ids=["empty", "text", "binary", "truncated", "deep", "nan"],
)
def test_malformed_handshake_bytes_raise_handshake_error(data: bytes) -> None:
    with pytest.raises(HandshakeError):
        decode_handshake(data)


def test_bool_version_is_refused() -> None:
    body = {**VALID_BODIES["hello"], "version": True}
    with pytest.raises(HandshakeError, match="version"):
        decode_handshake(json.dumps(body).encode())


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=100) | st.text(max_size=100).map(str.encode))
def test_random_handshake_bytes_raise_only_handshake_error(data: bytes) -> None:
    try:
        decode_handshake(data)
    except HandshakeError:
        pass


# ================================================================ negotiation


def _negotiate(
    client_codecs: list[Codec],
    server_codecs: list[Codec],
    *,
    client_worker: str = CLIENT_WORKER,
    server_worker: str = SERVER_WORKER,
    max_message_bytes: int = 4096,
) -> tuple[Hello, Codec] | Reject:
    hello = client_hello(
        client_codecs,
        client_worker=client_worker,
        server_worker=server_worker,
        max_message_bytes=max_message_bytes,
    )
    return server_negotiate(
        hello, server_codecs, worker_name=SERVER_WORKER, remote_worker_name=CLIENT_WORKER
    )


def test_client_hello_lists_codecs_in_order() -> None:
    frame = decode_handshake(
        client_hello(
            [MsgpackCodec(), JsonCodec()],
            client_worker=CLIENT_WORKER,
            server_worker=SERVER_WORKER,
            max_message_bytes=123,
        )
    )
    assert frame == Hello(
        ("msgpack", "json"), CLIENT_WORKER, SERVER_WORKER, 123, 1, features=FEATURES
    )


@pytest.mark.parametrize(
    ("client", "server", "chosen"),
    [
        (["msgpack", "json"], ["json", "msgpack"], "msgpack"),
        (["json", "msgpack"], ["msgpack", "json"], "json"),
        (["cbor", "json", "msgpack"], ["msgpack", "json"], "json"),
        (["cbor", "msgpack"], ["json", "msgpack", "cbor"], "cbor"),
    ],
)
def test_codec_follows_the_clients_preference(
    client: list[str], server: list[str], chosen: str
) -> None:
    makers = {"json": JsonCodec, "msgpack": MsgpackCodec, "cbor": CborCodec}
    server_codecs = [makers[n]() for n in server]
    result = _negotiate([makers[n]() for n in client], server_codecs)
    assert not isinstance(result, Reject), result
    hello, codec = result
    assert codec.name == chosen
    assert codec in server_codecs  # the server's own instance
    assert hello.client_worker == CLIENT_WORKER and hello.server_worker == SERVER_WORKER
    assert hello.max_message_bytes == 4096


def test_no_common_codec_lists_both_sides() -> None:
    result = _negotiate([CborCodec()], [JsonCodec(), MsgpackCodec()])
    assert isinstance(result, Reject)
    assert result.code == RejectCode.NO_COMMON_CODEC
    for name in ("cbor", "json", "msgpack"):
        assert name in result.reason


def test_wrong_version_is_unsupported() -> None:
    hello = encode_handshake(Hello(("json",), CLIENT_WORKER, SERVER_WORKER, 100, version=2))
    result = server_negotiate(
        hello, [JsonCodec()], worker_name=SERVER_WORKER, remote_worker_name=CLIENT_WORKER
    )
    assert isinstance(result, Reject) and result.code == RejectCode.UNSUPPORTED_VERSION


@pytest.mark.parametrize(
    ("client_worker", "server_worker"),
    [("eve", SERVER_WORKER), (CLIENT_WORKER, "eve"), (SERVER_WORKER, CLIENT_WORKER)],
    ids=["wrong-client", "wrong-server", "swapped"],
)
def test_wrong_worker_names_are_unknown(client_worker: str, server_worker: str) -> None:
    result = _negotiate(
        [JsonCodec()], [JsonCodec()], client_worker=client_worker, server_worker=server_worker
    )
    assert isinstance(result, Reject) and result.code == RejectCode.UNKNOWN_WORKER


@pytest.mark.parametrize(
    "data",
    [
        b"garbage",
        b"",
        encode_handshake(Welcome("json", "s", (), 100)),
        encode_handshake(Reject(4000, "x")),
        json.dumps({**VALID_BODIES["hello"], "version": True}).encode(),
    ],
    ids=["garbage", "empty", "welcome", "reject", "bool-version"],
)
def test_garbage_is_a_bad_hello(data: bytes) -> None:
    result = server_negotiate(
        data, [JsonCodec()], worker_name=SERVER_WORKER, remote_worker_name=CLIENT_WORKER
    )
    assert isinstance(result, Reject) and result.code == RejectCode.BAD_HELLO


@pytest.mark.parametrize("limit", [0, -1, MIN_MESSAGE_BYTES - 1])
def test_max_message_bytes_below_the_minimum_is_a_bad_hello(limit: int) -> None:
    result = _negotiate([JsonCodec()], [JsonCodec()], max_message_bytes=limit)
    assert isinstance(result, Reject) and result.code == RejectCode.BAD_HELLO


def test_client_accept_returns_the_welcome_and_our_codec() -> None:
    ours = [MsgpackCodec(), JsonCodec()]
    welcome = Welcome("json", "sid", (SERVER_WORKER,), 4096)
    got, codec = client_accept(encode_handshake(welcome), ours)
    assert got == welcome
    assert codec is ours[1]


def test_client_accept_unauthorized_is_an_authentication_error() -> None:
    data = encode_handshake(Reject(RejectCode.UNAUTHORIZED, "bad token"))
    with pytest.raises(AuthenticationError) as info:
        client_accept(data, [JsonCodec()])
    assert info.value.code == RejectCode.UNAUTHORIZED
    assert info.value.reason == "bad token"


@pytest.mark.parametrize(
    "code",
    [
        RejectCode.BAD_HELLO,
        RejectCode.UNSUPPORTED_VERSION,
        RejectCode.NO_COMMON_CODEC,
        RejectCode.UNKNOWN_WORKER,
        4999,
    ],
)
def test_client_accept_other_rejects_are_session_rejected(code: int) -> None:
    with pytest.raises(SessionRejected) as info:
        client_accept(encode_handshake(Reject(code, "why")), [JsonCodec()])
    assert not isinstance(info.value, AuthenticationError)
    assert info.value.code == code
    assert info.value.reason == "why"


@pytest.mark.parametrize(
    "data",
    [
        encode_handshake(Welcome("cbor", "sid", (), 100)),
        encode_handshake(Welcome("json", "sid", (), 100, version=2)),
        encode_handshake(Hello(("json",), "a", "b", 100)),
        b"garbage",
    ],
    ids=["codec-not-offered", "wrong-version", "hello", "garbage"],
)
def test_client_accept_refuses_bad_answers(data: bytes) -> None:
    with pytest.raises(HandshakeError) as info:
        client_accept(data, [JsonCodec(), MsgpackCodec()])
    assert not isinstance(info.value, SessionRejected)


# ================================================================ sessions back to back


@dataclass
class Clock:
    now: float = 1000.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@dataclass
class Link:
    """Two open sessions; ``sender`` is the side under test, ``receiver`` its peer."""

    sender: Session
    receiver: Session
    clock: Clock

    def deliver(self, frames: Iterable[bytes], to: Session | None = None) -> list[Event | None]:
        target = self.receiver if to is None else to
        return [target.receive(frame, self.clock.now) for frame in frames]

    def send(self, *messages: BusMessage) -> list[Event | None]:
        return self.deliver([self.sender.send_message(m) for m in messages])

    def flush_acks(self) -> None:
        """Carry the receiver's control frames (ACK, PONG) back to the sender."""
        self.deliver(self.receiver.data_to_send(), to=self.sender)


def open_link(codec_name: str, side: str, **options: Any) -> Link:
    """Run the real handshake, then build both sessions from it."""
    clock = Clock()
    server_codecs = [CODEC_TYPES[codec_name]()]
    client_codecs = [CODEC_TYPES[codec_name]()]
    limit = options.pop("max_message_bytes", 1 << 20)
    negotiated = server_negotiate(
        client_hello(
            client_codecs,
            client_worker=CLIENT_WORKER,
            server_worker=SERVER_WORKER,
            max_message_bytes=limit,
        ),
        server_codecs,
        worker_name=SERVER_WORKER,
        remote_worker_name=CLIENT_WORKER,
    )
    assert not isinstance(negotiated, Reject), negotiated
    hello, server_codec = negotiated
    welcome = Welcome(server_codec.name, "session-1", (SERVER_WORKER,), limit)
    welcome, codec = client_accept(encode_handshake(welcome), client_codecs)
    server = Session(
        server_codec,
        session_id=welcome.session_id,
        peer_max_message_bytes=hello.max_message_bytes,
        now=clock.now,
        **options,
    )
    client = Session(
        codec,
        session_id=welcome.session_id,
        peer_max_message_bytes=welcome.max_message_bytes,
        now=clock.now,
        **options,
    )
    if side == "client":
        return Link(client, server, clock)
    return Link(server, client, clock)


@pytest.fixture(params=sorted(CODEC_TYPES))
def codec_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["client", "server"])
def side(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def link(codec_name: str, side: str) -> Link:
    return open_link(codec_name, side)


def msg(i: int) -> BusDataMessage:
    return BusDataMessage(CLIENT_WORKER, SERVER_WORKER, {"i": i})


def decode(session: Session, frame: bytes) -> Envelope:
    return session.codec.decode(frame)


def test_messages_are_numbered_and_arrive_in_order(link: Link) -> None:
    events = link.send(*(msg(i) for i in range(5)))
    assert events == [MessageReceived(i + 1, msg(i)) for i in range(5)]
    assert link.sender.last_sent_seq == 5
    assert link.receiver.last_received_seq == 5
    assert link.sender.unacked == 5
    # The other direction is numbered on its own.
    assert link.receiver.last_sent_seq == 0
    back = link.deliver([link.receiver.send_message(msg(9))], to=link.sender)
    assert back == [MessageReceived(1, msg(9))]


def test_frames_carry_their_seq(link: Link) -> None:
    frame = link.sender.send_message(BusFrameMessage("a", "b", TextFrame("x")))
    envelope = decode(link.receiver, frame)
    assert envelope.seq == 1  # type: ignore[union-attr]


def test_ack_every_acknowledges_cumulatively(codec_name: str, side: str) -> None:
    link = open_link(codec_name, side, ack_every=3, ack_delay=60.0)
    link.send(msg(1), msg(2))
    assert link.receiver.data_to_send() == []
    link.send(msg(3))
    control = link.receiver.data_to_send()
    assert [decode(link.receiver, f) for f in control] == [Ack(3)]
    assert link.receiver.data_to_send() == []  # handed over once
    link.send(msg(4), msg(5), msg(6), msg(7))
    control = link.receiver.data_to_send()
    assert [decode(link.receiver, f) for f in control] == [Ack(6)]
    assert link.sender.unacked == 7
    link.deliver(control, to=link.sender)
    assert link.sender.unacked == 1
    link.deliver([control[0]], to=link.sender)  # a stale ACK changes nothing
    assert link.sender.unacked == 1


def test_ack_delay_acknowledges_what_arrived_after_a_while(codec_name: str, side: str) -> None:
    link = open_link(codec_name, side, ack_every=100, ack_delay=0.5)
    start = link.clock.now
    assert not link.receiver.ack_due(start + 10)
    assert link.receiver.ack_frame() is None  # nothing owed yet
    link.send(msg(1))
    link.clock.advance(0.3)
    link.send(msg(2))
    assert not link.receiver.ack_due(start + 0.49)
    # The delay runs from the first unacknowledged message, not the last.
    assert link.receiver.ack_due(start + 0.5)
    frame = link.receiver.ack_frame()
    assert frame is not None and decode(link.receiver, frame) == Ack(2)
    assert not link.receiver.ack_due(start + 100)
    assert link.receiver.ack_frame() is None
    assert link.deliver([frame], to=link.sender) == [None]
    assert link.sender.unacked == 0


def test_outbox_full_until_acknowledged(codec_name: str, side: str) -> None:
    link = open_link(codec_name, side, max_unacked=3, ack_every=1000)
    link.send(msg(1), msg(2))
    assert not link.sender.outbox_full
    link.send(msg(3))
    assert link.sender.outbox_full and link.sender.unacked == 3
    link.deliver([link.receiver.codec.encode(Ack(2))], to=link.sender)
    assert not link.sender.outbox_full and link.sender.unacked == 1
    frame = link.receiver.ack_frame()
    assert frame is not None
    link.deliver([frame], to=link.sender)
    assert link.sender.unacked == 0


def test_outbox_full_by_bytes_until_acknowledged(codec_name: str, side: str) -> None:
    link = open_link(codec_name, side, max_unacked_bytes=3000, ack_every=1000)
    big = BusDataMessage(CLIENT_WORKER, SERVER_WORKER, {"blob": "x" * 1000})
    sizes = [len(link.sender.send_message(big)) for _ in range(2)]
    assert link.sender.unacked_bytes == sum(sizes) < 3000 and not link.sender.outbox_full
    sizes.append(len(link.sender.send_message(big)))
    assert link.sender.unacked_bytes == sum(sizes) >= 3000
    assert link.sender.outbox_full and link.sender.unacked == 3  # far below max_unacked
    link.deliver([link.receiver.codec.encode(Ack(2))], to=link.sender)
    assert link.sender.unacked_bytes == sizes[2] and not link.sender.outbox_full
    link.deliver([link.receiver.codec.encode(Ack(3))], to=link.sender)
    assert link.sender.unacked_bytes == 0


def test_a_frame_larger_than_the_byte_bound_goes_alone(codec_name: str, side: str) -> None:
    link = open_link(codec_name, side, max_unacked_bytes=10, ack_every=1000)
    assert not link.sender.outbox_full  # nothing waits: the large frame may go
    frame = link.sender.send_message(msg(1))
    assert len(frame) > 10 and link.sender.outbox_full
    assert link.deliver([frame]) == [MessageReceived(1, msg(1))]


def test_duplicates_are_discarded(link: Link) -> None:
    first = link.sender.send_message(msg(1))
    second = link.sender.send_message(msg(2))
    assert link.deliver([first, first]) == [MessageReceived(1, msg(1)), DuplicateDiscarded(1)]
    assert link.deliver([second, first, second]) == [
        MessageReceived(2, msg(2)),
        DuplicateDiscarded(1),
        DuplicateDiscarded(2),
    ]
    assert link.receiver.last_received_seq == 2


def test_a_gap_is_a_protocol_error(link: Link) -> None:
    link.sender.send_message(msg(1))
    second = link.sender.send_message(msg(2))
    with pytest.raises(ProtocolError, match="expected message 1, got 2"):
        link.deliver([second])


def test_an_ack_beyond_what_was_sent_is_a_protocol_error(link: Link) -> None:
    link.sender.send_message(msg(1))
    with pytest.raises(ProtocolError):
        link.deliver([link.receiver.codec.encode(Ack(2))], to=link.sender)


def test_ping_is_answered_by_pong_and_rtt_uses_the_clock(link: Link) -> None:
    ping = link.sender.ping_frame(link.clock.now)
    envelope = decode(link.sender, ping)
    assert isinstance(envelope, Ping)
    nonce = envelope.nonce
    link.clock.advance(0.25)
    assert link.deliver([ping]) == [None]
    control = link.receiver.data_to_send()
    assert [decode(link.receiver, f) for f in control] == [Pong(nonce)]
    assert link.receiver.data_to_send() == []
    link.clock.advance(0.125)
    events = link.deliver(control, to=link.sender)
    assert events == [PongReceived(nonce, 0.375)]  # exact in binary: 1000.375 - 1000.0
    # A second PONG for the same nonce, or one never asked for, is ignored.
    assert link.deliver(control, to=link.sender) == [None]
    stray = link.receiver.codec.encode(Pong(999))
    assert link.deliver([stray], to=link.sender) == [None]


def test_ping_nonces_are_distinct(link: Link) -> None:
    nonces = [decode(link.sender, link.sender.ping_frame(0.0)).nonce for _ in range(3)]  # type: ignore[union-attr]
    assert len(set(nonces)) == 3


def test_is_dead_after_silence(link: Link) -> None:
    start = link.clock.now
    assert not link.receiver.is_dead(start + 10, timeout=10)
    assert link.receiver.is_dead(start + 10.01, timeout=10)
    link.clock.advance(8)
    link.deliver([link.sender.ping_frame(link.clock.now)])  # any frame counts as life
    assert not link.receiver.is_dead(start + 18, timeout=10)
    assert link.receiver.is_dead(start + 18.01, timeout=10)


def test_message_too_large_does_not_spend_a_seq(codec_name: str, side: str) -> None:
    link = open_link(codec_name, side, max_message_bytes=MIN_MESSAGE_BYTES)
    big = BusDataMessage("a", "b", {"blob": b"x" * (2 * MIN_MESSAGE_BYTES)})
    with pytest.raises(MessageTooLarge) as info:
        link.sender.send_message(big)
    limit = MIN_MESSAGE_BYTES
    assert info.value.limit == limit and info.value.size is not None and info.value.size > limit
    assert link.sender.last_sent_seq == 0 and link.sender.unacked == 0
    assert link.send(msg(1)) == [MessageReceived(1, msg(1))]


def test_an_unencodable_message_does_not_spend_a_seq(link: Link) -> None:
    with pytest.raises(CodecError):
        link.sender.send_message(BusDataMessage("a", "b", {"x": {1, 2}}))
    assert link.sender.last_sent_seq == 0
    assert link.send(msg(1)) == [MessageReceived(1, msg(1))]


@dataclass
class Secret(BusMessage):
    """Known to the sender only."""

    code: int = 0


def with_sender_codec(link: Link, codec: Codec) -> Link:
    """The same link, the sender now encoding with ``codec`` (it has the same wire name)."""
    old = link.sender
    sender = Session(
        codec,
        session_id=old.session_id,
        peer_max_message_bytes=old.peer_max_message_bytes,
        max_unacked=old.max_unacked,
        ack_every=old.ack_every,
        ack_delay=old.ack_delay,
        now=link.clock.now,
    )
    return Link(sender, link.receiver, link.clock)


def secret_codec(codec_name: str) -> Codec:
    """A codec whose registry knows a type the default registry does not."""
    registry = TypeRegistry()
    register_type("test.secret", registry=registry)(Secret)
    register_type("bus.data", registry=registry)(BusDataMessage)
    return CODEC_TYPES[codec_name](registry)  # type: ignore[call-arg]


def test_unknown_type_is_undecodable_and_advances_the_seq(link: Link, codec_name: str) -> None:
    link = with_sender_codec(link, secret_codec(codec_name))
    events = link.send(msg(1), Secret("a", "b", 7), msg(3))
    assert events[0] == MessageReceived(1, msg(1))
    undecodable = events[1]
    assert isinstance(undecodable, MessageUndecodable)
    assert undecodable.seq == 2 and undecodable.reason is DropReason.UNKNOWN_TYPE
    assert "test.secret" in undecodable.error
    assert events[2] == MessageReceived(3, msg(3))
    assert link.receiver.last_received_seq == 3
    # The undecodable message is acknowledged like any other.
    frame = link.receiver.ack_frame()
    assert frame is not None and decode(link.receiver, frame) == Ack(3)


def test_malformed_bytes_are_undecodable_without_a_seq(link: Link) -> None:
    events = link.deliver([b"\x00\x01garbage"])
    assert len(events) == 1 and isinstance(events[0], MessageUndecodable)
    assert events[0].seq is None and events[0].reason is DropReason.MALFORMED
    assert link.receiver.last_received_seq == 0
    assert link.send(msg(1)) == [MessageReceived(1, msg(1))]


def test_ready_and_bye_are_events(link: Link) -> None:
    events = link.deliver(
        [link.sender.ready_frame(SERVER_WORKER), link.sender.bye_frame(1000, "x")]
    )
    assert events == [RemoteReady(SERVER_WORKER), ByeReceived(1000, "x")]


def test_a_replayed_undecodable_message_is_a_duplicate(link: Link, codec_name: str) -> None:
    link = with_sender_codec(link, secret_codec(codec_name))
    frame = link.sender.send_message(Secret("a", "b"))
    first, again = link.deliver([frame, frame])
    assert isinstance(first, MessageUndecodable) and first.seq == 1
    assert again == DuplicateDiscarded(1)


# ---------------------------------------------------------------- a random walk


@settings(max_examples=60, deadline=None)
@given(
    codec_name=st.sampled_from(sorted(CODEC_TYPES)),
    side=st.sampled_from(["client", "server"]),
    ack_every=st.integers(1, 5),
    steps=st.lists(st.sampled_from(["send", "resend", "tick", "ack"]), max_size=40),
)
def test_random_traffic_delivers_each_message_once_in_order(
    codec_name: str, side: str, ack_every: int, steps: list[str]
) -> None:
    link = open_link(codec_name, side, ack_every=ack_every, ack_delay=1.0)
    delivered: list[BusMessage] = []
    sent: list[BusMessage] = []
    frames: list[bytes] = []
    for step in steps:
        if step == "send":
            sent.append(msg(len(sent)))
            frames.append(link.sender.send_message(sent[-1]))
            events = link.deliver([frames[-1]])
        elif step == "resend" and frames:
            events = link.deliver(frames)  # a full replay: all duplicates
            assert all(isinstance(e, DuplicateDiscarded) for e in events)
        elif step == "tick":
            link.clock.advance(0.6)
            if link.receiver.ack_due(link.clock.now):
                frame = link.receiver.ack_frame()
                assert frame is not None
                link.deliver([frame], to=link.sender)
            events = []
        else:
            link.flush_acks()
            events = []
        delivered += [e.message for e in events if isinstance(e, MessageReceived)]
        assert link.sender.unacked <= len(sent)
    assert delivered == sent
    # Everything still owed is acknowledged by one final ACK.
    link.flush_acks()
    final = link.receiver.ack_frame()
    if final is not None:
        link.deliver([final], to=link.sender)
    assert link.sender.unacked == 0
