"""The built-in codecs: exact round trips, and nothing but CodecError on bad input.

Both codecs share one value model (``proxy_core.messages``): None, bool, int (64-bit),
float, str, bytes, list, tuple, dict with str keys, and registered types. Equality here
is *strict*: ``True`` is not ``1``, ``1.0`` is not ``1``, a tuple is not a list, and
``-0.0`` is not ``0.0``, so a round trip that changes a type is caught even where ``==``
would not notice.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy_core.codecs.base import Codec
from proxy_core.codecs.json import JsonCodec
from proxy_core.codecs.msgpack import MsgpackCodec
from proxy_core.errors import CodecError, UnknownMessageType
from proxy_core.messages import (
    DEFAULT_TYPES,
    AudioRawFrame,
    BusDataMessage,
    BusFrameMessage,
    BusMessage,
    TextFrame,
    TypeRegistry,
    register_type,
)
from proxy_core.protocol import Ack, Bye, Envelope, Kind, Msg, Ping, Pong, Ready

CODECS: dict[str, Codec] = {"json": JsonCodec(), "msgpack": MsgpackCodec()}
INT64 = st.integers(-(2**63), 2**63 - 1)
#: Sequence numbers, ACK numbers and nonces stop at 2**53 - 1 (docs/protocol.md section 8);
#: a MSG's seq below 1 still crosses (the receiving session refuses it).
COUNTERS = st.integers(0, 2**53 - 1)
SEQS = st.integers(-(2**63), 2**53 - 1)


@pytest.fixture(params=sorted(CODECS))
def codec(request: pytest.FixtureRequest) -> Codec:
    return CODECS[request.param]


def strict_equal(a: Any, b: Any) -> bool:
    """Equality that also compares types, float signs, and nested dataclass fields."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(strict_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(strict_equal(a[k], b[k]) for k in a)
    if dataclasses.is_dataclass(a):
        return all(
            strict_equal(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
        )
    return bool(a == b)


def assert_round_trip(codec: Codec, envelope: Envelope) -> None:
    data = codec.encode(envelope)
    assert type(data) is bytes
    decoded = codec.decode(data)
    assert decoded == envelope
    assert strict_equal(decoded, envelope), (envelope, decoded)


# ---------------------------------------------------------------- strategies


def _large_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


byte_values = st.one_of(
    st.just(b""),
    st.binary(max_size=32),
    # Large payloads, drawn cheaply: hypothesis picks the size and a seed.
    st.builds(_large_bytes, st.integers(1, 100_000), st.integers(0, 2**32)),
)
texts = st.one_of(st.text(max_size=20), st.text(max_size=10).map(lambda s: "$" + s))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    INT64,
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
    byte_values,
)
# Keys that look like the codec's own escapes must survive as plain data.
keys = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["$type", "$bytes", "$dict", "$tuple", "$", "$$", "type", "bytes"]),
    st.text(max_size=6).map(lambda s: "$" + s),
)
frames = st.one_of(
    st.builds(TextFrame, texts),
    st.builds(AudioRawFrame, byte_values, INT64, INT64),
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(keys, children, max_size=4),
        # Registered objects nested as values: frames, and messages inside messages.
        st.builds(TextFrame, texts),
        st.builds(BusFrameMessage, texts, st.none() | texts, children),
        st.builds(BusDataMessage, texts, st.none() | texts, st.dictionaries(keys, children)),
    )


values = st.recursive(scalars, _containers, max_leaves=12)
# The same without registered objects, for codecs built on a private registry.
plain_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(keys, children, max_size=4)
    ),
    max_leaves=12,
)
optional_texts = st.none() | texts

# Every message type that proxy_core itself registers, whatever it is.
BUILTIN_MESSAGE_TYPES = sorted(
    (
        cls
        for tag in DEFAULT_TYPES.tags()
        if (cls := DEFAULT_TYPES.type_of(tag)) is not None
        and cls.__module__ == "proxy_core.messages"
        and issubclass(cls, BusMessage)
    ),
    key=lambda cls: cls.__name__,
)


