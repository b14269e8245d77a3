"""Fuzzing the decoders: random, mutated and well-formed-but-wrong frames.

Whatever the bytes, a codec's ``decode`` returns a well-typed envelope or raises
:class:`~proxy_core.errors.CodecError`; ``decode_handshake`` returns a handshake
frame or raises :class:`~proxy_core.errors.HandshakeError`. Nothing else: no
``RecursionError`` from deep nesting, no ``KeyError``/``TypeError`` from a field
of the wrong type, no ``OverflowError`` from a huge number. Every installed codec
is fuzzed, a third-party one included. Sizes are for CI; see ``docs/fuzzing.md``
for longer campaigns.
"""

from __future__ import annotations

import json
import random
import struct
from typing import Any

import msgpack
import pytest
from _fuzzing import (
    CLIENT_WORKER,
    CODEC_NAMES,
    CODECS,
    SEED,
    SERVER_WORKER,
    decode_or_codec_error,
    fuzz_settings,
    mutants,
    mutate,
    mutated_frames,
    rounds,
    seed_frames,
)
from hypothesis import given
from hypothesis import strategies as st

from proxy_core.codecs.base import MAX_BATCH_FRAMES, batch_size_bound
from proxy_core.errors import CodecError, HandshakeError
from proxy_core.messages import DEFAULT_TYPES
from proxy_core.protocol import (
    Hello,
    Reject,
    Welcome,
    decode_handshake,
    encode_handshake,
)

pytestmark = pytest.mark.timeout(120)

SEEDS = {name: seed_frames(codec) for name, codec in CODECS.items()}


def test_every_codec_has_seed_frames_of_every_kind() -> None:
    """The mutation corpus starts from real frames: at least one of each of the six kinds."""
    assert {"json", "msgpack", "protobuf"} <= set(CODECS)
    for name, codec in CODECS.items():
        kinds = {type(codec.decode(frame)).__name__ for frame in SEEDS[name]}
        assert {"Msg", "Ack", "Ready", "Ping", "Pong", "Bye"} <= kinds, (name, kinds)


# ---------------------------------------------------------------- (a) random bytes


@pytest.mark.parametrize("name", CODEC_NAMES)
@fuzz_settings(1000)
@given(data=st.binary(max_size=512))
def test_random_bytes_decode_or_raise_codec_error(name: str, data: bytes) -> None:
    decode_or_codec_error(CODECS[name], data)


@pytest.mark.parametrize("name", CODEC_NAMES)
@fuzz_settings(300)
@given(
    prefix=st.sampled_from([b"[", b"{", b"\x93", b"\x92", b"\x0a", b"\x78\x9c"]), data=st.binary()
)
def test_random_bytes_behind_a_plausible_first_byte(name: str, prefix: bytes, data: bytes) -> None:
    """A first byte that opens a JSON array, a msgpack array, a protobuf field, a zlib stream."""
    decode_or_codec_error(CODECS[name], prefix + data)


# ---------------------------------------------------------------- (b) mutated frames


@pytest.mark.parametrize("name", CODEC_NAMES)
@fuzz_settings(500)
@given(data=st.data())
def test_mutated_frames_decode_or_raise_codec_error(name: str, data: st.DataObject) -> None:
    decode_or_codec_error(CODECS[name], data.draw(mutated_frames(SEEDS[name])))


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_many_seeded_mutants_decode_or_raise_codec_error(name: str) -> None:
    """Volume: thousands of cheap seeded mutants per codec (the seed is in the test id)."""
    rng = random.Random(f"{SEED}-{name}")
    codec = CODECS[name]
    decoded = 0
    for data in mutants(SEEDS[name], rng, rounds(4000)):
        decoded += decode_or_codec_error(codec, data) is not None
    # Some mutants still decode (a flipped bit in a text): the decoder was exercised
    # on both paths, not only on its first check.
    assert decoded > 0


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_cross_codec_frames_decode_or_raise_codec_error(name: str) -> None:
    """Frames of every other codec, whole and mutated: a peer that picked another codec."""
    rng = random.Random(f"{SEED}-cross-{name}")
    codec = CODECS[name]
    for other in CODEC_NAMES:
        for frame in SEEDS[other]:
            decode_or_codec_error(codec, frame)
            decode_or_codec_error(codec, mutate(frame, rng, 2))


