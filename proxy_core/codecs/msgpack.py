"""The ``msgpack`` codec: frames as msgpack arrays with native binary values."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from ..errors import CodecError, ConfigurationError
from ..messages import DEFAULT_TYPES, TypeRegistry
from ..protocol import Batch, Envelope, Kind
from ._tree import TreeConverter
from .base import Codec

__all__ = ["MsgpackCodec"]

_BATCH_KIND: Final = bytes((Kind.BATCH,))  # a positive fixint is its own byte


class MsgpackCodec(Codec):
    """Encode envelopes with msgpack (the ``msgpack`` package, imported on first use).

    Args:
        registry: the wire types to accept (default: every registered type).

    Raises:
        ConfigurationError: the ``msgpack`` package is not installed.
    """

    name = "msgpack"
    supports_batch = True

    def __init__(self, registry: TypeRegistry | None = None) -> None:
        try:
            import msgpack
        except ImportError:  # pragma: no cover - depends on the environment
            raise ConfigurationError(
                "the msgpack codec needs the msgpack package: pip install msgpack"
            ) from None
        self._msgpack: Any = msgpack
        self._tree = TreeConverter(registry or DEFAULT_TYPES, native_bytes=True)
        self._packer = msgpack.Packer(use_bin_type=True, datetime=False)

    def encode(self, envelope: Envelope) -> bytes:
        try:
            tree = self._tree.envelope_to_tree(envelope)
        except RecursionError:
            raise CodecError("message nests too deeply to encode") from None
        try:
            data: bytes = self._packer.pack(tree)
        except (ValueError, TypeError, OverflowError) as exc:
            raise CodecError(f"cannot encode as msgpack: {exc}") from None
        return data

    def encode_batch(self, frames: Sequence[bytes]) -> bytes:
        # [7, frame, frame, ...]: each frame is already a msgpack value, so the
        # batch is an array header, the kind, and the frames as they are.
        size = len(frames) + 1
        if size < 16:
            header = bytes((0x90 | size,))
        elif size < 0x10000:
            header = b"\xdc" + size.to_bytes(2, "big")
        else:
            header = b"\xdd" + size.to_bytes(4, "big")
        return b"".join((header, _BATCH_KIND, *frames))

    def decode(self, data: bytes) -> Envelope | Batch:
        try:
            tree = self._msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
        except CodecError:
            raise
        except Exception as exc:  # msgpack raises a wide family of errors on bad input
            raise CodecError(f"not valid msgpack: {exc}") from None
        try:
            return self._tree.tree_to_frame(tree)
        except RecursionError:
            raise CodecError("frame nests too deeply") from None
