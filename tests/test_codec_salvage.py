"""One bad value inside a message never costs its seq (docs/protocol.md sections 3, 5 and 8).

For every codec, a MSG whose envelope and seq are plain but whose message holds a
value the codec cannot represent (a map key that is not a string, a string that is
not UTF-8, an extension type, ``NaN``...) raises a :class:`CodecError` that carries
the seq, alone and inside a BATCH (where the frames around it still decode), so the
session consumes and acknowledges the number and the next MSG is no gap. Also: the
2**53 - 1 ceiling of seq, ACK numbers and nonces, and the empty BATCH.

The bad values are spliced into well-formed frames in place of a placeholder
string, so every frame around them is exactly what the codec writes.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from proxy_core.codecs.base import MAX_SAFE_INTEGER, Codec
from proxy_core.codecs.json import JsonCodec
from proxy_core.codecs.msgpack import MsgpackCodec
from proxy_core.codecs.protobuf import ProtobufCodec
from proxy_core.errors import CodecError, ProtocolError, UnknownMessageType
from proxy_core.messages import BusDataMessage, BusFrameMessage, BusMessage, TextFrame
from proxy_core.protocol import Ack, Batch, Envelope, Msg, Ping, Pong
from proxy_core.rules import DropReason
from proxy_core.session import (
    BatchReceived,
    DuplicateDiscarded,
    MessageReceived,
    MessageUndecodable,
    Session,
)

CODECS: dict[str, Codec] = {
    "json": JsonCodec(),
    "msgpack": MsgpackCodec(),
    "protobuf": ProtobufCodec(),
}
NAMES = sorted(CODECS)

#: Stands where a bad value goes; ASCII, so that protobuf's same-length splice works.
TOKEN = "salvage-placeholder-7f3a"

# ---------------------------------------------------------------- bad values
#
# Per codec, (bytes spliced in place of the TOKEN, whether the rest of the frame still
# parses so that a BATCH holding it keeps its other frames). A value replaces the whole
# encoded string (json: with its quotes; msgpack: with its header); protobuf replaces
# only the string's bytes, keeping every length right.

BAD_VALUES: dict[str, dict[str, tuple[bytes, bool]]] = {
    "json": {
        "NaN": (b"NaN", True),
        "Infinity": (b"Infinity", True),
        "-Infinity": (b"-Infinity", True),
        "1e400": (b"1e400", True),
        "-1e400": (b"-1e400", True),
        "5000 digits": (b"9" * 5000, True),
        "not UTF-8": (b'"\xff\xfe"', False),
        "bad escape": (b'"\\x"', False),
        "nested too deep": (b"[" * 100_000 + b"]" * 100_000, False),
    },
    "msgpack": {
        "int key": (b"\x81\x01\x02", True),
        "nil key": (b"\x81\xc0\xc0", True),
        "bin key": (b"\x81\xc4\x01x\x01", True),
        "array key": (b"\x81\x91\x01\x02", True),
        "map key": (b"\x81\x80\x01", True),
        "not UTF-8 key": (b"\x81\xa2\xff\xfe\x01", True),
        "not UTF-8": (b"\xa2\xff\xfe", True),
        "encoded surrogate": (b"\xa3\xed\xa0\x80", True),
        "fixext 1": (b"\xd4\x01\x00", True),
        "ext 8": (b"\xc7\x02\x05ab", True),
        "timestamp 32": (b"\xd6\xff\x00\x00\x00\x00", True),
        "timestamp of 2 bytes": (b"\xd5\xff\x00\x00", True),
        "nested too deep": (b"\x91" * 2_000 + b"\x01", False),
        "reserved byte c1": (b"\xc1", False),
    },
    "protobuf": {
        "not UTF-8": (b"\xff" * len(TOKEN), True),
        "continuation bytes": (b"\x80" * len(TOKEN), True),
        "encoded surrogate": (b"\xed\xa0\x80" * (len(TOKEN) // 3) + b"a" * (len(TOKEN) % 3), True),
    },
}

# Where the placeholder stands in the message.
PLACES: dict[str, BusMessage] = {
    "data value": BusDataMessage("acme", "assistant", {"a": 1, "x": TOKEN, "z": [1.5, None]}),
    "nested value": BusDataMessage("acme", "assistant", {"a": [{"b": ["c", TOKEN]}, True]}),
    "source": BusDataMessage(TOKEN, "assistant", {}),
    "target": BusMessage("acme", TOKEN),
    "text": BusFrameMessage("acme", "assistant", TextFrame(TOKEN)),
}


def _placeholder(codec: Codec) -> bytes:
    if codec.name == "json":
        return b'"' + TOKEN.encode() + b'"'
    if codec.name == "msgpack":
        packed: bytes = msgpack.packb(TOKEN)
        return packed
    return TOKEN.encode()


def bad_msg(codec: Codec, seq: int, bad: bytes, message: BusMessage) -> bytes:
    """``Msg(seq, message)`` as ``codec`` writes it, with ``bad`` in place of the TOKEN."""
    data = codec.encode(Msg(seq, message))
    placeholder = _placeholder(codec)
    assert data.count(placeholder) == 1
    if codec.name == "protobuf":
        assert len(bad) == len(placeholder)
    return data.replace(placeholder, bad)


def text(seq: int, body: str = "hello") -> Msg:
    return Msg(seq, BusFrameMessage("acme", "assistant", TextFrame(body)))


def cases(localized_only: bool = False) -> list[Any]:
    out = []
    for name in NAMES:
        for label, (bad, localized) in BAD_VALUES[name].items():
            if localized or not localized_only:
                out.append(pytest.param(name, bad, id=f"{name}-{label}"))
    return out


# ---------------------------------------------------------------- single frames and BATCHes


@pytest.mark.parametrize("place", sorted(PLACES))
@pytest.mark.parametrize(("name", "bad"), cases())
def test_a_bad_value_in_a_message_keeps_the_seq(name: str, bad: bytes, place: str) -> None:
    codec = CODECS[name]
    with pytest.raises(CodecError) as info:
        codec.decode(bad_msg(codec, 42, bad, PLACES[place]))
    assert info.value.seq == 42
    assert not isinstance(info.value, UnknownMessageType)


@pytest.mark.parametrize("place", sorted(PLACES))
@pytest.mark.parametrize(("name", "bad"), cases(localized_only=True))
def test_a_bad_value_in_a_batch_costs_only_its_frame(name: str, bad: bytes, place: str) -> None:
    codec = CODECS[name]
    frames = [
        codec.encode(text(6)),
        bad_msg(codec, 7, bad, PLACES[place]),
        codec.encode(Ack(3)),
        codec.encode(text(8)),
    ]
    decoded = codec.decode(codec.encode_batch(frames))
    assert isinstance(decoded, Batch)
    first, error, ack, last = decoded.items
    assert first == text(6) and ack == Ack(3) and last == text(8)
    assert isinstance(error, CodecError) and error.seq == 7


def test_a_bad_tag_is_malformed_not_unknown() -> None:
    codec = CODECS["msgpack"]
    data = codec.encode(Msg(5, BusMessage("acme", "assistant")))
    data = data.replace(msgpack.packb("bus.message"), b"\xab" + b"\xff" * 11)
    with pytest.raises(CodecError) as info:
        codec.decode(data)
    assert info.value.seq == 5 and not isinstance(info.value, UnknownMessageType)


MSGPACK_MSG = msgpack.packb([1, 9, {"$type": "bus.message", "source": "a", "target": "b"}])


@pytest.mark.parametrize(
    "data",
    [
        MSGPACK_MSG[:-3],  # cut short
        MSGPACK_MSG + b"\x00",  # trailing bytes
        MSGPACK_MSG + MSGPACK_MSG,
        b"\x92\x01\x09",  # a MSG without its message
        b"\x94\x01\x09\x80\x80",  # a MSG of four elements
        b"\xdc\x00\x03\x01\x09\xc1",  # array 16 header, a reserved byte for the message
    ],
    ids=["cut", "trailing", "twice", "arity 2", "arity 4", "reserved byte"],
)
def test_msgpack_bytes_that_do_not_parse_keep_the_seq_of_a_msg(data: bytes) -> None:
    with pytest.raises(CodecError) as info:
        CODECS["msgpack"].decode(data)
    assert info.value.seq == 9


@pytest.mark.parametrize(
    ("data", "seq"),
    [
        (b'[1,12,{"$type":"bus.message","source":"a","target":"b"}', 12),  # cut short
        (b'[1,12,{"$type":"bus.message","source":"a","target":"b"}] x', 12),
        (b'[1,12,{"$type":"bus.message","source":"a","target":"b"}][2,1]', 12),
        (b' \n[ 1 ,\t12 , {"$type":', 12),
        (b"\xef\xbb\xbf[1,12,{", 12),
        (b"[1,12]", 12),  # parses: a MSG of two elements
        (b"[1,-3,{", -3),  # the session refuses it (section 5)
        (b"[1,9007199254740991,{", MAX_SAFE_INTEGER),
        (b"[1,9007199254740992,{", None),
        (b"[1,99999999999999999999,{", None),
        (b"[1,012,{", None),
        (b"[1,1.5,{", None),
        (b"[1,true,{", None),
        (b"[01,12,{", None),
        (b"[7,[1,12,{", None),
        (b" " * 64 + b"[1,12,{", None),  # beyond the bytes that are looked at
    ],
)
def test_json_bytes_that_do_not_parse_keep_the_seq_of_a_msg(data: bytes, seq: int | None) -> None:
    with pytest.raises(CodecError) as info:
        CODECS["json"].decode(data)
    assert info.value.seq == seq


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


PB_MSG = CODECS["protobuf"].encode(text(11))
PB_BROKEN_MESSAGE = _field(1, b"\x08\x0b" + _field(2, b"\xff\xff\xff"))  # not a Message


@pytest.mark.parametrize(
    ("data", "seq"),
    [
        (PB_MSG[:-3], 11),  # cut short
        (PB_MSG[:5], 11),
        (PB_MSG[:3], None),  # the seq's varint is cut
        (PB_BROKEN_MESSAGE, 11),
        (PB_BROKEN_MESSAGE + b"\x12\x02\x08\x01", None),  # an ACK after it: the oneof keeps it
        (PB_BROKEN_MESSAGE + _field(1, b"\x08\x0c"), 12),  # two msgs merge: the last seq
        (_field(1, _field(2, b"\xff\xff\xff")), 0),  # no seq: the default, refused by the session
        (_field(1, b"\x08" + _varint(2**53) + _field(2, b"\xff")), None),
        (PB_BROKEN_MESSAGE + b"\x0f", 11),  # a broken field after it
    ],
)
def test_protobuf_envelopes_that_do_not_parse_keep_the_seq_of_a_msg(
    data: bytes, seq: int | None
) -> None:
    with pytest.raises(CodecError) as info:
        CODECS["protobuf"].decode(data)
    assert info.value.seq == seq


# ---------------------------------------------------------------- in the session


def receiver(name: str) -> Session:
    return Session(CODECS[name], session_id="s", peer_max_message_bytes=1 << 20, now=0.0)


@pytest.mark.parametrize("name", NAMES)
def test_the_session_consumes_acknowledges_and_counts_a_bad_msg(name: str) -> None:
    codec = CODECS[name]
    session = receiver(name)
    bad, _ = next(iter(BAD_VALUES[name].values()))
    assert session.receive(codec.encode(text(1)), 0.0) == MessageReceived(1, text(1).message)
    event = session.receive(bad_msg(codec, 2, bad, PLACES["data value"]), 0.0)
    assert isinstance(event, MessageUndecodable)
    assert event.seq == 2 and event.reason is DropReason.MALFORMED
    assert session.receive(codec.encode(text(3)), 0.0) == MessageReceived(3, text(3).message)
    ack = session.ack_frame()
    assert ack is not None and codec.decode(ack) == Ack(3)
    # Sent again, the bad MSG is a duplicate, like any other.
    again = session.receive(bad_msg(codec, 2, bad, PLACES["data value"]), 0.0)
    assert again == DuplicateDiscarded(2)


@pytest.mark.parametrize(("name", "bad"), cases(localized_only=True))
def test_the_session_consumes_a_bad_msg_inside_a_batch(name: str, bad: bytes) -> None:
    codec = CODECS[name]
    session = receiver(name)
    frames = [codec.encode(text(1)), bad_msg(codec, 2, bad, PLACES["text"]), codec.encode(text(3))]
    event = session.receive(codec.encode_batch(frames), 0.0)
    assert isinstance(event, BatchReceived)
    first, undecodable, last = event.events
    assert first == MessageReceived(1, text(1).message)
    assert isinstance(undecodable, MessageUndecodable)
    assert undecodable.seq == 2 and undecodable.reason is DropReason.MALFORMED
    assert last == MessageReceived(3, text(3).message)
    assert session.last_received_seq == 3
    assert session.receive(codec.encode(text(4)), 0.0) == MessageReceived(4, text(4).message)


@pytest.mark.parametrize(("name", "bad"), cases())
def test_the_sequence_rules_hold_for_a_bad_msg(name: str, bad: bytes) -> None:
    codec = CODECS[name]
    session = receiver(name)
    session.receive(codec.encode(text(1)), 0.0)
    with pytest.raises(ProtocolError, match="expected message 2, got 5"):
        session.receive(bad_msg(codec, 5, bad, PLACES["data value"]), 0.0)
    with pytest.raises(ProtocolError, match="start at 1"):
        receiver(name).receive(bad_msg(codec, 0, bad, PLACES["data value"]), 0.0)


# ---------------------------------------------------------------- a property


messages = st.builds(
    BusDataMessage,
    st.just("acme"),
    st.none() | st.just("assistant"),
    st.dictionaries(
        st.text(max_size=6),
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(-(2**63), 2**63 - 1)
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(max_size=12)
            | st.binary(max_size=12),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
            max_leaves=12,
        ),
        max_size=5,
    ),
) | st.builds(lambda body: BusFrameMessage("acme", "assistant", TextFrame(body)), st.text())


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def message_span(codec: Codec, data: bytes, seq: int) -> tuple[int, int]:
    """Where the message is in the frame ``data`` of a MSG: [start, end)."""
    if codec.name == "json":
        return len(f"[1,{seq},".encode()), len(data) - 1
    if codec.name == "msgpack":
        return len(b"\x93\x01" + msgpack.packb(seq)), len(data)
    # Envelope.msg (tag, length), Msg.seq (tag, varint), Msg.message (tag, length).
    _, pos = _read_varint(data, 1)
    _, pos = _read_varint(data, pos + 1)
    _, pos = _read_varint(data, pos + 1)
    return pos, len(data)


@st.composite
def corruptions(draw: st.DrawFn, span: int, same_length: bool) -> list[tuple[str, int, int]]:
    out = []
    for _ in range(draw(st.integers(1, 4))):
        kinds = ["flip", "set"] if same_length else ["flip", "set", "insert", "delete"]
        out.append(
            (
                draw(st.sampled_from(kinds)),
                draw(st.integers(0, span - 1)),
                draw(st.integers(0, 255)),
            )
        )
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(NAMES),
    seq=st.integers(1, MAX_SAFE_INTEGER),
    message=messages,
    data=st.data(),
)
def test_corrupting_the_message_never_loses_a_readable_seq(
    name: str, seq: int, message: BusMessage, data: st.DataObject
) -> None:
    """Bytes changed inside the message: a Msg with that seq, or a CodecError that has it.

    protobuf frames are not self-delimiting, so there only bytes are changed, none
    inserted or deleted (a length that no longer matches moves the Envelope's fields).
    """
    codec = CODECS[name]
    try:
        frame = codec.encode(Msg(seq, message))
    except CodecError:  # a lone surrogate in a text
        assume(False)
    start, end = message_span(codec, frame, seq)
    assume(end > start)
    body = bytearray(frame[start:end])
    for kind, at, byte in data.draw(corruptions(end - start, name == "protobuf")):
        at %= max(len(body), 1)
        if kind == "flip" and body:
            body[at] ^= 1 << (byte % 8)
        elif kind == "set" and body:
            body[at] = byte
        elif kind == "insert":
            body.insert(at, byte)
        elif kind == "delete" and body:
            del body[at]
    corrupted = frame[:start] + bytes(body) + frame[end:]
    try:
        decoded = codec.decode(corrupted)
    except CodecError as exc:
        assert exc.seq == seq, exc
        return
    assert isinstance(decoded, Msg) and decoded.seq == seq


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=st.sampled_from([(n, b) for n in NAMES for b, ok in BAD_VALUES[n].values() if ok]),
    seqs=st.lists(st.integers(1, MAX_SAFE_INTEGER), min_size=1, max_size=5),
    bad_seq=st.integers(1, MAX_SAFE_INTEGER),
    where=st.integers(0, 5),
    message=messages,
)
def test_a_bad_value_anywhere_in_a_batch_costs_only_its_frame(
    case: tuple[str, bytes], seqs: list[int], bad_seq: int, where: int, message: BusMessage
) -> None:
    name, bad = case
    codec = CODECS[name]
    where %= len(seqs) + 1
    data = message.data if isinstance(message, BusDataMessage) else {}
    spoiled = BusDataMessage("acme", "assistant", {**data, "placeholder key": TOKEN})
    try:
        good = [codec.encode(Msg(seq, message)) for seq in seqs]
        frames = [*good[:where], bad_msg(codec, bad_seq, bad, spoiled), *good[where:]]
    except CodecError:  # a lone surrogate in a text
        assume(False)
    decoded = codec.decode(codec.encode_batch(frames))
    assert isinstance(decoded, Batch) and len(decoded.items) == len(seqs) + 1
    for i, item in enumerate(decoded.items):
        if i == where:
            assert isinstance(item, CodecError) and item.seq == bad_seq
        else:
            assert isinstance(item, Msg) and item.seq == seqs[i - (i > where)]


# ---------------------------------------------------------------- 2**53 - 1


@pytest.mark.parametrize("name", NAMES)
def test_counters_up_to_2_53_minus_1_cross(name: str) -> None:
    codec = CODECS[name]
    for envelope in (text(MAX_SAFE_INTEGER), Ack(MAX_SAFE_INTEGER), Ping(MAX_SAFE_INTEGER)):
        assert codec.decode(codec.encode(envelope)) == envelope
    assert codec.decode(codec.encode(Pong(MAX_SAFE_INTEGER))) == Pong(MAX_SAFE_INTEGER)


@pytest.mark.parametrize(
    "value", [2**53, 2**63 - 1, 2**64 - 1], ids=["2**53", "2**63-1", "2**64-1"]
)
@pytest.mark.parametrize("name", NAMES)
def test_counters_above_2_53_minus_1_are_refused(name: str, value: int) -> None:
    codec = CODECS[name]
    for envelope in (text(value), Ack(value), Ping(value), Pong(value)):
        with pytest.raises(CodecError):
            codec.encode(envelope)


def _raw_frames(name: str, value: int) -> dict[str, bytes]:
    """A MSG, ACK, PING and PONG carrying ``value``, built without our encoders."""
    body = {"$type": "bus.message", "source": "acme", "target": "assistant"}
    if name == "json":
        return {
            "msg": f'[1,{value},{{"$type":"bus.message","source":"acme","target":null}}]'.encode(),
            "ack": f"[2,{value}]".encode(),
            "ping": f"[4,{value}]".encode(),
            "pong": f"[5,{value}]".encode(),
        }
    if name == "msgpack":
        return {
            "msg": msgpack.packb([1, value, body]),
            "ack": msgpack.packb([2, value]),
            "ping": msgpack.packb([4, value]),
            "pong": msgpack.packb([5, value]),
        }
    message = _field(2, _field(1, b"acme") + _field(2, b"assistant") + _field(3, b""))
    return {
        "msg": _field(1, b"\x08" + _varint(value) + message),
        "ack": _field(2, b"\x08" + _varint(value)),
        "ping": _field(4, b"\x08" + _varint(value)),
        "pong": _field(5, b"\x08" + _varint(value)),
    }


@pytest.mark.parametrize("name", NAMES)
def test_a_receiver_refuses_counters_above_2_53_minus_1(name: str) -> None:
    codec = CODECS[name]
    good = _raw_frames(name, MAX_SAFE_INTEGER)
    assert codec.decode(good["ack"]) == Ack(MAX_SAFE_INTEGER)
    assert codec.decode(good["ping"]) == Ping(MAX_SAFE_INTEGER)
    decoded = codec.decode(good["msg"])
    assert isinstance(decoded, Msg) and decoded.seq == MAX_SAFE_INTEGER
    for value in (2**53, 2**64 - 1):
        for kind, data in _raw_frames(name, value).items():
            with pytest.raises(CodecError) as info:
                codec.decode(data)
            assert info.value.seq is None, kind  # a MSG with such a seq has no readable seq


@pytest.mark.parametrize("name", ["json", "msgpack"])
def test_negative_acks_and_nonces_are_malformed_a_negative_seq_is_read(name: str) -> None:
    codec = CODECS[name]
    frames = _raw_frames(name, -1)
    for kind in ("ack", "ping", "pong"):
        with pytest.raises(CodecError):
            codec.decode(frames[kind])
    decoded = codec.decode(frames["msg"])
    assert isinstance(decoded, Msg) and decoded.seq == -1  # section 5: a protocol error


@pytest.mark.parametrize("name", NAMES)
def test_the_session_drops_counters_above_2_53_minus_1(name: str) -> None:
    codec = CODECS[name]
    session = receiver(name)
    for data in _raw_frames(name, 2**53).values():
        event = session.receive(data, 0.0)
        assert isinstance(event, MessageUndecodable)
        assert event.seq is None and event.reason is DropReason.MALFORMED
    assert session.last_received_seq == 0 and session.data_to_send() == []
    assert session.receive(codec.encode(text(1)), 0.0) == MessageReceived(1, text(1).message)


# ---------------------------------------------------------------- the empty BATCH


EMPTY_BATCHES = {
    "json": [b"[7]", b" [ 7 ] "],
    "msgpack": [b"\x91\x07", b"\xdc\x00\x01\x07", b"\xdd\x00\x00\x00\x01\x07"],
    "protobuf": [b"\x3a\x00", b"\x3a\x00\x3a\x00"],
}


@pytest.mark.parametrize(
    ("name", "data"), [(n, d) for n in NAMES for d in EMPTY_BATCHES[n]], ids=repr
)
def test_an_empty_batch_is_malformed(name: str, data: bytes) -> None:
    with pytest.raises(CodecError, match="empty BATCH") as info:
        CODECS[name].decode(data)
    assert info.value.seq is None
    session = receiver(name)
    event = session.receive(data, 0.0)
    assert isinstance(event, MessageUndecodable) and event.reason is DropReason.MALFORMED
    envelope: Envelope = text(1)
    assert session.receive(CODECS[name].encode(envelope), 0.0) == MessageReceived(
        1, text(1).message
    )


@pytest.mark.parametrize("name", sorted(CODECS))
@pytest.mark.parametrize("data", ["[4,1]", None, 7, [4, 1]], ids=["str", "None", "int", "list"])
def test_a_frame_that_is_not_bytes_is_a_codec_error(name: str, data: Any) -> None:
    with pytest.raises(CodecError):
        CODECS[name].decode(data)
