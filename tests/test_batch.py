"""BATCH frames: several frames in one transport message (coalescing in the writer).

The codecs wrap already-encoded frames without re-encoding them, decode each
frame on its own (one bad frame does not cost the others), and stay within
``batch_size_bound``; the session processes a batch in order and owes one ACK
for it; the proxies batch only what the handshake agreed on, and a stream that
outruns the socket goes out in batches, in order, with nothing lost.
"""

from __future__ import annotations

from typing import Any

import pytest
from _support import run_client, run_server, wait
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy_core import BusFrameMessage, TextFrame
from proxy_core.codecs.base import Codec, batch_size_bound
from proxy_core.codecs.json import JsonCodec
from proxy_core.codecs.msgpack import MsgpackCodec
from proxy_core.codecs.protobuf import ProtobufCodec
from proxy_core.errors import CodecError, ProtocolError, UnknownMessageType
from proxy_core.messages import BusDataMessage, TypeRegistry
from proxy_core.protocol import (
    FEATURES,
    Ack,
    Batch,
    Bye,
    Envelope,
    Hello,
    Msg,
    Ping,
    Pong,
    Ready,
    Welcome,
    decode_handshake,
    encode_handshake,
)
from proxy_core.session import (
    BatchReceived,
    ByeReceived,
    MessageReceived,
    MessageUndecodable,
    RemoteReady,
    Session,
    common_features,
)

CODECS: dict[str, Codec] = {
    "json": JsonCodec(),
    "msgpack": MsgpackCodec(),
    "protobuf": ProtobufCodec(),
}


@pytest.fixture(params=sorted(CODECS))
def codec(request: pytest.FixtureRequest) -> Codec:
    return CODECS[request.param]


def text(seq: int, body: str) -> Msg:
    return Msg(seq, BusFrameMessage(source="acme", target="assistant", frame=TextFrame(body)))


envelopes = st.one_of(
    st.builds(text, st.integers(1, 2**40), st.text(max_size=50)),
    st.builds(Ack, st.integers(0, 2**40)),
    st.builds(Ready, st.text(min_size=1, max_size=10)),
    st.builds(Ping, st.integers(0, 2**40)),
    st.builds(Pong, st.integers(0, 2**40)),
    st.builds(Bye, st.integers(1000, 4999), st.text(max_size=20)),
)


def encodable(codec: Codec, envelope: Envelope) -> bytes | None:
    try:
        return codec.encode(envelope)
    except CodecError:  # e.g. a lone surrogate in a text
        return None


@settings(max_examples=150, deadline=None)
@given(items=st.lists(envelopes, min_size=2, max_size=40))
def test_a_batch_round_trips_in_order_within_its_size_bound(items: list[Envelope]) -> None:
    for codec in CODECS.values():
        encoded = [(e, encodable(codec, e)) for e in items]
        kept = [(e, data) for e, data in encoded if data is not None]
        if len(kept) < 2:
            continue
        frames = [data for _, data in kept]
        batch = codec.encode_batch(frames)
        assert len(batch) <= batch_size_bound(sum(map(len, frames)), len(frames)), codec
        decoded = codec.decode(batch)
        assert decoded == Batch(tuple(e for e, _ in kept)), codec


def test_a_large_batch_has_a_long_header(codec: Codec) -> None:
    frames = [codec.encode(text(i, "x" * (i % 7))) for i in range(1, 70_001)]
    batch = codec.encode_batch(frames)
    assert len(batch) <= batch_size_bound(sum(map(len, frames)), len(frames))
    decoded = codec.decode(batch)
    assert isinstance(decoded, Batch) and len(decoded.items) == 70_000
    assert decoded.items[-1] == text(70_000, "x" * (70_000 % 7))


def test_one_bad_frame_costs_only_itself(codec: Codec) -> None:
    narrow = type(codec)(TypeRegistry())  # knows no message type at all
    frames = [codec.encode(Ack(1)), codec.encode(text(5, "hi")), codec.encode(Ping(3))]
    decoded = narrow.decode(codec.encode_batch(frames))
    assert isinstance(decoded, Batch)
    first, bad, last = decoded.items
    assert first == Ack(1) and last == Ping(3)
    assert isinstance(bad, UnknownMessageType) and bad.seq == 5


def test_garbage_inside_a_batch_is_a_codec_error(codec: Codec) -> None:
    data = codec.encode_batch([codec.encode(Ack(1)), b"\xff\x00garbage"])
    if codec.name == "protobuf":  # each frame is parsed on its own
        decoded = codec.decode(data)
        assert isinstance(decoded, Batch) and decoded.items[0] == Ack(1)
        assert isinstance(decoded.items[1], CodecError)
    else:  # one document: bytes that are no value spoil the whole frame
        with pytest.raises(CodecError):
            codec.decode(data)


def test_a_batch_inside_a_batch_is_refused(codec: Codec) -> None:
    inner = codec.encode_batch([codec.encode(Ack(1)), codec.encode(Ack(2))])
    decoded = codec.decode(codec.encode_batch([inner, codec.encode(Ping(1))]))
    assert isinstance(decoded, Batch)
    assert isinstance(decoded.items[0], CodecError)
    assert "BATCH" in str(decoded.items[0])
    assert decoded.items[1] == Ping(1)


