"""The gRPC binding's names and bytes, without I/O: the method, ``Frame`` framing, close metadata.

``proxy_core.v1.Frame`` has one field, ``bytes data = 1``. Its wire format is
the tag byte ``0x0A`` (field 1, length-delimited), the payload length as a
varint, then the payload; an empty payload is the empty message (proto3 omits
a default field). Writing and reading that by hand spares building a protobuf
object per frame: the bytes are identical to ``Frame(data=payload).SerializeToString()``.

A close travels from the server in trailing metadata (``proxy-core-close-code``
and ``proxy-core-close-reason``); gRPC metadata values must be printable ASCII,
so the reason is percent-encoded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, unquote

from proxy_core.errors import MessageTooLarge, ProtocolError
from proxy_core.transport import truncate_reason

from ._generated import service_pb2

__all__ = [
    "CLOSE_CODE_KEY",
    "CLOSE_REASON_KEY",
    "METHOD",
    "METHOD_PATH",
    "SERVICE",
    "close_metadata",
    "decode_frame",
    "encode_frame",
    "frame_overhead",
    "parse_close_metadata",
    "parse_refusal",
    "payload_size",
    "read_header",
    "varint_size",
    "wire_size",
]

_SERVICE = service_pb2.DESCRIPTOR.services_by_name["ProxySession"]
#: The service and its one method, as ``grpc`` names them in a generic handler.
SERVICE: str = _SERVICE.full_name
METHOD: str = _SERVICE.methods_by_name["Connect"].name
#: The full method name of the one RPC: ``/proxy_core.v1.ProxySession/Connect``.
METHOD_PATH = f"/{SERVICE}/{METHOD}"

_TAG = 0x0A  # field 1, wire type 2 (length-delimited)
_TAG_BYTE = b"\x0a"
_MAX_VARINT_BYTES = 10

CLOSE_CODE_KEY = "proxy-core-close-code"
CLOSE_REASON_KEY = "proxy-core-close-reason"
# Printable ASCII that may stay as is in a metadata value ("%" is the escape).
_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")

# What gRPC core says when it refuses a message over max_receive_message_length.
# Recent versions prefix the side that refused: "CLIENT: " or "SERVER: ".
_REFUSED = re.compile(r"(?:(CLIENT|SERVER): )?Received message larger than max \((\d+) vs\. \d+\)")


def varint_size(n: int) -> int:
    """Return the number of bytes of ``n`` as a protobuf varint."""
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def frame_overhead(payload_bytes: int) -> int:
    """Return what the ``Frame`` wrapper adds to a payload of this size (0, or 2 to 6 bytes)."""
    return 0 if payload_bytes == 0 else 1 + varint_size(payload_bytes)


def wire_size(payload_bytes: int) -> int:
    """Return the size of the ``Frame`` message that carries ``payload_bytes``."""
    return payload_bytes + frame_overhead(payload_bytes)


def payload_size(wire_bytes: int) -> int | None:
    """Return the payload size of a ``Frame`` of ``wire_bytes`` (``None`` if none fits)."""
    if wire_bytes == 0:
        return 0
    for length_bytes in range(1, _MAX_VARINT_BYTES + 1):
        size = wire_bytes - 1 - length_bytes
        if size >= 0 and varint_size(size) == length_bytes:
            return size
    return None


def encode_frame(payload: bytes) -> bytes:
    """Return the ``Frame`` message that carries ``payload`` (the gRPC serializer)."""
    n = len(payload)
    if n == 0:
        return b""
    if n < 0x80:
        return b"\x0a" + n.to_bytes(1, "little") + payload
    head = bytearray(_TAG_BYTE)
    while n >= 0x80:
        head.append((n & 0x7F) | 0x80)
        n >>= 7
    head.append(n)
    return bytes(head) + payload


def read_header(message: bytes) -> tuple[int, int]:
    """Return ``(offset, length)`` of the payload in a ``Frame`` message.

    Raises:
        ProtocolError: ``message`` is not a ``Frame`` holding only its ``data`` field.
    """
    if not message:
        return 0, 0
    if message[0] != _TAG:
        raise ProtocolError(
            f"malformed Frame: starts with byte 0x{message[0]:02x}, not 0x0a (field 1, data)"
        )
    length = 0
    shift = 0
    pos = 1
    end = min(len(message), 1 + _MAX_VARINT_BYTES)
    while pos < end:
        byte = message[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            return pos, length
        shift += 7
    raise ProtocolError("malformed Frame: truncated or overlong length varint")


def decode_frame(message: bytes, limit: int | None = None) -> bytes:
    """Return the payload of a ``Frame`` message.

    Strict: the message holds field 1 once and nothing else (no unknown
    fields), and the length matches the bytes that follow. The declared
    length is checked against ``limit`` before anything else is.

    Raises:
        MessageTooLarge: the payload is longer than ``limit``.
        ProtocolError: ``message`` is not such a ``Frame``.
    """
    offset, length = read_header(message)
    if limit is not None and length > limit:
        raise MessageTooLarge(length, limit)
    if offset + length != len(message):
        raise ProtocolError(
            f"malformed Frame: declares {length} bytes of data but "
            f"{len(message) - offset} follow (other fields are not allowed)"
        )
    return message[offset:] if offset else message


def parse_refusal(details: str) -> tuple[str, int] | None:
    """Parse gRPC's "Received message larger than max" status details.

    Returns:
        ``(side, wire size)``: the side that refused (``"CLIENT"``, ``"SERVER"``,
        or ``""`` when gRPC does not say) and the size of the refused message;
        ``None`` for other details.
    """
    match = _REFUSED.search(details)
    return (match.group(1) or "", int(match.group(2))) if match else None


def close_metadata(code: int, reason: str) -> tuple[tuple[str, str], ...]:
    """Return the trailing metadata that carries a close code and reason."""
    # The rule of every close reason (as on WebSocket); it keeps the trailers small too.
    reason = truncate_reason(reason)
    return ((CLOSE_CODE_KEY, str(code)), (CLOSE_REASON_KEY, quote(reason, safe=_SAFE)))


def parse_close_metadata(metadata: Iterable[tuple[str, str | bytes]]) -> tuple[int, str] | None:
    """Return ``(code, reason)`` from trailing metadata, or ``None`` if it carries no close."""
    code: int | None = None
    reason = ""
    for key, value in metadata:
        if not isinstance(value, str):
            continue
        if key == CLOSE_CODE_KEY and value.isascii() and value.isdigit() and len(value) <= 5:
            code = int(value)
        elif key == CLOSE_REASON_KEY:
            reason = unquote(value, errors="replace")
    if code is None or code > 0xFFFF:
        return None
    return code, reason
