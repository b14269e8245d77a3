"""The protobuf codec: exact round trips, the schema's refusals, fuzzing, and a real session.

Equality here is strict, as in ``test_codecs.py``: types must match (``True`` is not
``1``, a tuple is not a list), dict keys keep their order, and floats compare by their
bits, so ``-0.0``, the infinities and NaN (with its payload) must survive unchanged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import proxy_core.codecs.protobuf as protobuf_module
from proxy_core import BaseWorker, ProxyClient, WorkerRunner, serve_proxy
from proxy_core.codecs._generated import envelope_pb2 as pb
from proxy_core.codecs.msgpack import MsgpackCodec
from proxy_core.codecs.protobuf import MAX_DEPTH, ProtobufCodec
from proxy_core.errors import CodecError, ConfigurationError, UnknownMessageType
from proxy_core.messages import (
    DEFAULT_TYPES,
    AudioRawFrame,
    BusActivateWorkerMessage,
    BusCancelMessage,
    BusDataMessage,
    BusEndMessage,
    BusEndWorkerMessage,
    BusFrameMessage,
    BusMessage,
    TextFrame,
    TypeRegistry,
    register_type,
)
from proxy_core.plugins import load_codec, resolve_codec
from proxy_core.protocol import Ack, Bye, Envelope, Kind, Msg, Ping, Pong, Ready

CODEC = ProtobufCodec()
MSGPACK = MsgpackCodec()

INT64 = st.integers(-(2**63), 2**63 - 1)
#: Sequence numbers, ACK numbers and nonces stop at 2**53 - 1 (docs/protocol.md section 8).
COUNTERS = st.integers(0, 2**53 - 1)
INT32 = st.integers(-(2**31), 2**31 - 1)


# ---------------------------------------------------------------- user types


@register_type("tests.protobuf.weather")
@dataclass
class Weather(BusMessage):
    """A user message in the default registry (it crosses the e2e session)."""

    city: str = ""
    readings: tuple[float, ...] = ()
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass
class Station:
    """A user object (not a message), only in the private registry."""

    code: str
    photo: bytes = b""


@dataclass
class Forecast(BusMessage):
    """A user message, only in the private registry."""

    station: Any = None
    days: list[Any] = dataclasses.field(default_factory=list)


PRIVATE = TypeRegistry()
register_type("test.station", registry=PRIVATE)(Station)
register_type("test.forecast", registry=PRIVATE)(Forecast)
PRIVATE_CODEC = ProtobufCodec(PRIVATE)
MSGPACK_PRIVATE = MsgpackCodec(PRIVATE)


# ---------------------------------------------------------------- strict equality


def same(a: Any, b: Any) -> bool:
    """Equality that also compares types, float bits, dict key order and dataclass fields."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if dataclasses.is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    return bool(a == b)


def round_trip(envelope: Envelope, codec: ProtobufCodec = CODEC) -> Envelope:
    data = codec.encode(envelope)
    assert type(data) is bytes
    decoded = codec.decode(data)
    assert same(decoded, envelope), (envelope, decoded)
    return decoded


def parse(data: bytes) -> pb.Envelope:
    return pb.Envelope.FromString(data)


def msg_bytes(body: pb.Message, seq: int = 9) -> bytes:
    """Serialize a MSG around a hand-built Message."""
    env = pb.Envelope()
    env.msg.seq = seq
    env.msg.message.CopyFrom(body)
    return env.SerializeToString()


# ---------------------------------------------------------------- strategies


def _large_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _nan(payload: int, negative: bool) -> float:
    bits = 0x7FF0000000000000 | payload | (1 << 63 if negative else 0)
    value: float = struct.unpack("<d", struct.pack("<Q", bits))[0]
    return value


byte_values = st.one_of(
    st.just(b""),
    st.binary(max_size=32),
    st.builds(_large_bytes, st.integers(1, 100_000), st.integers(0, 2**32)),
)
texts = st.one_of(st.text(max_size=20), st.text(max_size=8).map(lambda s: "$" + s))
floats = st.one_of(
    st.floats(),  # NaN and the infinities included: this codec carries them
    st.sampled_from([0.0, -0.0, math.inf, -math.inf, 5e-324, -1.7976931348623157e308]),
    st.builds(_nan, st.integers(1, 2**52 - 1), st.booleans()),
)
scalars = st.one_of(st.none(), st.booleans(), INT64, floats, texts, byte_values)
# Any string is a key; these look like the other codecs' escapes and must stay plain data.
keys = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["$type", "$bytes", "$dict", "$tuple", "$", "", "source", "target"]),
    st.text(max_size=6).map(lambda s: "$" + s),
)
frames = st.one_of(
    st.builds(TextFrame, texts),
    st.builds(AudioRawFrame, byte_values, INT64, INT64),
    # Built-in frames whose fields the dedicated messages cannot carry: the generic form.
    st.builds(TextFrame, st.none() | INT64 | byte_values),
    st.builds(AudioRawFrame, texts | st.none(), st.booleans(), floats),
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(keys, children, max_size=4),
        frames,
        st.builds(BusFrameMessage, texts, st.none() | texts, children),
        st.builds(BusDataMessage, texts, st.none() | texts, st.dictionaries(keys, children)),
        st.builds(Weather, children, children, children, children, children),
    )


