"""docs/protocol.md against the code: every example byte string in it is what the code writes.

The page says its example bytes "were produced by running those codecs"; this test
keeps that true. It reads the markdown (headings, paragraphs, code fences), finds
each example by the heading and the sentence that introduce it, and compares it
with what the handshake functions, the codecs and two :class:`Session` objects
produce today: the HELLO, WELCOME and REJECT examples with their byte counts, the
BATCH bytes of section 3, the trees and hex dumps of sections 4.1, 4.4 and 13, the
protobuf bytes of section 4.5, the json session of section 13 line by line, and
the snippet that section offers to reproduce them. An edit to either side that
makes them disagree fails here, naming the example.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy_core import (
    AudioRawFrame,
    BusActivateWorkerMessage,
    BusDataMessage,
    BusFrameMessage,
    TextFrame,
)
from proxy_core.codecs.base import Codec
from proxy_core.codecs.json import JsonCodec
from proxy_core.codecs.msgpack import MsgpackCodec
from proxy_core.protocol import (
    Ack,
    Hello,
    Msg,
    Ping,
    Reject,
    RejectCode,
    Welcome,
    decode_handshake,
    encode_handshake,
)
from proxy_core.session import (
    Session,
    client_hello,
    common_features,
    new_session_id,
    server_negotiate,
)
from proxy_core.transport import MAX_REASON_BYTES, check_authentication

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"

CLIENT_WORKER = "acme"
SERVER_WORKER = "assistant"
LIMIT = 1048576
# The one value the code draws at random; the examples show this one.
SESSION_ID = "5f0c3e1a9b7d4c2e8a6f1b3d5c7e9a0b"


# ================================================================ reading the markdown


@dataclass(frozen=True)
class Block:
    """A heading, a paragraph (consecutive lines of text) or a fenced code block."""

    kind: str  # "heading", "text" or "fence"
    text: str
    level: int = 0  # headings: the number of #


def parse(markdown: str) -> list[Block]:
    """Split ``markdown`` into blocks; a ``#`` inside a code fence is not a heading."""
    blocks: list[Block] = []
    paragraph: list[str] = []
    fence: list[str] | None = None

    def flush() -> None:
        if paragraph:
            blocks.append(Block("text", "\n".join(paragraph)))
            paragraph.clear()

    for line in markdown.splitlines():
        if fence is not None:
            if line.startswith("```"):
                blocks.append(Block("fence", "\n".join(fence)))
                fence = None
            else:
                fence.append(line)
        elif line.startswith("```"):
            flush()
            fence = []
        elif match := re.match(r"(#{1,6}) (.+)", line):
            flush()
            blocks.append(Block("heading", match[2].strip(), len(match[1])))
        elif line.strip():
            paragraph.append(line)
        else:
            flush()
    assert fence is None, "docs/protocol.md has a code fence that is never closed"
    flush()
    return blocks


BLOCKS = parse(DOC.read_text(encoding="utf-8"))


def section(title: str) -> list[Block]:
    """The blocks under the one heading that starts with ``title``, subsections included."""
    starts = [i for i, b in enumerate(BLOCKS) if b.kind == "heading" and b.text.startswith(title)]
    assert len(starts) == 1, f"expected one heading starting with {title!r} in protocol.md"
    level = BLOCKS[starts[0]].level
    body: list[Block] = []
    for block in BLOCKS[starts[0] + 1 :]:
        if block.kind == "heading" and block.level <= level:
            break
        body.append(block)
    return body


def text_of(blocks: list[Block]) -> str:
    """The prose of ``blocks`` (fences left out), one paragraph per line."""
    return "\n".join(" ".join(b.text.split()) for b in blocks if b.kind == "text")


def fence_after(blocks: list[Block], marker: str) -> str:
    """The code fence that follows the paragraph containing ``marker``."""
    for i, block in enumerate(blocks):
        if block.kind == "text" and marker in " ".join(block.text.split()):
            rest = blocks[i + 1 :]
            assert rest and rest[0].kind == "fence", f"no code block right after {marker!r}"
            return rest[0].text
    raise AssertionError(f"no paragraph containing {marker!r}")


