"""The tree codecs' fast paths for the built-in types against the generic walk.

Each tree codec runs twice: as shipped, and with its ``TreeConverter`` built with
``fast_paths=False`` (the generic walk, the reference). For any envelope both must
write the same bytes or refuse it with the same error, and for any tree both must
decode the same objects (strictly: types, float signs and map order included) or
refuse it with the same error and sequence number. The strategies aim at the edges
where a fast path must step aside: values other than scalars in scalar fields,
``$`` keys, tuples, bytes, missing and extra keys, subclasses of built-in types,
and registries that lack the built-ins or map a built-in tag to another class.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy_core.codecs._tree import TreeConverter
from proxy_core.codecs._treefast import _FAST_PATHS
from proxy_core.codecs.base import Codec
from proxy_core.codecs.json import JsonCodec
from proxy_core.codecs.msgpack import MsgpackCodec
from proxy_core.errors import CodecError, UnknownMessageType
from proxy_core.messages import (
    DEFAULT_TYPES,
    AudioRawFrame,
    BusActivateWorkerMessage,
    BusDataMessage,
    BusDeactivateWorkerMessage,
    BusEndWorkerMessage,
    BusFrameMessage,
    BusMessage,
    TextFrame,
    TypeRegistry,
    register_type,
)
from proxy_core.protocol import Ack, Envelope, Msg

CODEC_CLASSES: list[type[Codec]] = [JsonCodec, MsgpackCodec]
EXAMPLES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def pair(cls: type[Codec], registry: TypeRegistry = DEFAULT_TYPES) -> tuple[Codec, Codec]:
    """The codec as shipped, and the same codec on the generic walk only."""
    fast = cls(registry)  # type: ignore[call-arg]
    generic = cls(registry)  # type: ignore[call-arg]
    tree = generic._tree  # type: ignore[attr-defined]
    generic._tree = TreeConverter(  # type: ignore[attr-defined]
        registry, native_bytes=tree.native_bytes, fast_paths=False
    )
    return fast, generic


def same(a: Any, b: Any) -> bool:
    """Strict equality: types, float signs, NaN, map order and dataclass fields."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if dataclasses.is_dataclass(a):
        names = [f.name for f in dataclasses.fields(a)]
        return all(same(getattr(a, n), getattr(b, n)) for n in names)
    return bool(a == b)


def outcome(call: Any, *args: Any) -> tuple[str, Any]:
    """What ``call(*args)`` did: its result, or the codec error it raised."""
    try:
        return "ok", call(*args)
    except CodecError as exc:  # UnknownMessageType included
        return type(exc).__name__, (str(exc), exc.seq)


def assert_same_outcome(a: tuple[str, Any], b: tuple[str, Any]) -> None:
    assert a[0] == b[0], (a, b)
    assert same(a[1], b[1]), (a, b)


# ---------------------------------------------------------------- strategies

texts = st.text(max_size=12) | st.sampled_from(["", "acme", "assistant", "$type", "$x"])
keys = texts | st.sampled_from(["$type", "$bytes", "$dict", "$tuple", "text", "source"])
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
leaves = scalars | st.binary(max_size=16)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(keys, children, max_size=3),
        st.builds(TextFrame, children),
    )


values = st.recursive(leaves, _containers, max_leaves=8)
#: Mostly what the protocol has in scalar fields, sometimes anything.
headers = st.one_of(texts, texts, st.none(), values)
flat_maps = st.dictionaries(st.text(max_size=6), leaves, max_size=5)


@dataclass
class SubText(TextFrame):
    """A subclass of a built-in type: never on a fast path."""


@dataclass
class SubData(BusDataMessage):
    pass


SUBS = TypeRegistry()
for _cls in _FAST_PATHS:
    SUBS.register(_cls, DEFAULT_TYPES.tag_of(_cls) or "")
register_type("test.sub_text", registry=SUBS)(SubText)
register_type("test.sub_data", registry=SUBS)(SubData)

frames = st.one_of(
    st.builds(TextFrame, texts),
    st.builds(TextFrame, values),
    st.builds(AudioRawFrame, st.binary(max_size=64), st.integers(0, 96_000), st.integers(1, 8)),
    st.builds(AudioRawFrame, values, values, values),
    st.builds(SubText, texts),
)
messages = st.one_of(
    st.builds(BusFrameMessage, headers, headers, frames),
    st.builds(BusFrameMessage, headers, headers, values),
    st.builds(BusDataMessage, headers, headers, flat_maps),
    st.builds(BusDataMessage, headers, headers, values),
    st.builds(BusActivateWorkerMessage, headers, headers, st.none() | flat_maps | values),
    st.builds(BusDeactivateWorkerMessage, headers, headers),
    st.builds(BusEndWorkerMessage, headers, headers, headers),
    st.builds(BusMessage, headers, headers),
    st.builds(SubData, headers, headers, flat_maps),
)
envelopes = st.builds(Msg, st.integers(1, 2**53 - 1), messages) | st.builds(Ack, st.integers(0, 9))


# ---------------------------------------------------------------- encoding


@pytest.mark.parametrize("cls", CODEC_CLASSES, ids=lambda c: c.name)
@EXAMPLES
@given(envelope=envelopes)
def test_fast_and_generic_write_the_same_bytes_and_read_the_same_objects(
    cls: type[Codec], envelope: Envelope
) -> None:
    fast, generic = pair(cls, SUBS)
    written = outcome(fast.encode, envelope)
    assert_same_outcome(written, outcome(generic.encode, envelope))
    if written[0] == "ok":
        data = written[1]
        assert_same_outcome(outcome(fast.decode, data), outcome(generic.decode, data))


