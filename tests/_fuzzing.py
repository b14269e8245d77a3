"""Shared pieces of the fuzz tests: codecs, seed frames, byte mutations, and what "only
the documented error" means for a decoder.

The fuzz tests (``test_fuzz_codecs.py``, ``test_fuzz_session.py``,
``test_fuzz_server.py``) are sized for CI. ``PROXY_CORE_FUZZ_SCALE`` multiplies
every example count and mutation round for a longer campaign, for example
``PROXY_CORE_FUZZ_SCALE=50 .venv/bin/pytest tests/test_fuzz_codecs.py``;
``PROXY_CORE_FUZZ_SEED`` moves the seeded (non-hypothesis) loops to other seeds.
See ``docs/fuzzing.md``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, get_args

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from proxy_core import protocol
from proxy_core.codecs.base import Codec
from proxy_core.errors import CodecError, PluginError
from proxy_core.messages import (
    AudioRawFrame,
    BusActivateWorkerMessage,
    BusDataMessage,
    BusDeactivateWorkerMessage,
    BusEndWorkerMessage,
    BusFrameMessage,
    BusMessage,
    TextFrame,
)
from proxy_core.plugins import available_codecs, load_codec
from proxy_core.protocol import Ack, Bye, Envelope, Msg, Ping, Pong, Ready

F = TypeVar("F", bound=Callable[..., Any])

#: Multiplies every example count and seeded round below (default 1: CI size).
SCALE = max(1, int(os.environ.get("PROXY_CORE_FUZZ_SCALE", "1")))
#: Where the seeded loops start (default 0: the same cases on every CI run).
SEED = int(os.environ.get("PROXY_CORE_FUZZ_SEED", "0"))

CLIENT_WORKER = "acme"
SERVER_WORKER = "assistant"


def fuzz_settings(examples: int, **extra: Any) -> Callable[[F], F]:
    """Hypothesis settings for a fuzz test: ``examples`` (times :data:`SCALE`), no deadline.

    ``too_slow`` and ``data_too_large`` are suppressed: the strategies build whole
    frames on purpose, and a frame of a few kilobytes is the point, not a smell.
    """
    decorate: Callable[[F], F] = settings(
        max_examples=examples * SCALE,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        **extra,
    )
    return decorate


def rounds(count: int) -> int:
    """A seeded loop's number of rounds, scaled like the hypothesis examples."""
    return count * SCALE


# ---------------------------------------------------------------- codecs


def loadable_codecs() -> dict[str, Codec]:
    """One instance of every installed codec that loads (a third-party one included)."""
    found: dict[str, Codec] = {}
    for name in available_codecs():
        try:
            found[name] = load_codec(name)()
        except PluginError:
            continue
    return found


CODECS = loadable_codecs()
CODEC_NAMES = sorted(CODECS)

#: What a codec's decode may return: an envelope, or (codecs with batches) a BATCH.
_BATCH: type[Any] | None = getattr(protocol, "Batch", None)
ENVELOPE_TYPES: tuple[type[Any], ...] = get_args(Envelope)
DECODED_TYPES: tuple[type[Any], ...] = ENVELOPE_TYPES + ((_BATCH,) if _BATCH else ())


def check_envelope(envelope: Any) -> None:
    """Assert that ``envelope`` is a well-typed envelope, as a session relies on."""
    assert isinstance(envelope, ENVELOPE_TYPES), type(envelope)
    if isinstance(envelope, Msg):
        assert type(envelope.seq) is int
        message = envelope.message
        assert isinstance(message, BusMessage), type(message)
        assert type(message.source) is str
        assert message.target is None or type(message.target) is str
    elif isinstance(envelope, Ack):
        assert type(envelope.seq) is int
    elif isinstance(envelope, Ping | Pong):
        assert type(envelope.nonce) is int
    elif isinstance(envelope, Ready):
        assert type(envelope.worker) is str
    else:
        assert isinstance(envelope, Bye)
        assert isinstance(envelope.code, int) and not isinstance(envelope.code, bool)
        assert type(envelope.reason) is str


def items_of(decoded: Any) -> list[Any]:
    """The envelopes (and per-frame CodecErrors) that one decoded frame stands for."""
    if _BATCH is not None and isinstance(decoded, _BATCH):
        return list(decoded.items)
    return [decoded]


def decode_or_codec_error(codec: Codec, data: bytes) -> Any | None:
    """Decode ``data``; return what it decoded to, or ``None`` for a CodecError.

    Any other exception propagates and fails the test: CodecError (and its
    subclass UnknownMessageType) is the only error a decoder may raise. What
    decodes must be well typed, and must encode again or refuse with CodecError.
    """
    try:
        decoded = codec.decode(data)
    except CodecError as exc:
        assert exc.seq is None or type(exc.seq) is int, exc.seq
        return None
    assert isinstance(decoded, DECODED_TYPES), type(decoded)
    for item in items_of(decoded):
        if isinstance(item, CodecError):
            assert item.seq is None or type(item.seq) is int
            continue
        check_envelope(item)
        try:
            again = codec.encode(item)
        except CodecError:
            continue
        assert type(again) is bytes
        try:
            codec.decode(again)
        except CodecError:
            pass
    return decoded


# ---------------------------------------------------------------- seed frames


