"""The session protocol as one JSON Schema (2020-12) document, as the json codec writes it.

Generated from :mod:`proxy_core.protocol`: the handshake objects (HELLO,
WELCOME, REJECT) in their bootstrap JSON encoding, the frames after the
handshake (an array per :class:`~proxy_core.protocol.Kind`, its elements the
fields of the envelope dataclass in order), the close and reject codes, and,
through :class:`~proxy_core.schema.values.TypeSchemas`, every registered
message and frame type.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Final

from ..codecs.base import MAX_BATCH_FRAMES, MAX_CLOSE_CODE, MAX_SAFE_INTEGER, MIN_CLOSE_CODE
from ..errors import ConfigurationError
from ..messages import DEFAULT_TYPES, BusMessage, TypeRegistry
from ..protocol import (
    FEATURES,
    PROTOCOL_NAME,
    PROTOCOL_VERSION,
    CloseCode,
    Envelope,
    Hello,
    Kind,
    Reject,
    RejectCode,
    Welcome,
)
from ..session import MIN_MESSAGE_BYTES
from .values import MESSAGE, Schema, TypeSchemas, ref, summary

__all__ = [
    "HANDSHAKE",
    "JSON_SCHEMA_DIALECT",
    "SESSION_FRAME",
    "SINGLE_FRAME",
    "close_codes",
    "frame_name",
    "json_schema",
]

JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"

#: The handshake objects, by definition name.
HANDSHAKE: Final = {"Hello": Hello, "Welcome": Welcome, "Reject": Reject}
#: Any frame after the handshake; any but a BATCH (what a BATCH holds).
SESSION_FRAME: Final = "SessionFrame"
SINGLE_FRAME: Final = "SingleFrame"

#: When each close code is used (docs/protocol.md, "Close codes").
CLOSE_CODE_USES: Final[dict[int, str]] = {
    CloseCode.NORMAL: "After sending BYE 1000 or receiving any BYE; a transport handler that "
    "returned; a gRPC server answering the client's half-close.",
    CloseCode.GOING_AWAY: "A server ending its session (after BYE 1001); a proxy whose runner "
    "was cancelled; a listener shutting down; assumed for a close without a code.",
    CloseCode.PROTOCOL_ERROR: "After BYE 1002 (a sequence gap, an ACK for a number never "
    "sent); a client whose handshake failed; a server that got no HELLO in time.",
    CloseCode.UNSUPPORTED_DATA: "Defined, not used in v1.",
    CloseCode.TOO_LARGE: "A frame over the receiver's max_message_bytes (closed by the "
    "receiver, without BYE).",
    CloseCode.INTERNAL_ERROR: "A failure on the closing side: the session could not be set "
    "up, the receive loop failed, a transport handler raised.",
    CloseCode.HEARTBEAT_TIMEOUT: "Nothing received, or no room in the outbox, for "
    "heartbeat_timeout (30 s; without BYE).",
}

#: Why the server sends each REJECT code (then closes the connection with it).
REJECT_CODE_USES: Final[dict[int, str]] = {
    RejectCode.BAD_HELLO: "The first frame is not a well-formed HELLO, or its "
    f"max_message_bytes is below {MIN_MESSAGE_BYTES}.",
    RejectCode.UNAUTHORIZED: "The authenticate hook refused the client (a server that checks "
    "after accepting the connection).",
    RejectCode.UNSUPPORTED_VERSION: f"version is not {PROTOCOL_VERSION}.",
    RejectCode.NO_COMMON_CODEC: "None of the offered codecs is available (also for an empty list).",
    RejectCode.UNKNOWN_WORKER: "server_worker is not the worker this server serves, or "
    "client_worker is not the remote worker it expects.",
}

_STRING: Final[Schema] = {"type": "string"}
_STRINGS: Final[Schema] = {"type": "array", "items": {"type": "string"}}
_COUNT: Final[Schema] = {"type": "integer", "minimum": 0}
_FEATURES = f"v1 defines {', '.join(FEATURES)}; unknown names are ignored."

#: Per handshake object, its fields in the order our encoder writes them: whether a
#: reader requires it, its schema, what it means.
_HANDSHAKE_FIELDS: Final[dict[str, dict[str, tuple[bool, Schema, str]]]] = {
    "Hello": {
        "version": (True, {"const": PROTOCOL_VERSION}, "The protocol version."),
        "codecs": (True, _STRINGS, "The codecs the client supports, most preferred first."),
        "client_worker": (True, _STRING, "The worker the client serves."),
        "server_worker": (True, _STRING, "The worker the client wants on the server's side."),
        "max_message_bytes": (
            True,
            {"type": "integer", "minimum": MIN_MESSAGE_BYTES},
            "The largest frame the client accepts.",
        ),
        "features": (
            False,
            {**_STRINGS, "default": []},
            f"The optional features the client speaks: {_FEATURES}",
        ),
        "resume_session_id": (False, _STRING, "Only to resume: the session's id."),
        "resume_received": (
            False,
            {**_COUNT, "default": 0},
            "With resume_session_id: the last MSG number the client received.",
        ),
    },
    "Welcome": {
        "version": (True, {"const": PROTOCOL_VERSION}, "The protocol version."),
        "codec": (True, _STRING, "The codec chosen: the first of the client's the server has."),
        "session_id": (True, _STRING, "The session's id."),
        "ready": (True, _STRINGS, "Workers already ready on the server's side."),
        "max_message_bytes": (True, {"type": "integer"}, "The largest frame the server accepts."),
        "features": (
            False,
            {**_STRINGS, "default": []},
            "The features this session uses: those of the client's the server speaks.",
        ),
        "resumed": (
            False,
            {"type": "boolean", "default": False},
            "Whether this is the session HELLO asked to resume.",
        ),
        "received": (
            False,
            {**_COUNT, "default": 0},
            "With resumed: the last MSG number the server received.",
        ),
    },
    "Reject": {
        "code": (True, ref("RejectCode"), "Why; the server then closes with this code."),
        "reason": (True, _STRING, "Human-readable."),
    },
}

#: Constraints and meanings of the elements of the frames after the handshake.
_FRAME_FIELDS: Final[dict[tuple[str, str], Schema]] = {
    ("Msg", "seq"): {
        "minimum": 1,
        "maximum": MAX_SAFE_INTEGER,
        "description": "1, 2, 3... per direction and session.",
    },
    ("Msg", "message"): {"description": "The bus message, a `$type` map."},
    ("Ack", "seq"): {
        "minimum": 0,
        "maximum": MAX_SAFE_INTEGER,
        "description": "Every MSG up to this number arrived.",
    },
    ("Ready", "worker"): {"description": "The sender's served worker."},
    ("Ping", "nonce"): {
        "minimum": 0,
        "maximum": MAX_SAFE_INTEGER,
        "description": "The PONG copies it.",
    },
    ("Pong", "nonce"): {
        "minimum": 0,
        "maximum": MAX_SAFE_INTEGER,
        "description": "The PING's nonce.",
    },
    ("Bye", "code"): {
        "minimum": MIN_CLOSE_CODE,
        "maximum": MAX_CLOSE_CODE,
        "description": (
            "A close code (CloseCode). The side that says BYE first closes the connection "
            "with it once the other side answered (its answer: 1000)."
        ),
    },
    ("Bye", "reason"): {"description": "Human-readable; at most 123 bytes of UTF-8."},
}


def frame_name(kind: Kind) -> str:
    """Return the definition name of the frames of ``kind`` (``MsgFrame``)."""
    return f"{kind.name.title()}Frame"


def close_codes() -> list[dict[str, Any]]:
    """Return every close code of v1, by number: its ``code``, ``name`` and ``when`` it is used.

    Raises:
        ConfigurationError: a code of ``CloseCode`` or ``RejectCode`` is not described here.
    """
    out = []
    for enum, uses in ((CloseCode, CLOSE_CODE_USES), (RejectCode, REJECT_CODE_USES)):
        for member in enum:
            if member not in uses:
                raise ConfigurationError(f"describe {enum.__name__}.{member.name} in {__name__}")
            out.append({"code": int(member), "name": member.name, "when": uses[member]})
    return sorted(out, key=lambda entry: int(entry["code"]))


def _codes(title: str, enum: type[CloseCode] | type[RejectCode], uses: dict[int, str]) -> Schema:
    close_codes()  # every member is described
    return {
        "title": title,
        "description": summary(enum) or title,
        "type": "integer",
        "oneOf": [
            {"const": int(member), "title": member.name, "description": uses[member]}
            for member in enum
        ],
    }


def _handshake(name: str, cls: type[Any]) -> Schema:
    fields = _HANDSHAKE_FIELDS[name]
    declared = [f.name for f in dataclasses.fields(cls)]
    if set(fields) != set(declared):
        raise ConfigurationError(f"{__name__}: describe exactly the fields of {cls.__name__}")
    properties: Schema = {"protocol": {"const": PROTOCOL_NAME}, "type": {"const": name.lower()}}
    for field, (_, schema, meaning) in fields.items():
        properties[field] = {**schema, "description": meaning}
    return {
        "title": name.upper(),
        "description": f"{summary(cls)} A handshake object, in the bootstrap "
        "encoding: one UTF-8 JSON object whatever the codec. Unknown fields are ignored.",
        "type": "object",
        "properties": properties,
        "required": ["protocol", "type", *(f for f, (needed, *_) in fields.items() if needed)],
    }


def _frame(types: TypeSchemas, cls: type[Any]) -> tuple[Kind, Schema]:
    """Return the kind of envelope class ``cls`` and its frame: the kind, then its fields."""
    try:
        kind = Kind[cls.__name__.upper()]
    except KeyError:
        raise ConfigurationError(f"{__name__}: no frame kind for {cls.__name__}") from None
    hints = typing.get_type_hints(cls)
    items: list[Schema] = [{"const": int(kind)}]
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        base = ref(MESSAGE) if hint is BusMessage else types.annotation(hint)
        items.append({**base, **_FRAME_FIELDS.get((cls.__name__, field.name), {})})
    return kind, {
        "title": kind.name,
        "description": summary(cls) or kind.name,
        "type": "array",
        "prefixItems": items,
        "items": False,
        "minItems": len(items),
    }


def _frames(types: TypeSchemas) -> dict[str, Schema]:
    defs: dict[str, Schema] = {}
    for cls in typing.get_args(Envelope):
        kind, schema = _frame(types, cls)
        defs[frame_name(kind)] = schema
    defs[frame_name(Kind.BATCH)] = {
        "title": Kind.BATCH.name,
        "description": "Several frames in one transport message, each exactly as it would "
        "travel alone, to be processed in order; never a BATCH in a BATCH. Sent only when the "
        "handshake agreed on the feature batch.",
        "type": "array",
        "prefixItems": [{"const": int(Kind.BATCH)}],
        "items": ref(SINGLE_FRAME),
        "minItems": 2,
        "maxItems": MAX_BATCH_FRAMES + 1,
    }
    missing = [k.name for k in Kind if frame_name(k) not in defs]
    if missing:
        raise ConfigurationError(f"{__name__}: no envelope class for kind {', '.join(missing)}")
    singles = [ref(frame_name(k)) for k in Kind if k is not Kind.BATCH]
    defs[SINGLE_FRAME] = {
        "description": "Any frame after the handshake but a BATCH.",
        "oneOf": singles,
    }
    defs[SESSION_FRAME] = {
        "description": "Any frame after the handshake: an array whose first element is the kind.",
        "oneOf": [*singles, ref(frame_name(Kind.BATCH))],
    }
    return defs


def protocol_names() -> list[str]:
    """Return the definition names the protocol itself takes."""
    return [*HANDSHAKE, "CloseCode", "RejectCode", SINGLE_FRAME, SESSION_FRAME] + [
        frame_name(k) for k in Kind
    ]


def json_schema(registry: TypeRegistry | None = None) -> Schema:
    """Return the JSON Schema (2020-12) of everything the json codec puts on the wire.

    The root matches any one transport message of a session; ``$defs`` holds
    a definition per handshake object, frame kind, code list and registered
    type (``registry``, by default every registered type).

    Raises:
        ConfigurationError: the protocol has a frame kind, field or code this
            generator does not describe.
    """
    types = TypeSchemas(registry or DEFAULT_TYPES, reserved=protocol_names())
    defs: dict[str, Schema] = {name: _handshake(name, cls) for name, cls in HANDSHAKE.items()}
    defs.update(_frames(types))
    defs["CloseCode"] = _codes("CloseCode", CloseCode, CLOSE_CODE_USES)
    defs["RejectCode"] = _codes("RejectCode", RejectCode, REJECT_CODE_USES)
    defs.update(types.build())
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": f"{PROTOCOL_NAME} wire protocol v{PROTOCOL_VERSION}, json codec",
        "description": "One transport message of a session: a handshake object (HELLO, WELCOME, "
        "REJECT) or, after the handshake, a frame as the json codec writes it. Integers are "
        "written with no fraction and no exponent (JSON Schema cannot tell 1.0 from 1). The "
        "msgpack codec carries the same tree with bytes as its bin type. Generated by `proxy-core "
        "schema --format jsonschema`; the normative text is docs/protocol.md.",
        "oneOf": [*(ref(name) for name in HANDSHAKE), ref(SESSION_FRAME)],
        "$defs": defs,
    }
