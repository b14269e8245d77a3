"""Field types (issue 11): a decoded value must fit its field's annotation, whatever the codec.

A peer can put any value in any field: ``bus.frame`` with a plain map for its
frame decodes, in every codec, to a ``BusFrameMessage`` holding a dict. The
session checks each decoded message with :func:`proxy_core.messages.check_fields`
before it becomes a :class:`MessageReceived`; a mismatch is a
:class:`MessageUndecodable` (``malformed``) whose number is consumed and
acknowledged. Here: the checker for each annotation form and its messages; the
session, per installed codec, with messages that their own encoder wrote from
ill-typed objects and with frames written by hand as another language would;
a worker behind a real proxy that never sees them; a property that no
well-typed value any encoder produces is refused; and the table of
docs/protocol.md section 4.4 against the code.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import re
import types
import typing
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, NewType, Optional, Protocol, TypeVar, Union

import pytest
from _support import CLIENT_WORKER, SERVER_WORKER, raw_handshake, run_server, text_tree
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import proxy_core.messages
from proxy_core.codecs.base import Codec
from proxy_core.errors import CodecError
from proxy_core.messages import (
    DEFAULT_TYPES,
    AudioRawFrame,
    BusDataMessage,
    BusFrameMessage,
    BusMessage,
    Frame,
    TextFrame,
    TypeRegistry,
    check_fields,
    register_type,
)
from proxy_core.plugins import available_codecs, load_codec
from proxy_core.protocol import Ack, Msg
from proxy_core.rules import DropReason
from proxy_core.session import (
    BatchReceived,
    DuplicateDiscarded,
    MessageReceived,
    MessageUndecodable,
    Session,
)

# ================================================================ types of the tests' own


@register_type("tests.field_types.station")
@dataclass
class Station:
    """A registered object that is not a message, nested in :class:`Reading`."""

    name: str
    position: tuple[float, float]


@register_type("tests.field_types.reading")
@dataclass
class Reading(BusMessage):
    """A user message whose fields nest most of the annotation forms."""

    station: Station | None = None
    samples: list[float] = field(default_factory=list)
    tags: dict[str, list[str]] = field(default_factory=dict)
    window: tuple[int, ...] = ()
    kind: Literal["rain", "wind"] = "rain"
    frames: Sequence[Frame] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)
    ok: bool = True
    raw: bytes = b""


@register_type("tests.field_types.node")
@dataclass
class Node:
    """A registered type that refers to itself (resolved at the first check, not at import)."""

    label: str
    children: list[Node] = field(default_factory=list)


@dataclass
class UnregisteredFrame(Frame):
    """A frame subclass no registry knows: a field must not hold one."""

    text: str = ""


# ================================================================ the checker, form by form

#: One registry for the probes: each probe is a registered type with one field.
PROBES = TypeRegistry()
_probe_classes: dict[str, type[Any]] = {}


def probe(hint: Any) -> type[Any]:
    """A registered dataclass ``Probe(value: hint)``, one per annotation."""
    key = repr(hint)
    if key not in _probe_classes:
        cls = make_dataclass("Probe", [("value", hint)])
        _probe_classes[key] = PROBES.register(cls, f"tests.field_types.probe{len(_probe_classes)}")
    return _probe_classes[key]


def problem(hint: Any, value: Any) -> str | None:
    """What check_fields says about ``Probe(value)`` (without the tag), or None if it fits."""
    try:
        check_fields(probe(hint)(value))
    except CodecError as exc:
        return str(exc).split(": ", 1)[1]
    return None


Name = NewType("Name", str)
Bounded = TypeVar("Bounded", bound=int)
Constrained = TypeVar("Constrained", int, str)

#: (annotation, values that fit, values that do not).
FORMS: list[tuple[Any, list[Any], list[Any]]] = [
    (str, ["", "x"], [1, b"x", None, True, ["x"]]),
    (int, [0, -5, 2**70], [True, False, 1.0, "1", None]),
    (float, [1.5, 1, -0.0, math.inf], [True, False, "1.0", None]),
    (bool, [True, False], [1, 0, None, "true"]),
    (bytes, [b"", b"x"], ["x", bytearray(b"x"), [1], None]),
    (None, [None], [0, "", False, []]),
    (type(None), [None], [0]),
    (str | None, ["x", None], [1, b"x", False]),
    (Optional[str], ["x", None], [1]),  # noqa: UP045 - the old spelling is checked too
    (Union[int, str], [1, "x"], [True, 1.5, None]),  # noqa: UP007 - as above
    (int | float, [1, 1.5], [True, "1"]),
    (Any, [None, 1, object(), {"a": [1]}, TextFrame(1)], []),
    (object, [None, object(), {1: 2}], []),
    (dict[str, int], [{}, {"a": 1}], [{"a": True}, {1: 1}, [("a", 1)], None]),
    (dict[str, Any], [{}, {"a": object()}], [{1: 2}, [], None]),
    (dict, [{}, {1: 2}], [[], None]),
    (typing.Dict[str, int], [{"a": 1}], [{"a": "1"}]),  # noqa: UP006 - as above
    (Mapping[str, int], [{"a": 1}], [{"a": "1"}, ["a"]]),
    (list[int], [[], [1, 2]], [(1, 2), [1, True], "ab", None]),
    (list, [[], [1, "a"]], [(1,), "a"]),
    (typing.List[str], [["a"]], [[1]]),  # noqa: UP006 - as above
    (Sequence[int], [[1], (1, 2), ()], ["12", b"12", [1, "2"], {1: 2}]),
    (tuple[int, ...], [(), (1, 2)], [[1], (1, "a"), None]),
    (tuple[int, str], [(1, "a")], [(1,), (1, "a", 2), ("a", 1), [1, "a"]]),
    (tuple[()], [()], [(1,), []]),
    (tuple, [(), (1, "a")], [[1]]),
    (Literal["a", 1], ["a", 1], ["b", True, 1.0, None, [], {}]),
    (Name, ["x"], [1]),
    (Annotated[int, "a unit"], [1], [True]),
    (Bounded, [1], ["x", True]),
    (Constrained, [1, "x"], [1.5, None]),
    (Frame, [TextFrame("x"), AudioRawFrame(b"", 8000)], [{"text": "x"}, BusMessage("a"), None]),
    (TextFrame, [TextFrame("x")], [AudioRawFrame(b"", 1), {"$type": "frame.text", "text": "x"}]),
    (BusMessage, [BusMessage("a"), BusFrameMessage("a", "b", TextFrame("x"))], [TextFrame("x")]),
    (list[Frame], [[], [TextFrame("a")]], [[TextFrame(1)], [{"text": "a"}]]),
    (Frame | None, [None, TextFrame("x")], [TextFrame(1), "x"]),
    (dict[str, list[Frame]], [{"a": [TextFrame("x")]}], [{"a": [TextFrame(b"x")]}]),
    (set[int], [{1}], [[1]]),  # a class the value model has no form for: isinstance only
]


@pytest.mark.parametrize(
    ("hint", "good", "bad"), FORMS, ids=[re.sub(r"\W+", "_", repr(f[0])) for f in FORMS]
)
def test_each_annotation_form_takes_what_fits_and_refuses_the_rest(
    hint: Any, good: list[Any], bad: list[Any]
) -> None:
    for value in good:
        assert problem(hint, value) is None, value
    for value in bad:
        assert problem(hint, value) is not None, value


@pytest.mark.parametrize(
    ("hint", "value", "said"),
    [
        (Frame, {"text": "x"}, "field 'value' must be a Frame, got dict"),
        (
            Frame,
            TextFrame(1),
            "field 'value' holds a frame.text whose field 'text' must be a str, got int",
        ),
        (
            Frame,
            UnregisteredFrame("x"),
            "field 'value' must be a Frame of a registered type, got UnregisteredFrame",
        ),
        (int, True, "field 'value' must be an int, got bool"),
        (float, "1.5", "field 'value' must be a float, got str"),
        (bytes, "x", "field 'value' must be bytes, got str"),
        (str | None, 1, "field 'value' must be a str or None, got int"),
        (list[int], [1, True], "field 'value'[1] must be an int, got bool"),
        (dict[str, int], {"a": True}, "field 'value'['a'] must be an int, got bool"),
        (dict[str, int], {1: 1}, "field 'value' has a key 1 that must be a str, got int"),
        (tuple[int, str], (1,), "field 'value' must be a tuple[int, str], got tuple of 1"),
        (dict[str, Any] | None, [1], "field 'value' must be a dict[str, Any] or None, got list"),
        (
            Frame | None,
            TextFrame(1),
            "field 'value' holds a frame.text whose field 'text' must be a str, got int",
        ),
        (
            dict[str, list[Frame]],
            {"a": [TextFrame("x"), {"text": "y"}]},
            "field 'value'['a'][1] must be a Frame, got dict",
        ),
        (Literal["a", "b"], "c", "field 'value' must be a Literal['a', 'b'], got str"),
    ],
)
def test_the_error_says_which_field_and_what_it_held(hint: Any, value: Any, said: str) -> None:
    assert problem(hint, value) == said


def test_the_built_in_refusals_read_as_the_issue_asks() -> None:
    with pytest.raises(CodecError, match=r"^bus\.frame: field 'frame' must be a Frame, got dict$"):
        check_fields(BusFrameMessage("acme", "assistant", {"text": "hi"}))  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="'sample_rate' must be an int, got bool$"):
        check_fields(BusFrameMessage("acme", "assistant", AudioRawFrame(b"", True)))
    with pytest.raises(CodecError, match=r"^bus\.data: field 'data' must be a dict\[str, Any\]"):
        check_fields(BusDataMessage("acme", "assistant", [1]))  # type: ignore[arg-type]
    with pytest.raises(CodecError, match=r"^bus\.message: field 'target' must be a str or None"):
        check_fields(BusMessage("acme", 5))  # type: ignore[arg-type]


def test_a_subclass_of_a_registered_class_is_checked_as_what_it_is() -> None:
    message = BusFrameMessage("acme", "assistant", TextFrame("x"))
    assert problem(BusMessage, message) is None
    message.frame = TextFrame(5)  # type: ignore[arg-type]
    assert problem(BusMessage, message) == (
        "field 'value' holds a bus.frame whose field 'frame' holds a frame.text whose "
        "field 'text' must be a str, got int"
    )


def test_a_self_referring_type_is_checked_at_every_depth() -> None:
    tree = Node("root", [Node("a"), Node("b", [Node("c", [Node(5)])])])  # type: ignore[arg-type]
    with pytest.raises(CodecError) as caught:
        check_fields(tree)
    assert str(caught.value) == (
        "tests.field_types.node: field 'children'[1] holds a tests.field_types.node whose "
        "field 'children'[0] holds a tests.field_types.node whose field 'children'[0] holds "
        "a tests.field_types.node whose field 'label' must be a str, got int"
    )


def test_a_value_nested_deeper_than_the_stack_is_a_codec_error() -> None:
    node = Node("leaf")
    for _ in range(5000):
        node = Node("n", [node])
    with pytest.raises(CodecError, match="nests too deeply"):
        check_fields(node)


def test_only_constructor_fields_are_checked() -> None:
    @dataclass
    class Derived:
        value: int
        cached: str = field(init=False, default="")

    PROBES.register(Derived, "tests.field_types.derived")
    obj = Derived(1)
    obj.cached = 5  # type: ignore[assignment]  # not on the wire: not checked
    check_fields(obj)


def test_each_class_is_compiled_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    real = typing.get_type_hints

    def counting(obj: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(obj)
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(typing, "get_type_hints", counting)
    cls = make_dataclass("Once", [("value", int)])
    PROBES.register(cls, "tests.field_types.once")
    for _ in range(3):
        check_fields(cls(1))
    with pytest.raises(CodecError):
        check_fields(cls("1"))
    assert calls == [cls]


# ---------------------------------------------------------------- annotations we cannot check


class HasName(Protocol):
    name: str


Free = TypeVar("Free")


@pytest.mark.parametrize(
    ("hint", "shown"),
    [
        ("DoesNotExist", "a name that does not resolve"),
        (HasName, "HasName"),
        (Free, "~Free"),
        (["not", "hashable"], "['not', 'hashable']"),
    ],
    ids=["forward-ref", "protocol", "typevar", "unhashable"],
)
def test_an_annotation_that_cannot_be_checked_accepts_anything_and_says_so_once(
    hint: Any, shown: str, caplog: pytest.LogCaptureFixture
) -> None:
    cls = make_dataclass("Odd", [("value", hint), ("count", int)])
    PROBES.register(cls, f"tests.field_types.odd.{len(PROBES.tags())}")
    with caplog.at_level(logging.WARNING, logger="proxy_core.messages"):
        for value in (1, "x", {"a": object()}, None):
            check_fields(cls(value, 1))
        with pytest.raises(CodecError, match="field 'count' must be an int, got str"):
            check_fields(cls(None, "1"))  # the other fields are still checked
    warnings = [r.getMessage() for r in caplog.records if r.name == "proxy_core.messages"]
    assert len(warnings) == 1, warnings
    assert "Odd.value" in warnings[0] and shown in warnings[0]
    assert "accepts any value" in warnings[0]


# ================================================================ the session, per codec

CODEC_NAMES = available_codecs()  # json, msgpack, protobuf, and the tests' third-party zjson


def codec_named(name: str) -> Codec:
    if name == "protobuf":
        pytest.importorskip(
            "google.protobuf",
            reason="the protobuf codec needs the protobuf package: "
            "pip install 'proxy-core[protobuf]'",
        )
    return load_codec(name)()


def receiver(codec: Codec) -> Session:
    return Session(codec, session_id="s", peer_max_message_bytes=1 << 20, now=0.0)


def good(text: str) -> BusFrameMessage:
    return BusFrameMessage(CLIENT_WORKER, SERVER_WORKER, TextFrame(text))


def reading(**fields: Any) -> Reading:
    return Reading(CLIENT_WORKER, SERVER_WORKER, **fields)


#: Ill-typed messages, as a sender's own encoder writes them: every codec
#: encodes what it is given and decodes what it reads, types or not.
ILL_TYPED: dict[str, tuple[BusMessage, str]] = {
    "frame-is-a-map": (
        BusFrameMessage(CLIENT_WORKER, SERVER_WORKER, {"text": "hi"}),  # type: ignore[arg-type]
        "bus.frame: field 'frame' must be a Frame, got dict",
    ),
    "text-is-an-int": (
        BusFrameMessage(CLIENT_WORKER, SERVER_WORKER, TextFrame(5)),  # type: ignore[arg-type]
        "whose field 'text' must be a str, got int",
    ),
    "sample-rate-is-a-bool": (
        BusFrameMessage(CLIENT_WORKER, SERVER_WORKER, AudioRawFrame(b"\0\0", True)),
        "whose field 'sample_rate' must be an int, got bool",
    ),
    "sample-rate-is-a-str": (
        BusFrameMessage(CLIENT_WORKER, SERVER_WORKER, AudioRawFrame(b"\0\0", "16000")),  # type: ignore[arg-type]
        "whose field 'sample_rate' must be an int, got str",
    ),
    "data-is-a-list": (
        BusDataMessage(CLIENT_WORKER, SERVER_WORKER, [1, 2]),  # type: ignore[arg-type]
        "bus.data: field 'data' must be a dict[str, Any], got list",
    ),
    "args-is-a-str": (
        proxy_core.messages.BusActivateWorkerMessage(CLIENT_WORKER, SERVER_WORKER, "go"),  # type: ignore[arg-type]
        "bus.activate: field 'args' must be a dict[str, Any] or None, got str",
    ),
    "nested-station-position": (
        reading(station=Station("north", (1.0, "2"))),  # type: ignore[arg-type]
        "field 'station' holds a tests.field_types.station whose field 'position'[1] must be",
    ),
    "nested-tags": (
        reading(tags={"a": ["x", 1]}),  # type: ignore[list-item]
        "field 'tags'['a'][1] must be a str, got int",
    ),
    "nested-frames": (
        reading(frames=[TextFrame("x"), TextFrame(b"y")]),  # type: ignore[arg-type]
        "field 'frames'[1] holds a frame.text whose field 'text' must be a str, got bytes",
    ),
    "window-is-a-list": (
        reading(window=[1, 2]),  # type: ignore[arg-type]
        "field 'window' must be a tuple[int, ...], got list",
    ),
    "kind-not-a-literal": (reading(kind="snow"), "field 'kind' must be a Literal["),  # type: ignore[arg-type]
    "ok-is-an-int": (reading(ok=1), "field 'ok' must be a bool, got int"),
}


@pytest.mark.parametrize("codec_name", CODEC_NAMES)
@pytest.mark.parametrize("case", list(ILL_TYPED))
def test_an_ill_typed_message_is_malformed_and_its_number_acknowledged(
    codec_name: str, case: str
) -> None:
    codec = codec_named(codec_name)
    bad, said = ILL_TYPED[case]
    session = receiver(codec)
    assert session.receive(codec.encode(Msg(1, good("one"))), 0.0) == MessageReceived(
        1, good("one")
    )
    event = session.receive(codec.encode(Msg(2, bad)), 0.0)
    assert isinstance(event, MessageUndecodable), event
    assert (event.seq, event.reason) == (2, DropReason.MALFORMED)
    assert said in event.error
    # The number is consumed: the next MSG is 3, and the ACK covers the dropped one.
    assert session.receive(codec.encode(Msg(3, good("three"))), 0.0) == MessageReceived(
        3, good("three")
    )
    ack = session.ack_frame()
    assert ack is not None and codec.decode(ack) == Ack(3)
    # Sent again (the peer resumed), it is a duplicate: not checked, not counted twice.
    assert session.receive(codec.encode(Msg(2, bad)), 0.0) == DuplicateDiscarded(2)


@pytest.mark.parametrize("codec_name", [n for n in CODEC_NAMES if n != "protobuf"])
def test_an_ill_typed_message_in_a_batch_is_dropped_alone(codec_name: str) -> None:
    codec = codec_named(codec_name)
    if not codec.supports_batch:
        pytest.skip(f"the {codec_name} codec has no BATCH frames")
    bad, _ = ILL_TYPED["frame-is-a-map"]
    frames = [codec.encode(Msg(1, good("a"))), codec.encode(Msg(2, bad))]
    frames.append(codec.encode(Msg(3, good("c"))))
    session = receiver(codec)
    event = session.receive(codec.encode_batch(frames), 0.0)
    assert isinstance(event, BatchReceived)
    first, dropped, last = event.events
    assert first == MessageReceived(1, good("a")) and last == MessageReceived(3, good("c"))
    assert isinstance(dropped, MessageUndecodable) and dropped.seq == 2
    ack = session.ack_frame()
    assert ack is not None and codec.decode(ack) == Ack(3)


def audio(sample_rate: str) -> str:
    return (
        '{"$type":"frame.audio_raw","audio":{"$bytes":"AAE="},'
        f'"sample_rate":{sample_rate},"num_channels":1}}'
    )


#: MSG 1 in json as a peer in another language might write it: the frame's body, and
#: whether docs/protocol.md section 4.1 lets it through.
BY_HAND: list[tuple[str, bool]] = [
    ('{"$type":"frame.text","text":"hi"}', True),
    ('{"text":"hi"}', False),  # a plain map where a frame goes
    ('{"$type":"frame.text","text":5}', False),
    ('{"$type":"frame.text","text":null}', False),
    (audio("16000"), True),
    (audio("true"), False),  # an integer field never accepts true
    (audio("16000.0"), False),  # nor a float, even a whole one
    (audio('"16000"'), False),
    ('{"$type":"bus.message","source":"acme"}', False),  # a message is not a frame
]


@pytest.mark.parametrize(
    ("frame", "fits"),
    BY_HAND,
    ids=[
        "text",
        "plain-map",
        "text-5",
        "text-null",
        "audio",
        "rate-true",
        "rate-float",
        "rate-string",
        "a-message",
    ],
)
def test_frames_written_by_hand_follow_the_documented_rules(frame: str, fits: bool) -> None:
    codec = codec_named("json")
    data = f'[1,1,{{"$type":"bus.frame","source":"acme","target":"assistant","frame":{frame}}}]'
    event = receiver(codec).receive(data.encode(), 0.0)
    if fits:
        assert isinstance(event, MessageReceived), event
    else:
        assert isinstance(event, MessageUndecodable) and event.seq == 1, event


def test_a_float_field_takes_an_integer_from_json() -> None:
    codec = codec_named("json")
    data = (
        '[1,1,{"$type":"tests.field_types.reading","source":"acme","target":null,'
        '"samples":[1,2.5,-3]}]'
    )
    event = receiver(codec).receive(data.encode(), 0.0)
    assert isinstance(event, MessageReceived), event
    assert event.message == Reading(CLIENT_WORKER, None, samples=[1, 2.5, -3])


# ================================================================ a worker behind a real proxy


@pytest.mark.parametrize("codec_name", ["msgpack", "json"])
async def test_a_worker_behind_a_proxy_never_receives_an_ill_typed_message(
    codec_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="proxy_core.proxy")
    trees: list[dict[str, Any]] = [
        {**text_tree(CLIENT_WORKER, SERVER_WORKER, "x"), "frame": {"text": "x"}},
        {
            **text_tree(CLIENT_WORKER, SERVER_WORKER, "x"),
            "frame": {"$type": "frame.text", "text": 5},
        },
        {
            **text_tree(CLIENT_WORKER, SERVER_WORKER, "x"),
            "frame": {"$type": "frame.audio_raw", "audio": b"", "sample_rate": True},
        },
        {"$type": "bus.data", "source": CLIENT_WORKER, "target": SERVER_WORKER, "data": [1]},
        {
            "$type": "tests.field_types.reading",
            "source": CLIENT_WORKER,
            "target": SERVER_WORKER,
            "tags": {"a": [1]},
        },
    ]
    if codec_name == "json":  # bytes travel as $bytes in json
        trees[2]["frame"]["audio"] = {"$bytes": ""}
    forward = (BusFrameMessage, BusDataMessage, Reading)
    async with run_server(forward_messages=forward) as server:
        ws, peer = await raw_handshake(server.url, codec_name)
        async with ws:
            side = await server.sessions.next()
            await peer.send_msg(text_tree(CLIENT_WORKER, SERVER_WORKER, "before"))
            for tree in trees:
                await peer.send_msg(tree)
            last = await peer.send_msg(text_tree(CLIENT_WORKER, SERVER_WORKER, "after"))
            await side.assistant.wait_text("after")
            # Every number was consumed: the peer is acknowledged up to the last one.
            await peer.next_frame(lambda f: f[0] == 2 and f[1] == last)
            assert side.assistant.texts() == ["before", "after"]
            assert [type(m) for m in side.assistant.crossed()] == [BusFrameMessage] * 2
            assert side.server_proxy.stats.dropped_in == Counter(malformed=len(trees))
            assert side.server_proxy.stats.messages_in == 2
    assert "bus.frame: field 'frame' must be a Frame, got dict" in caplog.text


# ================================================================ no false refusals

INT64 = st.integers(-(2**63), 2**63 - 1)
texts = st.text(max_size=8)
finite = st.floats(allow_nan=False, allow_infinity=False)
any_values = st.recursive(
    st.none() | st.booleans() | INT64 | finite | texts | st.binary(max_size=8),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(texts, children, max_size=3),
    ),
    max_leaves=6,
)


def builtins() -> list[type[Any]]:
    """The types proxy_core.messages registers."""
    found = [DEFAULT_TYPES.type_of(tag) for tag in DEFAULT_TYPES.tags()]
    return [c for c in found if c is not None and c.__module__ == "proxy_core.messages"]


#: Every registered type of the library, and ours.
TYPES: list[type[Any]] = [*builtins(), Station, Reading, Node]


def for_hint(hint: Any) -> st.SearchStrategy[Any]:
    """Any well-typed value for a field annotated ``hint`` (as a Python type checker sees it)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    simple: dict[Any, st.SearchStrategy[Any]] = {
        str: texts,
        int: INT64,
        bool: st.booleans(),
        bytes: st.binary(max_size=8),
        float: finite | INT64,  # an int is a float to a type checker
        type(None): st.none(),
    }
    if hint is Any:
        return any_values
    if hint in simple:
        return simple[hint]
    if origin is Literal:
        return st.sampled_from(args)
    if origin in (Union, types.UnionType):
        return st.one_of(*(for_hint(a) for a in args))
    if origin is list:
        return st.lists(st.deferred(lambda: for_hint(args[0])), max_size=2)
    if origin is Sequence:
        items = st.lists(for_hint(args[0]), max_size=2)
        return items | items.map(tuple)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return st.lists(for_hint(args[0]), max_size=3).map(tuple)
    if origin is tuple:
        return st.tuples(*(for_hint(a) for a in args))
    if origin in (dict, Mapping):
        return st.dictionaries(texts, for_hint(args[1]), max_size=2)
    members = [c for c in TYPES if isinstance(hint, type) and issubclass(c, hint)]
    assert members, hint
    return st.one_of(*(instances_of(c) for c in members))