values = st.recursive(scalars, _containers, max_leaves=12)
plain_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(keys, children, max_size=4)
    ),
    max_leaves=12,
)

MESSAGE_TYPES = sorted(
    (
        cls
        for tag in DEFAULT_TYPES.tags()
        if (cls := DEFAULT_TYPES.type_of(tag)) is not None
        and cls.__module__ in ("proxy_core.messages", __name__)
        and issubclass(cls, BusMessage)
    ),
    key=lambda cls: cls.__name__,
)
FIELD_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "source": texts,
    "target": st.none() | texts,
    "frame": frames | values,
    # Mostly the declared shapes (the dedicated messages), sometimes anything.
    "data": st.dictionaries(keys, values, max_size=5) | values,
    "args": st.none() | st.dictionaries(keys, values, max_size=5) | values,
    "reason": st.none() | texts | values,
}


def message_of(cls: type[BusMessage]) -> st.SearchStrategy[BusMessage]:
    """Any instance of registered ``cls``, every field drawn from the value model."""
    fields = {name: FIELD_STRATEGIES.get(name, values) for name in DEFAULT_TYPES.fields_of(cls)}
    return st.builds(cls, **fields)


messages = st.one_of(*(message_of(cls) for cls in MESSAGE_TYPES))
# The schema's ranges: seq and nonces are uint64, a BYE code is int32.
envelopes = st.one_of(
    st.builds(Msg, COUNTERS, messages),
    st.builds(Ack, COUNTERS),
    st.builds(Ready, texts),
    st.builds(Ping, COUNTERS),
    st.builds(Pong, COUNTERS),
    st.builds(Bye, st.integers(1000, 4999), texts),  # close codes
)


def test_every_builtin_type_and_the_user_type_are_covered() -> None:
    names = {cls.__name__ for cls in MESSAGE_TYPES}
    assert {
        "BusMessage",
        "BusFrameMessage",
        "BusDataMessage",
        "BusActivateWorkerMessage",
        "BusDeactivateWorkerMessage",
        "BusEndWorkerMessage",
        "BusEndMessage",
        "BusCancelMessage",
        "BusWorkerReadyMessage",
        "Weather",
    } <= names


# ---------------------------------------------------------------- round trips

ROUND_TRIP = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@ROUND_TRIP
@given(envelope=envelopes)
def test_round_trip(envelope: Envelope) -> None:
    round_trip(envelope)


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_message_type_round_trips(cls: type[BusMessage], data: st.DataObject) -> None:
    round_trip(Msg(data.draw(COUNTERS), data.draw(message_of(cls))))


@ROUND_TRIP
@given(envelope=envelopes)
def test_protobuf_and_msgpack_agree(envelope: Envelope) -> None:
    via_protobuf = CODEC.decode(CODEC.encode(envelope))
    via_msgpack = MSGPACK.decode(MSGPACK.encode(envelope))
    assert same(via_protobuf, via_msgpack)
    assert same(via_protobuf, envelope)


@settings(max_examples=20, deadline=None)
@given(
    blob=st.builds(_large_bytes, st.integers(50_000, 100_000), st.integers(0, 2**32)),
    seq=COUNTERS,
)
def test_large_bytes_round_trip(blob: bytes, seq: int) -> None:
    round_trip(Msg(seq, BusFrameMessage("a", "b", AudioRawFrame(blob, 16000))))
    round_trip(Msg(seq, BusDataMessage("a", None, {"$bytes": blob, "t": (blob,)})))


EDGE_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2**63 - 1,
    -(2**63),
    0.0,
    -0.0,
    1e300,
    -5e-324,
    math.inf,
    -math.inf,
    math.nan,
    _nan(0xDEADBEEF, True),
    "",
    "$",
    "$type",
    "snow \u2603 \U0001f600 \x00",
    b"",
    b"\x00\xff" * 50_000,
    [],
    (),
    {},
    [1, (2, [3])],
    ((),),
    [[]],
    {"": 1, "$type": "frame.text", "text": "not an object"},
    {"$bytes": "AAAA", "$dict": [["a", 1]], "$tuple": [1, 2]},
    {"$": {"$$": {"$type": None}}},
    TextFrame("$type"),
    TextFrame(5),  # type: ignore[arg-type]
    AudioRawFrame(b"\x01\x02", 16000, 2),
    AudioRawFrame("not bytes", True, 1.5),  # type: ignore[arg-type]
    [AudioRawFrame(b"", 0, 0), {"frame": TextFrame("x")}],
    BusDataMessage("a", None, {"$type": "bus.data"}),
    BusFrameMessage("", "", None),  # type: ignore[arg-type]
    Weather("a", "b", "Paris", (1.5, math.nan), {"nested": Weather("c", None)}),
]


