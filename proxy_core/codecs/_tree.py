"""Envelopes to plain value trees and back, shared by the JSON and msgpack codecs.

The tree form is what ``docs/protocol.md`` specifies: a frame is an array whose
first element is the :class:`~proxy_core.protocol.Kind`; a registered object is
a map with a ``"$type"`` key holding its wire tag beside its fields. Maps whose
keys start with ``$`` are escaped as ``{"$dict": [[key, value], ...]}``, tuples
as ``{"$tuple": [...]}``, and, in codecs without a binary type, bytes as
``{"$bytes": "<base64>"}``.

The built-in messages and frames that cross (the tags of section 4.4 that the
protobuf codec also has dedicated messages for) have fast paths
(``_treefast.py``): each is written and read field by field, as a literal
map, instead of by the generic walk. They apply only where the registry holds
the built-in class itself, and only to values of the shape they were written
for (scalars where the protocol has scalars); anything else takes the generic
walk, which remains the reference: both produce the same tree, so the same
bytes.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Final

from ..errors import CodecError, UnknownMessageType
from ..messages import BusMessage, TypeRegistry
from ..protocol import Ack, Batch, Bye, Envelope, Kind, Msg, Ping, Pong, Ready
from ._treefast import _FAST_PATHS, _LEAVES_IN, _SCALARS, FastIn, FastOut, _FastPath
from .base import MAX_BATCH_FRAMES, MAX_SAFE_INTEGER, bye_code_error

__all__ = ["Invalid", "TreeConverter"]

# The kinds as plain ints: reading an IntEnum member costs a class attribute
# lookup (~70 ns) on every frame.
_MSG: Final = int(Kind.MSG)
_ACK: Final = int(Kind.ACK)
_READY: Final = int(Kind.READY)
_PING: Final = int(Kind.PING)
_PONG: Final = int(Kind.PONG)
_BYE: Final = int(Kind.BYE)
_BATCH: Final = int(Kind.BATCH)


class Invalid:
    """A value the bytes held that the tree model has no place for.

    A codec's parser puts one where it met a value it cannot represent (a map
    with a key that is not a string, a string that is not UTF-8, an extension
    type, a JSON ``NaN``), so that the rest of the frame still parses: the
    envelope, its kind and a MSG's seq are read, and only what holds the bad
    value is refused. :class:`TreeConverter` refuses it as malformed wherever
    it stands (it is no leaf, map or array).

    Attributes:
        reason: what the value was (``"an extension type"``), for the CodecError.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Invalid({self.reason!r})"


