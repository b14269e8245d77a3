"""The session protocol as an AsyncAPI 3.0.0 document.

One channel, the session (one WebSocket connection, or one gRPC call), with a
message per handshake object and frame kind; operations for the handshake (a
request with its reply) and for the frames both sides send and receive after
it. The payload schemas are those of :func:`~proxy_core.schema.wire.json_schema`
turned into AsyncAPI Schema Objects (JSON Schema draft-07 and a little more),
under ``components.schemas``; the examples are encoded by the real codecs.
"""

from __future__ import annotations

import json
from typing import Any, Final

from ..codecs.json import JsonCodec
from ..errors import CodecError
from ..messages import DEFAULT_TYPES, BusFrameMessage, TextFrame, TypeRegistry
from ..protocol import (
    FEATURES,
    PROTOCOL_NAME,
    PROTOCOL_VERSION,
    Ack,
    Bye,
    Envelope,
    Hello,
    Kind,
    Msg,
    Ping,
    Pong,
    Ready,
    Reject,
    RejectCode,
    Welcome,
    encode_handshake,
)
from .values import Schema, summary
from .wire import HANDSHAKE, close_codes, frame_name, json_schema

__all__ = ["ASYNCAPI_VERSION", "asyncapi_document", "to_asyncapi_schema"]

ASYNCAPI_VERSION: Final = "3.0.0"
_CHANNEL: Final = "#/channels/session"
#: Keys whose values are data, not schemas: left as they are.
_DATA_KEYS: Final = frozenset(("const", "enum", "default", "examples"))
#: Keys whose values map names to schemas: the names are left as they are.
_SCHEMA_MAPS: Final = frozenset(("properties", "patternProperties", "$defs"))


