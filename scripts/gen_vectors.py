#!/usr/bin/env python3
"""Write the protocol's test vectors from the code, or check that the committed ones are current.

    python scripts/gen_vectors.py            # rewrite docs/protocol-vectors/*.json
    python scripts/gen_vectors.py --check    # exit 1, naming the files, if any has drifted

The vectors are data for a peer written in another language
(``docs/protocol-vectors/README.md`` states their format; ``docs/protocol.md``
section 16 says how to run them). Every byte string and every outcome in them is
computed here by proxy-core itself: the codecs write the frames, ``server_negotiate``
and ``client_accept`` answer the handshakes, and a fresh sans-I/O ``Session``
receives each scenario. Only the invalid bytes are written by hand, from the
trees below. The output is deterministic (no clock, no random session id), so
``--check`` (run by ``tests/test_protocol_vectors.py``) compares it byte for byte.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from proxy_core.codecs._generated import envelope_pb2
from proxy_core.codecs.base import MAX_SAFE_INTEGER, Codec
from proxy_core.codecs.json import JsonCodec
from proxy_core.codecs.msgpack import MsgpackCodec
from proxy_core.codecs.protobuf import ProtobufCodec
from proxy_core.errors import HandshakeError, ProtocolError, SessionRejected
from proxy_core.messages import (
    AudioRawFrame,
    BusActivateWorkerMessage,
    BusDataMessage,
    BusDeactivateWorkerMessage,
    BusEndMessage,
    BusEndWorkerMessage,
    BusFrameMessage,
    BusMessage,
    TextFrame,
)
from proxy_core.protocol import (
    Ack,
    Batch,
    Bye,
    CloseCode,
    Envelope,
    Handshake,
    Hello,
    Msg,
    Ping,
    Pong,
    Ready,
    Reject,
    RejectCode,
    Welcome,
    encode_handshake,
)
from proxy_core.session import (
    BatchReceived,
    ByeReceived,
    DuplicateDiscarded,
    Event,
    MessageReceived,
    MessageUndecodable,
    RemoteReady,
    Session,
    client_accept,
    common_features,
    server_negotiate,
)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "protocol-vectors"

CLIENT = "acme"  # the client's worker: the sender of every scenario
SERVER = "assistant"  # the server's worker: the receiver
SESSION_ID = "5f0c3e1a9b7d4c2e8a6f1b3d5c7e9a0b"  # the example id of docs/protocol.md
LIMIT = 1048576
CODECS: dict[str, Codec] = {
    "json": JsonCodec(),
    "msgpack": MsgpackCodec(),
    "protobuf": ProtobufCodec(),
}
SERVER_CODECS = ("msgpack", "json")  # what our server accepts by default
SERVER_FEATURES = ("batch", "resume")  # a server that can hold sessions (serve_proxy)
CLIENT_CODECS = ("msgpack", "json")
HEADER = {"protocol": "proxy-core", "version": 1, "generated_by": "python scripts/gen_vectors.py"}


# ================================================================ the value notation


def tree(frame: Envelope | Batch) -> Any:
    """Return ``frame`` as the json codec's tree (bytes as ``{"$bytes": base64}``)."""
    if isinstance(frame, Batch):
        return [7, *(tree(_decoded(item)) for item in frame.items)]
    return json.loads(CODECS["json"].encode(frame))


def _decoded(item: Envelope | Exception) -> Envelope:
    if isinstance(item, Exception):
        raise AssertionError(f"a frame of a valid BATCH does not decode: {item}")
    return item


def message_tree(message: BusMessage) -> Any:
    """Return a bus message as its ``$type`` map in the json codec's tree."""
    return tree(Msg(1, message))[2]


def text(data: bytes) -> dict[str, str]:
    """The ``text`` beside a ``hex``: the same bytes as UTF-8, when they are UTF-8."""
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {}


def hi(words: str) -> BusFrameMessage:
    """A text frame from the client's worker to the server's."""
    return BusFrameMessage(CLIENT, SERVER, TextFrame(words))


# ================================================================ frames.json

FRAMES: list[tuple[str, str, Envelope | list[Envelope]]] = [
    (
        "msg-bus-message",
        "MSG 1 with the base message bus.message",
        Msg(1, BusMessage(CLIENT, SERVER)),
    ),
    (
        "msg-bus-message-broadcast",
        "bus.message with target null (a broadcast: the filter rules drop it, not the codec)",
        Msg(1, BusMessage(CLIENT, None)),
    ),
    (
        "msg-bus-frame-text",
        "MSG 2 with bus.frame carrying frame.text (docs/protocol.md section 13, frame 5)",
        Msg(2, hi("hello")),
    ),
    (
        "msg-bus-frame-text-non-ascii",
        "frame.text with non-ASCII text: UTF-8 in json and msgpack, never \\u escapes in our json",
        Msg(3, hi("café 🤖")),
    ),
    (
        "msg-bus-frame-audio-raw",
        "bus.frame carrying frame.audio_raw: bytes (msgpack bin, json $bytes) and two integers",
        Msg(3, BusFrameMessage(CLIENT, SERVER, AudioRawFrame(b"\x00\x01\x02\x03", 16000, 1))),
    ),
    (
        "msg-bus-data-nested",
        "bus.data with plain values: strings, integers, floats, booleans, null, arrays, maps",
        Msg(
            4,
            BusDataMessage(
                CLIENT,
                SERVER,
                {
                    "text": "hi",
                    "count": 3,
                    "negative": -7,
                    "largest": MAX_SAFE_INTEGER,
                    "ratio": 2.5,
                    "ok": True,
                    "no": False,
                    "none": None,
                    "list": [1, "two", [3, -0.125]],
                    "map": {"a": {"b": []}, "c": {}},
                },
            ),
        ),
    ),
    (
        "msg-bus-data-dollar-keys",
        "bus.data with a key starting with $: the $dict escape (docs/protocol.md section 4.4)",
        Msg(
            4,
            BusDataMessage(
                CLIENT, SERVER, {"$ref": "x", "pair": (1, 2.5), "ok": True, "none": None}
            ),
        ),
    ),
    (
        "msg-bus-data-escapes",
        "escapes inside a map: tuples ($tuple), bytes (json $bytes, msgpack bin), a $dict",
        Msg(
            5,
            BusDataMessage(
                CLIENT,
                SERVER,
                {
                    "pair": ("a", 1),
                    "empty": (),
                    "blob": b"\x00\xffhi",
                    "inner": {"$type": "not a tag"},
                },
            ),
        ),
    ),
    (
        "msg-bus-data-empty",
        "bus.data with its default, an empty map",
        Msg(6, BusDataMessage(CLIENT, SERVER)),
    ),
    (
        "msg-bus-activate-args",
        "bus.activate with args (docs/protocol.md section 13, frame 4)",
        Msg(1, BusActivateWorkerMessage(CLIENT, SERVER, {"caller": CLIENT})),
    ),
    (
        "msg-bus-activate-null",
        "bus.activate whose args are null",
        Msg(1, BusActivateWorkerMessage(CLIENT, SERVER)),
    ),
    ("msg-bus-deactivate", "bus.deactivate", Msg(7, BusDeactivateWorkerMessage(CLIENT, SERVER))),
    (
        "msg-bus-end-worker",
        "bus.end_worker with a reason",
        Msg(8, BusEndWorkerMessage(CLIENT, SERVER, "done")),
    ),
    (
        "msg-bus-end-worker-null",
        "bus.end_worker whose reason is null",
        Msg(8, BusEndWorkerMessage(CLIENT, SERVER)),
    ),
    (
        "msg-bus-end-local",
        "bus.end, a local message: it decodes (protobuf: generic Object), the rules drop it",
        Msg(9, BusEndMessage(CLIENT, SERVER, "bye")),
    ),
    (
        "msg-largest-seq",
        "a MSG numbered 2^53 - 1, the largest sequence number",
        Msg(MAX_SAFE_INTEGER, hi("last")),
    ),
    ("ack", "ACK 2 (cumulative)", Ack(2)),
    ("ack-zero", "ACK 0: nothing acknowledged yet (valid, no effect)", Ack(0)),
    ("ack-largest", "ACK 2^53 - 1, the largest ACK number", Ack(MAX_SAFE_INTEGER)),
    ("ready", "READY for the worker acme", Ready(CLIENT)),
    ("ready-non-ascii", "READY for a worker with a non-ASCII name", Ready("café")),
    ("ping", "PING with nonce 1", Ping(1)),
    ("ping-largest", "PING with the largest nonce, 2^53 - 1", Ping(MAX_SAFE_INTEGER)),
    ("pong", "PONG answering PING 1", Pong(1)),
    ("bye", "BYE 1000 (docs/protocol.md section 13, frame 11)", Bye(1000, "deactivated")),
    ("bye-answer", "the BYE that answers a BYE", Bye(1000, "bye")),
    ("bye-protocol-error", "BYE 1002 after a sequence gap", Bye(1002, "expected message 2, got 3")),
    ("batch-ack-ping", "BATCH of ACK 2 and PING 1 (docs/protocol.md section 3)", [Ack(2), Ping(1)]),
    (
        "batch-several",
        "BATCH of two MSGs, an ACK, a READY and a PONG, processed in order as if each came alone",
        [
            Msg(1, hi("one")),
            Msg(2, BusDataMessage(CLIENT, SERVER, {"n": 2})),
            Ack(1),
            Ready(CLIENT),
            Pong(3),
        ],
    ),
    (
        "batch-one",
        "BATCH of one frame: valid (our writer sends a lone frame alone, but reads this)",
        [Msg(1, hi("one"))],
    ),
]


