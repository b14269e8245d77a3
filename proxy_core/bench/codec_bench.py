"""The codec micro-benchmark: envelope encode+decode per codec against its raw library.

The envelope is ``Msg(1, BusFrameMessage("acme", "assistant",
AudioRawFrame(<200 random bytes>, 16000)))``. The raw baseline does the
library's part of the same work on the value the codec puts on the wire:

- ``json``: ``json.loads(json.dumps(tree).encode())`` of the codec's own tree
  (the bytes already base64 text, so base64 is counted on the codec's side);
- ``msgpack``: ``msgpack.unpackb(msgpack.packb(tree))`` of the codec's tree;
- ``protobuf``: ``Envelope.FromString(message.SerializeToString())`` of the
  generated ``Envelope`` message the codec's bytes parse to;
- any other codec: the stdlib ``json`` baseline above, labelled as such.

So the ratio is what the codec adds around the library: the walk between
dataclasses and the tree (or protobuf messages), validation, tag lookup.
Timing is ``timeit``-style: calibrate a loop count, take the best of three loops.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from ..codecs.base import Codec
from ..messages import AudioRawFrame, BusFrameMessage
from ..plugins import resolve_codec
from ..protocol import Envelope, Msg

__all__ = ["baseline", "envelope", "time_per_call"]


def envelope(size: int = 200) -> Envelope:
    """Return the envelope the micro-benchmark encodes: a frame of ``size`` random bytes."""
    return Msg(1, BusFrameMessage("acme", "assistant", AudioRawFrame(os.urandom(size), 16000)))


def time_per_call(func: Callable[[], object], seconds: float) -> float:
    """Return the seconds one call of ``func`` takes: the best of three timed loops.

    The loop count is calibrated so that one loop lasts about ``seconds / 3``.
    """
    number = 1
    target = seconds / 3
    clock = time.perf_counter
    while True:
        start = clock()
        for _ in range(number):
            func()
        elapsed = clock() - start
        if elapsed >= target / 4 or number >= 10_000_000:
            break
        number *= 4
    number = max(1, int(number * target / max(elapsed, 1e-9)))
    best = float("inf")
    for _ in range(3):
        start = clock()
        for _ in range(number):
            func()
        best = min(best, (clock() - start) / number)
    return best


def baseline(name: str, env: Envelope, data: bytes) -> tuple[Callable[[], object], str]:
    """Return the raw library's round trip for codec ``name``, and a label.

    ``data`` is ``env`` as codec ``name`` encodes it.
    """
    if name == "msgpack":
        import msgpack

        tree = msgpack.unpackb(data, raw=False)
        return lambda: msgpack.unpackb(msgpack.packb(tree, use_bin_type=True), raw=False), (
            "msgpack.packb+unpackb of the same tree"
        )
    if name == "protobuf":
        from ..codecs._generated.envelope_pb2 import Envelope as PbEnvelope

        message: Any = PbEnvelope.FromString(data)
        parse = PbEnvelope.FromString
        return lambda: parse(message.SerializeToString()), (
            "Envelope.SerializeToString+FromString of the same message"
        )
    if name == "json":
        tree = json.loads(data)
        label = "json.dumps+loads of the same tree"
    else:
        tree = json.loads(resolve_codec("json").encode(env))
        label = "json.dumps+loads of the json codec's tree (no raw library known)"
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    return lambda: json.loads(dumps(tree).encode()), label


def _round_trip(codec: Codec, env: Envelope) -> Callable[[], object]:
    encode, decode = codec.encode, codec.decode
    return lambda: decode(encode(env))


def measure(names: list[str], seconds: float) -> dict[str, dict[str, Any]]:
    """Time every codec in ``names`` and its baseline once; values in microseconds.

    Returns:
        ``{name: {"proxy": us, "bare": us, "label": str}}`` for the codecs
        that round-trip the envelope, ``{name: {"error": why}}`` for the others.
    """
    env = envelope()
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            codec = resolve_codec(name)
            data = codec.encode(env)
            if codec.decode(data) != env:
                raise ValueError("the envelope does not round-trip")
            bare, label = baseline(name, env, data)
            proxy_s = time_per_call(_round_trip(codec, env), seconds)
            bare_s = time_per_call(bare, seconds)
        except Exception as exc:
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        results[name] = {"proxy": proxy_s * 1e6, "bare": bare_s * 1e6, "label": label}
    return results