def to_asyncapi_schema(node: Any) -> Any:
    """Turn a JSON Schema 2020-12 node of :func:`json_schema` into an AsyncAPI Schema Object.

    AsyncAPI's default schema format is draft-07 based: ``prefixItems`` become
    ``items`` (an array) with ``additionalItems``, references point into
    ``components.schemas``, and a reference with siblings (ignored in draft-07)
    moves into an ``allOf``.
    """
    if isinstance(node, list):
        return [to_asyncapi_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DATA_KEYS:
            out[key] = value
        elif key in _SCHEMA_MAPS:
            out[key] = {name: to_asyncapi_schema(item) for name, item in value.items()}
        elif key == "$ref":
            out[key] = value.replace("#/$defs/", "#/components/schemas/")
        elif key == "prefixItems":
            out["items"] = to_asyncapi_schema(value)
        elif key == "items" and "prefixItems" in node:
            out["additionalItems"] = to_asyncapi_schema(value)
        elif key != "$schema":
            out[key] = to_asyncapi_schema(value)
    if "$ref" in out and len(out) > 1:
        return {"allOf": [{"$ref": out.pop("$ref")}], **out}
    return out


def _samples(registry: TypeRegistry) -> dict[str, Any]:
    """Return an example payload per message name, encoded as a peer would send it."""
    codec = JsonCodec(registry)
    hello = Hello(
        codecs=("msgpack", "json"),
        client_worker="acme",
        server_worker="assistant",
        max_message_bytes=1 << 20,
        features=FEATURES,
    )
    welcome = Welcome(
        codec="msgpack",
        session_id="5f0c3e1a9b7d4c2e8a6f1b3d5c7e9a0b",
        ready=("assistant",),
        max_message_bytes=1 << 20,
        features=FEATURES,
    )
    raw: dict[str, bytes] = {
        "hello": encode_handshake(hello),
        "welcome": encode_handshake(welcome),
        "reject": encode_handshake(Reject(int(RejectCode.UNAUTHORIZED), "unauthorized")),
    }
    frames: list[Envelope] = [
        Msg(2, BusFrameMessage("acme", "assistant", TextFrame("hello"))),
        Ack(2),
        Ready("acme"),
        Ping(1),
        Pong(1),
        Bye(1000, "deactivated"),
    ]
    for frame in frames:
        try:
            raw[type(frame).__name__.lower()] = codec.encode(frame)
        except CodecError:  # a registry without the built-in types: no example
            pass
    raw["batch"] = codec.encode_batch([codec.encode(Ack(2)), codec.encode(Ping(1))])
    return {name: json.loads(data) for name, data in raw.items()}


def _messages(registry: TypeRegistry) -> dict[str, Schema]:
    samples = _samples(registry)
    out: dict[str, Schema] = {}
    who = {
        "Hello": "Client to server.",
        "Welcome": "Server to client.",
        "Reject": "Server to client.",
    }
    for name, cls in HANDSHAKE.items():
        out[name.lower()] = {
            "name": name.upper(),
            "title": name.upper(),
            "summary": f"{summary(cls)} {who[name]}",
            "description": "A handshake object in the bootstrap encoding: one UTF-8 JSON "
            "object, sent as one binary frame, whatever the codec.",
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{name}"},
        }
    for kind in Kind:
        name = kind.name.lower()
        out[name] = {
            "name": kind.name,
            "title": kind.name,
            "summary": f"Kind {int(kind)}. Either side, after the handshake.",
            "description": "An array whose first element is the kind, encoded with the codec "
            "the handshake chose; shown as the json codec writes it. msgpack carries the same "
            "tree (bytes as its bin type); protobuf has its own schema "
            "(proto/proxy_core/v1/envelope.proto).",
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{frame_name(kind)}"},
        }
    for name, payload in samples.items():
        out[name]["examples"] = [{"name": f"{name}-example", "payload": payload}]
    return out


def _close_code_table() -> str:
    rows = [f"| {c['code']} | `{c['name']}` | {c['when']} |" for c in close_codes()]
    return "\n".join(["| code | name | when |", "| --- | --- | --- |", *rows])


_INFO = f"""\
The session protocol v{PROTOCOL_VERSION} that two {PROTOCOL_NAME} proxies speak, the same on \
every transport: a handshake (HELLO, then WELCOME or REJECT) in a fixed JSON encoding, then \
frames encoded with the codec the server chose (json, msgpack or protobuf). Each protocol frame \
is one transport message: one binary WebSocket message, or the `data` of one gRPC `Frame`.

The normative text is docs/protocol.md; this document is generated from the code by \
`{PROTOCOL_NAME} schema`, and so are the JSON Schemas of every registered message and frame \
type under `components.schemas` (`{PROTOCOL_NAME} schema --format jsonschema` gives them as \
one JSON Schema 2020-12 document). Operations are named by who performs them."""

_CHANNEL_TEXT = """\
One connection between a client and a server proxy, for one session. The client sends HELLO; \
the server answers WELCOME, or REJECT and closes with the REJECT's code. From then on both \
sides send the frames of the other messages, in any order.

Every connection ends with a close code (on gRPC, from the server only, in trailing metadata \
`proxy-core-close-code`); `x-close-codes` lists them for tools:

"""


def _servers() -> dict[str, Schema]:
    host = {
        "host": {"description": "The server's host name or address.", "examples": ["localhost"]},
        "port": {"description": "The server's port.", "examples": ["8765"]},
    }
    return {
        "websocket": {
            "host": "{host}:{port}",
            "pathname": "{path}",
            "protocol": "ws",
            "description": "The WebSocket binding (transports websockets and aiohttp): "
            "`ws://` or, over TLS, `wss://`. No subprotocol, no compression; credentials as "
            "headers of the upgrade request (refused with HTTP 401).",
            "variables": {
                **host,
                "path": {
                    "description": "The path the server was created with; one created without "
                    "a path accepts any.",
                    "examples": ["/ws"],
                },
            },
        },
        "grpc": {
            "host": "{host}:{port}",
            "protocol": "grpc",
            "description": "The gRPC binding (transport grpc): `grpc://` or, over TLS, "
            "`grpcs://`. A session is one call of the bidirectional-streaming method "
            "`/proxy_core.v1.ProxySession/Connect`; each `Frame` carries one protocol frame in "
            "`bytes data = 1` (proto/proxy_core/v1/service.proto); credentials as request "
            "metadata.",
            "variables": host,
        },
    }


def _operations(messages: list[str]) -> dict[str, Schema]:
    def refs(names: list[str]) -> list[Schema]:
        return [{"$ref": f"{_CHANNEL}/messages/{name}"} for name in names]

    channel = {"$ref": _CHANNEL}
    answer = {"channel": channel, "messages": refs(["welcome", "reject"])}
    frames = [m for m in messages if m not in ("hello", "welcome", "reject")]
    return {
        "clientHandshake": {
            "action": "send",
            "channel": channel,
            "title": "Open a session",
            "summary": "The client sends HELLO as its first frame and reads one answer.",
            "messages": refs(["hello"]),
            "reply": answer,
        },
        "serverHandshake": {
            "action": "receive",
            "channel": channel,
            "title": "Accept or refuse a session",
            "summary": "The server reads HELLO and answers WELCOME, or REJECT and closes.",
            "messages": refs(["hello"]),
            "reply": answer,
        },
        "sendFrame": {
            "action": "send",
            "channel": channel,
            "title": "Send a frame",
            "summary": "Either side, after the handshake.",
            "messages": refs(frames),
        },
        "receiveFrame": {
            "action": "receive",
            "channel": channel,
            "title": "Receive a frame",
            "summary": "Either side, after the handshake.",
            "messages": refs(frames),
        },
    }


def _channel(messages: list[str]) -> Schema:
    headers = {
        "type": "object",
        "properties": {
            "Authorization": {
                "type": "string",
                "description": "Credentials, if the server checks them.",
            }
        },
    }
    return {
        "address": None,  # the WebSocket server's path, or the gRPC method: see the servers
        "title": "A session",
        "description": _CHANNEL_TEXT + _close_code_table(),
        "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in messages},
        "bindings": {"ws": {"method": "GET", "headers": headers, "bindingVersion": "0.1.0"}},
        "x-close-codes": close_codes(),
    }


def asyncapi_document(registry: TypeRegistry | None = None) -> dict[str, Any]:
    """Return the AsyncAPI 3.0.0 document of the session protocol.

    Args:
        registry: the registered types whose schemas it holds (default: every
            registered type).

    Raises:
        ConfigurationError: see :func:`~proxy_core.schema.wire.json_schema`.
    """
    registry = registry or DEFAULT_TYPES
    schema = json_schema(registry)
    messages = _messages(registry)
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": f"{PROTOCOL_NAME} session protocol",
            "version": str(PROTOCOL_VERSION),
            "description": _INFO,
        },
        "defaultContentType": "application/json",
        "servers": _servers(),
        "channels": {"session": _channel(list(messages))},
        "operations": _operations(list(messages)),
        "components": {
            "schemas": {name: to_asyncapi_schema(node) for name, node in schema["$defs"].items()},
            "messages": messages,
        },
    }