@pytest.mark.parametrize("value", EDGE_VALUES, ids=lambda value: repr(value)[:40])
def test_edge_values_round_trip(value: Any) -> None:
    round_trip(Msg(1, BusDataMessage("a", "b", {"v": value})))
    round_trip(Msg(2, BusFrameMessage("a", "b", value)))
    round_trip(Msg(3, BusActivateWorkerMessage("a", "b", {"v": value})))
    round_trip(Msg(4, Weather("a", None, value, value, {"v": value})))


def test_floats_keep_their_bits() -> None:
    for bits in (0x7FF8000000000000, 0xFFF8000000000001, 0x7FF0000000000001, 0x8000000000000000):
        value = struct.unpack("<d", struct.pack("<Q", bits))[0]
        decoded = round_trip(Msg(1, BusDataMessage("a", "b", {"x": value})))
        assert isinstance(decoded, Msg)
        out = decoded.message.data["x"]  # type: ignore[attr-defined]
        assert struct.pack("<Q", bits) == struct.pack("<d", out)


def test_dict_keys_keep_their_order_and_need_no_escapes() -> None:
    data = {"$z": 1, "a": 2, "$a": 3, "$type": "x", "$dict": 4}
    decoded = round_trip(Msg(1, BusDataMessage("a", "b", data)))
    assert list(decoded.message.data) == list(data)  # type: ignore[union-attr]


def test_null_and_empty_target_differ() -> None:
    for target in (None, ""):
        decoded = round_trip(Msg(1, BusMessage("a", target)))
        assert isinstance(decoded, Msg) and decoded.message.target == target


@pytest.mark.parametrize(
    "envelope",
    [Ack(0), Ack(2**53 - 1), Ping(0), Pong(2**53 - 1), Bye(1000, ""), Bye(4999, "x")],
    ids=repr,
)
def test_envelope_field_ranges(envelope: Envelope) -> None:
    round_trip(envelope)


# ---------------------------------------------------------------- the wire format


def test_golden_bytes() -> None:
    """The example in envelope.proto, byte for byte."""
    hello = Msg(2, BusFrameMessage("acme", "assistant", TextFrame("hello")))
    assert CODEC.encode(hello).hex(" ") == (
        "0a 20 08 02 12 1c 0a 04 61 63 6d 65 12 09 61 73 73 69 73 74 61 6e 74 "
        "22 09 0a 07 0a 05 68 65 6c 6c 6f"
    )
    assert CODEC.encode(Ack(2)).hex(" ") == "12 02 08 02"
    assert CODEC.encode(Ping(1)).hex(" ") == "22 02 08 01"


def test_envelope_field_numbers_are_the_frame_kinds() -> None:
    fields = pb.Envelope.DESCRIPTOR.fields_by_name
    for kind in Kind:
        assert fields[kind.name.lower()].number == kind.value


def test_generated_module_lives_in_its_package() -> None:
    assert pb.Envelope.__module__ == "proxy_core.codecs._generated.envelope_pb2"
    assert pb.DESCRIPTOR.name == "proxy_core/v1/envelope.proto"
    assert pb.DESCRIPTOR.package == "proxy_core.v1"


@pytest.mark.parametrize(
    ("message", "body", "frame"),
    [
        (BusFrameMessage("a", "b", TextFrame("hi")), "frame", "text"),
        (BusFrameMessage("a", "b", AudioRawFrame(b"\x00", 8000, 1)), "frame", "audio_raw"),
        (BusFrameMessage("a", "b", TextFrame(1)), "frame", "object"),  # type: ignore[arg-type]
        (BusFrameMessage("a", "b", [1]), "frame", "value"),  # type: ignore[arg-type]
        (BusDataMessage("a", "b", {"k": 1}), "data", None),
        (BusDataMessage("a", "b", [1]), "object", None),  # type: ignore[arg-type]
        (BusActivateWorkerMessage("a", "b", None), "activate", None),
        (BusActivateWorkerMessage("a", "b", {}), "activate", None),
        (BusMessage("a", "b"), "message", None),
        (BusEndWorkerMessage("a", "b", "done"), "end_worker", None),
        (BusEndMessage("a", None, "x"), "object", None),
        (Weather("a", "b", "Oslo"), "object", None),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BusMessage) else repr(v),
)
def test_built_ins_use_their_dedicated_messages(
    message: BusMessage, body: str, frame: str | None
) -> None:
    parsed = parse(CODEC.encode(Msg(1, message))).msg.message
    assert parsed.WhichOneof("body") == body
    if frame is not None:
        assert parsed.frame.WhichOneof("frame") == frame
    round_trip(Msg(1, message))


