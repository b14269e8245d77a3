"""The ``msgpack`` codec: frames as msgpack arrays with native binary values."""

from __future__ import annotations

from typing import Any

from ..errors import CodecError, ConfigurationError
from ..messages import DEFAULT_TYPES, TypeRegistry
from ..protocol import Envelope
from ._tree import TreeConverter
from .base import Codec

__all__ = ["MsgpackCodec"]


class MsgpackCodec(Codec):
    """Encode envelopes with msgpack (the ``msgpack`` package, imported on first use).

    Args:
        registry: the wire types to accept (default: every registered type).

    Raises:
        ConfigurationError: the ``msgpack`` package is not installed.
    """

    name = "msgpack"

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

    def decode(self, data: bytes) -> Envelope:
        try:
            tree = self._msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
        except CodecError:
            raise
        except Exception as exc:  # msgpack raises a wide family of errors on bad input
            raise CodecError(f"not valid msgpack: {exc}") from None
        try:
            return self._tree.tree_to_envelope(tree)
        except RecursionError:
            raise CodecError("frame nests too deeply") from None