def find(pattern: str, text: str) -> re.Match[str]:
    """The one match of ``pattern`` in ``text``."""
    matches = list(re.finditer(pattern, text))
    assert len(matches) == 1, f"expected one match of {pattern!r}, found {len(matches)}"
    return matches[0]


def hex_bytes(dump: str) -> bytes:
    """Bytes from a hex dump: on each line, the hex before any annotation (2+ spaces)."""
    out = bytearray()
    for line in dump.splitlines():
        column = re.split(r"\s{2,}", line.strip())[0]
        for token in column.split():
            assert re.fullmatch(r"[0-9a-f]{2}", token), f"not a hex byte: {token!r} in {line!r}"
            out.append(int(token, 16))
    return bytes(out)


def hex_of(data: bytes) -> str:
    return data.hex(" ")


# ================================================================ what the code writes


@dataclass(frozen=True)
class Step:
    """One frame of the session of section 13, as each codec writes it."""

    number: int
    direction: str  # "C → S" or "S → C"
    kind: str
    frames: dict[str, bytes]  # codec name -> bytes


def frame_5() -> BusFrameMessage:
    return BusFrameMessage(CLIENT_WORKER, SERVER_WORKER, TextFrame("hello"))


def handshake(codec_names: tuple[str, ...], features: bool) -> tuple[bytes, bytes, Codec]:
    """HELLO as our client writes it and WELCOME as our server answers it."""
    codecs: dict[str, Codec] = {"msgpack": MsgpackCodec(), "json": JsonCodec()}
    hello = client_hello(
        [codecs[name] for name in codec_names],
        client_worker=CLIENT_WORKER,
        server_worker=SERVER_WORKER,
        max_message_bytes=LIMIT,
        **({} if features else {"features": ()}),
    )
    negotiated = server_negotiate(
        hello,
        [MsgpackCodec(), JsonCodec()],
        worker_name=SERVER_WORKER,
        remote_worker_name=CLIENT_WORKER,
    )
    assert not isinstance(negotiated, Reject), negotiated
    received, codec = negotiated
    welcome = Welcome(
        codec=codec.name,
        session_id=SESSION_ID,
        ready=(SERVER_WORKER,),
        max_message_bytes=LIMIT,
        features=common_features(received.features, codec),
    )
    return hello, encode_handshake(welcome), codec


def session_steps(codec_names: tuple[str, ...], features: bool) -> list[Step]:
    """Play section 13 with two sessions; return every frame, handshake included."""
    hello, welcome, codec = handshake(codec_names, features)
    steps = [
        Step(1, "C → S", "HELLO", {codec.name: hello}),
        Step(2, "S → C", "WELCOME", {codec.name: welcome}),
    ]
    client = Session(codec, session_id=SESSION_ID, peer_max_message_bytes=LIMIT, now=0.0)
    server = Session(codec, session_id=SESSION_ID, peer_max_message_bytes=LIMIT, now=0.0)

    def step(number: int, direction: str, kind: str, data: bytes | None) -> None:
        assert data is not None
        (server if direction == "C → S" else client).receive(data, 0.0)
        steps.append(Step(number, direction, kind, {codec.name: data}))

    activate = BusActivateWorkerMessage(CLIENT_WORKER, SERVER_WORKER, {"caller": CLIENT_WORKER})
    reply = BusFrameMessage(SERVER_WORKER, CLIENT_WORKER, TextFrame("hi"))
    step(3, "C → S", "READY", client.ready_frame(CLIENT_WORKER))
    step(4, "C → S", "MSG", client.send_message(activate))
    step(5, "C → S", "MSG", client.send_message(frame_5()))
    step(6, "S → C", "MSG", server.send_message(reply))
    step(7, "S → C", "ACK", server.ack_frame())
    step(8, "C → S", "ACK", client.ack_frame())
    step(9, "S → C", "PING", server.ping_frame(0.0))
    (pong,) = client.data_to_send()
    step(10, "C → S", "PONG", pong)
    step(11, "C → S", "BYE", client.bye_frame(1000, "deactivated"))
    # The BYE handshake (section 9): everything before the BYE is acknowledged
    # already (frame 7), so the server answers at once, as _link's responder does.
    assert server.ack_frame() is None
    step(12, "S → C", "BYE", server.bye_frame(1000, "bye"))
    return steps