# ---------------------------------------------------------------- (c) the handshake

_HELLO = encode_handshake(Hello(("msgpack", "json"), CLIENT_WORKER, SERVER_WORKER, 1 << 20))
_WELCOME = encode_handshake(Welcome("msgpack", "5f" * 16, (SERVER_WORKER,), 1 << 20))
_REJECT = encode_handshake(Reject(4001, "unauthorized"))
HANDSHAKES = [_HELLO, _WELCOME, _REJECT]


def decode_handshake_or_error(data: bytes) -> None:
    """Only HandshakeError; what decodes is well typed and survives a round trip."""
    try:
        frame = decode_handshake(data)
    except HandshakeError:
        return
    assert isinstance(frame, Hello | Welcome | Reject)
    if isinstance(frame, Hello):
        assert all(type(c) is str for c in frame.codecs)
        assert type(frame.client_worker) is str and type(frame.server_worker) is str
        assert type(frame.version) is int and type(frame.max_message_bytes) is int
    elif isinstance(frame, Welcome):
        assert type(frame.codec) is str and type(frame.session_id) is str
        assert all(type(r) is str for r in frame.ready)
        assert type(frame.version) is int and type(frame.max_message_bytes) is int
    else:
        assert type(frame.code) is int and type(frame.reason) is str
    assert decode_handshake(encode_handshake(frame)) == frame


@fuzz_settings(500)
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_random_handshake_bytes_raise_only_handshake_error(data: bytes) -> None:
    decode_handshake_or_error(data)


@fuzz_settings(400)
@given(data=st.data())
def test_mutated_handshakes_raise_only_handshake_error(data: st.DataObject) -> None:
    decode_handshake_or_error(data.draw(mutated_frames(HANDSHAKES)))


_HANDSHAKE_KEYS = [
    "protocol",
    "type",
    "version",
    "codecs",
    "client_worker",
    "server_worker",
    "max_message_bytes",
    "codec",
    "session_id",
    "ready",
    "code",
    "reason",
    "features",
    # Optional fields of newer HELLO/WELCOME versions (resume); ignored where unknown.
    "resume_session_id",
    "resume_received",
    "resumed",
    "received",
]


def _json_values(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=6), children, max_size=4)
        ),
        max_leaves=10,
    )


json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(10**300), 10**300),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["proxy-core", "hello", "welcome", "reject", "json", "msgpack", "acme"]),
)


@fuzz_settings(250)
@given(
    kind=st.sampled_from(["hello", "welcome", "reject"]),
    base=st.sampled_from(HANDSHAKES),
    changes=st.dictionaries(st.sampled_from(_HANDSHAKE_KEYS), _json_values(json_leaves)),
    drop=st.lists(st.sampled_from(_HANDSHAKE_KEYS), max_size=3),
)
def test_handshakes_with_wrong_fields_raise_only_handshake_error(
    kind: str, base: bytes, changes: dict[str, Any], drop: list[str]
) -> None:
    body = json.loads(base)
    body["type"] = kind
    body.update(changes)
    for key in drop:
        body.pop(key, None)
    decode_handshake_or_error(json.dumps(body).encode())


@fuzz_settings(100)
@given(depth=st.integers(1, 5000), where=st.sampled_from(_HANDSHAKE_KEYS))
def test_deeply_nested_handshake_fields_raise_only_handshake_error(depth: int, where: str) -> None:
    body = json.loads(_HELLO)
    body[where] = "@"
    text = json.dumps(body).replace('"@"', "[" * depth + "1" + "]" * depth)
    decode_handshake_or_error(text.encode())


# ---------------------------------------------------------------- (d) structured garbage
#
# Syntactically valid JSON and msgpack documents of the wrong shape: the tree
# decoder has to refuse them field by field.