def test_activate_args_none_and_empty_differ() -> None:
    none = parse(CODEC.encode(Msg(1, BusActivateWorkerMessage("a", "b", None))))
    empty = parse(CODEC.encode(Msg(1, BusActivateWorkerMessage("a", "b", {}))))
    assert not none.msg.message.activate.HasField("args")
    assert empty.msg.message.activate.HasField("args")


def test_generic_message_keeps_source_and_target_in_the_header() -> None:
    parsed = parse(CODEC.encode(Msg(1, Weather("a", "b", "Rome")))).msg.message
    assert (parsed.source, parsed.target) == ("a", "b")
    assert parsed.object.type == "tests.protobuf.weather"
    assert list(parsed.object.names) == ["city", "readings", "extra"]


# ---------------------------------------------------------------- values that do not encode


class _Opaque:
    pass


@pytest.mark.parametrize(
    "bad",
    [
        {1, 2},
        frozenset(),
        _Opaque(),
        bytearray(b"x"),
        1j,
        {1: "int key"},
        [{"k": {2}}],
        2**63,
        -(2**63) - 1,
        10**400,
        "\ud800",
        {"\udfff": 1},
    ],
    ids=[
        "set",
        "frozenset",
        "object",
        "bytearray",
        "complex",
        "int-key",
        "nested-set",
        "2**63",
        "-2**63-1",
        "10**400",
        "surrogate",
        "surrogate-key",
    ],
)
def test_unsupported_values_are_refused_naming_the_field(bad: Any) -> None:
    with pytest.raises(CodecError, match=r"BusDataMessage\.data"):
        CODEC.encode(Msg(1, BusDataMessage("a", "b", {"x": bad})))
    with pytest.raises(CodecError, match=r"BusFrameMessage\.frame"):
        CODEC.encode(Msg(1, BusFrameMessage("a", "b", bad)))
    with pytest.raises(CodecError, match=r"Weather\.extra"):
        CODEC.encode(Msg(1, Weather("a", "b", extra={"deep": [bad]})))
    with pytest.raises(CodecError, match=r"TextFrame\.text"):
        CODEC.encode(Msg(1, BusFrameMessage("a", "b", TextFrame(bad))))


def test_audio_fields_outside_int64_are_refused_naming_the_field() -> None:
    with pytest.raises(CodecError, match=r"AudioRawFrame\.sample_rate"):
        CODEC.encode(Msg(1, BusFrameMessage("a", "b", AudioRawFrame(b"", 2**63, 1))))


@pytest.mark.parametrize(
    "envelope",
    [
        Msg(-1, BusMessage("a", "b")),
        Msg(2**64, BusMessage("a", "b")),
        Msg(True, BusMessage("a", "b")),
        Ack(-1),
        Ping(2**64),
        Pong(1.0),  # type: ignore[arg-type]
        Bye(2**31, "x"),
        Bye(999, "x"),
        Bye(5000, "x"),
        Bye(1000, None),  # type: ignore[arg-type]
        Bye(1000, "\ud800"),
        Ready(5),  # type: ignore[arg-type]
        Ready("\ud800"),
        Msg(1, BusMessage(5, "b")),  # type: ignore[arg-type]
        Msg(1, BusMessage("a", b"b")),  # type: ignore[arg-type]
        Msg(1, BusMessage("\ud800", "b")),
        Msg(1, BusFrameMessage("a", "\ud800", TextFrame("x"))),
        Msg(1, BusFrameMessage("a", "b", TextFrame("\ud800"))),
        Msg(1, BusEndWorkerMessage("a", "b", "\ud800")),
        Msg(1, TextFrame("x")),  # type: ignore[arg-type]
        "not an envelope",
    ],
    ids=repr,
)
def test_envelopes_outside_the_schema_are_refused(envelope: Any) -> None:
    with pytest.raises(CodecError):
        CODEC.encode(envelope)


def test_source_and_target_are_named_when_refused() -> None:
    with pytest.raises(CodecError, match=r"BusMessage\.source"):
        CODEC.encode(Msg(1, BusMessage(None, "b")))  # type: ignore[arg-type]
    with pytest.raises(CodecError, match=r"Weather\.target"):
        CODEC.encode(Msg(1, Weather("a", 5)))  # type: ignore[arg-type]