def test_fast_paths_are_taken_for_every_builtin_type() -> None:
    """A field added to a built-in type turns its fast path off; this test notices."""
    converter = TreeConverter(DEFAULT_TYPES, native_bytes=True)
    for cls in _FAST_PATHS:
        assert converter._fast_path(cls, DEFAULT_TYPES.fields_of(cls)) is not None, cls


# ---------------------------------------------------------------- decoding trees


def _field_maps(tag: str, names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """``$type`` maps for ``tag``: its fields, sometimes one missing, one extra, odd values."""
    present = st.lists(st.sampled_from(names), unique=True, min_size=len(names) - 1)
    extra = st.dictionaries(keys, leaves, max_size=1)

    def build(chosen: list[str], field_values: list[Any], more: dict[str, Any]) -> Any:
        node: dict[str, Any] = {"$type": tag}
        node.update(zip(chosen, field_values, strict=False))
        node.update(more)
        return node

    return st.builds(
        build,
        present,
        st.lists(st.one_of(texts, texts, st.none(), _node_values), min_size=len(names)),
        st.just({}) | extra,
    )


_node_values = st.deferred(lambda: tree_values)
_frame_nodes = st.one_of(
    _field_maps("frame.text", ["text"]),
    _field_maps("frame.audio_raw", ["audio", "sample_rate", "num_channels"]),
    st.fixed_dictionaries({"$type": st.just("frame.text"), "text": texts}),
)
tree_values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(keys, children, max_size=3),
        st.builds(lambda v: {"$tuple": v}, st.lists(children, max_size=3)),
        st.builds(lambda k, v: {"$dict": [[k, v]]}, keys, children),
        st.builds(lambda b: {"$bytes": b}, st.sampled_from(["AAECAw==", "!", 1])),
        _frame_nodes,
    ),
    max_leaves=6,
)
message_nodes = st.one_of(
    _field_maps("bus.frame", ["source", "target", "frame"]),
    _field_maps("bus.data", ["source", "target", "data"]),
    _field_maps("bus.activate", ["source", "target", "args"]),
    _field_maps("bus.end_worker", ["source", "target", "reason"]),
    _field_maps("bus.deactivate", ["source", "target"]),
    _field_maps("bus.message", ["source", "target"]),
    _field_maps("test.sub_data", ["source", "target", "data"]),
    st.builds(
        lambda s, t, f: {"$type": "bus.frame", "source": s, "target": t, "frame": f},
        texts,
        texts | st.none(),
        _frame_nodes,
    ),
)


@pytest.mark.parametrize("cls", CODEC_CLASSES, ids=lambda c: c.name)
@EXAMPLES
@given(node=message_nodes, seq=st.integers(1, 2**40))
def test_fast_and_generic_decode_any_tree_alike(cls: type[Codec], node: Any, seq: int) -> None:
    fast, generic = pair(cls, SUBS)
    tree = [1, seq, node]
    if cls is JsonCodec:
        data = JsonCodec()._encoder.encode(_jsonable(tree)).encode()
    else:
        data = msgpack.packb(tree, use_bin_type=True)
    assert_same_outcome(outcome(fast.decode, data), outcome(generic.decode, data))


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------- other registries


@dataclass
class OtherFrameMessage(BusMessage):
    """Registered under the built-in tag ``bus.frame`` in a registry of its own."""

    text: str = ""
    frame: Any = None


OTHER = TypeRegistry()
register_type("bus.frame", registry=OTHER)(OtherFrameMessage)
register_type("frame.text", registry=OTHER)(SubText)


@pytest.mark.parametrize("cls", CODEC_CLASSES, ids=lambda c: c.name)
def test_a_builtin_tag_mapped_to_another_class_decodes_to_that_class(cls: type[Codec]) -> None:
    builtin = cls()  # type: ignore[call-arg]
    other = cls(OTHER)  # type: ignore[call-arg]
    data = builtin.encode(Msg(4, BusFrameMessage("acme", "assistant", TextFrame("hi"))))
    decoded = other.decode(data)
    assert same(decoded, Msg(4, OtherFrameMessage("acme", "assistant", "", SubText("hi"))))
    # And back: the other registry's classes are written under its tags, generically.
    assert isinstance(decoded, Msg)
    assert other.decode(other.encode(decoded)) == decoded


@pytest.mark.parametrize("cls", CODEC_CLASSES, ids=lambda c: c.name)
def test_a_registry_without_the_builtins_refuses_them_both_ways(cls: type[Codec]) -> None:
    empty = cls(TypeRegistry())  # type: ignore[call-arg]
    envelope = Msg(9, BusFrameMessage("acme", "assistant", TextFrame("hi")))
    with pytest.raises(CodecError, match="not a registered wire type"):
        empty.encode(envelope)
    with pytest.raises(UnknownMessageType) as info:
        empty.decode(cls().encode(envelope))  # type: ignore[call-arg]
    assert info.value.seq == 9


def test_a_tag_registered_after_a_miss_is_found() -> None:
    registry = TypeRegistry()
    codec = MsgpackCodec(registry)
    data = MsgpackCodec().encode(Msg(2, BusMessage("a", "b")))
    with pytest.raises(UnknownMessageType):
        codec.decode(data)
    registry.register(BusMessage, "bus.message")
    assert codec.decode(data) == Msg(2, BusMessage("a", "b"))