@functools.cache  # one strategy per class, so that Node's children refer back to it
def instances_of(cls: type[Any]) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    fields = {
        f.name: st.deferred(lambda h=hints[f.name]: for_hint(h))
        for f in dataclasses.fields(cls)
        if f.init
    }
    return st.builds(cls, **fields)


@pytest.mark.parametrize("codec_name", CODEC_NAMES)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=st.one_of(*(instances_of(c) for c in TYPES)))
def test_every_well_typed_value_any_encoder_writes_passes_the_check(
    codec_name: str, obj: Any
) -> None:
    codec = codec_named(codec_name)
    check_fields(obj)  # as built
    carried = obj if isinstance(obj, BusMessage) else BusDataMessage("acme", None, {"x": obj})
    try:
        data = codec.encode(Msg(1, carried))
    except CodecError as exc:  # a Node tree deeper than protobuf's 100 levels: nothing to read
        assume("nests too deeply" not in str(exc))
        raise
    decoded = codec.decode(data)
    assert isinstance(decoded, Msg)
    check_fields(decoded.message)
    if carried is not obj:  # inside an Any field, nothing is checked: check the object itself
        check_fields(decoded.message.data["x"])
    event = receiver(codec).receive(data, 0.0)
    assert isinstance(event, MessageReceived), event