TAGS = DEFAULT_TYPES.tags()
FIELD_NAMES = [
    "source",
    "target",
    "frame",
    "data",
    "args",
    "reason",
    "text",
    "audio",
    "sample_rate",
    "num_channels",
    "worker",
    "remote",
    "$type",
    "$bytes",
    "$tuple",
    "$dict",
    "__class__",
    "__init__",
    "self",
]
ESCAPES = ["$type", "$bytes", "$tuple", "$dict", "$", "$ref"]


def tree_leaves(*, binary: bool, wide_ints: bool) -> st.SearchStrategy[Any]:
    ints = st.integers() if wide_ints else st.integers(-(2**63), 2**64 - 1)
    leaves = [
        st.none(),
        st.booleans(),
        ints,
        st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63), 2**64 - 1]),
        st.floats(allow_nan=binary, allow_infinity=binary),
        st.text(max_size=10),
        st.sampled_from(TAGS + ESCAPES + ["unknown.tag", "os.system", CLIENT_WORKER]),
    ]
    if binary:
        leaves.append(st.binary(max_size=10))
    return st.one_of(*leaves)


def trees(*, binary: bool, wide_ints: bool = False) -> st.SearchStrategy[Any]:
    leaves = tree_leaves(binary=binary, wide_ints=wide_ints)

    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        keys = st.sampled_from(FIELD_NAMES) | st.text(max_size=5)
        return st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(keys, children, max_size=4),
            # The codec's escapes, well and badly formed.
            st.builds(lambda e, v: {e: v}, st.sampled_from(ESCAPES), children),
            st.builds(
                lambda v: {"$dict": [[k, x] for k, x in v]},
                st.lists(st.tuples(children, children), max_size=3),
            ),
            # Registered and unregistered objects with fields of any type.
            st.builds(
                lambda tag, fields: {"$type": tag, **fields},
                st.sampled_from(TAGS) | leaves | st.lists(leaves, max_size=2),
                st.dictionaries(st.sampled_from(FIELD_NAMES), children, max_size=4),
            ),
        )

    return st.recursive(leaves, extend, max_leaves=16)


def frames_of(
    tree: st.SearchStrategy[Any], leaves: st.SearchStrategy[Any]
) -> st.SearchStrategy[list[Any]]:
    """Frame-shaped arrays: a kind (plausible or not), then anything."""
    kinds = st.integers(-2, 9) | st.sampled_from([True, 1.0, "1", None, 2**64 - 1]) | leaves
    message = st.builds(
        lambda tag, fields: {"$type": tag, **fields},
        st.sampled_from(TAGS) | leaves,
        st.dictionaries(st.sampled_from(FIELD_NAMES), tree, max_size=5),
    )
    return st.builds(
        lambda kind, rest: [kind, *rest],
        kinds,
        st.lists(tree | message, max_size=4),
    )


def _sure_json(frame: Any) -> bytes | None:
    try:
        return json.dumps(frame, ensure_ascii=False).encode("utf-8", "surrogatepass")
    except (ValueError, TypeError):  # a key that is not a string, an int too long to print
        return None


def _sure_msgpack(frame: Any) -> bytes | None:
    try:
        data: bytes = msgpack.packb(frame, use_bin_type=True)
    except (ValueError, TypeError, OverflowError):
        return None
    return data


TEXT_CODECS = [n for n in ("json", "zjson") if n in CODECS]


@pytest.mark.parametrize("name", TEXT_CODECS)
@fuzz_settings(200)
@given(
    frame=frames_of(trees(binary=False, wide_ints=True), tree_leaves(binary=False, wide_ints=True))
)
def test_json_documents_of_the_wrong_shape_raise_only_codec_error(name: str, frame: Any) -> None:
    data = _sure_json(frame)
    if data is not None:
        decode_or_codec_error(CODECS[name], _wrap(name, data))


@fuzz_settings(200)
@given(frame=frames_of(trees(binary=True), tree_leaves(binary=True, wide_ints=False)))
def test_msgpack_documents_of_the_wrong_shape_raise_only_codec_error(frame: Any) -> None:
    data = _sure_msgpack(frame)
    if data is not None:
        decode_or_codec_error(CODECS["msgpack"], data)


def _wrap(name: str, data: bytes) -> bytes:
    """JSON bytes as codec ``name`` frames them (zjson deflates the JSON codec's bytes)."""
    if name == "zjson":
        import zlib

        return zlib.compress(data)
    return data


