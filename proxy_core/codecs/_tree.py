"""Envelopes to plain value trees and back, shared by the JSON and msgpack codecs.

The tree form is what ``docs/protocol.md`` specifies: a frame is an array whose
first element is the :class:`~proxy_core.protocol.Kind`; a registered object is
a map with a ``"$type"`` key holding its wire tag beside its fields. Maps whose
keys start with ``$`` are escaped as ``{"$dict": [[key, value], ...]}``, tuples
as ``{"$tuple": [...]}``, and, in codecs without a binary type, bytes as
``{"$bytes": "<base64>"}``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from ..errors import CodecError, UnknownMessageType
from ..messages import BusMessage, TypeRegistry
from ..protocol import Ack, Batch, Bye, Envelope, Kind, Msg, Ping, Pong, Ready
from .base import MAX_BATCH_FRAMES

__all__ = ["TreeConverter"]

_SCALARS = frozenset((str, int, float, bool, type(None)))


class TreeConverter:
    """Converts between envelopes and trees of plain values.

    Args:
        registry: the wire types that may be encoded and decoded.
        native_bytes: the target format has a binary type (msgpack); when false
            (JSON) bytes travel as base64 in a ``$bytes`` map.
    """

    def __init__(self, registry: TypeRegistry, *, native_bytes: bool) -> None:
        self.registry = registry
        self.native_bytes = native_bytes
        # (tag, constructor field names) per registered class: one dict lookup per
        # object on the hot path instead of two registry calls.
        self._specs: dict[type[Any], tuple[str, tuple[str, ...]]] = {}

    def _spec(self, cls: type[Any]) -> tuple[str, tuple[str, ...]]:
        tag = self.registry.tag_of(cls)
        if tag is None:
            raise CodecError(
                f"{cls.__module__}.{cls.__qualname__} is not a registered wire type; "
                "register it with proxy_core.register_type(tag)"
            )
        spec = self._specs[cls] = (tag, self.registry.fields_of(cls))
        return spec

    # ------------------------------------------------------------ encoding

    def envelope_to_tree(self, envelope: Envelope) -> list[Any]:
        """Return the tree form of ``envelope``.

        Raises:
            CodecError: a value cannot be encoded.
        """
        if isinstance(envelope, Msg):
            return [Kind.MSG.value, envelope.seq, self._object_out(envelope.message)]
        if isinstance(envelope, Ack):
            return [Kind.ACK.value, envelope.seq]
        if isinstance(envelope, Ready):
            return [Kind.READY.value, envelope.worker]
        if isinstance(envelope, Ping):
            return [Kind.PING.value, envelope.nonce]
        if isinstance(envelope, Pong):
            return [Kind.PONG.value, envelope.nonce]
        if isinstance(envelope, Bye):
            return [Kind.BYE.value, envelope.code, envelope.reason]
        raise CodecError(f"not an envelope: {type(envelope).__qualname__}")

    def _object_out(self, obj: Any) -> dict[str, Any]:
        cls = type(obj)
        tag, names = self._specs.get(cls) or self._spec(cls)
        out: dict[str, Any] = {"$type": tag}
        for name in names:
            value = getattr(obj, name)
            # Most fields are scalars: keep them off the general path.
            out[name] = value if type(value) in _SCALARS else self._value_out(value, cls, name)
        return out

    def _value_out(self, value: Any, owner: type[Any], field: str) -> Any:
        kind = type(value)
        if kind in _SCALARS:
            return value
        if kind is bytes:
            return value if self.native_bytes else {"$bytes": base64.b64encode(value).decode()}
        if kind is list:
            return [self._value_out(v, owner, field) for v in value]
        if kind is tuple:
            return {"$tuple": [self._value_out(v, owner, field) for v in value]}
        if kind is dict:
            if not all(type(k) is str for k in value):
                raise CodecError(f"{owner.__qualname__}.{field}: map keys must be str")
            items = {k: self._value_out(v, owner, field) for k, v in value.items()}
            if any(k.startswith("$") for k in items):
                return {"$dict": [[k, v] for k, v in items.items()]}
            return items
        if kind in self.registry:
            return self._object_out(value)
        raise CodecError(
            f"{owner.__qualname__}.{field}: cannot encode a value of type {kind.__qualname__}"
        )

    # ------------------------------------------------------------ decoding

    def tree_to_frame(self, tree: Any) -> Envelope | Batch:
        """Return the envelope, or the BATCH, that ``tree`` encodes.

        A BATCH is ``[7, frame, frame, ...]``; each frame is decoded on its own.

        Raises:
            UnknownMessageType: a type tag is not registered (not in a BATCH).
            CodecError: the tree is not a valid frame (not in a BATCH).
        """
        if type(tree) is list and tree and type(tree[0]) is int and tree[0] == Kind.BATCH:
            if len(tree) - 1 > MAX_BATCH_FRAMES:
                raise CodecError(f"BATCH of {len(tree) - 1} frames; at most {MAX_BATCH_FRAMES}")
            items: list[Envelope | CodecError] = []
            for node in tree[1:]:
                try:
                    items.append(self.tree_to_envelope(node))
                except CodecError as exc:
                    items.append(exc.with_traceback(None))  # kept: not its frames
                except RecursionError:
                    items.append(CodecError("frame nests too deeply"))
            return Batch(tuple(items))
        return self.tree_to_envelope(tree)

    def tree_to_envelope(self, tree: Any) -> Envelope:
        """Return the envelope that ``tree`` encodes.

        Raises:
            UnknownMessageType: a type tag is not registered.
            CodecError: the tree is not a valid envelope.
        """
        if type(tree) is not list or not tree:
            raise CodecError("a frame must be a non-empty array")
        kind = tree[0]
        if type(kind) is not int:  # `true` and `1.0` compare equal to 1: refuse them
            raise CodecError(f"frame kind must be an integer, got {type(kind).__qualname__}")
        size = len(tree)
        if kind == Kind.MSG and size == 3:
            seq = _int(tree[1], "seq")
            try:
                message = self._object_in(tree[2])
            except CodecError as exc:
                exc.seq = seq
                raise
            except RecursionError:
                raise CodecError("message nests too deeply", seq=seq) from None
            if not isinstance(message, BusMessage):
                raise CodecError(
                    f"MSG carries a {type(message).__qualname__}, not a bus message", seq=seq
                )
            if type(message.source) is not str or not (
                message.target is None or type(message.target) is str
            ):
                raise CodecError("message source must be str and target str or null", seq=seq)
            return Msg(seq, message)
        if kind == Kind.ACK and size == 2:
            return Ack(_int(tree[1], "seq"))
        if kind == Kind.READY and size == 2 and type(tree[1]) is str:
            return Ready(tree[1])
        if kind == Kind.PING and size == 2:
            return Ping(_int(tree[1], "nonce"))
        if kind == Kind.PONG and size == 2:
            return Pong(_int(tree[1], "nonce"))
        if kind == Kind.BYE and size == 3 and type(tree[2]) is str:
            return Bye(_int(tree[1], "code"), tree[2])
        if kind == Kind.BATCH:
            raise CodecError("a BATCH cannot hold another BATCH")
        raise CodecError(f"malformed frame of kind {kind!r} with {size} elements")

    def _object_in(self, node: Any) -> Any:
        if type(node) is not dict or "$type" not in node:
            raise CodecError("a message must be a map with a $type")
        tag = node["$type"]
        cls = self.registry.type_of(tag) if type(tag) is str else None
        if cls is None:
            raise UnknownMessageType(tag)
        fields = {
            k: v if type(v) in _SCALARS else self._value_in(v)
            for k, v in node.items()
            if k != "$type"
        }
        try:
            return cls(**fields)
        except Exception as exc:  # wrong fields, or a __post_init__ that refuses the values
            raise CodecError(f"fields do not fit {tag!r}: {exc}") from None

    def _value_in(self, node: Any) -> Any:
        kind = type(node)
        if kind in _SCALARS or kind is bytes:
            return node
        if kind is list:
            return [self._value_in(v) for v in node]
        if kind is not dict:
            raise CodecError(f"unexpected value of type {kind.__qualname__}")
        if "$type" in node:
            return self._object_in(node)
        if len(node) == 1:
            if "$bytes" in node:
                return _b64(node["$bytes"])
            if "$tuple" in node and type(node["$tuple"]) is list:
                return tuple(self._value_in(v) for v in node["$tuple"])
            if "$dict" in node and type(node["$dict"]) is list:
                return self._escaped_dict_in(node["$dict"])
        if any(type(k) is not str or k.startswith("$") for k in node):
            raise CodecError("map keys must be str and must not start with '$' unescaped")
        return {k: self._value_in(v) for k, v in node.items()}

    def _escaped_dict_in(self, pairs: list[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for pair in pairs:
            if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not str:
                raise CodecError("$dict entries must be [str, value] pairs")
            out[pair[0]] = self._value_in(pair[1])
        return out


def _int(value: Any, what: str) -> int:
    if type(value) is not int:
        raise CodecError(f"{what} must be an integer, got {type(value).__qualname__}")
    return value


def _b64(value: Any) -> bytes:
    if type(value) is not str:
        raise CodecError("$bytes must hold a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise CodecError("$bytes is not valid base64") from None