MSGPACK_STEPS = session_steps(("msgpack", "json"), features=True)
JSON_STEPS = session_steps(("json",), features=False)
# The tree of each frame after the handshake in JSON notation: the json codec's bytes.
TREES = {
    s.number: JsonCodec().encode(MsgpackCodec().decode(s.frames["msgpack"]))  # type: ignore[arg-type]
    for s in MSGPACK_STEPS[2:]
}
HELLO = MSGPACK_STEPS[0].frames["msgpack"]
WELCOME = MSGPACK_STEPS[1].frames["msgpack"]


def test_the_scenario_itself() -> None:
    # The session of section 13 is the normal one: features agreed, frames as the
    # json session with another codec (the same trees).
    assert [s.kind for s in MSGPACK_STEPS] == [s.kind for s in JSON_STEPS]
    for mine, theirs in zip(MSGPACK_STEPS[2:], JSON_STEPS[2:], strict=True):
        assert TREES[mine.number] == theirs.frames["json"]
    assert len(new_session_id()) == len(SESSION_ID)
    assert re.fullmatch(r"[0-9a-f]{32}", SESSION_ID)


# ================================================================ section 2: the handshake


def example(title: str) -> tuple[bytes, int]:
    """The JSON example under heading ``title`` and the byte count it states."""
    blocks = section(title)
    count = int(find(r"Example \((\d+) bytes\):", text_of(blocks))[1])
    return fence_after(blocks, "Example (").encode(), count


def test_hello_example() -> None:
    data, count = example("HELLO")
    assert data == HELLO
    assert len(data) == count
    first = find(r"The first bytes in hex: `([0-9a-f ]+?) \.\.\.`", text_of(section("HELLO")))
    assert HELLO.startswith(hex_bytes(first[1]))


def test_welcome_example() -> None:
    data, count = example("WELCOME")
    assert data == WELCOME
    assert len(data) == count
    # Section 10 quotes the size of this WELCOME.
    limits = text_of(section("10. Limits"))
    assert int(find(r"\((\d+) for the WELCOME in the example above\)", limits)[1]) == count


async def test_reject_example() -> None:
    blocks = section("REJECT (")
    data, count = example("REJECT (")
    refusal = await check_authentication(lambda headers: False, {})
    assert refusal is not None
    expected = encode_handshake(Reject(RejectCode.UNAUTHORIZED, refusal))
    assert data == expected
    assert len(data) == count
    assert hex_bytes(fence_after(blocks, "In hex:")) == expected


def test_handshake_examples_decode_to_what_they_say() -> None:
    hello = decode_handshake(HELLO)
    assert isinstance(hello, Hello)
    assert hello.codecs == ("msgpack", "json") and hello.features == ("batch", "resume")
    welcome = decode_handshake(WELCOME)
    assert isinstance(welcome, Welcome)
    assert welcome.ready == (SERVER_WORKER,) and welcome.features == ("batch", "resume")


def test_non_ascii_example() -> None:
    prose = text_of(section("2. The handshake"))
    match = find(r"a worker `([^`]+)` travels as the bytes `([0-9a-f ]+)`", prose)
    name, shown = match[1], hex_bytes(match[2])
    assert shown == name.encode("utf-8")
    data = encode_handshake(Hello(("json",), name, SERVER_WORKER, LIMIT))
    assert b'"client_worker":"' + shown + b'"' in data


def bad_hello(**fields: object) -> bytes:
    body = json.loads(HELLO)
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


def test_reject_reason_examples() -> None:
    # Each reason quoted in section 2, and a HELLO that gets it.
    faults = [
        b"not json",
        b"[]",
        bad_hello(protocol="pipecat"),
        bad_hello(type="welcome"),
        bad_hello(codecs=None),
        bad_hello(version="1"),
    ]
    reasons = []
    for data in faults:
        result = server_negotiate(
            data, [JsonCodec()], worker_name=SERVER_WORKER, remote_worker_name=CLIENT_WORKER
        )
        assert isinstance(result, Reject) and result.code == RejectCode.BAD_HELLO, result
        reasons.append(result.reason)
    paragraph = next(
        b.text for b in section("Reject codes") if b.text.startswith("The reason of a REJECT 4000")
    )
    quoted = re.findall(r"`([^`]+)`", " ".join(paragraph.split()))
    quoted = [q for q in quoted if q != "HandshakeError"]
    assert len(quoted) == len(reasons)
    for shown, reason in zip(quoted, reasons, strict=True):
        if shown.endswith(" ..."):
            assert reason.startswith(shown.removesuffix("..."))
        else:
            assert reason == shown


