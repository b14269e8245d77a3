"""Run the protocol's test vectors (``docs/protocol-vectors/``) against proxy-core.

This is the runner a peer in another language mirrors (``docs/protocol.md``
section 16): it reads the committed JSON files and checks our codecs, our
handshake functions and a fresh sans-I/O :class:`Session` against every vector,
without the generator. Values are compared in the vectors' notation, the json
codec's tree, as JSON values: maps in any order, but ``1``, ``1.0`` and ``true``
all different. The last tests check the files against their schema and against
the code that wrote them (``scripts/gen_vectors.py --check``).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from proxy_core.codecs.base import Codec
from proxy_core.codecs.json import JsonCodec
from proxy_core.codecs.msgpack import MsgpackCodec
from proxy_core.codecs.protobuf import ProtobufCodec
from proxy_core.errors import HandshakeError, ProtocolError, SessionRejected
from proxy_core.messages import BusMessage
from proxy_core.protocol import (
    Batch,
    CloseCode,
    Envelope,
    Msg,
    Reject,
    decode_handshake,
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
VECTORS = ROOT / "docs" / "protocol-vectors"


def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


FRAMES = load("frames.json")["vectors"]
HANDSHAKE = load("handshake.json")
SESSIONS = load("sessions.json")
CODECS: dict[str, Codec] = {
    "json": JsonCodec(),
    "msgpack": MsgpackCodec(),
    "protobuf": ProtobufCodec(),
}


def named(vector: dict[str, Any]) -> str:
    return f"{vector['codec']}-{vector['name']}" if "codec" in vector else vector["name"]


def same(a: Any, b: Any) -> bool:
    """Equal as JSON values: maps unordered; ``1``, ``1.0`` and ``true`` are three values."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def as_tree(frame: Envelope | Batch) -> Any:
    """A decoded frame in the vectors' notation: the json codec's tree."""
    if isinstance(frame, Batch):
        return [7, *(as_tree(item) for item in frame.items)]
    return json.loads(CODECS["json"].encode(frame))


def from_tree(value: Any) -> Envelope | Batch:
    """The frame a tree stands for (the json codec reads the tree written as JSON)."""
    return CODECS["json"].decode(json.dumps(value).encode())


# ================================================================ frames.json


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("vector", FRAMES, ids=named)
def test_frame_decodes_to_its_value(vector: dict[str, Any], codec: str) -> None:
    frame = CODECS[codec].decode(bytes.fromhex(vector["hex"][codec]))
    assert same(as_tree(frame), vector["value"])


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("vector", FRAMES, ids=named)
def test_frame_encodes_to_its_bytes(vector: dict[str, Any], codec: str) -> None:
    frame, encoder = from_tree(vector["value"]), CODECS[codec]
    if isinstance(frame, Batch):  # each frame encoded alone, then wrapped
        data = encoder.encode_batch([encoder.encode(item) for item in frame.items])
    else:
        data = encoder.encode(frame)
    assert data.hex() == vector["hex"][codec]


# ================================================================ handshake.json