def test_unregistered_dataclass_is_refused() -> None:
    @dataclass
    class Stray(BusMessage):
        pass

    with pytest.raises(CodecError, match="not a registered wire type"):
        CODEC.encode(Msg(1, Stray("a", "b")))
    with pytest.raises(CodecError, match=r"BusDataMessage\.data: .*Stray is not a registered"):
        CODEC.encode(Msg(1, BusDataMessage("a", "b", {"x": Stray("a", "b")})))


# ---------------------------------------------------------------- malformed input


def only_codec_error(data: bytes, codec: ProtobufCodec = CODEC) -> Envelope | None:
    """Decode ``data``: an envelope or a CodecError; any other exception fails the test."""
    try:
        return codec.decode(data)
    except CodecError:
        return None
    except Exception as exc:  # noqa: BLE001 - that is the point of the test
        pytest.fail(f"decode raised {type(exc).__name__}: {exc!r} for {data!r}")


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_bytes_raise_only_codec_error(data: bytes) -> None:
    only_codec_error(data)
    only_codec_error(data, PRIVATE_CODEC)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    data = bytearray(CODEC.encode(draw(envelopes)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "cut"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 4))]
        else:
            del data[at:]
    return bytes(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated_frames())
def test_mutated_frames_raise_only_codec_error(data: bytes) -> None:
    only_codec_error(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(envelope=envelopes, cut=st.floats(0, 1, exclude_max=True))
def test_truncated_frames_raise_codec_error(envelope: Envelope, cut: float) -> None:
    data = CODEC.encode(envelope)
    with pytest.raises(CodecError):
        CODEC.decode(data[: int(len(data) * cut)])


def _message(**fields: Any) -> pb.Message:
    message = pb.Message(source="a", target="b")
    for name, value in fields.items():
        getattr(message, name).CopyFrom(value)
    return message


def _value(**kind: Any) -> pb.Value:
    return pb.Value(**kind)


MALFORMED_MESSAGES: dict[str, pb.Message] = {
    "no body": pb.Message(source="a"),
    "frame without a case": _message(frame=pb.BusFrameMessage()),
    "value without a kind": _message(frame=pb.BusFrameMessage(value=pb.Value())),
    "null value 1": _message(frame=pb.BusFrameMessage(value=_value(null_value=1))),
    "map keys > values": _message(data=pb.BusDataMessage(data=pb.Map(keys=["a"]))),
    "map values > keys": _message(
        data=pb.BusDataMessage(data=pb.Map(values=[_value(int_value=1)]))
    ),
    "map repeats a key": _message(
        data=pb.BusDataMessage(
            data=pb.Map(keys=["a", "a"], values=[_value(int_value=1), _value(int_value=2)])
        )
    ),
    "object names > values": _message(object=pb.Object(type="bus.end_worker", names=["reason"])),
    "object repeats a field": _message(
        object=pb.Object(
            type="bus.end_worker",
            names=["reason", "reason"],
            values=[_value(str_value="x"), _value(str_value="y")],
        )
    ),
    "object unknown field": _message(
        object=pb.Object(type="bus.message", names=["colour"], values=[_value(str_value="red")])
    ),
    "object missing required field": _message(object=pb.Object(type="bus.frame")),
    "source in object fields": _message(
        object=pb.Object(type="bus.message", names=["source"], values=[_value(str_value="x")])
    ),
    "target in object fields": _message(
        object=pb.Object(type="bus.message", names=["target"], values=[_value(null_value=0)])
    ),
    "a frame as the message": _message(object=pb.Object(type="frame.text", names=["text"])),
    "a frame as the message (complete)": _message(
        object=pb.Object(type="frame.text", names=["text"], values=[_value(str_value="hi")])
    ),
    "nested object field mismatch": _message(
        frame=pb.BusFrameMessage(object=pb.Object(type="frame.text", names=["nope"]))
    ),
}


@pytest.mark.parametrize(
    "message", MALFORMED_MESSAGES.values(), ids=list(MALFORMED_MESSAGES.keys())
)
def test_malformed_messages_raise_codec_error_with_the_seq(message: pb.Message) -> None:
    with pytest.raises(CodecError) as info:
        CODEC.decode(msg_bytes(message, seq=9))
    assert info.value.seq == 9
    assert not isinstance(info.value, UnknownMessageType)


def test_a_msg_without_a_message_is_malformed() -> None:
    with pytest.raises(CodecError) as info:
        CODEC.decode(pb.Envelope(msg=pb.Msg(seq=4)).SerializeToString())
    assert info.value.seq == 4


@pytest.mark.parametrize(
    "data",
    [
        b"",  # no kind
        b"\x42\x00",  # field 8: a kind this version does not know
        b"\x0a\x02\x08",  # truncated
        b"\x1a\x03\x0a\x01\xff",  # READY with invalid UTF-8
        b"\x0a\x09\x08\x01\x12\x05\x0a\x03\xc3\x28\x61",  # MSG whose source is not UTF-8
        b"\x0f",  # wire type 7
    ],
    ids=["empty", "kind 8", "truncated", "bad utf-8", "bad utf-8 in msg", "bad wire type"],
)
def test_malformed_frames_raise_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        CODEC.decode(data)


def test_bad_utf8_inside_a_msg_still_reports_its_seq() -> None:
    with pytest.raises(CodecError) as info:
        CODEC.decode(b"\x0a\x09\x08\x01\x12\x05\x0a\x03\xc3\x28\x61")
    assert info.value.seq == 1


def test_non_bytes_input_is_a_codec_error() -> None:
    with pytest.raises(CodecError):
        CODEC.decode("text")  # type: ignore[arg-type]


# ---------------------------------------------------------------- unknown types


@pytest.mark.parametrize("tag", ["evil.module:Class", "os.system", "", "bus.frame "])
def test_unknown_top_level_tag_raises_unknown_message_type_with_seq(tag: str) -> None:
    with pytest.raises(UnknownMessageType) as info:
        CODEC.decode(msg_bytes(_message(object=pb.Object(type=tag)), seq=42))
    assert info.value.seq == 42
    assert info.value.tag == tag


def test_unknown_tag_nested_in_a_value_also_carries_the_seq() -> None:
    inner = _value(object_value=pb.Object(type="nope", names=["x"], values=[_value(int_value=1)]))
    body = pb.BusDataMessage(data=pb.Map(keys=["k"], values=[inner]))
    with pytest.raises(UnknownMessageType) as info:
        CODEC.decode(msg_bytes(_message(data=body), seq=7))
    assert info.value.seq == 7
    assert info.value.tag == "nope"


def test_unknown_frame_tag_carries_the_seq() -> None:
    frame = pb.BusFrameMessage(object=pb.Object(type="myapp.video_frame"))
    with pytest.raises(UnknownMessageType) as info:
        CODEC.decode(msg_bytes(_message(frame=frame), seq=3))
    assert info.value.seq == 3


# ---------------------------------------------------------------- private registries


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    code=texts,
    photo=byte_values,
    days=st.lists(plain_values, max_size=4),
    seq=COUNTERS,
    target=st.none() | texts,
)
def test_private_registry_round_trips_and_default_refuses(
    code: str, photo: bytes, days: list[Any], seq: int, target: str | None
) -> None:
    message = Forecast("a", target, Station(code, photo), [*days, {"$s": Station(code)}])
    data = PRIVATE_CODEC.encode(Msg(seq, message))
    assert same(PRIVATE_CODEC.decode(data), Msg(seq, message))
    assert same(
        MSGPACK_PRIVATE.decode(MSGPACK_PRIVATE.encode(Msg(seq, message))), Msg(seq, message)
    )
    with pytest.raises(CodecError, match="not a registered wire type"):
        CODEC.encode(Msg(seq, message))
    with pytest.raises(UnknownMessageType) as info:
        CODEC.decode(data)
    assert info.value.seq == seq


