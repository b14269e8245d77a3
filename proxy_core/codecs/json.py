"""The ``json`` codec: frames as UTF-8 JSON arrays (bytes as base64).

A number JSON cannot carry (the ``NaN``, ``Infinity`` and ``-Infinity``
literals, a float that overflows a double such as ``1e400``, an integer of
more digits than Python converts) does not make the frame fail: it parses to
an :class:`~._tree.Invalid` that the tree converter refuses, so only the MSG
holding it is malformed and its sequence number is still read
(``docs/protocol.md`` section 5). A single frame that is not JSON at all but
starts as a MSG, ``[1,<seq>,``, still yields that seq in its CodecError.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Final

from ..errors import CodecError
from ..messages import DEFAULT_TYPES, TypeRegistry
from ..protocol import Batch, Envelope
from ._tree import Invalid, TreeConverter
from .base import MAX_SAFE_INTEGER, Codec

__all__ = ["JsonCodec"]

_OVERFLOW: Final = Invalid("a number out of the range of a double")
_CONSTANTS: Final = {
    name: Invalid(f"{name}, which is not JSON") for name in ("NaN", "Infinity", "-Infinity")
}
_LONG_INT: Final = Invalid("an integer of too many digits")

#: The start of a MSG, ``[1,<seq>,`` (or ``]``), with the JSON whitespace a peer may
#: put between the tokens; read only in the first bytes of a frame that does not
#: parse. A seq of more than 16 digits is above MAX_SAFE_INTEGER: no match.
_MSG_HEAD: Final = re.compile(
    rb"(?:\xef\xbb\xbf)?[ \t\n\r]*\[[ \t\n\r]*1[ \t\n\r]*,"
    rb"[ \t\n\r]*(-?(?:0|[1-9][0-9]{0,15}))[ \t\n\r]*[,\]]"
)
_HEAD_BYTES: Final = 64


def _float(text: str) -> float | Invalid:
    # `1e400` parses to infinity: a bad value, like the Infinity literal.
    value = float(text)
    return _OVERFLOW if math.isinf(value) else value


def _constant(name: str) -> Invalid:
    # NaN and Infinity are not JSON; the encoder refuses them, so the decoder
    # refuses the value (not the frame).
    return _CONSTANTS[name]


def _int(text: str) -> int | Invalid:
    # Only for the second parse: int() refuses more than sys.get_int_max_str_digits().
    try:
        return int(text)
    except ValueError:
        return _LONG_INT


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
        self._decoder = json.JSONDecoder(parse_constant=_constant, parse_float=_float)
        # A custom parse_int costs a call per integer: only for frames the first refused.
        self._lenient = json.JSONDecoder(
            parse_constant=_constant, parse_float=_float, parse_int=_int
        )

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
        if not isinstance(data, (bytes, bytearray)):
            raise CodecError(f"a frame is bytes, got {type(data).__qualname__}")
        try:
            text = data.decode("utf-8")  # only UTF-8 (no BOM, no UTF-16/32), as section 4.3 says
        except ValueError as exc:
            raise _unreadable(data, exc) from None
        try:
            tree = self._decoder.decode(text)
        except json.JSONDecodeError as exc:
            raise _unreadable(data, exc) from None
        except ValueError as exc:  # int() refused a number: the rest may be good
            try:
                tree = self._lenient.decode(text)
            except (ValueError, RecursionError):
                raise _unreadable(data, exc) from None
        except RecursionError as exc:
            raise _unreadable(data, exc) from None
        try:
            return self._tree.tree_to_frame(tree)
        except RecursionError:
            raise CodecError("frame nests too deeply") from None


def _unreadable(data: bytes, exc: Exception) -> CodecError:
    """The CodecError for bytes that are not JSON: with the seq, if they start as a MSG."""
    match = _MSG_HEAD.match(data, 0, _HEAD_BYTES)
    seq = int(match[1]) if match is not None else None
    if seq is not None and seq > MAX_SAFE_INTEGER:
        seq = None
    return CodecError(f"not valid JSON: {exc}", seq=seq)
