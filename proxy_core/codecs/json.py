"""The ``json`` codec: frames as UTF-8 JSON arrays (bytes as base64)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

from ..errors import CodecError
from ..messages import DEFAULT_TYPES, TypeRegistry
from ..protocol import Batch, Envelope
from ._tree import TreeConverter
from .base import Codec

__all__ = ["JsonCodec"]


def _finite_float(text: str) -> float:
    # `1e400` parses to infinity: refuse it like the Infinity constant.
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is out of the range of a double")
    return value


def _refuse_constant(name: str) -> float:
    # NaN and Infinity are not JSON; the encoder refuses them, so must the decoder.
    raise ValueError(f"{name} is not valid JSON")


class JsonCodec(Codec):
    """Encode envelopes as compact UTF-8 JSON, readable in any language.

    Bytes travel as ``{"$bytes": "<base64>"}``; NaN and infinities are refused
    (they are not JSON).

    Args:
        registry: the wire types to accept (default: every registered type).
    """

    name = "json"
    supports_batch = True

    def __init__(self, registry: TypeRegistry | None = None) -> None:
        self._tree = TreeConverter(registry or DEFAULT_TYPES, native_bytes=False)
        self._encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)
        # json.loads(data, parse_...=...) builds a new JSONDecoder on every call
        # (about 1 µs); decode() does what it does, with this one built once.
        self._decoder = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)

    def encode(self, envelope: Envelope) -> bytes:
        try:
            tree = self._tree.envelope_to_tree(envelope)
        except RecursionError:
            raise CodecError("message nests too deeply to encode") from None
        try:
            return self._encoder.encode(tree).encode()
        except (ValueError, TypeError, RecursionError) as exc:
            raise CodecError(f"cannot encode as JSON: {exc}") from None

    def encode_batch(self, frames: Sequence[bytes]) -> bytes:
        # [7,frame,frame,...]: each frame is already a JSON value.
        return b"".join((b"[7,", b",".join(frames), b"]"))

    def decode(self, data: bytes) -> Envelope | Batch:
        try:
            text = data.decode(json.detect_encoding(data), "surrogatepass")  # as json.loads
            tree = self._decoder.decode(text)
        except (ValueError, RecursionError) as exc:
            raise CodecError(f"not valid JSON: {exc}") from None
        try:
            return self._tree.tree_to_frame(tree)
        except RecursionError:
            raise CodecError("frame nests too deeply") from None