def test_codecs_without_batches_say_so() -> None:
    class Plain(Codec):
        name = "plain"

        def encode(self, envelope: Envelope) -> bytes:
            return b""

        def decode(self, data: bytes) -> Envelope:
            return Ack(0)

    assert not Plain.supports_batch
    with pytest.raises(CodecError, match="'plain' has no BATCH"):
        Plain().encode_batch([b"a", b"b"])
    assert common_features(["batch"], Plain()) == ()
    assert common_features(["batch", "teleport"], MsgpackCodec()) == ("batch",)


def test_features_travel_in_the_handshake_and_are_optional() -> None:
    hello = Hello(("msgpack",), "acme", "assistant", 4096, features=FEATURES)
    assert decode_handshake(encode_handshake(hello)) == hello
    welcome = Welcome("msgpack", "s" * 32, (), 4096, features=("batch",))
    assert decode_handshake(encode_handshake(welcome)) == welcome
    # A peer that predates features sends none.
    old = b'{"protocol":"proxy-core","type":"hello","version":1,"codecs":["json"],'
    old += b'"client_worker":"a","server_worker":"b","max_message_bytes":2048}'
    parsed = decode_handshake(old)
    assert isinstance(parsed, Hello) and parsed.features == ()


# ---------------------------------------------------------------- the session


def pair(codec: Codec, **options: Any) -> tuple[Session, Session]:
    make = lambda: Session(  # noqa: E731
        codec, session_id="s", peer_max_message_bytes=1 << 20, batch=True, now=0.0, **options
    )
    return make(), make()


def test_session_processes_a_batch_in_order_and_owes_one_ack(codec: Codec) -> None:
    sender, receiver = pair(codec, ack_every=4)
    frames = [sender.send_message(BusDataMessage("acme", "assistant", {"i": i})) for i in range(10)]
    frames.append(sender.ready_frame("acme"))
    event = receiver.receive(sender.batch_frame(frames), 1.0)
    assert isinstance(event, BatchReceived)
    assert [e.seq for e in event.events if isinstance(e, MessageReceived)] == list(range(1, 11))
    assert event.events[-1] == RemoteReady("acme")
    owed = receiver.data_to_send()
    assert len(owed) == 1 and codec.decode(owed[0]) == Ack(10)
    assert sender.receive(owed[0], 2.0) is None and sender.unacked == 0


def test_session_counts_an_undecodable_frame_in_a_batch_and_goes_on(codec: Codec) -> None:
    sender, _ = pair(codec)
    receiver = Session(
        type(codec)(TypeRegistry()), session_id="s", peer_max_message_bytes=1 << 20, now=0.0
    )
    frames = [sender.send_message(BusDataMessage("acme", "assistant", {})) for _ in range(3)]
    event = receiver.receive(sender.batch_frame(frames), 1.0)
    assert isinstance(event, BatchReceived)
    assert [type(e) for e in event.events] == [MessageUndecodable] * 3
    assert receiver.last_received_seq == 3


def test_a_gap_inside_a_batch_is_a_protocol_error(codec: Codec) -> None:
    sender, receiver = pair(codec)
    frames = [codec.encode(text(1, "a")), codec.encode(text(3, "c"))]
    with pytest.raises(ProtocolError, match="expected message 2, got 3"):
        receiver.receive(sender.batch_frame(frames), 1.0)


def test_bye_inside_a_batch_is_reported_in_place(codec: Codec) -> None:
    sender, receiver = pair(codec)
    frames = [
        sender.send_message(BusDataMessage("acme", "assistant", {})),
        sender.bye_frame(1000, "done"),
    ]
    event = receiver.receive(sender.batch_frame(frames), 1.0)
    assert isinstance(event, BatchReceived)
    assert isinstance(event.events[0], MessageReceived)
    assert event.events[1] == ByeReceived(1000, "done")


def test_a_session_batches_only_with_a_codec_that_can() -> None:
    class Plain(JsonCodec):
        supports_batch = False

    session = Session(Plain(), session_id="s", peer_max_message_bytes=4096, batch=True, now=0.0)
    assert not session.batch


# ---------------------------------------------------------------- over a real link


@pytest.mark.parametrize("codec_name", ["json", "msgpack", "protobuf"])
async def test_a_burst_crosses_in_batches_in_order(codec_name: str) -> None:
    count = 3000
    async with (
        run_server(codecs=[codec_name]) as server,
        run_client(server.url, codec=codec_name) as client,
    ):
        await client.activate()
        side = await server.sessions.next()
        for i in range(count):  # never yields: the sender is ahead of the socket
            await client.say(str(i))
        await wait(side.assistant.wait_text(str(count - 1)))
        assert side.assistant.texts() == [str(i) for i in range(count)]
        client_stats, server_stats = client.proxy.stats, side.server_proxy.stats
        assert client_stats.messages_out == server_stats.messages_in == count
        assert client_stats.batches_out > 0
        assert client_stats.batches_out < count // 10  # most messages went in batches
        assert server_stats.batches_in == client_stats.batches_out


async def test_a_lone_message_is_not_batched() -> None:
    async with run_server() as server, run_client(server.url) as client:
        await client.activate()
        side = await server.sessions.next()
        before = client.proxy.stats.batches_out
        await client.say("alone")
        await wait(side.assistant.wait_text("alone"))
        assert client.proxy.stats.batches_out == before