def frame_vectors() -> list[dict[str, Any]]:
    vectors = []
    for name, description, frame in FRAMES:
        encoded = {n: encode(codec, frame) for n, codec in CODECS.items()}
        value = tree(Batch(tuple(frame))) if isinstance(frame, list) else tree(frame)
        for n, data in encoded.items():  # every codec reads back the same tree
            assert same(tree(CODECS[n].decode(data)), value), (name, n)
        assert not integral_floats(value), name  # a JavaScript reader cannot tell 1.0 from 1
        vectors.append(
            {
                "name": name,
                "description": description,
                "value": value,
                "hex": {n: d.hex() for n, d in encoded.items()},
            }
        )
    return vectors


def encode(codec: Codec, frame: Envelope | list[Envelope]) -> bytes:
    if isinstance(frame, list):
        return codec.encode_batch([codec.encode(f) for f in frame])
    return codec.encode(frame)


def same(a: Any, b: Any) -> bool:
    """Equal as JSON values: maps unordered, but ``1``, ``1.0`` and ``true`` all different."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def integral_floats(value: Any) -> bool:
    if isinstance(value, float):
        return value.is_integer()
    if isinstance(value, list):
        return any(integral_floats(v) for v in value)
    if isinstance(value, dict):
        return any(integral_floats(v) for v in value.values())
    return False


# ================================================================ handshake.json

HELLO = Hello(
    codecs=CLIENT_CODECS,
    client_worker=CLIENT,
    server_worker=SERVER,
    max_message_bytes=LIMIT,
    features=("batch", "resume"),
)
WELCOME = Welcome(
    codec="msgpack",
    session_id=SESSION_ID,
    ready=(SERVER,),
    max_message_bytes=LIMIT,
    features=("batch", "resume"),
)
HELLO_RESUME = Hello(
    codecs=CLIENT_CODECS,
    client_worker=CLIENT,
    server_worker=SERVER,
    max_message_bytes=LIMIT,
    features=("batch", "resume"),
    resume_session_id=SESSION_ID,
    resume_received=7,
)
WELCOME_RESUMED = Welcome(
    codec="msgpack",
    session_id=SESSION_ID,
    ready=(SERVER,),
    max_message_bytes=LIMIT,
    features=("batch", "resume"),
    resumed=True,
    received=5,
)
REJECT_AUTH = Reject(RejectCode.UNAUTHORIZED, "unauthorized")
REJECT_WORKER = Reject(
    RejectCode.UNKNOWN_WORKER,
    "this server connects worker 'assistant' with remote worker 'acme'; "
    "the client asked for 'assistent' from 'acme'",
)

HANDSHAKE_FRAMES: list[tuple[str, str, Handshake]] = [
    (
        "hello",
        "HELLO offering msgpack then json, with features (docs/protocol.md section 2)",
        HELLO,
    ),
    (
        "hello-minimal",
        "HELLO without features: the field is left out",
        Hello(
            codecs=("json",), client_worker=CLIENT, server_worker=SERVER, max_message_bytes=LIMIT
        ),
    ),
    (
        "hello-resume",
        "HELLO resuming a session: resume_session_id and resume_received",
        HELLO_RESUME,
    ),
    (
        "hello-non-ascii",
        "HELLO naming a worker café: written as UTF-8, not as a \\u escape",
        Hello(
            codecs=("json",), client_worker="café", server_worker=SERVER, max_message_bytes=LIMIT
        ),
    ),
    ("welcome", "WELCOME choosing msgpack, with features (docs/protocol.md section 2)", WELCOME),
    (
        "welcome-no-features",
        "WELCOME of a session without features: the field is left out",
        Welcome(codec="json", session_id=SESSION_ID, ready=(SERVER,), max_message_bytes=LIMIT),
    ),
    (
        "welcome-not-ready",
        "WELCOME while the server's worker is not ready yet: ready is empty, READY follows",
        Welcome(codec="msgpack", session_id=SESSION_ID, ready=(), max_message_bytes=LIMIT),
    ),
    ("welcome-resumed", "WELCOME resuming the session: resumed and received", WELCOME_RESUMED),
    ("reject-unauthorized", "REJECT 4001 (docs/protocol.md section 2)", REJECT_AUTH),
    ("reject-unknown-worker", "REJECT 4004 as our server words it", REJECT_WORKER),
]


def handshake_frame_vectors() -> list[dict[str, Any]]:
    vectors = []
    for name, description, frame in HANDSHAKE_FRAMES:
        data = encode_handshake(frame)
        vectors.append(
            {
                "name": name,
                "description": description,
                "object": json.loads(data),
                "hex": data.hex(),
            }
        )
    return vectors


def hello_bytes(**changes: Any) -> bytes:
    """The HELLO above as JSON text, with fields changed (a value of ``...`` removes one)."""
    body = json.loads(encode_handshake(HELLO))
    for key, value in changes.items():
        if value is ...:
            del body[key]
        else:
            body[key] = value
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def welcome_bytes(**changes: Any) -> bytes:
    """The WELCOME above as JSON text, with fields changed (``...`` removes one)."""
    body = json.loads(encode_handshake(WELCOME))
    for key, value in changes.items():
        if value is ...:
            del body[key]
        else:
            body[key] = value
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


SERVER_CASES: list[tuple[str, str, bytes]] = [
    ("hello", "the HELLO of the frames above: msgpack, both features", encode_handshake(HELLO)),
    (
        "hello-json-only",
        "a client that offers json and no features",
        hello_bytes(codecs=["json"], features=...),
    ),
    (
        "hello-codec-server-lacks",
        "protobuf preferred, but this server has msgpack and json: the client's next choice",
        hello_bytes(codecs=["protobuf", "json", "msgpack"]),
    ),
    (
        "hello-unknown-feature",
        "an unknown feature is ignored; WELCOME lists the known ones in the client's order",
        hello_bytes(features=["resume", "compression", "batch"]),
    ),
    (
        "hello-extra-fields-any-order",
        "unknown fields are ignored and field order does not matter; \\u escapes are JSON",
        b'{"type":"hello","client_worker":"\\u0061cme","x-trace":{"id":7},"version":1,'
        b'"max_message_bytes":1024,"server_worker":"assistant","codecs":["json"],'
        b'"protocol":"proxy-core"}',
    ),
    (
        "hello-resume",
        "a HELLO asking to resume is accepted like any other; whether it resumes is section 12",
        encode_handshake(HELLO_RESUME),
    ),
    ("not-utf8", "a frame that is not UTF-8", b'{"protocol":"proxy-core","type":"\xff"}'),
    ("not-json", "a frame that is not JSON", b"hello"),
    ("empty", "an empty frame", b""),
    ("json-nan", "NaN is not JSON", hello_bytes(max_message_bytes=float("nan"))),
    ("array", "a JSON array, not an object", b'["hello"]'),
    ("no-protocol", "no protocol field", hello_bytes(protocol=...)),
    ("wrong-protocol", "another protocol", hello_bytes(protocol="pipecat")),
    ("wrong-type", "a WELCOME sent as the first frame", encode_handshake(WELCOME)),
    ("no-type", "no type field", hello_bytes(type=...)),
    ("no-codecs", "no codecs field", hello_bytes(codecs=...)),
    ("version-string", "version as a string", hello_bytes(version="1")),
    ("version-true", "version true is not an integer", hello_bytes(version=True)),
    ("version-float", "version 1.0 is not an integer", hello_bytes(version=1.0)),
    ("codecs-not-strings", "codecs holding a number", hello_bytes(codecs=["json", 1])),
    ("features-not-array", "features as a string", hello_bytes(features="batch")),
    ("limit-too-small", "max_message_bytes below 1024", hello_bytes(max_message_bytes=1023)),
    (
        "resume-received-negative",
        "resume_received below 0",
        hello_bytes(resume_session_id=SESSION_ID, resume_received=-1),
    ),
    ("version-2", "protocol version 2", hello_bytes(version=2)),
    (
        "unknown-server-worker",
        "a server worker this server does not serve",
        hello_bytes(server_worker="assistent"),
    ),
    (
        "unknown-client-worker",
        "a client worker this server does not expect",
        hello_bytes(client_worker="acne"),
    ),
    ("no-codec", "an empty codecs list", hello_bytes(codecs=[])),
    (
        "no-common-codec",
        "only codecs this server does not have",
        hello_bytes(codecs=["protobuf", "cbor"]),
    ),
    (
        "order-version-first",
        "version 2 and an unknown worker: the version is checked first",
        hello_bytes(version=2, server_worker="assistent"),
    ),
    (
        "order-worker-before-limit",
        "an unknown worker and a limit below 1024: the workers are checked first",
        hello_bytes(server_worker="assistent", max_message_bytes=100),
    ),
    (
        "order-limit-before-codec",
        "a limit below 1024 and no common codec: the limit is checked first",
        hello_bytes(max_message_bytes=100, codecs=["cbor"]),
    ),
]


def server_case_vectors() -> list[dict[str, Any]]:
    codecs = [CODECS[n] for n in SERVER_CODECS]
    vectors = []
    for name, description, data in SERVER_CASES:
        result = server_negotiate(data, codecs, worker_name=SERVER, remote_worker_name=CLIENT)
        if isinstance(result, Reject):
            expect: dict[str, Any] = {"reject": {"code": int(result.code), "reason": result.reason}}
        else:
            hello, codec = result
            features = [f for f in common_features(hello.features, codec) if f in SERVER_FEATURES]
            expect = {"accept": {"codec": codec.name, "features": features, "hello": fields(hello)}}
        vectors.append(
            {
                "name": name,
                "description": description,
                "hex": data.hex(),
                **text(data),
                "expect": expect,
            }
        )
    return vectors


CLIENT_CASES: list[tuple[str, str, bytes]] = [
    ("welcome", "the WELCOME of the frames above", encode_handshake(WELCOME)),
    (
        "welcome-defaults",
        "no features, resumed or received: a reader fills in the defaults",
        welcome_bytes(codec="json", features=...),
    ),
    (
        "welcome-extra-fields-any-order",
        "unknown fields are ignored and field order does not matter",
        b'{"ready":[],"codec":"json","x-region":"eu","session_id":"s1","type":"welcome",'
        b'"max_message_bytes":2048,"protocol":"proxy-core","version":1}',
    ),
    (
        "welcome-resumed",
        "a resumed session: resumed true and received",
        encode_handshake(WELCOME_RESUMED),
    ),
    (
        "reject",
        "REJECT 4004: the client reports the code and reason",
        encode_handshake(REJECT_WORKER),
    ),
    (
        "reject-unauthorized",
        "REJECT 4001: an authentication refusal",
        encode_handshake(REJECT_AUTH),
    ),
    (
        "reject-unknown-code",
        "a REJECT code this version does not define is still a refusal",
        b'{"protocol":"proxy-core","type":"reject","code":4999,"reason":"later"}',
    ),
    (
        "codec-not-offered",
        "a WELCOME choosing a codec the client did not offer",
        welcome_bytes(codec="protobuf"),
    ),
    ("version-2", "a WELCOME of protocol version 2", welcome_bytes(version=2)),
    ("no-ready", "a WELCOME without ready", welcome_bytes(ready=...)),
    ("features-not-array", "features as a string", welcome_bytes(features="batch")),
    ("received-negative", "received below 0", welcome_bytes(resumed=True, received=-1)),
    ("resumed-not-boolean", "resumed as an integer", welcome_bytes(resumed=1, received=5)),
    ("hello-answer", "a HELLO as the answer", encode_handshake(HELLO)),
    (
        "reject-no-reason",
        "a REJECT without its reason",
        b'{"protocol":"proxy-core","type":"reject","code":4000}',
    ),
    ("msgpack-answer", "a msgpack frame as the answer: not UTF-8", b"\x93\x01\x01"),
]


def client_case_vectors() -> list[dict[str, Any]]:
    codecs = [CODECS[n] for n in CLIENT_CODECS]
    vectors = []
    for name, description, data in CLIENT_CASES:
        try:
            welcome, codec = client_accept(data, codecs)
        except SessionRejected as exc:
            expect: dict[str, Any] = {"rejected": {"code": exc.code, "reason": exc.reason}}
        except HandshakeError as exc:
            expect = {"fail": {"close_code": int(CloseCode.PROTOCOL_ERROR), "error": str(exc)}}
        else:
            expect = {"accept": {"codec": codec.name, "welcome": fields(welcome)}}
        vectors.append(
            {
                "name": name,
                "description": description,
                "hex": data.hex(),
                **text(data),
                "expect": expect,
            }
        )
    return vectors


def fields(frame: Hello | Welcome) -> dict[str, Any]:
    """Every field of a decoded HELLO or WELCOME, defaults filled in, tuples as arrays."""
    values = {f.name: getattr(frame, f.name) for f in dataclasses.fields(frame)}
    return {n: list(v) if isinstance(v, tuple) else v for n, v in values.items()}


# ================================================================ sessions.json
#
# A scenario is what one peer (the client, worker acme) sends to the other after
# the handshake; the outcome is what a fresh Session on the receiving side makes
# of it. The frames are built per codec by a Wire; the trees of invalid frames are
# written out, so that a reader sees exactly which rule each one breaks.

BAD = "@bad-value@"  # stands where a bad value is spliced in (json and msgpack)


def msg_tree(seq: Any, message: Any = None) -> list[Any]:
    """The tree of a MSG: ``message`` a $type map (default: a text frame "x")."""
    return [1, seq, message if message is not None else message_tree(hi("x"))]


def data_tree(value: Any) -> dict[str, Any]:
    """A bus.data $type map whose data is ``{"x": value}``."""
    return {"$type": "bus.data", "source": CLIENT, "target": SERVER, "data": {"x": value}}


@dataclass
class Wire:
    """Builds frames with one codec; ``tree`` and ``splice`` only for json and msgpack."""

    name: str

    @property
    def codec(self) -> Codec:
        return CODECS[self.name]

    def msg(self, seq: int, words: str = "x") -> bytes:
        return self.codec.encode(Msg(seq, hi(words)))

    def env(self, envelope: Envelope) -> bytes:
        return self.codec.encode(envelope)

    def batch(self, *frames: bytes) -> bytes:
        return self.codec.encode_batch(frames)

    def tree(self, value: Any) -> bytes:
        if self.name == "json":
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        assert self.name == "msgpack", "protobuf frames are built with pb()"
        data: bytes = msgpack.packb(value, use_bin_type=True)
        return data

    def splice(self, value: Any, bad: bytes) -> bytes:
        """The bytes of ``value`` with the string BAD replaced by ``bad``, as it is."""
        data, token = self.tree(value), self.tree(BAD)
        assert data.count(token) == 1
        return data.replace(token, bad)

    @property
    def trees(self) -> bool:
        return self.name != "protobuf"


def pb(build: Callable[[Any], None]) -> bytes:
    """A protobuf Envelope filled in by ``build`` (for frames our encoder never writes)."""
    envelope = envelope_pb2.Envelope()
    build(envelope)
    data: bytes = envelope.SerializeToString()
    return data


def pb_msg(seq: int, fill: Callable[[Any], None]) -> bytes:
    """A protobuf MSG whose Message (source acme, target assistant) is completed by ``fill``."""

    def build(envelope: Any) -> None:
        envelope.msg.seq = seq
        envelope.msg.message.source = CLIENT
        envelope.msg.message.target = SERVER
        fill(envelope.msg.message)

    return pb(build)


Step = tuple[str, bytes]  # a note saying what the frame is, and its bytes


@dataclass
class Scenario:
    name: str
    description: str
    steps: list[Step]
    sent: int = 0  # MSGs the receiver had sent (1..sent), none acknowledged


ScenarioOf = Callable[[Wire], Scenario | None]
SCENARIOS: list[ScenarioOf] = []


def scenario(build: ScenarioOf) -> ScenarioOf:
    SCENARIOS.append(build)
    return build


def pb_from(data: bytes, change: Callable[[Any], None]) -> bytes:
    """A protobuf frame our encoder wrote, parsed, changed by ``change`` and written again."""
    envelope = envelope_pb2.Envelope.FromString(data)
    change(envelope)
    out: bytes = envelope.SerializeToString()
    return out


def unknown_message(w: Wire, seq: int) -> bytes:
    """MSG ``seq`` whose message has the unregistered tag ``myapp.unknown``."""
    if w.trees:
        tag = {"$type": "myapp.unknown", "source": CLIENT, "target": SERVER}
        return w.tree(msg_tree(seq, tag))
    return pb_object(seq, "myapp.unknown", {})


def pb_object(seq: int, tag: str, strings: dict[str, str]) -> bytes:
    """A protobuf MSG whose message is in the generic Object form, with string fields."""

    def fill(message: Any) -> None:
        message.object.type = tag
        for name, value in strings.items():
            message.object.names.append(name)
            message.object.values.add().str_value = value

    return pb_msg(seq, fill)


@scenario
def in_order(w: Wire) -> Scenario:
    steps = [("MSG 1", w.msg(1, "one")), ("MSG 2", w.msg(2, "two"))]
    return Scenario("in-order", "two MSGs in order are delivered; the receiver owes ACK 2", steps)


@scenario
def garbage(w: Wire) -> Scenario:
    bad = {"json": b"\x00\xff\xfe\x80", "msgpack": b"\xc1\xc1", "protobuf": b"\xff\xff\xff"}
    steps = [
        ("bytes that are no frame of this codec", bad[w.name]),
        ("an empty frame", b""),
        ("plain text, not a frame", b"hello, world"),
        ("MSG 1: the connection stays open and nothing was numbered", w.msg(1)),
    ]
    return Scenario("garbage", "bytes that do not decode are malformed, without a seq", steps)


@scenario
def not_a_frame(w: Wire) -> Scenario | None:
    if not w.trees:
        return None
    steps: list[Step] = [
        ("a map, not an array", w.tree({"kind": 1})),
        ("a string", w.tree("hello")),
        ("an empty array", w.tree([])),
        ("an integer", w.tree(1)),
        ("null", w.tree(None)),
        ("MSG 1", w.msg(1)),
    ]
    return Scenario("not-a-frame", "a value that is not a non-empty array is malformed", steps)


@scenario
def unknown_kind(w: Wire) -> Scenario:
    if w.trees:
        steps = [("kind 9", w.tree([9, 1])), ("kind 0", w.tree([0])), ("kind -1", w.tree([-1, 1]))]
    else:
        steps = [
            ("an Envelope with an unknown field 8 (an empty message)", b"\x42\x00"),
            ("an Envelope with an unknown varint field 15", b"\x78\x01"),
        ]
    steps.append(("MSG 1", w.msg(1)))
    description = "a frame of a kind this version does not know is malformed; the session goes on"
    return Scenario("unknown-kind", description, steps)


@scenario
def wrong_length(w: Wire) -> Scenario | None:
    if not w.trees:
        return None
    steps: list[Step] = [
        ("ACK without its number", w.tree([2])),
        ("ACK with an extra element", w.tree([2, 0, 0])),
        ("READY without its worker", w.tree([3])),
        ("PING with an extra element", w.tree([4, 1, 2])),
        ("BYE without its reason", w.tree([6, 1000])),
        ("MSG 1", w.msg(1)),
    ]
    return Scenario("wrong-length", "a frame with another number of elements is malformed", steps)


@scenario
def msg_wrong_length(w: Wire) -> Scenario | None:
    if not w.trees:
        return None
    steps: list[Step] = [
        ("[1, 1]: a MSG without its message", w.tree([1, 1])),
        ("MSG 2 with a fourth element", w.tree([*msg_tree(2), "extra"])),
        ("MSG 3", w.msg(3)),
    ]
    description = "a MSG of another length is malformed, but its seq is read and consumed"
    return Scenario("msg-wrong-length", description, steps)


@scenario
def mistyped_kind(w: Wire) -> Scenario | None:
    if not w.trees:
        return None
    steps: list[Step] = [
        ("kind true", w.tree([True, *msg_tree(1)[1:]])),
        ("kind 1.0", w.tree([1.0, *msg_tree(1)[1:]])),
        ('kind "1"', w.tree(["1", *msg_tree(1)[1:]])),
        ("MSG 1: no number was consumed before it", w.msg(1)),
    ]
    description = "a kind that is not an integer (true, 1.0) is malformed and no seq is read"
    return Scenario("mistyped-kind", description, steps)


@scenario
def mistyped_seq(w: Wire) -> Scenario | None:
    if not w.trees:
        return None
    steps: list[Step] = [
        ("MSG with seq true", w.tree(msg_tree(True))),
        ("MSG with seq 1.0", w.tree(msg_tree(1.0))),
        ('MSG with seq "1"', w.tree(msg_tree("1"))),
        ("MSG with seq null", w.tree(msg_tree(None))),
        ("MSG 1: no number was consumed before it", w.msg(1)),
    ]
    description = "a MSG whose seq is not an integer is malformed and has no seq"
    return Scenario("mistyped-seq", description, steps)


@scenario
def mistyped_elements(w: Wire) -> Scenario | None:
    if not w.trees:
        return None
    steps: list[Step] = [
        ("ACK true", w.tree([2, True])),
        ("ACK 1.0", w.tree([2, 1.0])),
        ("READY of a number", w.tree([3, 5])),
        ('PING "1"', w.tree([4, "1"])),
        ("PONG 1.5", w.tree([5, 1.5])),
        ('BYE with the code "1000"', w.tree([6, "1000", "x"])),
        ("BYE with a number as its reason", w.tree([6, 1000, 5])),
    ]
    description = "ACK, READY, PING, PONG and BYE with a mistyped element are malformed"
    return Scenario("mistyped-elements", description, steps, sent=1)


@scenario
def unknown_type(w: Wire) -> Scenario:
    if w.trees:
        video: dict[str, Any] = {"$type": "bus.frame", "source": CLIENT, "target": SERVER}
        video["frame"] = {"$type": "myapp.video", "pixels": 3}
        frame_tag = w.tree(msg_tree(2, video))
    else:
        frame_tag = pb_msg(2, lambda message: setattr(message.frame.object, "type", "myapp.video"))
    steps = [
        ("MSG 1 whose message has the tag myapp.unknown", unknown_message(w, 1)),
        ("MSG 2: a bus.frame whose frame has the tag myapp.video", frame_tag),
        ("MSG 3", w.msg(3)),
    ]
    description = "an unregistered $type makes the MSG unknown_type; its seq is consumed"
    return Scenario("unknown-type", description, steps)


@scenario
def bad_fields(w: Wire) -> Scenario:
    if w.trees:
        no_frame = {"$type": "bus.frame", "source": CLIENT, "target": SERVER}
        extra = {"$type": "bus.message", "source": CLIENT, "target": SERVER, "color": "red"}
        text_frame = {"$type": "frame.text", "text": "hi"}
        source = {"$type": "bus.message", "source": 5, "target": SERVER}
        steps = [
            ("MSG 1: a bus.frame without its required frame", w.tree(msg_tree(1, no_frame))),
            ("MSG 2: a bus.message with an unknown field color", w.tree(msg_tree(2, extra))),
            ("MSG 3 carrying a frame.text, not a message", w.tree(msg_tree(3, text_frame))),
            ("MSG 4: a bus.message whose source is a number", w.tree(msg_tree(4, source))),
        ]
    else:
        steps = [
            ("MSG 1: a message without a body", pb_msg(1, lambda message: None)),
            (
                "MSG 2: a generic bus.end_worker with an unknown field color",
                pb_object(2, "bus.end_worker", {"color": "red"}),
            ),
            (
                "MSG 3: a generic Object frame.text, not a message",
                pb_object(3, "frame.text", {"text": "hi"}),
            ),
        ]
    steps.append((f"MSG {len(steps) + 1}", w.msg(len(steps) + 1)))
    description = "fields that do not fit the type (docs/protocol.md 4.1): malformed, seq consumed"
    return Scenario("bad-fields", description, steps)


@scenario
def bad_escapes(w: Wire) -> Scenario | None:
    if not w.trees:
        return None
    steps: list[Step] = [
        ("MSG 1: $bytes that is not base64", w.tree(msg_tree(1, data_tree({"$bytes": "no!"})))),
        (
            "MSG 2: a $dict entry that is no pair",
            w.tree(msg_tree(2, data_tree({"$dict": [["a"]]}))),
        ),
        ("MSG 3: a $tuple that is no array", w.tree(msg_tree(3, data_tree({"$tuple": 5})))),
        (
            "MSG 4: a map with an unescaped $ key",
            w.tree(msg_tree(4, data_tree({"$ref": 1, "y": 2}))),
        ),
        ("MSG 5", w.msg(5)),
    ]
    description = "escapes that break section 4.2 make the MSG malformed; the seq is consumed"
    return Scenario("bad-escapes", description, steps)


BAD_VALUES: dict[str, list[tuple[str, bytes]]] = {
    "json": [
        ("NaN", b"NaN"),
        ("Infinity", b"Infinity"),
        ("1e400 (overflows a double)", b"1e400"),
        ("a string that is not UTF-8 (the frame is not JSON; its seq is read)", b'"\xff\xfe"'),
    ],
    "msgpack": [
        ("a map with an integer key", b"\x81\x01\x02"),
        ("an extension type", b"\xd4\x01\x00"),
        ("the timestamp extension", b"\xd6\xff\x00\x00\x00\x00"),
        ("a str that is not UTF-8", b"\xa2\xff\xfe"),
    ],
}


@scenario
def bad_value(w: Wire) -> Scenario:
    if w.trees:
        steps = [
            (f"MSG {i}: bus.data holding {what}", w.splice(msg_tree(i, data_tree(BAD)), bad))
            for i, (what, bad) in enumerate(BAD_VALUES[w.name], 1)
        ]
    else:
        good = w.msg(1, "@@")
        steps = [("MSG 1: a frame.text that is not UTF-8", good.replace(b"@@", b"\xff\xfe"))]
    steps.append((f"MSG {len(steps) + 1}", w.msg(len(steps) + 1)))
    description = "a value the codec cannot represent costs only its MSG: malformed, seq consumed"
    return Scenario("bad-value", description, steps)


@scenario
def wrong_field_type(w: Wire) -> Scenario:
    # Our encoders write whatever the objects hold; the receiver checks the types.
    plain_map: Any = {"text": "hi"}
    five: Any = 5
    array: Any = [1]
    messages: list[tuple[str, BusMessage]] = [
        ("a bus.frame whose frame is a plain map", BusFrameMessage(CLIENT, SERVER, plain_map)),
        ("a frame.text whose text is 5", BusFrameMessage(CLIENT, SERVER, TextFrame(five))),
        ("a frame.audio_raw whose sample_rate is true", hi_audio(sample_rate=True)),
        ("a bus.data whose data is an array", BusDataMessage(CLIENT, SERVER, array)),
        ("a bus.end_worker whose reason is 5", BusEndWorkerMessage(CLIENT, SERVER, five)),
    ]
    steps = [(f"MSG {i}: {what}", w.env(Msg(i, m))) for i, (what, m) in enumerate(messages, 1)]
    steps.append(("MSG 6", w.msg(6)))
    description = "a field value of the wrong type (docs/protocol.md 4.1): malformed, seq consumed"
    return Scenario("wrong-field-type", description, steps)


def hi_audio(sample_rate: Any) -> BusFrameMessage:
    return BusFrameMessage(CLIENT, SERVER, AudioRawFrame(b"", sample_rate))


@scenario
def duplicate(w: Wire) -> Scenario:
    steps = [
        ("MSG 1", w.msg(1)),
        ("MSG 2", w.msg(2)),
        ("MSG 1 again", w.msg(1, "again")),
        ("MSG 2 again, now with an unknown type", unknown_message(w, 2)),
        ("MSG 3", w.msg(3)),
    ]
    description = "a MSG numbered at most the last one is a duplicate, decodable or not"
    return Scenario("duplicate", description, steps)


@scenario
def gap(w: Wire) -> Scenario:
    steps = [("MSG 1", w.msg(1)), ("MSG 3", w.msg(3))]
    description = "a gap in the numbering is a protocol error: BYE 1002, then close 1002"
    return Scenario("gap", description, steps)


@scenario
def undecodable_gap(w: Wire) -> Scenario:
    steps = [("MSG 1", w.msg(1)), ("MSG 3 with an unknown type", unknown_message(w, 3))]
    description = "a gap before a MSG that does not decode is the same protocol error"
    return Scenario("undecodable-gap", description, steps)


@scenario
def seq_zero(w: Wire) -> Scenario:
    note = "MSG 0" if w.trees else "MSG 0 (a Msg without seq: protobuf's default, 0)"
    description = "sequence numbers start at 1: seq 0 is a protocol error"
    return Scenario("seq-zero", description, [(note, w.msg(0))])


@scenario
def seq_negative(w: Wire) -> Scenario | None:
    if not w.trees:
        return None
    steps: list[Step] = [("MSG -1", w.tree(msg_tree(-1)))]
    return Scenario("seq-negative", "a negative seq is a protocol error", steps)


@scenario
def acks(w: Wire) -> Scenario:
    steps = [
        ("ACK 0", w.env(Ack(0))),
        ("ACK 1", w.env(Ack(1))),
        ("ACK 2", w.env(Ack(2))),
        ("ACK 1 again: already acknowledged, no effect", w.env(Ack(1))),
    ]
    description = "ACKs up to what the receiver sent (2 MSGs) are accepted silently"
    return Scenario("ack", description, steps, sent=2)


@scenario
def ack_unsent(w: Wire) -> Scenario:
    steps = [("ACK 2", w.env(Ack(2))), ("ACK 3", w.env(Ack(3)))]
    description = "an ACK for a MSG the receiver never sent (it sent 2) is a protocol error"
    return Scenario("ack-unsent", description, steps, sent=2)


def beyond(w: Wire, envelope: Envelope) -> bytes:
    """``envelope`` with its seq or nonce set to 2^53, beyond MAX_SAFE_INTEGER."""
    if w.trees:
        return w.tree([*tree(envelope)[:1], MAX_SAFE_INTEGER + 1, *tree(envelope)[2:]])
    kind = {Msg: "msg", Ack: "ack", Ping: "ping", Pong: "pong"}[type(envelope)]
    field = "nonce" if kind in ("ping", "pong") else "seq"
    return pb_from(
        w.env(envelope), lambda e: setattr(getattr(e, kind), field, MAX_SAFE_INTEGER + 1)
    )


@scenario
def over_limit(w: Wire) -> Scenario:
    steps = [
        ("MSG 2^53", beyond(w, Msg(1, hi("x")))),
        ("ACK 2^53", beyond(w, Ack(0))),
        ("PING 2^53", beyond(w, Ping(1))),
        ("PONG 2^53", beyond(w, Pong(1))),
    ]
    if w.trees:
        steps += [("ACK -1", w.tree([2, -1])), ("PING -1", w.tree([4, -1]))]
    steps.append(("MSG 1: the MSG 2^53 had no readable seq, so 1 is next", w.msg(1)))
    description = "an integer over 2^53 - 1 (or a negative counter) makes the frame malformed"
    return Scenario("over-limit", description, steps)


@scenario
def largest_seq_first(w: Wire) -> Scenario:
    steps = [("MSG 2^53 - 1", w.msg(MAX_SAFE_INTEGER))]
    description = "the largest seq is readable, so as the first MSG it is a gap"
    return Scenario("largest-seq-first", description, steps)


@scenario
def bye_code_out_of_range(w: Wire) -> Scenario:
    if w.trees:
        bad = w.tree([6, 999, "too low"])
    else:

        def change(envelope: Any) -> None:
            envelope.bye.code = 999

        bad = pb_from(w.env(Bye(1000, "too low")), change)
    steps = [("BYE 999", bad), ("MSG 1", w.msg(1))]
    description = "a BYE's code is a close code, 1000-4999: another makes it malformed"
    return Scenario("bye-code-out-of-range", description, steps)


@scenario
def json_not_utf8(w: Wire) -> Scenario | None:
    if w.name != "json":
        return None
    steps = [
        ("MSG 1 after a UTF-8 byte-order mark", b"\xef\xbb\xbf" + w.msg(1)),
        ("MSG 1 in UTF-16", w.msg(1).decode().encode("utf-16-le")),
        ("MSG 1", w.msg(1)),
    ]
    description = "json frames are UTF-8 without a byte-order mark; others are not JSON"
    return Scenario("json-not-utf8", description, steps)


EMPTY_BATCH = {"json": b"[7]", "msgpack": b"\x91\x07", "protobuf": b"\x3a\x00"}


@scenario
def empty_batch(w: Wire) -> Scenario:
    steps = [("an empty BATCH", EMPTY_BATCH[w.name]), ("MSG 1", w.msg(1))]
    return Scenario(
        "empty-batch", "a BATCH holds at least one frame: an empty one is malformed", steps
    )


@scenario
def batch(w: Wire) -> Scenario:
    frames = (w.msg(1), w.env(Ping(5)), w.env(Ready(CLIENT)), w.msg(2), w.env(Ack(1)))
    steps = [("BATCH of MSG 1, PING 5, READY acme, MSG 2, ACK 1", w.batch(*frames))]
    description = "a BATCH is processed in order as if each frame came alone"
    return Scenario("batch", description, steps, sent=1)


@scenario
def batch_bad_frame(w: Wire) -> Scenario:
    if w.name == "json":
        bad = w.splice(msg_tree(3, data_tree(BAD)), b"NaN")
        odd, what = w.tree([9]), "kind 9"
    elif w.name == "msgpack":
        bad = w.splice(msg_tree(3, data_tree(BAD)), b"\x81\x01\x02")
        odd, what = w.tree([9]), "kind 9"
    else:
        bad = w.msg(3, "@@").replace(b"@@", b"\xff\xfe")
        odd, what = b"\xff\xff\xff", "garbage"
    frames = (w.msg(1), unknown_message(w, 2), odd, bad, w.msg(4))
    note = f"BATCH of MSG 1, MSG 2 (unknown type), {what}, MSG 3 (a bad value), MSG 4"
    description = "each frame of a BATCH is decoded on its own: a bad one costs only itself"
    return Scenario("batch-bad-frame", description, [(note, w.batch(*frames))])


@scenario
def batch_unparsable(w: Wire) -> Scenario:
    whole = w.batch(w.msg(1), w.msg(2))
    if w.name == "json":
        data, what = whole[:-1] + b"\xff]", "a byte that is not UTF-8 before its end"
    else:
        data, what = whole[:-3], "cut short"
    steps = [
        (f"BATCH of MSG 1 and MSG 2, {what}", data),
        ("MSG 1: the numbers in that BATCH were not read", w.msg(1)),
    ]
    description = "a BATCH whose bytes do not parse as a whole is malformed as a whole"
    return Scenario("batch-unparsable", description, steps)


@scenario
def batch_in_batch(w: Wire) -> Scenario:
    inner = w.batch(w.msg(2))
    steps = [
        ("BATCH of MSG 1 and a BATCH holding MSG 2", w.batch(w.msg(1), inner)),
        ("MSG 2 alone: it was not read inside the BATCH", w.msg(2)),
    ]
    description = "a BATCH inside a BATCH is malformed; the frames around it count"
    return Scenario("batch-in-batch", description, steps)


@scenario
def ready(w: Wire) -> Scenario:
    steps = [
        ("READY acme", w.env(Ready(CLIENT))),
        ("READY someone-else", w.env(Ready("someone-else"))),
    ]
    description = (
        "the session reports every READY; our proxy then ignores a worker other than "
        "its remote one (acme) and counts it as dropped_in wrong_source (section 7)"
    )
    return Scenario("ready", description, steps)


@scenario
def ping_pong(w: Wire) -> Scenario:
    steps = [("PING 7", w.env(Ping(7))), ("PONG 99, for a PING never sent", w.env(Pong(99)))]
    description = "a PING is answered with a PONG of the same nonce; an unknown PONG is ignored"
    return Scenario("ping-pong", description, steps)


@scenario
def bye(w: Wire) -> Scenario:
    steps = [
        ("MSG 1", w.msg(1)),
        ("BATCH of MSG 2 and BYE 1000", w.batch(w.msg(2), w.env(Bye(1000, "deactivated")))),
    ]
    description = "a BYE is reported after the MSGs before it; the close handshake is section 9"
    return Scenario("bye", description, steps)


@scenario
def truncated(w: Wire) -> Scenario:
    steps = [
        ("MSG 1 cut after 12 bytes", w.msg(1, "a longer text")[:12]),
        ("MSG 2", w.msg(2)),
    ]
    description = "a MSG cut short is malformed, but its seq is read from its first bytes"
    return Scenario("truncated", description, steps)


def pk(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def non_canonical_bytes(w: Wire) -> bytes:
    """MSG 1 carrying bus.frame with frame.text "café", written as our encoder never writes it."""
    if w.name == "json":
        return (
            b' [ 1 ,\n 1 , { "target" : "assistant" , "frame" : { "text" : "caf\\u00e9" ,'
            b' "$type" : "frame.text" } , "source" : "\\u0061cme" , "$type" : "bus.frame" } ]\n'
        )
    if w.name == "msgpack":  # keys reordered, str 8 and uint 16 where fix formats would do
        frame = b"\x82" + pk("text") + b"\xd9\x05caf\xc3\xa9" + pk("$type") + pk("frame.text")
        message = b"\x84" + pk("target") + pk(SERVER) + pk("frame") + frame
        message += pk("source") + b"\xd9\x04acme" + pk("$type") + pk("bus.frame")
        return b"\x93\x01\xcd\x00\x01" + message
    # protobuf: the fields of Msg and of Message in reverse order
    parsed = envelope_pb2.Envelope.FromString(w.msg(1, "café")).msg
    body = parsed.message
    message = tag(4, body.frame.SerializeToString()) + tag(2, SERVER.encode()) + tag(1, b"acme")
    return tag(1, tag(2, message) + b"\x08\x01")


def tag(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (payloads under 128 bytes)."""
    assert len(payload) < 128
    return bytes((number << 3 | 2, len(payload))) + payload