# ================================================================ docs/protocol.md, section 4.4

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"


def documented_fields() -> dict[tuple[str, str], tuple[str, str]]:
    """(tag, field) -> (value, default) from the table of section 4.4."""
    text = DOC.read_text(encoding="utf-8")
    body = text.split("### 4.4 ", 1)[1].split("\n### ", 1)[0]
    rows: dict[tuple[str, str], tuple[str, str]] = {}
    tag = ""
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| ") or len(cells) != 6 or cells[0] in ("tag", "---"):
            continue
        tag = cells[0].strip("`") or tag
        rows[(tag, cells[2].strip("`"))] = (cells[3], cells[4])
    return rows


def expected_default(f: dataclasses.Field[Any]) -> str:
    """The default of ``f`` as the table writes it."""
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    elif f.default is not dataclasses.MISSING:
        value = f.default
    else:
        return "required"
    if value is None or isinstance(value, bool):
        return json.dumps(value)  # null, true, false
    if value == "" or value == {}:
        return f"`{json.dumps(value)}`"
    return str(value)


VALUES: dict[Any, Callable[[str], bool]] = {
    str: lambda v: v == "string",
    str | None: lambda v: v == "string or null",
    int: lambda v: v == "integer",
    bool: lambda v: v == "boolean",
    bytes: lambda v: v == "bytes",
    dict[str, Any]: lambda v: v == "map of any values",
    dict[str, Any] | None: lambda v: v == "map of any values, or null",
    Frame: lambda v: v.startswith("a frame: the `$type` map of a registered `Frame` type"),
}


def test_the_wire_tag_table_gives_the_type_and_default_of_every_field() -> None:
    rows = documented_fields()
    expected: set[tuple[str, str]] = set()
    for cls in builtins():
        tag = DEFAULT_TYPES.tag_of(cls)
        assert tag is not None
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            expected.add((tag, f.name))
            assert (tag, f.name) in rows, f"section 4.4 does not list {tag} {f.name}"
            value, default = rows[(tag, f.name)]
            assert VALUES[hints[f.name]](value), (tag, f.name, value)
            assert default.split(" (")[0] == expected_default(f), (tag, f.name, default)
    assert set(rows) == expected
