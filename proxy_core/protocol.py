"""The session protocol v1: frame kinds, handshake, codes.

``docs/protocol.md`` is the normative description; this module is its
executable form. The handshake (HELLO, WELCOME, REJECT) uses a fixed bootstrap
encoding, UTF-8 JSON objects, so that a peer can negotiate before it knows
the codec. Every later frame is an :data:`Envelope` encoded with the codec the
server chose.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

from .errors import CodecError, HandshakeError
from .messages import BusMessage

__all__ = [
    "PROTOCOL_NAME",
    "PROTOCOL_VERSION",
    "FEATURES",
    "Ack",
    "Batch",
    "Bye",
    "CloseCode",
    "Envelope",
    "Handshake",
    "Hello",
    "Kind",
    "Msg",
    "Ping",
    "Pong",
    "Ready",
    "Reject",
    "RejectCode",
    "Welcome",
    "decode_handshake",
    "encode_handshake",
]

PROTOCOL_NAME: Final = "proxy-core"
PROTOCOL_VERSION: Final = 1

#: The optional features this implementation speaks. A client lists what it
#: speaks in HELLO; the server answers with the ones both sides will use.
#: ``"batch"``: BATCH frames (several frames in one transport message).
#: ``"resume"``: a client whose connection was lost may resume its session.
FEATURES: Final = ("batch", "resume")


class Kind(IntEnum):
    """The first element of every post-handshake frame."""

    MSG = 1
    ACK = 2
    READY = 3
    PING = 4
    PONG = 5
    BYE = 6
    BATCH = 7


class RejectCode(IntEnum):
    """Codes of a REJECT; the server then closes the connection with the same code."""

    BAD_HELLO = 4000
    UNAUTHORIZED = 4001
    UNSUPPORTED_VERSION = 4002
    NO_COMMON_CODEC = 4003
    UNKNOWN_WORKER = 4004


class CloseCode(IntEnum):
    """Close codes used on WebSocket backends (and in BYE)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    TOO_LARGE = 1009
    INTERNAL_ERROR = 1011
    HEARTBEAT_TIMEOUT = 4008


@dataclass(frozen=True, slots=True)
class Msg:
    """A bus message with its sequence number (1, 2, 3... per direction and session)."""

    seq: int
    message: BusMessage


@dataclass(frozen=True, slots=True)
class Ack:
    """Cumulative acknowledgement: every MSG up to and including ``seq`` arrived."""

    seq: int


@dataclass(frozen=True, slots=True)
class Ready:
    """The sender's served worker is ready."""

    worker: str


@dataclass(frozen=True, slots=True)
class Ping:
    """Liveness probe; answered by a PONG with the same nonce."""

    nonce: int


@dataclass(frozen=True, slots=True)
class Pong:
    """Answer to a PING."""

    nonce: int


@dataclass(frozen=True, slots=True)
class Bye:
    """The sender is closing the session on purpose."""

    code: int
    reason: str


Envelope = Msg | Ack | Ready | Ping | Pong | Bye