@scenario
def non_canonical(w: Wire) -> Scenario:
    notes = {
        "json": "MSG 1 with whitespace, keys in another order and \\u escapes",
        "msgpack": "MSG 1 with keys in another order, str 8 and a uint 16 seq",
        "protobuf": "MSG 1 with its fields in reverse order",
    }
    steps = [(notes[w.name], non_canonical_bytes(w))]
    if w.name == "msgpack":
        data = w.splice(msg_tree(2, data_tree(BAD)), b"\xca" + struct.pack(">f", 2.5))
        steps.append(("MSG 2: bus.data holding 2.5 as a float 32", data))
    steps.append((f"MSG {len(steps) + 1}", w.msg(len(steps) + 1)))
    description = "a reader accepts any valid encoding, not only the bytes our encoder writes"
    return Scenario("non-canonical", description, steps)


@scenario
def defaults(w: Wire) -> Scenario | None:
    if not w.trees:
        return None  # protobuf: an absent field is its default by the schema
    audio = {"$type": "frame.audio_raw", "audio": {"$bytes": "AAE="}, "sample_rate": 8000}
    messages: list[tuple[str, dict[str, Any]]] = [
        ("a bus.message without target", {"$type": "bus.message", "source": CLIENT}),
        ("a bus.data without data", {"$type": "bus.data", "source": CLIENT, "target": SERVER}),
        ("a bus.activate without args", {"$type": "bus.activate", "source": CLIENT}),
        (
            "a frame.audio_raw without num_channels",
            {"$type": "bus.frame", "source": CLIENT, "target": SERVER, "frame": audio},
        ),
    ]
    steps = [
        (f"MSG {i}: {what}", w.tree(msg_tree(i, message)))
        for i, (what, message) in enumerate(messages, 1)
    ]
    description = (
        "a field left out takes its default (docs/protocol.md 4.4); our encoder writes all"
    )
    return Scenario("defaults", description, steps)