JSON_SPECIALS = [
    b"[1,1,NaN]",
    b"[4,Infinity]",
    b"[4,-Infinity]",
    b"[4,1e400]",
    b"[4,1.0]",
    b"[4,true]",
    b"[4," + b"9" * 5000 + b"]",
    b"[2," + b"1" * 4300 + b"]",
    b"[2,-" + b"1" * 4301 + b"]",
    b"[1,1," + b"1" * 4301 + b"]",
    b'[1,1,{"$type":"bus.data","source":"acme","target":"assistant","data":{"x":1e999}}]',
    b'[1,1,{"$type":"bus.data","source":"acme","target":"assistant","data":{"x":"\\ud800"}}]',
    b'[1,1,{"$type":"frame.text","text":"x"}]',
    b'[1,1,{"$type":"bus.frame","source":"acme","target":"assistant"}]',
    b'[1,1,{"$type":"bus.frame","source":"acme","target":"assistant","frame":1,"frame2":2}]',
    b'[1,1,{"$type":"bus.message","source":"acme","$type":"bus.data"}]',
    b'[1,1,{"$type":"bus.data","source":"acme","data":{"$bytes":"!!"}}]',
    b'[1,1,{"$type":"bus.data","source":"acme","data":{"$bytes":1}}]',
    b'[1,1,{"$type":"bus.data","source":"acme","data":{"$dict":[[1,2]]}}]',
    b'[1,1,{"$type":"bus.data","source":"acme","data":{"$dict":[["a"]]}}]',
    b'[1,1,{"$type":"bus.data","source":"acme","data":{"$tuple":{}}}]',
    b'[1,1,{"$type":"bus.data","source":"acme","data":{"$other":1}}]',
    b'[1,1,{"$type":"bus.data","source":"acme","data":{"__class__":1}}]',
    b'[1,1,{"$type":"bus.data","source":"acme","__class__":"x"}]',
    b'[1,1,{"$type":"bus.data","source":"acme","self":"x"}]',
    b'[1,1,{"$type":["bus.data"],"source":"acme"}]',
    b'[1,1,{"$type":{"$type":"bus.data"},"source":"acme"}]',
    b'[1,1,{"$type":"builtins.eval","source":"acme"}]',
    b'[1,1,{"$type":"bus.data","source":1,"target":"assistant"}]',
    b'[1,1,{"$type":"bus.data","source":"acme","target":["assistant"]}]',
    b'[1,1,{"$type":"bus.ready","source":"acme","worker":null,"remote":"yes"}]',
    b"[6,1000,null]",
    b'[6,"1000","bye"]',
    b"[3,null]",
    b"[7]",
    b"[7,[]]",
    b'[7,["[2,1]"]]',
    b"[7,[[2,1],[7,[[2,1]]]]]",
    b"[7,[2,1],[7,[2,2]]]",
    b"[7,[1,0,{}],[1,-1,{}],[2,1]]",
    b"[7" + b",[4,1]" * 2000 + b"]",
    b"[7" + b",0" * 5000 + b"]",
    b"\xef\xbb\xbf[2,1]",
    b"[2,1] [2,2]",
    b"[2,1]\x00",
    b"\xff\xfe[\x002\x00,\x001\x00]\x00",
]


@pytest.mark.parametrize("name", TEXT_CODECS)
@pytest.mark.parametrize("data", JSON_SPECIALS, ids=range(len(JSON_SPECIALS)))
def test_json_edge_cases_raise_only_codec_error(name: str, data: bytes) -> None:
    """Hand-picked shapes: NaN and friends, 4300-digit ints, bad escapes, dunder fields."""
    decode_or_codec_error(CODECS[name], _wrap(name, data))


def _mp_str(text: str) -> bytes:
    raw = text.encode()
    return (bytes([0xA0 | len(raw)]) if len(raw) < 32 else b"\xd9" + bytes([len(raw)])) + raw


def _mp_message(fields: bytes, count: int) -> bytes:
    header = _mp_str("$type") + _mp_str("bus.data") + _mp_str("source") + _mp_str(CLIENT_WORKER)
    return bytes([0x80 | (count + 2)]) + header + fields