def test_reason_limit() -> None:
    rule = text_of(section("1. What the transport must provide"))
    limit = int(
        find(r"\*\*Reasons\*\*, of a close, a BYE or a REJECT, are at most (\d+) bytes", rule)[1]
    )
    assert limit == MAX_REASON_BYTES


# ================================================================ section 3: BATCH


@pytest.mark.parametrize("codec", [JsonCodec(), MsgpackCodec()], ids=["json", "msgpack"])
def test_batch_example(codec: Codec) -> None:
    prose = text_of(section("3. Frames after the handshake"))
    match = find(r"in one BATCH are `([^`]+)` in json and `([0-9a-f ]+)` in msgpack", prose)
    session = Session(codec, session_id=SESSION_ID, peer_max_message_bytes=LIMIT, now=0.0)
    batch = session.batch_frame([codec.encode(Ack(2)), codec.encode(Ping(1))])
    shown = match[1].encode() if codec.name == "json" else hex_bytes(match[2])
    assert batch == shown
    decoded = codec.decode(batch)
    assert getattr(decoded, "items", None) == (Ack(2), Ping(1))


# ================================================================ section 4: encoding


def test_type_map_example() -> None:
    shown = fence_after(section("4.1 "), "beside one entry per constructor").encode()
    assert JsonCodec().encode(Msg(2, frame_5())) == b"[1,2," + shown + b"]"


def audio_msg() -> Msg:
    audio = AudioRawFrame(audio=b"\x00\x01\x02\x03", sample_rate=16000, num_channels=1)
    return Msg(3, BusFrameMessage(CLIENT_WORKER, SERVER_WORKER, audio))


def data_msg() -> Msg:
    data = {"$ref": "x", "pair": (1, 2.5), "ok": True, "none": None}
    return Msg(4, BusDataMessage(CLIENT_WORKER, SERVER_WORKER, data))


def test_wire_tag_examples() -> None:
    blocks = section("4.4 ")
    json_line, hex_dump = fence_after(blocks, "Examples (json, then msgpack hex)").split("\n", 1)
    assert json_line.encode() == JsonCodec().encode(audio_msg())
    packed = MsgpackCodec().encode(audio_msg())
    assert hex_bytes(hex_dump) == packed
    # "checked by decoding them back"
    assert JsonCodec().decode(json_line.encode()) == audio_msg()
    assert MsgpackCodec().decode(hex_bytes(hex_dump)) == audio_msg()
    notes = text_of(blocks)
    for shown in re.findall(r"`((?:[0-9a-f]{2} )+[0-9a-f]{2})` is ", notes):
        assert hex_of(hex_bytes(shown)) in hex_of(packed), shown
    dict_line = fence_after(blocks, "A dict with a `$` key and a tuple")
    assert dict_line.encode() == JsonCodec().encode(data_msg())
    assert JsonCodec().decode(dict_line.encode()) == data_msg()


def test_protobuf_example() -> None:
    pytest.importorskip(
        "google.protobuf",
        reason="the protobuf codec needs the protobuf package: pip install 'proxy-core[protobuf]'",
    )
    from proxy_core.codecs.protobuf import ProtobufCodec

    codec = ProtobufCodec()
    blocks = section("4.5 ")
    prose = text_of(blocks)
    intro = find(
        r"MSG 2 carrying `BusFrameMessage\(\"acme\", \"assistant\", TextFrame\(\"hello\"\)\)` "
        r"is (\d+) bytes; ACK 2 is `([0-9a-f ]+)` and PING 1 is `([0-9a-f ]+)`",
        prose,
    )
    encoded = codec.encode(Msg(2, frame_5()))
    assert hex_bytes(fence_after(blocks, "MSG 2 carrying")) == encoded
    assert len(encoded) == int(intro[1])
    assert hex_bytes(intro[2]) == codec.encode(Ack(2))
    assert hex_bytes(intro[3]) == codec.encode(Ping(1))