# ---------------------------------------------------------------- running them


def session_vectors() -> list[dict[str, Any]]:
    vectors = []
    for name in CODECS:
        for build in SCENARIOS:
            built = build(Wire(name))
            if built is not None:
                vectors.append(run(name, built))
    return vectors


def run(codec_name: str, sc: Scenario) -> dict[str, Any]:
    """Feed ``sc`` to a fresh Session; return the scenario with its outcome."""
    codec = CODECS[codec_name]
    session = Session(
        codec, session_id=SESSION_ID, peer_max_message_bytes=LIMIT, batch=True, now=0.0
    )
    for _ in range(sc.sent):
        session.send_message(BusFrameMessage(SERVER, CLIENT, TextFrame("reply")))
    steps = []
    failed = False
    for i, (note, data) in enumerate(sc.steps):
        step: dict[str, Any] = {"note": note, "hex": data.hex()}
        if codec_name == "json":
            step.update(text(data))
        try:
            event = session.receive(data, 0.0)
        except ProtocolError as exc:
            assert i == len(sc.steps) - 1, f"{sc.name}: steps after the protocol error"
            bye = tree(codec.decode(session.bye_frame(1002, str(exc))))
            step["error"] = {"bye": bye, "close": {"code": 1002, "reason": bye[2]}}
            failed = True
        else:
            step["events"] = events(event)
            step["replies"] = [tree(codec.decode(f)) for f in session.data_to_send()]
        steps.append(step)
    owed = None if failed else session.ack_frame()
    ack = None if owed is None else tree(codec.decode(owed))[1]
    head = {"name": sc.name, "description": sc.description, "codec": codec_name, "sent": sc.sent}
    return head | {"steps": steps, "ack": ack}