MSGPACK_SPECIALS = [
    b"\x93\x01\x01\xc0",
    b"\x92\x04\xcf\xff\xff\xff\xff\xff\xff\xff\xff",  # PING 2**64 - 1
    b"\x92\x04\xd3\x80\x00\x00\x00\x00\x00\x00\x00",  # PING -2**63
    b"\x92\x04\xcb" + struct.pack(">d", float("nan")),
    b"\x92\x04\xca" + struct.pack(">f", 1.0),
    b"\x92\x04\xc3",  # PING true
    b"\x92\x02\xd4\x01\x00",  # ACK fixext 1
    b"\x92\x02\xd6\xff\x00\x00\x00\x00",  # ACK timestamp 32
    b"\x92\x02\xc7\x0c\xff" + b"\x00" * 12,  # ACK timestamp 96
    b"\x92\x03\xc4\x04acme",  # READY as bin
    b"\x92\x03\xa4\xff\xfe\xfd\xfc",  # READY invalid UTF-8
    b"\x92\x03\xdb\xff\xff\xff\xff",  # str 32 longer than the frame
    b"\x92\x03\xdd\xff\xff\xff\xff",  # array 32 longer than the frame
    b"\x92\x03\xdf\xff\xff\xff\xff",  # map 32 longer than the frame
    b"\x92\x03\xc6\xff\xff\xff\xff",  # bin 32 longer than the frame
    b"\xdd\x00\x00\x00\x02\x02\x01",  # ACK as array 32
    b"\x92\x02\x01\x92\x02\x02",  # two frames in one
    b"\x92\x02",  # cut short
    b"\x91",
    b"\x90",
    b"\x80",
    b"\xc1",
    b"\x93\x01\x01\x81\x01\x02",  # int map key
    b"\x93\x01\x01\x81\xc4\x05$type\xa8bus.data",  # bin map key
    b"\x93\x01\x01\x81\xc0\xc0",  # nil map key
    b"\x93\x01\x01\x81\x90\x01",  # array map key
    b"\x93\x01\x01\x82\xa5$type\xa8bus.data\xa5$type\xa9bus.frame",  # duplicate keys
    b"\x93\x01\x01" + _mp_message(_mp_str("data") + b"\x81\xa5$type\xd4\x01\x00", 1),
    b"\x93\x01\x01" + _mp_message(_mp_str("data") + b"\x81\xa6$bytes\xa2!!", 1),
    b"\x93\x01\x01" + _mp_message(_mp_str("data") + b"\x81\xa6$bytes\xc4\x01\x00", 1),
    b"\x93\x01\x01" + _mp_message(_mp_str("data") + b"\x81\xa5$dict\x91\x91\x01", 1),
    b"\x93\x01\x01" + _mp_message(_mp_str("data") + b"\x81\xa6$tuple\x80", 1),
    b"\x93\x01\x01" + _mp_message(_mp_str("data") + b"\x81\xc4\x01x\x01", 1),
    b"\x93\x01\x01" + _mp_message(b"\xc4\x04data\x80", 1),  # bin field name
    b"\x93\x01\x01" + _mp_message(_mp_str("target") + b"\xc4\x01x", 1),
    b"\x93\x01\x01" + _mp_message(_mp_str("__class__") + b"\x01", 1),
]


@pytest.mark.skipif(
    "msgpack" not in CODECS, reason="msgpack is not installed (pip install msgpack)"
)
@pytest.mark.parametrize("data", MSGPACK_SPECIALS, ids=range(len(MSGPACK_SPECIALS)))
def test_msgpack_edge_cases_raise_only_codec_error(data: bytes) -> None:
    """Hand-picked shapes: extension types, lengths past the end, non-str keys, 64-bit edges."""
    decode_or_codec_error(CODECS["msgpack"], data)


# ---------------------------------------------------------------- deep nesting
#
# Each wrapper is (JSON prefix, JSON suffix, msgpack prefix) around one value.