# ================================================================ section 13: a session


@dataclass(frozen=True)
class Row:
    number: int
    direction: str
    frame: str
    data: str


def table_rows() -> Iterator[Row]:
    table = next(b for b in section("13. A complete session") if b.text.startswith("| # |"))
    for line in table.text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0].isdigit():
            number, direction, frame, data = cells
            yield Row(int(number), direction, frame, data)


def code_spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_session_table() -> None:
    rows = list(table_rows())
    assert [r.number for r in rows] == [s.number for s in MSGPACK_STEPS]
    for row, step in zip(rows, MSGPACK_STEPS, strict=True):
        data = step.frames["msgpack"]
        where = f"section 13, frame {row.number}"
        assert row.direction == step.direction, where
        assert row.frame.split()[0] == step.kind, where
        if step.kind in ("HELLO", "WELCOME"):
            (shown,) = code_spans(row.data)
            assert shown.encode() == data, where
            assert int(find(r"\((\d+) bytes", row.data)[1]) == len(data), where
            continue
        tree = code_spans(row.frame)
        if tree:  # READY `[3,"acme"]`: the tree in JSON notation
            assert tree == [TREES[step.number].decode()], where
        if row.data.startswith("see below"):
            assert int(find(r"\((\d+) bytes\)", row.data)[1]) == len(data), where
        else:
            (shown,) = code_spans(row.data)
            assert hex_bytes(shown) == data, where


@pytest.mark.parametrize("number", [4, 5, 6])
def test_session_frames_below_the_table(number: int) -> None:
    blocks = section("13. A complete session")
    marker = f"Frame {number}, `"
    paragraph = next(b.text for b in blocks if b.kind == "text" and b.text.startswith(marker))
    tree = code_spans(paragraph)[0]
    assert tree.encode() == TREES[number]
    assert hex_bytes(fence_after(blocks, marker)) == MSGPACK_STEPS[number - 1].frames["msgpack"]


def test_ready_sent_later() -> None:
    prose = text_of(section("13. A complete session"))
    match = find(r"the server would send `(\[3,\"assistant\"\])`, `([0-9a-f ]+)`", prose)
    assert 'WELCOME would say `"ready":[]`' in prose
    session = Session(MsgpackCodec(), session_id=SESSION_ID, peer_max_message_bytes=LIMIT, now=0)
    assert hex_bytes(match[2]) == session.ready_frame(SERVER_WORKER)
    assert match[1].encode() == JsonCodec().encode(MsgpackCodec().decode(hex_bytes(match[2])))  # type: ignore[arg-type]


def test_json_session_line_by_line() -> None:
    blocks = section("The same session with the json codec")
    lines = fence_after(blocks, "every later frame is the UTF-8 text below").splitlines()
    assert len(lines) == len(JSON_STEPS), "one line per frame of the session"
    for line, step in zip(lines, JSON_STEPS, strict=True):
        direction, text = find(r"^(C→S|S→C)  (.+)$", line).groups()
        assert direction == step.direction.replace(" ", ""), f"frame {step.number}"
        assert text.encode() == step.frames["json"], f"frame {step.number}"


def test_reproduction_snippet() -> None:
    pytest.importorskip(
        "google.protobuf",
        reason="the snippet uses the protobuf codec: pip install 'proxy-core[protobuf]'",
    )
    blocks = section("13. A complete session")
    snippet = fence_after(blocks, "To reproduce or check bytes")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(snippet, "protocol.md", "exec"), {})
    printed = out.getvalue().splitlines()
    hello = encode_handshake(
        Hello(
            codecs=("msgpack", "json"),
            client_worker=CLIENT_WORKER,
            server_worker=SERVER_WORKER,
            max_message_bytes=LIMIT,
        )
    )
    json_session = fence_after(
        section("The same session with the json codec"), "every later frame is the UTF-8 text"
    )
    assert printed == [
        repr(hello),
        repr(json_session.splitlines()[4].split("  ", 1)[1].encode()),
        hex_of(hex_bytes(fence_after(blocks, "Frame 5, `"))),
        hex_of(hex_bytes(fence_after(section("4.5 "), "MSG 2 carrying"))),
    ]