class TreeConverter:
    """Converts between envelopes and trees of plain values.

    Args:
        registry: the wire types that may be encoded and decoded.
        native_bytes: the target format has a binary type (msgpack); when false
            (JSON) bytes travel as base64 in a ``$bytes`` map.
        fast_paths: use the fast paths of the built-in types (tests turn them
            off to compare them with the generic walk).
    """

    def __init__(
        self, registry: TypeRegistry, *, native_bytes: bool, fast_paths: bool = True
    ) -> None:
        self.registry = registry
        self.native_bytes = native_bytes
        self.fast_paths = fast_paths
        # Values the tree holds as they are when encoding.
        self._leaves_out = _SCALARS | {bytes} if native_bytes else _SCALARS
        # Per registered class: (tag, constructor field names, fast path or None);
        # one dict lookup per object on the hot path instead of two registry calls.
        self._specs: dict[type[Any], tuple[str, tuple[str, ...], FastOut | None]] = {}
        # Per tag seen on the wire: (class, fast path or None). Only tags that are
        # registered are kept: one registered later must still be found.
        self._classes: dict[str, tuple[type[Any], FastIn | None]] = {}

    def _spec(self, cls: type[Any]) -> tuple[str, tuple[str, ...], FastOut | None]:
        tag = self.registry.tag_of(cls)
        if tag is None:
            raise CodecError(
                f"{cls.__module__}.{cls.__qualname__} is not a registered wire type; "
                "register it with proxy_core.register_type(tag)"
            )
        names = self.registry.fields_of(cls)
        fast = self._fast_path(cls, names)
        spec = self._specs[cls] = (tag, names, fast[0] if fast else None)
        return spec

    def _class_in(self, tag: str) -> tuple[type[Any], FastIn | None]:
        cls = self.registry.type_of(tag)
        if cls is None:
            raise UnknownMessageType(tag)
        fast = self._fast_path(cls, self.registry.fields_of(cls))
        entry = self._classes[tag] = (cls, fast[1] if fast else None)
        return entry

    def _fast_path(self, cls: type[Any], names: tuple[str, ...]) -> _FastPath | None:
        # Keyed by the exact class: a subclass, or another class registered under
        # a built-in tag, takes the generic walk. The field names are checked so
        # that a field added to a built-in type cannot be silently left out.
        fast = _FAST_PATHS.get(cls) if self.fast_paths else None
        return fast if fast is not None and fast[2] == names else None

    # ------------------------------------------------------------ encoding

    def envelope_to_tree(self, envelope: Envelope) -> list[Any]:
        """Return the tree form of ``envelope``.

        Raises:
            CodecError: a value cannot be encoded.
        """
        if isinstance(envelope, Msg):
            seq = envelope.seq  # below 1 it reaches the peer, whose session refuses it
            if type(seq) is not int or seq > MAX_SAFE_INTEGER:
                raise CodecError(
                    f"Msg.seq must be an integer up to {MAX_SAFE_INTEGER}, got {seq!r}"
                )
            return [_MSG, seq, self._object_out(envelope.message)]
        # The range checks are written out: a call costs as much as the rest here.
        if isinstance(envelope, Ack):
            seq = envelope.seq
            if type(seq) is int and 0 <= seq <= MAX_SAFE_INTEGER:
                return [_ACK, seq]
            raise _bad_counter_out(seq, "Ack.seq")
        if isinstance(envelope, Ready):
            return [_READY, envelope.worker]
        if isinstance(envelope, Ping):
            nonce = envelope.nonce
            if type(nonce) is int and 0 <= nonce <= MAX_SAFE_INTEGER:
                return [_PING, nonce]
            raise _bad_counter_out(nonce, "Ping.nonce")
        if isinstance(envelope, Pong):
            nonce = envelope.nonce
            if type(nonce) is int and 0 <= nonce <= MAX_SAFE_INTEGER:
                return [_PONG, nonce]
            raise _bad_counter_out(nonce, "Pong.nonce")
        if isinstance(envelope, Bye):
            if (why := bye_code_error(envelope.code)) is not None:
                raise CodecError(f"Bye.{why}")
            return [_BYE, envelope.code, envelope.reason]
        raise CodecError(f"not an envelope: {type(envelope).__qualname__}")

    def _object_out(self, obj: Any) -> dict[str, Any]:
        cls = type(obj)
        tag, names, fast = self._specs.get(cls) or self._spec(cls)
        if fast is not None:
            tree = fast(self, tag, obj)
            if tree is not None:
                return tree
        out: dict[str, Any] = {"$type": tag}
        for name in names:
            value = getattr(obj, name)
            # Most fields are scalars: keep them off the general path.
            out[name] = value if type(value) in _SCALARS else self._value_out(value, cls, name)
        return out

    def _field_out(self, value: Any, owner: type[Any], field: str) -> Any:
        # _value_out, with the common cases first: a leaf, a registered object,
        # a map of leaves under plain keys (copied whole instead of walked).
        kind = type(value)
        if kind in self._leaves_out:
            return value
        if kind in self._specs:
            return self._object_out(value)
        if kind is dict and _is_plain_map(value, self._leaves_out):
            return dict(value)
        return self._value_out(value, owner, field)

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

        A BATCH is ``[7, frame, frame, ...]`` with at least one frame; each frame
        is decoded on its own.

        Raises:
            UnknownMessageType: a type tag is not registered (not in a BATCH).
            CodecError: the tree is not a valid frame (not in a BATCH).
        """
        if type(tree) is list and tree and type(tree[0]) is int and tree[0] == _BATCH:
            if len(tree) == 1:
                raise CodecError("an empty BATCH")
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
        if kind == _MSG and size == 3:
            seq = tree[1]
            if type(seq) is not int or seq > MAX_SAFE_INTEGER:  # no readable seq
                raise CodecError(_not_a_counter(seq, "seq"))
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
        if kind == _ACK and size == 2:
            seq = tree[1]
            if type(seq) is int and 0 <= seq <= MAX_SAFE_INTEGER:
                return Ack(seq)
            raise CodecError(_not_a_counter(seq, "seq"))
        if kind == _READY and size == 2 and type(tree[1]) is str:
            return Ready(tree[1])
        if kind == _PING and size == 2:
            nonce = tree[1]
            if type(nonce) is int and 0 <= nonce <= MAX_SAFE_INTEGER:
                return Ping(nonce)
            raise CodecError(_not_a_counter(nonce, "nonce"))
        if kind == _PONG and size == 2:
            nonce = tree[1]
            if type(nonce) is int and 0 <= nonce <= MAX_SAFE_INTEGER:
                return Pong(nonce)
            raise CodecError(_not_a_counter(nonce, "nonce"))
        if kind == _BYE and size == 3 and type(tree[2]) is str:
            code = tree[1]
            if (why := bye_code_error(code)) is not None:
                raise CodecError(why)
            return Bye(code, tree[2])
        if kind == _BATCH:
            raise CodecError("a BATCH cannot hold another BATCH")
        if kind == _MSG and size > 1:  # another length: its seq is still read
            seq = tree[1]
            if type(seq) is int and seq <= MAX_SAFE_INTEGER:
                raise CodecError(f"a MSG has 3 elements, not {size}", seq=seq)
        raise CodecError(f"malformed frame of kind {kind!r} with {size} elements")

    def _object_in(self, node: Any) -> Any:
        if type(node) is not dict or "$type" not in node:
            if type(node) is Invalid:
                raise CodecError(f"invalid message: {node.reason}")
            raise CodecError("a message must be a map with a $type")
        tag = node["$type"]
        if type(tag) is not str:
            if type(tag) is Invalid:
                raise CodecError(f"invalid $type: {tag.reason}")
            raise UnknownMessageType(tag)
        cls, fast = self._classes.get(tag) or self._class_in(tag)
        if fast is not None:
            obj = fast(self, cls, node)
            if obj is not None:
                return obj
        fields = {
            k: v if type(v) in _SCALARS else self._value_in(v)
            for k, v in node.items()
            if k != "$type"
        }
        try:
            return cls(**fields)
        except Exception as exc:  # wrong fields, or a __post_init__ that refuses the values
            raise CodecError(f"fields do not fit {tag!r}: {exc}") from None

    def _field_in(self, node: Any) -> Any:
        # _value_in, with the common cases first (see _field_out).
        kind = type(node)
        if kind in _LEAVES_IN:
            return node
        if kind is dict:
            if "$type" in node:
                return self._object_in(node)
            if _is_plain_map(node, _LEAVES_IN):
                return dict(node)
        return self._value_in(node)

    def _value_in(self, node: Any) -> Any:
        kind = type(node)
        if kind in _SCALARS or kind is bytes:
            return node
        if kind is list:
            return [self._value_in(v) for v in node]
        if kind is not dict:
            if kind is Invalid:
                raise CodecError(f"invalid value: {node.reason}")
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


def _bad_counter_out(value: Any, what: str) -> CodecError:
    """The error for an ACK number or nonce a receiver could not read."""
    return CodecError(f"{what} must be an integer in [0, {MAX_SAFE_INTEGER}], got {value!r}")


def _not_a_counter(value: Any, what: str) -> str:
    """Why a seq, an ACK number or a nonce is not an integer in [0, MAX_SAFE_INTEGER]."""
    if type(value) is int:
        return f"{what} {value} is outside [0, {MAX_SAFE_INTEGER}]"
    return f"{what} must be an integer, got {_type_name(value)}"


def _type_name(value: Any) -> str:
    return value.reason if type(value) is Invalid else type(value).__qualname__


def _b64(value: Any) -> bytes:
    if type(value) is not str:
        raise CodecError("$bytes must hold a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise CodecError("$bytes is not valid base64") from None


def _is_plain_map(value: dict[Any, Any], leaves: frozenset[type[Any]]) -> bool:
    """Whether every key is a str not starting with ``$`` and every value a leaf."""
    for key, item in value.items():
        if type(key) is not str or key.startswith("$") or type(item) not in leaves:
            return False
    return True