def _messages() -> list[BusMessage]:
    a, b = CLIENT_WORKER, SERVER_WORKER
    return [
        BusFrameMessage(a, b, TextFrame("hello")),
        BusFrameMessage(a, b, TextFrame("é \u2603 \U0001f600 " * 3)),
        BusFrameMessage(a, b, AudioRawFrame(bytes(range(64)), 16000, 2)),
        BusMessage(a, None),
        BusMessage(a, b),
        BusDataMessage(
            a,
            b,
            {
                "n": -(2**63),
                "m": 2**63 - 1,
                "f": 2.5,
                "z": -0.0,
                "t": (1, [2, None], {"k": True}),
                "b": b"\x00\xff",
                "$type": "not a tag",
                "$bytes": "AAA=",
                "nested": [[[{"x": [1]}]]],
            },
        ),
        BusDataMessage(a, b, {}),
        BusActivateWorkerMessage(a, b, {"caller": a, "n": 3}),
        BusActivateWorkerMessage(a, b, None),
        BusDeactivateWorkerMessage(a, b),
        BusEndWorkerMessage(a, b, "done"),
        BusEndWorkerMessage(a, b, None),
        BusFrameMessage(a, b, BusDataMessage(b, a, {"inner": TextFrame("x")})),  # type: ignore[arg-type]
    ]


SEED_ENVELOPES: list[Envelope] = [
    *(Msg(seq, m) for seq, m in enumerate(_messages(), start=1)),
    Msg(2**40, BusMessage(CLIENT_WORKER, SERVER_WORKER)),
    Ack(0),
    Ack(1),
    Ack(2**53 - 1),
    Ready(CLIENT_WORKER),
    Ready(""),
    Ping(0),
    Ping(1),
    Ping(2**53 - 1),
    Pong(1),
    Pong(12345),
    Bye(1000, "deactivated"),
    Bye(1002, "expected message 3, got 5"),
    Bye(4008, ""),
]


def seed_frames(codec: Codec) -> list[bytes]:
    """The seed envelopes encoded with ``codec`` (those it can encode)."""
    frames: list[bytes] = []
    for envelope in SEED_ENVELOPES:
        try:
            frames.append(codec.encode(envelope))
        except CodecError:
            continue
    batch = getattr(codec, "supports_batch", False) and len(frames) >= 2
    if batch:
        try:
            frames.append(codec.encode_batch(frames[:4]))
        except CodecError:
            pass
    return frames


# ---------------------------------------------------------------- mutations

#: Bytes that mean something to one of the formats: msgpack type bytes, JSON
#: punctuation, protobuf varint continuation, and the extremes.
INTERESTING_BYTES = bytes(
    [0x00, 0x01, 0x7F, 0x80, 0xFF, 0xC0, 0xC1, 0xC4, 0xC7, 0xCF, 0xD3, 0xD4, 0xDC, 0xDD, 0xDE]
    + [0xDF, 0x90, 0x9F, 0x80, 0x8F, 0xA0, 0xBF, 0xD9, 0xDB, 0x0A, 0x12, 0x08]
    + list(b'[]{}",:0-9eE.$\\')
)


def mutate(data: bytes, rng: random.Random, steps: int) -> bytes:
    """Apply ``steps`` random byte-level mutations (flip, set, insert, delete, cut, splice)."""
    out = bytearray(data)
    for _ in range(steps):
        op = rng.randrange(8)
        pos = rng.randrange(len(out) + 1)
        if op == 0 and out and pos < len(out):  # flip one bit
            out[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and out and pos < len(out):  # set an interesting byte
            out[pos] = rng.choice(INTERESTING_BYTES)
        elif op == 2:  # insert a few bytes
            out[pos:pos] = bytes(rng.choice(INTERESTING_BYTES) for _ in range(rng.randint(1, 4)))
        elif op == 3 and out:  # delete a run
            del out[pos : pos + rng.randint(1, 8)]
        elif op == 4:  # truncate
            del out[pos:]
        elif op == 5 and out:  # duplicate a run in place
            out[pos:pos] = out[pos : pos + rng.randint(1, 16)]
        elif op == 6:  # random bytes
            out[pos:pos] = rng.randbytes(rng.randint(1, 8))
        else:  # increment or decrement a byte (lengths, counts, kinds)
            if out and pos < len(out):
                out[pos] = (out[pos] + rng.choice((1, -1, 16, -16))) % 256
    return bytes(out)


def mutants(frames: Sequence[bytes], rng: random.Random, count: int) -> list[bytes]:
    """``count`` mutants of randomly chosen ``frames``, 1 to 6 mutations each."""
    return [mutate(rng.choice(frames), rng, rng.randint(1, 6)) for _ in range(count)]


@st.composite
def mutated_frames(draw: st.DrawFn, frames: list[bytes]) -> bytes:
    """A real frame with 1 to 8 byte-level mutations, each drawn (so hypothesis shrinks them)."""
    data = bytearray(draw(st.sampled_from(frames)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splice"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and pos < len(data):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[pos:]
        elif op == "splice":  # a piece of another real frame
            other = draw(st.sampled_from(frames))
            start = draw(st.integers(0, len(other)))
            data[pos:pos] = other[start : start + draw(st.integers(1, 32))]
    return bytes(data)