def events(event: Event | None) -> list[dict[str, Any]]:
    if event is None:
        return []
    if isinstance(event, BatchReceived):
        return [one_event(e) for e in event.events]
    return [one_event(event)]


def one_event(event: Event) -> dict[str, Any]:
    if isinstance(event, MessageReceived):
        message = message_tree(event.message)
        assert not integral_floats(message), message  # see frame_vectors
        return {"event": "message", "seq": event.seq, "message": message}
    if isinstance(event, MessageUndecodable):
        return {"event": "drop", "reason": event.reason.value, "seq": event.seq}
    if isinstance(event, DuplicateDiscarded):
        return {"event": "duplicate", "seq": event.seq}
    if isinstance(event, RemoteReady):
        return {"event": "ready", "worker": event.worker}
    if isinstance(event, ByeReceived):
        return {"event": "bye", "code": event.code, "reason": event.reason}
    raise AssertionError(f"no scenario should produce {event!r}")


# ================================================================ the files


def documents() -> dict[str, dict[str, Any]]:
    """Return {file name: content} of every generated file."""
    return {
        "frames.json": {"kind": "frames", **HEADER, "vectors": frame_vectors()},
        "handshake.json": {
            "kind": "handshake",
            **HEADER,
            "frames": handshake_frame_vectors(),
            "server": {
                "worker": SERVER,
                "remote_worker": CLIENT,
                "codecs": list(SERVER_CODECS),
                "features": list(SERVER_FEATURES),
            },
            "server_cases": server_case_vectors(),
            "client": {"codecs": list(CLIENT_CODECS)},
            "client_cases": client_case_vectors(),
        },
        "sessions.json": {
            "kind": "sessions",
            **HEADER,
            "receiver": {
                "worker": SERVER,
                "remote_worker": CLIENT,
                "max_message_bytes": LIMIT,
                "batch": True,
            },
            "scenarios": session_vectors(),
        },
    }