WRAPPERS: dict[str, tuple[str, str, bytes]] = {
    "list": ("[", "]", b"\x91"),
    "map": ('{"x":', "}", b"\x81\xa1x"),
    "tuple": ('{"$tuple":[', "]}", b"\x81\xa6$tuple\x91"),
    "dict": ('{"$dict":[["k",', "]]}", b"\x81\xa5$dict\x91\x92\xa1k"),
    "text": ('{"$type":"frame.text","text":', "}", b"\x82\xa5$type\xaaframe.text\xa4text"),
    "frame": (
        '{"$type":"bus.frame","source":"a","target":"b","frame":',
        "}",
        b"\x84\xa5$type\xa9bus.frame\xa6source\xa1a\xa6target\xa1b\xa5frame",
    ),
    "tag": ('{"$type":', "}", b"\x81\xa5$type"),
}

# Where the nested value goes in a frame: %s is the value.
PLACES_JSON = {
    "data": '[1,5,{"$type":"bus.data","source":"acme","target":"assistant","data":{"v":%s}}]',
    "frame": '[1,5,{"$type":"bus.frame","source":"acme","target":"assistant","frame":%s}]',
    "message": "[1,5,%s]",
    "seq": "[1,%s,{}]",
    "top": "%s",
    "ready": "[3,%s]",
    "batch": "[7,[2,1],%s]",
    "batch_list": "[7,[%s]]",
}


def _json_nested(depth: int, kinds: list[str], leaf: str) -> str:
    prefix = "".join(WRAPPERS[kinds[i % len(kinds)]][0] for i in range(depth))
    suffix = "".join(WRAPPERS[kinds[i % len(kinds)]][1] for i in reversed(range(depth)))
    return prefix + leaf + suffix


def _msgpack_nested(depth: int, kinds: list[str], leaf: bytes) -> bytes:
    return b"".join(WRAPPERS[kinds[i % len(kinds)]][2] for i in range(depth)) + leaf


nesting = st.tuples(
    st.integers(1, 20_000) | st.sampled_from([47, 48, 49, 50, 99, 100, 101, 499, 500, 990, 1000]),
    st.lists(st.sampled_from(sorted(WRAPPERS)), min_size=1, max_size=3),
)


@pytest.mark.parametrize("name", TEXT_CODECS)
@fuzz_settings(150)
@given(shape=nesting, place=st.sampled_from(sorted(PLACES_JSON)))
def test_deeply_nested_json_raises_only_codec_error(
    name: str, shape: tuple[int, list[str]], place: str
) -> None:
    depth, kinds = shape
    text = PLACES_JSON[place] % _json_nested(depth, kinds, '"leaf"')
    decode_or_codec_error(CODECS[name], _wrap(name, text.encode()))


@pytest.mark.skipif(
    "msgpack" not in CODECS, reason="msgpack is not installed (pip install msgpack)"
)
@fuzz_settings(150)
@given(shape=nesting, place=st.sampled_from(["data", "frame", "message", "top", "batch"]))
def test_deeply_nested_msgpack_raises_only_codec_error(
    shape: tuple[int, list[str]], place: str
) -> None:
    depth, kinds = shape
    value = _msgpack_nested(depth, kinds, b"\xa4leaf")
    head = _mp_str("$type") + _mp_str("bus.data") + _mp_str("source") + _mp_str(CLIENT_WORKER)
    head += _mp_str("target") + _mp_str(SERVER_WORKER)
    frame = {
        "data": b"\x93\x01\x05\x84" + head + _mp_str("data") + b"\x81\xa1v" + value,
        "frame": b"\x93\x01\x05\x84"
        + head.replace(_mp_str("bus.data"), _mp_str("bus.frame"))
        + _mp_str("frame")
        + value,
        "message": b"\x93\x01\x05" + value,
        "top": value,
        "batch": b"\x93\x07\x92\x02\x01" + value,
    }[place]
    decode_or_codec_error(CODECS["msgpack"], frame)