@dataclass(frozen=True, slots=True)
class Batch:
    """A decoded BATCH: the frames it carried, in order.

    A BATCH is built from frames that are already encoded (see
    :meth:`~proxy_core.codecs.base.Codec.encode_batch`), so it is never an
    :data:`Envelope` to encode. Decoding it decodes each frame on its own: a
    frame that does not decode stands in ``items`` as its
    :class:`~proxy_core.errors.CodecError` (with the sequence number, where
    readable), so that one bad message does not cost the others.
    """

    items: tuple[Envelope | CodecError, ...]


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame of the client."""

    codecs: tuple[str, ...]
    client_worker: str
    server_worker: str
    max_message_bytes: int
    version: int = PROTOCOL_VERSION
    features: tuple[str, ...] = ()
    #: The session to resume (from its WELCOME), or ``None`` for a new one.
    resume_session_id: str | None = None
    #: With ``resume_session_id``: the last message number the client received.
    resume_received: int = 0


@dataclass(frozen=True, slots=True)
class Welcome:
    """The server accepts: the codec it chose and the workers already ready."""

    codec: str
    session_id: str
    ready: tuple[str, ...]
    max_message_bytes: int
    version: int = PROTOCOL_VERSION
    features: tuple[str, ...] = ()
    #: Whether this is the session the client asked to resume.
    resumed: bool = False
    #: When resumed: the last message number the server received from the client.
    received: int = 0


@dataclass(frozen=True, slots=True)
class Reject:
    """The server refuses; it closes the connection after sending this."""

    code: int
    reason: str


Handshake = Hello | Welcome | Reject


def encode_handshake(frame: Handshake) -> bytes:
    """Encode a handshake frame in the bootstrap encoding (UTF-8 JSON)."""
    body: dict[str, Any] = {"protocol": PROTOCOL_NAME}
    if isinstance(frame, Hello):
        body.update(
            type="hello",
            version=frame.version,
            codecs=list(frame.codecs),
            client_worker=frame.client_worker,
            server_worker=frame.server_worker,
            max_message_bytes=frame.max_message_bytes,
            features=list(frame.features),
        )
        if frame.resume_session_id is not None:
            body.update(
                resume_session_id=frame.resume_session_id, resume_received=frame.resume_received
            )
    elif isinstance(frame, Welcome):
        body.update(
            type="welcome",
            version=frame.version,
            codec=frame.codec,
            session_id=frame.session_id,
            ready=list(frame.ready),
            max_message_bytes=frame.max_message_bytes,
            features=list(frame.features),
        )
        if frame.resumed:
            body.update(resumed=True, received=frame.received)
    else:
        body.update(type="reject", code=frame.code, reason=frame.reason)
    return json.dumps(body, separators=(",", ":")).encode()


def decode_handshake(data: bytes) -> Handshake:
    """Decode a handshake frame.

    Raises:
        HandshakeError: the bytes are not a well-formed handshake frame.
    """
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise HandshakeError(f"handshake frame is not JSON: {exc}") from None
    if not isinstance(body, dict) or body.get("protocol") != PROTOCOL_NAME:
        raise HandshakeError(f"not a {PROTOCOL_NAME} handshake frame")
    kind = body.get("type")
    try:
        if kind == "hello":
            return Hello(
                version=_get(body, "version", int),
                codecs=tuple(_str_list(body, "codecs")),
                client_worker=_get(body, "client_worker", str),
                server_worker=_get(body, "server_worker", str),
                max_message_bytes=_get(body, "max_message_bytes", int),
                features=_features(body),
                resume_session_id=_optional(body, "resume_session_id", str, None),
                resume_received=_optional(body, "resume_received", int, 0),
            )
        if kind == "welcome":
            return Welcome(
                version=_get(body, "version", int),
                codec=_get(body, "codec", str),
                session_id=_get(body, "session_id", str),
                ready=tuple(_str_list(body, "ready")),
                max_message_bytes=_get(body, "max_message_bytes", int),
                features=_features(body),
                resumed=_optional(body, "resumed", bool, False),
                received=_optional(body, "received", int, 0),
            )
        if kind == "reject":
            return Reject(code=_get(body, "code", int), reason=_get(body, "reason", str))
    except KeyError as exc:
        raise HandshakeError(f"{kind} frame is missing or has a bad field {exc}") from None
    raise HandshakeError(f"unknown handshake frame type {kind!r}")


def _get(body: dict[str, Any], key: str, kind: type[Any]) -> Any:
    value = body.get(key)
    # bool is an int in Python; a version of `true` is still malformed.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise KeyError(key)
    return value


def _str_list(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise KeyError(key)
    return value


def _features(body: dict[str, Any]) -> tuple[str, ...]:
    # Optional: a peer that predates features sends none.
    return tuple(_str_list(body, "features")) if "features" in body else ()


def _optional(body: dict[str, Any], key: str, kind: type[Any], default: Any) -> Any:
    if key not in body:
        return default
    value = _get(body, key, kind)
    if kind is int and value < 0:
        raise KeyError(key)
    return value
