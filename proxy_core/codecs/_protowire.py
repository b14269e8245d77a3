"""Helpers of the ``protobuf`` codec: value checks, and protobuf's wire format read by hand.

A frame whose ``Envelope`` does not parse may still be a MSG whose ``seq`` the
session must acknowledge: :func:`_salvage_seq` reads it as a parser would,
without the generated code.
"""

from __future__ import annotations

from typing import Any, Final

from ..errors import CodecError
from ..messages import AudioRawFrame
from .base import MAX_SAFE_INTEGER

#: Messages may nest this many levels below the Envelope: protobuf's default
#: parse limit, which the decoder keeps and the encoder enforces too.
MAX_DEPTH: Final = 100

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_UINT64_MAX: Final = 2**64 - 1
_INT32_MIN: Final = -(2**31)
_INT32_MAX: Final = 2**31 - 1


def _checked(value: Any, low: int, high: int, what: str) -> int:
    # An IntEnum (CloseCode) is welcome; a bool is not an integer here.
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise CodecError(f"{what} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def _text(value: Any, what: str) -> str:
    if type(value) is not str:
        raise CodecError(f"{what} must be str, got {type(value).__qualname__}")
    return value


def _fits_audio(frame: AudioRawFrame) -> bool:
    rate, channels = frame.sample_rate, frame.num_channels
    return (
        type(frame.audio) is bytes
        and type(rate) is int
        and type(channels) is int
        and _INT64_MIN <= rate <= _INT64_MAX
        and _INT64_MIN <= channels <= _INT64_MAX
    )


def _too_deep(owner: type, field: str) -> CodecError:
    return CodecError(
        f"{owner.__qualname__}.{field}: value nests too deeply "
        f"(more than {MAX_DEPTH} protobuf levels)"
    )


def _bad_counter(value: int, what: str) -> CodecError:
    return CodecError(f"{what} {value} is outside [0, {MAX_SAFE_INTEGER}]")


def _unparsed(data: bytes, exc: BaseException) -> CodecError:
    """The CodecError for a frame whose Envelope does not parse (with a MSG's seq)."""
    seq = _salvage_seq(data) if type(data) is bytes else None
    return CodecError(f"not a valid protobuf Envelope: {exc}", seq=seq)


def _salvage_seq(data: bytes) -> int | None:
    """Return the seq of a MSG whose Envelope does not parse, if it can be read.

    The session needs the seq of an undecodable MSG to acknowledge it. Whatever
    broke the parse (a string that is not UTF-8, nesting deeper than the
    parser's limit, a frame cut short), the seq is read by hand as a parser
    would: the fields of the Envelope as far as they are well formed; in each
    ``msg`` (field 1) its ``seq`` (field 1, a varint), the last one winning; a
    ``msg`` read whole without a ``seq`` has the default, 0. Another kind after
    the ``msg`` (fields 2 to 7: a oneof keeps the last) leaves no seq.
    """
    seq = None
    fields, whole = _wire_fields(data)
    for i, (number, value) in enumerate(fields):
        if number == 1 and type(value) is bytes:  # Envelope.msg; repeated, they merge
            inner, inner_whole = _wire_fields(value)
            seqs = [item for n, item in inner if n == 1 and type(item) is int]  # Msg.seq
            if seqs:
                seq = seqs[-1]
            elif seq is None and inner_whole and (whole or i < len(fields) - 1):
                seq = 0
        elif 2 <= number <= 7:
            seq = None
    return seq if seq is not None and seq <= MAX_SAFE_INTEGER else None


def _wire_fields(data: bytes) -> tuple[list[tuple[int, int | bytes | None]], bool]:
    """Return the fields of a serialized message as far as they go, and whether that is the end.

    Each field is (number, value): an int (varint), bytes (length-delimited;
    cut short if the data ends first, and then the last field) or None
    (fixed-size). A field that cannot be read ends the list.
    """
    fields: list[tuple[int, int | bytes | None]] = []
    pos, end = 0, len(data)
    try:
        while pos < end:
            key, pos = _varint(data, pos)
            number, wire_type = key >> 3, key & 7
            if wire_type == 0:
                value, pos = _varint(data, pos)
                fields.append((number, value))
            elif wire_type == 2:
                size, pos = _varint(data, pos)
                fields.append((number, data[pos : pos + size]))
                pos += size
            elif wire_type == 1 or wire_type == 5:
                pos += 8 if wire_type == 1 else 4
                if pos <= end:
                    fields.append((number, None))
            else:  # groups (3, 4) and the undefined 6 and 7
                return fields, False
    except (IndexError, ValueError):  # a varint cut short, or longer than 10 bytes
        return fields, False
    return fields, pos == end


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    for _ in range(10):
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & _UINT64_MAX, pos
        shift += 7
    raise ValueError("varint too long")


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