@pytest.mark.skipif(
    "protobuf" not in CODECS, reason="protobuf is not installed: pip install 'proxy-core[protobuf]'"
)
@fuzz_settings(100)
@given(depth=st.integers(1, 5000), field=st.sampled_from([1, 2, 3, 4, 5, 6, 7]))
def test_deeply_nested_protobuf_raises_only_codec_error(depth: int, field: int) -> None:
    """Length-delimited fields nested inside each other, the way an attacker packs them."""
    inner = b"\x0a\x00"
    for level in range(depth):
        number = field if level % 2 else 1
        inner = bytes([number << 3 | 2]) + _varint(len(inner)) + inner
    decode_or_codec_error(CODECS["protobuf"], b"\x0a" + _varint(len(inner)) + inner)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


# ---------------------------------------------------------------- batches

BATCH_CODECS = [n for n in CODEC_NAMES if getattr(CODECS[n], "supports_batch", False)]


@pytest.mark.parametrize("name", BATCH_CODECS)
@fuzz_settings(150)
@given(data=st.data())
def test_batches_of_mutated_frames_decode_frame_by_frame(name: str, data: st.DataObject) -> None:
    """A BATCH of real, mutated and random frames: one bad frame costs only itself."""
    codec = CODECS[name]
    frames = data.draw(
        st.lists(
            st.sampled_from(SEEDS[name]) | mutated_frames(SEEDS[name]) | st.binary(max_size=16),
            min_size=2,
            max_size=12,
        )
    )
    decoded = decode_or_codec_error(codec, codec.encode_batch(frames))
    if decoded is not None and type(decoded).__name__ == "Batch":
        assert len(decoded.items) == len(frames)


@pytest.mark.parametrize("name", BATCH_CODECS)
def test_a_batch_of_tiny_garbage_frames_is_bounded(name: str) -> None:
    """One frame of many 1-byte garbage frames: refused whole beyond MAX_BATCH_FRAMES.

    Before the bound, a 1 MiB msgpack BATCH of a million garbage frames held a
    million CodecErrors with their tracebacks: seconds of CPU and ~800 MB.
    """
    codec = CODECS[name]
    garbage = _tiny_non_frame(name)
    at_bound = codec.decode(codec.encode_batch([garbage] * MAX_BATCH_FRAMES))
    assert type(at_bound).__name__ == "Batch"
    assert len(at_bound.items) == MAX_BATCH_FRAMES
    assert all(isinstance(i, CodecError) and i.__traceback__ is None for i in at_bound.items)
    with pytest.raises(CodecError, match="at most"):
        codec.decode(codec.encode_batch([garbage] * (MAX_BATCH_FRAMES + 1)))


def _tiny_non_frame(name: str) -> bytes:
    """The shortest item that keeps a BATCH well formed but is not a frame itself."""
    codec = CODECS[name]
    for candidate in (b"", b"0", b"\xc0"):  # protobuf: no kind; json: 0; msgpack: nil
        try:
            batch = codec.decode(codec.encode_batch([candidate, candidate]))
        except CodecError:
            continue
        if all(isinstance(item, CodecError) for item in getattr(batch, "items", [None])):
            return candidate
    raise AssertionError(f"no tiny non-frame for {name}")


def test_our_sender_never_reaches_the_batch_bound() -> None:
    """The writer fills a BATCH up to batch_size_bound <= its cap: 8 bytes a frame at least."""
    from proxy_core._link_out import _BATCH_MAX_BYTES

    assert batch_size_bound(0, MAX_BATCH_FRAMES) > _BATCH_MAX_BYTES


# ---------------------------------------------------------------- the atheris harness


def _load_harness() -> Any:
    """``fuzz/fuzz_codecs.py``, imported from its path (it needs no atheris to replay)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parent.parent / "fuzz" / "fuzz_codecs.py"
    spec = importlib.util.spec_from_file_location("proxy_core_fuzz_harness", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_atheris_harness_replays_its_seed_corpus_and_mutants() -> None:
    """The libFuzzer harness stays runnable: every target, its seeds and seeded mutants."""
    harness = _load_harness()
    corpus = harness.seed_corpus()
    targets = {data[0] for data in corpus.values()}
    assert targets == set(range(len(harness.TARGETS)))
    rng = random.Random(f"{SEED}-harness")
    for data in corpus.values():
        harness.check_one(data)
        for _ in range(rounds(20)):
            harness.check_one(data[:1] + mutate(data[1:], rng, rng.randint(1, 4)))