@pytest.mark.parametrize(
    ("message", "tag"),
    [
        (BusDataMessage("a", "b", {}), "bus.data"),
        (BusMessage("a", "b"), "bus.message"),
        (BusFrameMessage("a", "b", TextFrame("x")), "bus.frame"),
        (BusCancelMessage("a", None), "bus.cancel"),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_private_registry_refuses_default_types(message: BusMessage, tag: str) -> None:
    data = CODEC.encode(Msg(3, message))
    with pytest.raises(UnknownMessageType) as info:
        PRIVATE_CODEC.decode(data)
    assert info.value.seq == 3
    assert info.value.tag == tag
    with pytest.raises(CodecError, match="not a registered wire type"):
        PRIVATE_CODEC.encode(Msg(3, message))


def test_a_dedicated_frame_needs_its_tag_registered() -> None:
    registry = TypeRegistry()
    registry.register(BusFrameMessage, "bus.frame")
    codec = ProtobufCodec(registry)
    data = CODEC.encode(Msg(5, BusFrameMessage("a", "b", TextFrame("x"))))
    with pytest.raises(UnknownMessageType) as info:
        codec.decode(data)
    assert (info.value.tag, info.value.seq) == ("frame.text", 5)
    with pytest.raises(CodecError, match="not a registered wire type"):
        codec.encode(Msg(5, BusFrameMessage("a", "b", TextFrame("x"))))
    round_trip(Msg(5, BusFrameMessage("a", "b", [1, None])), codec)  # type: ignore[arg-type]


def test_a_dedicated_message_means_whatever_its_tag_is_registered_to() -> None:
    @dataclass
    class MyText:
        text: Any

    @dataclass
    class MyFrameMessage(BusMessage):
        target: str | None = None
        frame: Any = None

    registry = TypeRegistry()
    registry.register(MyText, "frame.text")
    registry.register(MyFrameMessage, "bus.frame")
    codec = ProtobufCodec(registry)
    decoded = codec.decode(CODEC.encode(Msg(1, BusFrameMessage("a", "b", TextFrame("hi")))))
    assert same(decoded, Msg(1, MyFrameMessage("a", "b", MyText("hi"))))
    round_trip(Msg(1, MyFrameMessage("a", None, MyText(b"x"))), codec)


def test_errors_raised_by_a_constructor_become_codec_errors() -> None:
    @dataclass
    class Picky(BusMessage):
        level: int = 0

        def __post_init__(self) -> None:
            if self.level < 0:
                raise ValueError("level must not be negative")

    registry = TypeRegistry()
    registry.register(Picky, "test.picky")
    codec = ProtobufCodec(registry)
    bad = Picky("a", "b")
    bad.level = -1
    with pytest.raises(CodecError, match="level must not be negative") as info:
        codec.decode(codec.encode(Msg(8, bad)))
    assert info.value.seq == 8


# ---------------------------------------------------------------- deep nesting


def _nest(depth: int, leaf: Any) -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if i % 3 else ({"k": value} if i % 2 else (value,))
    return value


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_encoding_a_deeply_nested_value_raises_codec_error(depth: int) -> None:
    with pytest.raises(CodecError, match="nests too deeply"):
        CODEC.encode(Msg(1, BusDataMessage("a", "b", {"deep": _nest(depth, 1)})))


def test_encoding_a_self_referential_value_raises_codec_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(CodecError):
        CODEC.encode(Msg(1, BusDataMessage("a", "b", {"loop": loop})))


def test_the_encoder_refuses_exactly_what_the_decoder_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shapes: list[Callable[[Any], BusMessage]] = [
        lambda v: BusDataMessage("a", "b", {"k": v}),
        lambda v: BusFrameMessage("a", "b", v),
        lambda v: BusFrameMessage("a", "b", TextFrame(v)),
        lambda v: BusActivateWorkerMessage("a", "b", {"k": v}),
        lambda v: Weather("a", "b", v),
    ]
    for shape in shapes:
        verdicts = set()
        for depth in range(40, 55):
            leaves: tuple[Any, ...] = (1, [], {}, ())
            for leaf in leaves:
                envelope = Msg(5, shape(_nest(depth, leaf)))
                try:
                    data = CODEC.encode(envelope)
                    encodes = True
                except CodecError:
                    encodes = False
                    with monkeypatch.context() as patch:
                        patch.setattr(protobuf_module, "MAX_DEPTH", 10**6)
                        data = CODEC.encode(envelope)
                decoded = only_codec_error(data)
                assert encodes == (decoded is not None), (shape, depth, leaf)
                verdicts.add(encodes)
        assert verdicts == {True, False}  # the boundary lies in the range


def test_too_deep_frames_are_codec_errors_that_keep_the_seq(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(protobuf_module, "MAX_DEPTH", 10**6)
    data = CODEC.encode(Msg(77, BusDataMessage("a", "b", {"deep": _nest(300, 1)})))
    monkeypatch.undo()
    with pytest.raises(CodecError) as info:
        CODEC.decode(data)
    assert info.value.seq == 77


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _deep_frame(depth: int, seq: int) -> bytes:
    """A well-formed MSG whose frame is a Value of lists nested ``depth`` deep (built in O(n))."""
    leaf = b"\x18\x02"  # Value.int_value = 1
    size, prefixes = len(leaf), []
    for _ in range(depth):  # Value.list_value (7) -> List.items (1) -> the inner Value
        inner = b"\x0a" + _varint(size)
        prefix = b"\x3a" + _varint(len(inner) + size) + inner
        prefixes.append(prefix)
        size += len(prefix)
    value = b"".join(reversed(prefixes)) + leaf
    message = _field(1, b"a") + _field(4, _field(4, value))  # source, frame.value
    return _field(1, b"\x08" + _varint(seq) + _field(2, message))


def test_hand_made_deep_frames_are_codec_errors_that_keep_the_seq() -> None:
    shallow = CODEC.decode(_deep_frame(10, 6))
    assert same(shallow, Msg(6, BusFrameMessage("a", None, _nest_lists(10))))
    for depth in (100, 2_000, 100_000):
        with pytest.raises(CodecError) as info:
            CODEC.decode(_deep_frame(depth, 6))
        assert info.value.seq == 6
    truncated = _deep_frame(100_000, 6)[:50_000]  # the seq is read from what is there
    with pytest.raises(CodecError) as info:
        CODEC.decode(truncated)
    assert info.value.seq == 6


def _nest_lists(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


# ---------------------------------------------------------------- the plug-in


def test_registered_as_the_protobuf_codec() -> None:
    assert load_codec("protobuf") is ProtobufCodec
    assert isinstance(resolve_codec("protobuf"), ProtobufCodec)
    assert ProtobufCodec.name == "protobuf"
    assert MAX_DEPTH == 100


def test_protobuf_is_imported_only_when_the_codec_is_built() -> None:
    code = (
        "import sys\n"
        "import proxy_core.codecs.protobuf as m\n"
        "assert 'google.protobuf' not in sys.modules, 'imported too early'\n"
        "assert 'proxy_core.codecs._generated.envelope_pb2' not in sys.modules\n"
        "m.ProtobufCodec()\n"
        "assert 'google.protobuf' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_missing_protobuf_package_is_a_configuration_error() -> None:
    code = (
        "import sys\n"
        "sys.modules['google.protobuf'] = None\n"
        "from proxy_core.codecs.protobuf import ProtobufCodec\n"
        "from proxy_core.errors import ConfigurationError\n"
        "try:\n"
        "    ProtobufCodec()\n"
        "except ConfigurationError as exc:\n"
        "    assert 'pip install protobuf' in str(exc), exc\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_configuration_error_is_what_a_missing_package_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "google.protobuf.message", None)
    with pytest.raises(ConfigurationError, match="pip install protobuf"):
        ProtobufCodec()


# ---------------------------------------------------------------- a real session


TIMEOUT = 30.0


class Inbox(BaseWorker):
    """A worker that queues every message it gets."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.inbox: asyncio.Queue[BusMessage] = asyncio.Queue()

    async def on_bus_message(self, message: BusMessage) -> None:
        self.inbox.put_nowait(message)

    async def next(self, kind: type[BusMessage]) -> BusMessage:
        async def scan() -> BusMessage:
            while True:
                message = await self.inbox.get()
                if type(message) is kind:
                    return message

        return await asyncio.wait_for(scan(), TIMEOUT)


@asynccontextmanager
async def protobuf_session() -> AsyncIterator[tuple[Inbox, Inbox, ProxyClient]]:
    """A websockets session on 127.0.0.1 where both sides speak only protobuf."""
    allowed = (BusFrameMessage, Weather)
    assistants: asyncio.Queue[Inbox] = asyncio.Queue()

    async def setup(runner: WorkerRunner) -> None:
        assistant = Inbox("assistant")
        await runner.add_workers(assistant)
        assistants.put_nowait(assistant)

    async with serve_proxy(
        "ws://127.0.0.1:0/ws",
        worker_name="assistant",
        remote_worker_name="acme",
        setup=setup,
        codecs=("protobuf",),
        forward_messages=allowed,
    ) as service:
        runner = WorkerRunner(handle_sigint=False)
        acme = Inbox("acme")
        proxy = ProxyClient(
            "proxy",
            url=service.url,
            local_worker_name="acme",
            remote_worker_name="assistant",
            forward_messages=allowed,
            codec="protobuf",
        )
        ready = asyncio.get_running_loop().create_future()

        async def on_ready(data: object) -> None:
            if not ready.done():
                ready.set_result(data)

        runner.registry.watch("assistant", on_ready)
        await runner.add_workers(acme, proxy)
        task = asyncio.create_task(runner.run())
        try:
            await acme.activate_worker("proxy")
            await proxy.wait_connected(TIMEOUT)
            await asyncio.wait_for(ready, TIMEOUT)
            assistant = await asyncio.wait_for(assistants.get(), TIMEOUT)
            yield acme, assistant, proxy
        finally:
            await runner.end("test over")
            await asyncio.wait_for(task, TIMEOUT)


async def test_a_session_over_websockets_with_protobuf() -> None:
    async with protobuf_session() as (acme, assistant, proxy):
        assert proxy.codec == "protobuf"
        outbound: list[BusMessage] = [
            BusFrameMessage("acme", "assistant", TextFrame("hello \u2603")),
            BusFrameMessage("acme", "assistant", AudioRawFrame(bytes(range(256)) * 40, 16000, 1)),
            Weather("acme", "assistant", "Paris", (1.5, -0.0, math.inf), {"$type": b"\x00"}),
        ]
        for message in outbound:
            await acme.send_bus_message(message)
            assert same(await assistant.next(type(message)), message)
        inbound: list[BusMessage] = [
            BusFrameMessage("assistant", "acme", TextFrame("")),
            BusFrameMessage("assistant", "acme", AudioRawFrame(b"", 24000, 2)),
            Weather("assistant", "acme", "Oslo", (), {"nested": [(), {}, None]}),
        ]
        for message in inbound:
            await assistant.send_bus_message(message)
            assert same(await acme.next(type(message)), message)
        assert proxy.stats.messages_in == len(inbound)
        assert proxy.stats.messages_out >= len(outbound)
        assert not proxy.stats.dropped_in
        assert "encode_failed" not in proxy.stats.dropped_out
