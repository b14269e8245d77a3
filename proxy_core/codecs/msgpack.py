"""The ``msgpack`` codec: frames as msgpack arrays with native binary values.

Decoding tries msgpack's strict parse first, which every well-formed frame
passes at full speed. Only a frame it refuses takes the slower ways of
``docs/protocol.md`` section 5, so that one bad value inside a message never
costs the MSG its sequence number:

1. a lenient parse, where each value the tree model has no place for (a map
   with a key that is not a string, a string that is not UTF-8, an extension
   type) becomes an :class:`~._tree.Invalid` that the tree converter refuses:
   only the MSG holding it is malformed, alone or inside a BATCH;
2. bytes that do not parse at all (cut short, trailing bytes, nesting deeper
   than msgpack's parser goes): a BATCH whose frames can still be told apart
   is decoded frame by frame; otherwise the kind and the seq of a single MSG
   are read from its first bytes, for the CodecError.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

from ..errors import CodecError, ConfigurationError
from ..messages import DEFAULT_TYPES, TypeRegistry
from ..protocol import Batch, Envelope, Kind
from ._tree import Invalid, TreeConverter
from .base import MAX_BATCH_FRAMES, MAX_SAFE_INTEGER, Codec

__all__ = ["MsgpackCodec"]

_BATCH_KIND: Final = bytes((Kind.BATCH,))  # a positive fixint is its own byte
_MSG: Final = int(Kind.MSG)
_BATCH: Final = int(Kind.BATCH)

# What the lenient parse puts in place of a value with no place in the tree.
_NOT_UTF8: Final = Invalid("a string that is not UTF-8")
_BAD_KEY: Final = Invalid("a map with a key that is not a UTF-8 string")
_EXTENSION: Final = Invalid("an extension type")
# unicode_errors="surrogateescape" turns each byte that is not UTF-8 into one of
# these; valid UTF-8 never decodes to a surrogate, so they mark exactly the bad strings.
_ESCAPED: Final = re.compile("[\udc80-\udcff]").search


def _list_hook(items: list[Any]) -> list[Any]:
    for i, item in enumerate(items):
        if type(item) is str and _ESCAPED(item):
            items[i] = _NOT_UTF8
    return items


def _pairs_hook(pairs: list[tuple[Any, Any]]) -> dict[str, Any] | Invalid:
    for key, _ in pairs:
        if type(key) is not str or _ESCAPED(key):
            return _BAD_KEY
    return {k: _NOT_UTF8 if type(v) is str and _ESCAPED(v) else v for k, v in pairs}


def _ext_hook(code: int, data: bytes) -> Invalid:
    return _EXTENSION


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
        except Exception:  # msgpack raises a wide family of errors on bad input
            return self._salvage(data)
        try:
            return self._tree.tree_to_frame(tree)
        except RecursionError:
            raise CodecError("frame nests too deeply") from None

    def _salvage(self, data: bytes) -> Envelope | Batch:
        """Decode a frame the strict parse refused (steps 1 and 2 of the module's docstring)."""
        try:
            tree = self._lenient(data)
        except Exception as exc:
            error = f"not valid msgpack: {exc}"
        else:
            try:
                return self._tree.tree_to_frame(tree)
            except RecursionError:
                raise CodecError("frame nests too deeply") from None
        frames = self._batch_frames(data)
        if frames is not None:
            return Batch(tuple(map(self._batch_item, frames)))
        raise CodecError(error, seq=self._msg_seq(data))

    def _lenient(self, data: bytes) -> Any:
        return self._msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=False,
            use_list=True,
            unicode_errors="surrogateescape",
            list_hook=_list_hook,
            object_pairs_hook=_pairs_hook,
            ext_hook=_ext_hook,
        )

    def _batch_item(self, frame: bytes) -> Envelope | CodecError:
        """Decode one frame of a BATCH that was split by hand (never a BATCH itself)."""
        try:
            try:
                tree = self._msgpack.unpackb(frame, raw=False, strict_map_key=True, use_list=True)
            except Exception:
                try:
                    tree = self._lenient(frame)
                except Exception as exc:
                    return CodecError(f"not valid msgpack: {exc}", seq=self._msg_seq(frame))
            return self._tree.tree_to_envelope(tree)
        except CodecError as exc:
            return exc.with_traceback(None)
        except RecursionError:
            return CodecError("frame nests too deeply")

    def _unpacker(self, data: bytes) -> Any:
        unpacker = self._msgpack.Unpacker(raw=False, max_buffer_size=max(len(data), 1))
        unpacker.feed(data)
        return unpacker

    def _batch_frames(self, data: bytes) -> list[bytes] | None:
        """Return the frames of a BATCH whose values do not all parse, if they can be told apart.

        Raises:
            CodecError: an empty BATCH, or one of more than MAX_BATCH_FRAMES frames.
        """
        try:
            unpacker = self._unpacker(data)
            size = unpacker.read_array_header()
            kind = unpacker.unpack() if size else None
            if type(kind) is not int or kind != _BATCH:
                return None
            if size == 1:
                raise CodecError("an empty BATCH")
            if size - 1 > MAX_BATCH_FRAMES:
                raise CodecError(f"BATCH of {size - 1} frames; at most {MAX_BATCH_FRAMES}")
            frames = []
            start = unpacker.tell()
            for _ in range(size - 1):
                unpacker.skip()  # nothing is built: only nesting deeper than msgpack's stack fails
                end = unpacker.tell()
                frames.append(data[start:end])
                start = end
        except CodecError:
            raise
        except Exception:
            return None
        return frames if start == len(data) else None

    def _msg_seq(self, data: bytes) -> int | None:
        """Return the seq of a MSG from its first bytes, if it starts as one: ``[1, seq, ...``."""
        try:
            unpacker = self._unpacker(data)
            if unpacker.read_array_header() < 2:
                return None
            kind = unpacker.unpack()
            seq = unpacker.unpack()
        except Exception:
            return None
        if type(kind) is not int or kind != _MSG or type(seq) is not int or seq > MAX_SAFE_INTEGER:
            return None
        return seq
