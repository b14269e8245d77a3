"""The ``zjson`` codec: the JSON codec's frames, compressed with zlib."""

from __future__ import annotations

import zlib

from proxy_core import Codec, CodecError
from proxy_core.codecs.json import JsonCodec
from proxy_core.messages import TypeRegistry
from proxy_core.protocol import Envelope

__all__ = ["ZJsonCodec"]

#: A frame may inflate to at most this many times its size (and 16 MiB): no zip bombs.
MAX_RATIO = 64
MAX_INFLATED = 16 * 1024 * 1024


class ZJsonCodec(Codec):
    """Encode envelopes as zlib-compressed JSON (the ``json`` codec's bytes, deflated).

    Decoding refuses data that is not zlib, has trailing bytes, or inflates past
    ``MAX_RATIO`` times its size; everything else (unknown tags, the sequence
    number of an undecodable MSG) is the JSON codec's job.

    Args:
        registry: the wire types to accept (default: every registered type).
    """

    name = "zjson"

    def __init__(self, registry: TypeRegistry | None = None) -> None:
        self._json = JsonCodec(registry)

    def encode(self, envelope: Envelope) -> bytes:
        return zlib.compress(self._json.encode(envelope))

    def decode(self, data: bytes) -> Envelope:
        limit = min(MAX_INFLATED, max(1024, MAX_RATIO * len(data)))
        inflater = zlib.decompressobj()
        try:
            plain = inflater.decompress(data, limit)
        except zlib.error as exc:
            raise CodecError(f"not zlib data: {exc}") from None
        if inflater.unconsumed_tail:
            raise CodecError(f"frame inflates past {limit} bytes")
        if not inflater.eof or inflater.unused_data:
            raise CodecError("truncated zlib data, or bytes after it")
        return self._json.decode(plain)