@pytest.mark.parametrize("vector", HANDSHAKE["frames"], ids=named)
def test_handshake_frame(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    assert same(json.loads(data), vector["object"])
    assert encode_handshake(decode_handshake(data)) == data


@pytest.mark.parametrize("case", HANDSHAKE["server_cases"], ids=named)
def test_server_answers_hello(case: dict[str, Any]) -> None:
    server = HANDSHAKE["server"]
    result = server_negotiate(
        bytes.fromhex(case["hex"]),
        [CODECS[name] for name in server["codecs"]],
        worker_name=server["worker"],
        remote_worker_name=server["remote_worker"],
    )
    if isinstance(result, Reject):
        got: dict[str, Any] = {"reject": {"code": result.code, "reason": result.reason}}
    else:
        hello, codec = result
        features = [f for f in common_features(hello.features, codec) if f in server["features"]]
        hello_fields = dataclasses.asdict(hello)
        got = {"accept": {"codec": codec.name, "features": features, "hello": hello_fields}}
    assert same(got, case["expect"])


@pytest.mark.parametrize("case", HANDSHAKE["client_cases"], ids=named)
def test_client_reads_answer(case: dict[str, Any]) -> None:
    offered = [CODECS[name] for name in HANDSHAKE["client"]["codecs"]]
    try:
        welcome, codec = client_accept(bytes.fromhex(case["hex"]), offered)
    except SessionRejected as exc:
        got: dict[str, Any] = {"rejected": {"code": exc.code, "reason": exc.reason}}
    except HandshakeError as exc:  # our client then closes with 1002
        got = {"fail": {"close_code": CloseCode.PROTOCOL_ERROR, "error": str(exc)}}
    else:
        got = {"accept": {"codec": codec.name, "welcome": dataclasses.asdict(welcome)}}
    assert same(got, case["expect"])


# ================================================================ sessions.json


def event_tree(event: Event) -> dict[str, Any]:
    """One event of our Session in the vectors' notation."""
    match event:
        case MessageReceived(seq=seq, message=message):
            return {"event": "message", "seq": seq, "message": as_tree(Msg(seq, message))[2]}
        case MessageUndecodable(seq=seq, reason=reason):
            return {"event": "drop", "reason": reason.value, "seq": seq}
        case DuplicateDiscarded(seq=seq):
            return {"event": "duplicate", "seq": seq}
        case RemoteReady(worker=worker):
            return {"event": "ready", "worker": worker}
        case ByeReceived(code=code, reason=reason):
            return {"event": "bye", "code": code, "reason": reason}
    raise AssertionError(f"no vector describes {event!r}")


def events_of(event: Event | None) -> list[dict[str, Any]]:
    if event is None:  # an ACK, a PING, a PONG: nothing to report
        return []
    if isinstance(event, BatchReceived):
        return [event_tree(e) for e in event.events]
    return [event_tree(event)]


@pytest.mark.parametrize("scenario", SESSIONS["scenarios"], ids=named)
def test_session_scenario(scenario: dict[str, Any]) -> None:
    receiver, codec = SESSIONS["receiver"], CODECS[scenario["codec"]]
    session = Session(
        codec,
        session_id="vectors",
        peer_max_message_bytes=receiver["max_message_bytes"],
        batch=receiver["batch"],
        now=0.0,
    )
    for _ in range(scenario["sent"]):  # MSGs the receiver sent, unacknowledged
        session.send_message(BusMessage(receiver["worker"], receiver["remote_worker"]))
    for step in scenario["steps"]:
        data = bytes.fromhex(step["hex"])
        if "error" in step:
            with pytest.raises(ProtocolError) as error:
                session.receive(data, 0.0)
            # The proxy then sends this BYE and closes with its code and reason.
            bye = as_tree(
                codec.decode(session.bye_frame(CloseCode.PROTOCOL_ERROR, str(error.value)))
            )
            assert same(bye, step["error"]["bye"]), step["note"]
            assert same({"code": bye[1], "reason": bye[2]}, step["error"]["close"])
            assert step is scenario["steps"][-1] and scenario["ack"] is None
            return
        assert same(events_of(session.receive(data, 0.0)), step["events"]), step["note"]
        replies = [as_tree(codec.decode(frame)) for frame in session.data_to_send()]
        assert same(replies, step["replies"]), step["note"]
    owed = session.ack_frame()
    assert (None if owed is None else as_tree(codec.decode(owed))[1]) == scenario["ack"]


# ================================================================ the files themselves


def test_files_follow_their_schema() -> None:
    jsonschema = pytest.importorskip(
        "jsonschema",
        reason="jsonschema is not installed; the dev extra has it (python3 scripts/dev.py test)",
    )
    validator = jsonschema.Draft202012Validator(load("schema.json"))
    for name in ("frames.json", "handshake.json", "sessions.json"):
        errors = [
            f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(load(name))
        ]
        assert not errors, f"{name}: {errors[:5]}"


def test_names_are_unique() -> None:
    for vectors in (FRAMES, *(HANDSHAKE[k] for k in ("frames", "server_cases", "client_cases"))):
        assert len({v["name"] for v in vectors}) == len(vectors)
    assert len({named(s) for s in SESSIONS["scenarios"]}) == len(SESSIONS["scenarios"])


def test_frames_cover_every_kind_and_builtin_message() -> None:
    assert {v["value"][0] for v in FRAMES} == set(range(1, 8))
    tags = {v["value"][2]["$type"] for v in FRAMES if v["value"][0] == 1}
    crossing = {"bus.message", "bus.frame", "bus.data", "bus.activate", "bus.deactivate"}
    assert crossing | {"bus.end_worker"} <= tags


def test_vectors_match_the_code() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_vectors.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