def render(document: dict[str, Any]) -> bytes:
    """JSON in UTF-8, keys in the order written, a final newline; see :func:`_dump` for layout."""
    return (_dump(document, 0) + "\n").encode()


def _dump(value: Any, indent: int, used: int = 0) -> str:
    """``value`` on one line if it fits in WIDTH columns (``used`` of them taken), else expanded."""
    flat = json.dumps(value, ensure_ascii=False)
    if not isinstance(value, list | dict) or not value or indent + used + len(flat) <= WIDTH:
        return flat
    pad = " " * (indent + 2)
    if isinstance(value, list):
        lines = [pad + _dump(item, indent + 2) for item in value]
        return "[\n" + ",\n".join(lines) + "\n" + " " * indent + "]"
    lines = []
    for key, item in value.items():
        name = json.dumps(key, ensure_ascii=False) + ": "
        lines.append(pad + name + _dump(item, indent + 2, len(name)))
    return "{\n" + ",\n".join(lines) + "\n" + " " * indent + "}"


WIDTH = 100


def main(argv: Sequence[str] | None = None) -> int:
    """Write the vector files (or with ``--check``, compare them); return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="do not write; exit 1 if a committed file differs"
    )
    args = parser.parse_args(argv)
    expected = {name: render(doc) for name, doc in documents().items()}
    changed = [n for n, data in expected.items() if not _same_file(OUT / n, data)]
    where = OUT.relative_to(ROOT).as_posix()
    if args.check:
        if changed:
            names = ", ".join(f"{where}/{n}" for n in changed)
            print(
                f"{names} differ from the code; run: python scripts/gen_vectors.py", file=sys.stderr
            )
            return 1
        print(f"protocol vectors are current ({len(expected)} files)")
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name in changed:
        (OUT / name).write_bytes(expected[name])
        print(f"wrote {where}/{name}")
    if not changed:
        print(f"protocol vectors are current ({len(expected)} files)")
    return 0


def _same_file(path: Path, data: bytes) -> bool:
    return path.is_file() and path.read_bytes() == data


if __name__ == "__main__":
    sys.exit(main())