def message_of(cls: type[BusMessage]) -> st.SearchStrategy[BusMessage]:
    """Any instance of registered ``cls``, every field drawn from the value model."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for name in DEFAULT_TYPES.fields_of(cls):
        if name == "source":
            fields[name] = texts
        elif name == "target":
            fields[name] = optional_texts
        elif name == "frame":
            fields[name] = frames | values
        else:
            fields[name] = values
    return st.builds(cls, **fields)


messages = st.one_of(*(message_of(cls) for cls in BUILTIN_MESSAGE_TYPES))
envelopes = st.one_of(
    st.builds(Msg, SEQS, messages),
    st.builds(Ack, COUNTERS),
    st.builds(Ready, texts),
    st.builds(Ping, COUNTERS),
    st.builds(Pong, COUNTERS),
    st.builds(Bye, st.integers(1000, 4999), texts),  # close codes
)


def test_every_builtin_type_is_covered() -> None:
    names = {cls.__name__ for cls in BUILTIN_MESSAGE_TYPES}
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
    } <= names


# ---------------------------------------------------------------- round trips

ROUND_TRIP = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@ROUND_TRIP
@given(envelope=envelopes)
def test_json_round_trip(envelope: Envelope) -> None:
    assert_round_trip(CODECS["json"], envelope)


@ROUND_TRIP
@given(envelope=envelopes)
def test_msgpack_round_trip(envelope: Envelope) -> None:
    assert_round_trip(CODECS["msgpack"], envelope)


@settings(max_examples=20, deadline=None)
@given(
    blob=st.builds(_large_bytes, st.integers(50_000, 100_000), st.integers(0, 2**32)),
    seq=SEQS,
)
def test_large_bytes_round_trip(blob: bytes, seq: int) -> None:
    for codec in CODECS.values():
        assert_round_trip(codec, Msg(seq, BusFrameMessage("a", "b", AudioRawFrame(blob, 16000))))
        assert_round_trip(
            codec, Msg(seq, BusDataMessage("a", None, {"$bytes": blob, "t": (blob,)}))
        )


@pytest.mark.parametrize("cls", BUILTIN_MESSAGE_TYPES, ids=lambda c: c.__name__)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_message_type_round_trips_in_both_codecs(
    cls: type[BusMessage], data: st.DataObject
) -> None:
    envelope = Msg(data.draw(SEQS), data.draw(message_of(cls)))
    for codec in CODECS.values():
        assert_round_trip(codec, envelope)


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        1,
        2**63 - 1,
        -(2**63),
        0.0,
        -0.0,
        1.0,
        1e300,
        -5e-324,
        "",
        "$",
        "$type",
        "$bytes",
        "snow \u2603 \U0001f600",
        b"",
        b"\x00\xff" * 50_000,
        [],
        (),
        {},
        [1, (2, [3])],
        ((),),
        {"$type": "frame.text", "text": "not an object"},
        {"$bytes": "AAAA"},
        {"$dict": [["a", 1]]},
        {"$tuple": [1, 2]},
        {"$": {"$$": {"$type": None}}},
        {"a": {"$type": "x"}, "b": [{"$bytes": b"x"}]},
        TextFrame("$type"),
        [AudioRawFrame(b"\x01\x02", 16000, 2), {"frame": TextFrame("x")}],
        BusDataMessage("a", None, {"$type": "bus.data"}),
    ],
    ids=lambda value: repr(value)[:40],
)
def test_edge_values_round_trip(codec: Codec, value: Any) -> None:
    assert_round_trip(codec, Msg(1, BusDataMessage("a", "b", {"v": value})))
    assert_round_trip(codec, Msg(2, BusFrameMessage("a", "b", value)))  # type: ignore[arg-type]


def test_escaped_dict_keys_keep_their_order(codec: Codec) -> None:
    data = {"$z": 1, "a": 2, "$a": 3}
    decoded = codec.decode(codec.encode(Msg(1, BusDataMessage("a", "b", data))))
    assert isinstance(decoded, Msg)
    assert list(decoded.message.data) == ["$z", "a", "$a"]  # type: ignore[attr-defined]


# ---------------------------------------------------------------- unknown types


def _tree_bytes(codec: Codec, tree: Any) -> bytes:
    if codec.name == "json":
        return json.dumps(tree).encode()
    return msgpack.packb(tree, use_bin_type=True)


def test_unknown_type_tag_raises_unknown_message_type_with_seq(codec: Codec) -> None:
    tree = [Kind.MSG.value, 42, {"$type": "evil.module:Class", "source": "a", "target": "b"}]
    with pytest.raises(UnknownMessageType) as info:
        codec.decode(_tree_bytes(codec, tree))
    assert info.value.seq == 42
    assert info.value.tag == "evil.module:Class"


def test_unknown_type_nested_in_a_value_also_carries_the_seq(codec: Codec) -> None:
    inner = {"$type": "nope", "x": 1}
    tree = [Kind.MSG.value, 7, {"$type": "bus.data", "source": "a", "target": None, "data": inner}]
    with pytest.raises(UnknownMessageType) as info:
        codec.decode(_tree_bytes(codec, tree))
    assert info.value.seq == 7


@pytest.mark.parametrize("tag", [None, 5, ["bus.data"], {"a": 1}, True])
def test_non_string_type_tags_are_unknown(codec: Codec, tag: Any) -> None:
    tree = [Kind.MSG.value, 3, {"$type": tag, "source": "a", "target": None}]
    with pytest.raises(UnknownMessageType) as info:
        codec.decode(_tree_bytes(codec, tree))
    assert info.value.seq == 3


def test_a_registered_frame_is_not_a_message(codec: Codec) -> None:
    tree = [Kind.MSG.value, 9, {"$type": "frame.text", "text": "hi"}]
    with pytest.raises(CodecError) as info:
        codec.decode(_tree_bytes(codec, tree))
    assert info.value.seq == 9


# ---------------------------------------------------------------- malformed input


def assert_only_codec_error(codec: Codec, data: bytes) -> Envelope | None:
    """Decode ``data``: an envelope or a CodecError; any other exception fails the test."""
    try:
        return codec.decode(data)
    except CodecError:
        return None
    except Exception as exc:  # noqa: BLE001 - that is the point of the test
        pytest.fail(f"{codec.name} decode raised {type(exc).__name__}: {exc!r} for {data!r}")


FUZZ = settings(max_examples=500, deadline=None)


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_bytes_raise_only_codec_error(data: bytes) -> None:
    for codec in CODECS.values():
        assert_only_codec_error(codec, data)


json_trees = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["$type", "$bytes", "$tuple", "$dict", "bus.data", "frame.text"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["$type", "$bytes", "$tuple", "$dict", "source", "target", "data", "x"])
            | st.text(max_size=4),
            children,
            max_size=4,
        )
    ),
    max_leaves=15,
)
frame_like_trees = st.builds(
    lambda kind, rest: [kind, *rest],
    st.sampled_from([*range(0, 8), True, False, 1.0, "1", None]),
    st.lists(json_trees, max_size=3),
)


@FUZZ
@given(tree=json_trees | frame_like_trees)
def test_arbitrary_json_trees_raise_only_codec_error(tree: Any) -> None:
    assert_only_codec_error(CODECS["json"], json.dumps(tree).encode())


msgpack_trees = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4)),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=4) | st.binary(max_size=2), children, max_size=4)
    ),
    max_leaves=15,
)


@FUZZ
@given(
    tree=msgpack_trees
    | st.builds(
        lambda kind, rest: [kind, *rest],
        st.sampled_from([*range(0, 8), True, 1.0, "1", None]),
        st.lists(msgpack_trees, max_size=3),
    )
)
def test_arbitrary_msgpack_trees_raise_only_codec_error(tree: Any) -> None:
    assert_only_codec_error(CODECS["msgpack"], msgpack.packb(tree, use_bin_type=True))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(envelope=envelopes, cut=st.floats(0, 1, exclude_max=True))
def test_truncated_frames_raise_codec_error(envelope: Envelope, cut: float) -> None:
    for codec in CODECS.values():
        data = codec.encode(envelope)
        with pytest.raises(CodecError):
            codec.decode(data[: int(len(data) * cut)])


MSG_BODY = {"$type": "bus.message", "source": "a", "target": "b"}
MALFORMED_TREES = {
    "not an array": {"kind": 1},
    "empty array": [],
    "scalar": 1,
    "kind 0": [0, 1],
    "kind 8": [8, 1],
    "kind as string": ["1", 1, MSG_BODY],
    "kind null": [None, 1, MSG_BODY],
    "kind nested": [[1], 1, MSG_BODY],
    "msg arity 2": [1, 1],
    "msg arity 4": [1, 1, MSG_BODY, None],
    "ack arity 1": [2],
    "ack arity 3": [2, 1, 1],
    "ready arity 3": [3, "w", "x"],
    "ping arity 1": [4],
    "pong arity 3": [5, 1, 2],
    "bye arity 2": [6, 1000],
    "msg seq string": [1, "1", MSG_BODY],
    "msg seq float": [1, 1.0, MSG_BODY],
    "msg seq null": [1, None, MSG_BODY],
    "msg seq bool": [1, True, MSG_BODY],
    "ack seq bool": [2, False],
    "ack seq float": [2, 3.0],
    "ping nonce bool": [4, True],
    "pong nonce string": [5, "1"],
    "bye code bool": [6, True, "r"],
    "bye reason int": [6, 1000, 5],
    "ready worker int": [3, 5],
    "ready worker null": [3, None],
    "msg body not a map": [1, 1, ["bus.message"]],
    "msg body without $type": [1, 1, {"source": "a", "target": "b"}],
    "source int": [1, 1, {"$type": "bus.message", "source": 5, "target": "b"}],
    "source null": [1, 1, {"$type": "bus.message", "source": None, "target": "b"}],
    "source list": [1, 1, {"$type": "bus.message", "source": ["a"], "target": "b"}],
    "target int": [1, 1, {"$type": "bus.message", "source": "a", "target": 1}],
    "missing field": [1, 1, {"$type": "bus.frame", "source": "a", "target": "b"}],
    "unknown field": [1, 1, {**MSG_BODY, "colour": "red"}],
    "$-field": [1, 1, {**MSG_BODY, "$bytes": "AA=="}],
    "unescaped $ key": [1, 1, {"$type": "bus.data", "source": "a", "data": {"$x": 1, "y": 2}}],
    "bad base64": [1, 1, {"$type": "bus.data", "source": "a", "data": {"v": {"$bytes": "!"}}}],
    "base64 not str": [1, 1, {"$type": "bus.data", "source": "a", "data": {"v": {"$bytes": 1}}}],
    "$dict not pairs": [1, 1, {"$type": "bus.data", "source": "a", "data": {"$dict": [1]}}],
    "$dict int key": [1, 1, {"$type": "bus.data", "source": "a", "data": {"$dict": [[1, 2]]}}],
    "$tuple not list": [1, 1, {"$type": "bus.data", "source": "a", "data": {"$tuple": 1}}],
}


@pytest.mark.parametrize("tree", MALFORMED_TREES.values(), ids=MALFORMED_TREES.keys())
def test_malformed_frames_raise_codec_error(codec: Codec, tree: Any) -> None:
    with pytest.raises(CodecError):
        codec.decode(_tree_bytes(codec, tree))


@pytest.mark.parametrize("name", ["source int", "target int", "missing field", "$-field"])
def test_malformed_messages_carry_the_seq(codec: Codec, name: str) -> None:
    with pytest.raises(CodecError) as info:
        codec.decode(_tree_bytes(codec, MALFORMED_TREES[name]))
    assert info.value.seq == 1


@pytest.mark.parametrize("kind", [True, 1.0], ids=["bool", "float"])
def test_a_non_int_kind_is_malformed(codec: Codec, kind: Any) -> None:
    with pytest.raises(CodecError):
        codec.decode(_tree_bytes(codec, [kind, 1, MSG_BODY]))


def test_non_utf8_and_non_str_keys_are_codec_errors() -> None:
    assert_only_codec_error(CODECS["json"], b'[3, "\xff"]')
    with pytest.raises(CodecError):
        CODECS["json"].decode(b'[3, "\xff"]')
    raw = msgpack.packb([1, 1, {**MSG_BODY, b"x": 1}], use_bin_type=True)
    with pytest.raises(CodecError):
        CODECS["msgpack"].decode(raw)
    with pytest.raises(CodecError):
        CODECS["msgpack"].decode(msgpack.packb({1: 2}))


# ---------------------------------------------------------------- deep nesting


def test_deeply_nested_json_raises_codec_error() -> None:
    depth = 100_000
    data = b"[1,1," + b"[" * depth + b"]" * depth + b"]"
    with pytest.raises(CodecError):
        CODECS["json"].decode(data)


def test_deeply_nested_msgpack_raises_codec_error() -> None:
    depth = 100_000
    data = b"\x93\x01\x01" + b"\x91" * depth + b"\x90"  # [1, 1, [[[...[]...]]]]
    with pytest.raises(CodecError):
        CODECS["msgpack"].decode(data)


def _nested_value_frame(codec: Codec, depth: int) -> bytes:
    """A well-formed MSG (seq 5) whose data holds a list nested ``depth`` deep."""
    if codec.name == "json":
        head = b'[1,5,{"$type":"bus.data","source":"a","target":"b","data":{"k":'
        return head + b"[" * depth + b"1" + b"]" * depth + b"}}]"
    # Built by hand: msgpack's packer refuses to nest more than 511 deep.
    head = b"\x93\x01\x05\x84" + b"".join(
        msgpack.packb(x) for x in ("$type", "bus.data", "source", "a", "target", "b", "data")
    )
    return head + b"\x81" + msgpack.packb("k") + b"\x91" * depth + b"\x01"


@pytest.mark.parametrize("depth", [300, 600, 2_000, 100_000])
def test_values_nested_too_deep_are_codec_errors(codec: Codec, depth: int) -> None:
    data = _nested_value_frame(codec, depth)
    decoded = assert_only_codec_error(codec, data)
    if depth <= 300:
        assert isinstance(decoded, Msg) and decoded.seq == 5


def test_too_deep_message_still_reports_its_seq(codec: Codec) -> None:
    with pytest.raises(CodecError) as info:
        codec.decode(_nested_value_frame(codec, 600))
    assert info.value.seq == 5


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_encoding_a_deeply_nested_value_raises_codec_error(codec: Codec, depth: int) -> None:
    value: list[Any] = []
    inner = value
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    with pytest.raises(CodecError):
        codec.encode(Msg(1, BusDataMessage("a", "b", {"deep": value})))


# ---------------------------------------------------------------- values that do not encode


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_json_refuses_non_finite_floats(bad: float) -> None:
    with pytest.raises(CodecError):
        CODECS["json"].encode(Msg(1, BusDataMessage("a", "b", {"x": bad})))


def test_msgpack_carries_non_finite_floats() -> None:
    codec = CODECS["msgpack"]
    decoded = codec.decode(codec.encode(Msg(1, BusDataMessage("a", "b", {"x": math.inf}))))
    assert decoded.message.data == {"x": math.inf}  # type: ignore[union-attr]


class _Opaque:
    pass


@pytest.mark.parametrize(
    "bad",
    [{1, 2}, frozenset(), _Opaque(), bytearray(b"x"), 1j, {1: "int key"}, [{"k": {2}}]],
    ids=["set", "frozenset", "object", "bytearray", "complex", "int-key", "nested-set"],
)
def test_unsupported_values_are_refused_naming_the_field(codec: Codec, bad: Any) -> None:
    with pytest.raises(CodecError, match=r"BusDataMessage\.data"):
        codec.encode(Msg(1, BusDataMessage("a", "b", {"x": bad})))
    with pytest.raises(CodecError, match=r"BusFrameMessage\.frame"):
        codec.encode(Msg(1, BusFrameMessage("a", "b", bad)))


def test_unregistered_dataclass_is_refused(codec: Codec) -> None:
    @dataclass
    class Stray(BusMessage):
        pass

    with pytest.raises(CodecError, match="not a registered wire type"):
        codec.encode(Msg(1, Stray("a", "b")))


def test_lone_surrogates_are_refused_not_crashing(codec: Codec) -> None:
    with pytest.raises(CodecError):
        codec.encode(Msg(1, BusDataMessage("a", "b", {"x": "\ud800"})))


def test_ints_outside_64_bits_do_not_escape_as_other_errors(codec: Codec) -> None:
    for big in (2**64, -(2**63) - 1, 10**400):
        try:
            assert_round_trip(codec, Msg(1, BusDataMessage("a", "b", {"x": big})))
        except CodecError:
            pass


# ---------------------------------------------------------------- private registries


@dataclass
class Weather(BusMessage):
    city: str = ""
    readings: tuple[float, ...] = ()
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass
class Station:
    code: str
    photo: bytes = b""


PRIVATE = TypeRegistry()
register_type("test.weather", registry=PRIVATE)(Weather)
register_type("test.station", registry=PRIVATE)(Station)


@pytest.mark.parametrize("cls", [JsonCodec, MsgpackCodec])
@settings(max_examples=40, deadline=None)
@given(
    city=texts,
    readings=st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=5).map(tuple),
    extra=st.dictionaries(keys, plain_values, max_size=3),
    station_code=texts,
    photo=byte_values,
)
def test_private_registry_round_trips_and_default_refuses(
    cls: type[Codec],
    city: str,
    readings: tuple[float, ...],
    extra: dict[str, Any],
    station_code: str,
    photo: bytes,
) -> None:
    private = cls(PRIVATE)  # type: ignore[call-arg]
    default = cls()
    message = Weather("a", "b", city, readings, {**extra, "$s": Station(station_code, photo)})
    data = private.encode(Msg(11, message))
    assert strict_equal(private.decode(data), Msg(11, message))
    with pytest.raises(CodecError, match="not a registered wire type"):
        default.encode(Msg(11, message))
    with pytest.raises(UnknownMessageType) as info:
        default.decode(data)
    assert info.value.seq == 11


def test_private_registry_refuses_default_types(codec: Codec) -> None:
    private = type(codec)(PRIVATE)  # type: ignore[call-arg]
    data = codec.encode(Msg(3, BusDataMessage("a", "b", {})))
    with pytest.raises(UnknownMessageType) as info:
        private.decode(data)
    assert info.value.seq == 3
