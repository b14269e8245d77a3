"""The session protocol v1: frame kinds, handshake, codes.

``docs/protocol.md`` is the normative description; this module is its
executable form. The handshake (HELLO, WELCOME, REJECT) uses a fixed bootstrap
encoding, UTF-8 JSON objects, so that a peer can negotiate before it knows
the codec. Every later frame is an :data:`Envelope` encoded with the codec the
server chose.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

from .errors import CodecError, HandshakeError
from .messages import BusMessage
from .transport import truncate_reason

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
    """Encode a handshake frame in the bootstrap encoding (UTF-8 JSON).

    Fields are written in the order of ``docs/protocol.md``, without
    whitespace; optional fields only when they differ from their default (an
    empty ``features`` is left out). Non-ASCII characters are written as UTF-8,
    as the json codec writes them. A REJECT's reason is cut by
    :func:`~proxy_core.transport.truncate_reason`, like the close that follows.
    """
    body: dict[str, Any] = {"protocol": PROTOCOL_NAME}
    if isinstance(frame, Hello):
        body.update(
            type="hello",
            version=frame.version,
            codecs=list(frame.codecs),
            client_worker=frame.client_worker,
            server_worker=frame.server_worker,
            max_message_bytes=frame.max_message_bytes,
        )
        if frame.features:
            body.update(features=list(frame.features))
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
        )
        if frame.features:
            body.update(features=list(frame.features))
        if frame.resumed:
            body.update(resumed=True, received=frame.received)
    else:
        body.update(type="reject", code=frame.code, reason=truncate_reason(frame.reason))
    # A lone surrogate (which UTF-8 cannot carry) can only stand inside a JSON
    # string, where "backslashreplace" writes it as the JSON escape \udxxx.
    return _ENCODER.encode(body).encode("utf-8", "backslashreplace")


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

#: Every handshake type, in the order the words are listed in a reason.
_TYPES: Final = ("hello", "welcome", "reject")


def decode_handshake(data: bytes, *, expect: Collection[str] = _TYPES) -> Handshake:
    """Decode a handshake frame of one of the ``expect``ed types.

    Strings may be written as UTF-8 or as ``\\u`` escapes (both are JSON).
    The error names the fault: not UTF-8 or not JSON, not an object, another
    ``protocol``, an unexpected ``type``, or the field that is missing or of
    the wrong type (and the type it should have).

    Args:
        data: the frame.
        expect: the types (``"hello"``, ``"welcome"``, ``"reject"``) acceptable here.

    Raises:
        HandshakeError: the bytes are not a well-formed handshake frame of those types.
    """
    try:
        body = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as exc:
        raise HandshakeError(f"the handshake frame is not UTF-8: {exc.reason}") from None
    except RecursionError:
        raise HandshakeError("the handshake frame is not JSON: it nests too deeply") from None
    except ValueError as exc:
        raise HandshakeError(f"the handshake frame is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HandshakeError(f"the handshake frame must be a JSON object, got {_show(body)}")
    if "protocol" not in body:
        raise HandshakeError(
            f'the handshake frame has no "protocol" (it must be "{PROTOCOL_NAME}")'
        )
    if body["protocol"] != PROTOCOL_NAME:
        raise HandshakeError(f'"protocol" must be "{PROTOCOL_NAME}", got {_show(body["protocol"])}')
    kind = body.get("type")
    wanted = " or ".join(f'"{t}"' for t in _TYPES if t in expect)
    if "type" not in body:
        raise HandshakeError(f'the handshake frame has no "type" (expected {wanted})')
    if not isinstance(kind, str):
        raise HandshakeError(f'"type" must be a string, got {_show(kind)}')
    if kind not in expect:
        raise HandshakeError(f"expected a {wanted}, got {_show(kind)}")
    if kind == "hello":
        return Hello(
            version=_get(body, kind, "version", int),
            codecs=_str_list(body, kind, "codecs"),
            client_worker=_get(body, kind, "client_worker", str),
            server_worker=_get(body, kind, "server_worker", str),
            max_message_bytes=_get(body, kind, "max_message_bytes", int),
            features=_features(body, kind),
            resume_session_id=_optional(body, kind, "resume_session_id", str, None),
            resume_received=_optional(body, kind, "resume_received", int, 0),
        )
    if kind == "welcome":
        return Welcome(
            version=_get(body, kind, "version", int),
            codec=_get(body, kind, "codec", str),
            session_id=_get(body, kind, "session_id", str),
            ready=_str_list(body, kind, "ready"),
            max_message_bytes=_get(body, kind, "max_message_bytes", int),
            features=_features(body, kind),
            resumed=_optional(body, kind, "resumed", bool, False),
            received=_optional(body, kind, "received", int, 0),
        )
    return Reject(code=_get(body, kind, "code", int), reason=_get(body, kind, "reason", str))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_TYPE_NAMES: Final[dict[type[Any], str]] = {
    int: "an integer",
    str: "a string",
    bool: "a boolean",
    list: "an array of strings",
}


def _show(value: Any) -> str:
    """Show a JSON value in an error: scalars as JSON (strings cut), containers by kind."""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:36] + '..."'


def _fault(body: dict[str, Any], kind: str, key: str, wanted: type[Any]) -> HandshakeError:
    if key not in body:
        return HandshakeError(f'{kind.upper()} has no "{key}" (it must be {_TYPE_NAMES[wanted]})')
    return HandshakeError(
        f'{kind.upper()} "{key}" must be {_TYPE_NAMES[wanted]}, got {_show(body[key])}'
    )


def _get(body: dict[str, Any], kind: str, key: str, wanted: type[Any]) -> Any:
    value = body.get(key)
    # bool is an int in Python; a version of `true` is still malformed.
    if not isinstance(value, wanted) or (wanted is int and isinstance(value, bool)):
        raise _fault(body, kind, key, wanted)
    return value


def _str_list(body: dict[str, Any], kind: str, key: str) -> tuple[str, ...]:
    value = body.get(key)
    if not isinstance(value, list):
        raise _fault(body, kind, key, list)
    for item in value:
        if not isinstance(item, str):
            raise HandshakeError(
                f'{kind.upper()} "{key}" must be an array of strings, '
                f"got an array holding {_show(item)}"
            )
    return tuple(value)


def _features(body: dict[str, Any], kind: str) -> tuple[str, ...]:
    # Optional: absent means none (our encoder leaves an empty list out).
    return _str_list(body, kind, "features") if "features" in body else ()


def _optional(body: dict[str, Any], kind: str, key: str, wanted: type[Any], default: Any) -> Any:
    if key not in body:
        return default
    value = _get(body, kind, key, wanted)
    if wanted is int and value < 0:
        raise HandshakeError(f'{kind.upper()} "{key}" must be an integer >= 0, got {value}')
    return value
