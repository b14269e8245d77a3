"""JSON Schema of the value model: a definition per registered type, as the json codec writes it.

The tree form (``docs/protocol.md`` section 4) maps onto JSON Schema directly:
a registered object is an object with a ``"$type"`` constant beside one
property per constructor field, typed from the field's annotation; bytes,
tuples and maps with ``$`` keys are their escapes (``$bytes``, ``$tuple``,
``$dict``). A field annotated ``Any`` may hold any value of the model
(:data:`VALUE`).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Iterable
from typing import Any, Final

from ..messages import LIFECYCLE_MESSAGES, BusLocalMessage, BusMessage, Frame, TypeRegistry

__all__ = [
    "BASE64_PATTERN",
    "MESSAGE",
    "OBJECT",
    "VALUE",
    "VALUE_MODEL",
    "Schema",
    "TypeSchemas",
    "any_of",
    "ref",
    "summary",
]

Schema = dict[str, Any]

#: Names of the definitions of the value model itself.
VALUE: Final = "Value"
MAP: Final = "Map"
BYTES: Final = "Bytes"
TUPLE: Final = "Tuple"
ESCAPED_MAP: Final = "EscapedMap"
#: Any registered object (the ``$type`` maps of every registered type).
OBJECT: Final = "RegisteredObject"
#: What a MSG carries: a registered bus message that may cross (not a local one).
MESSAGE: Final = "Message"
VALUE_MODEL: Final = (VALUE, MAP, BYTES, TUPLE, ESCAPED_MAP, OBJECT, MESSAGE)

#: Standard base64 (RFC 4648) with padding, as the json codec writes bytes.
BASE64_PATTERN: Final = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"

_SCALARS: Final[dict[Any, str]] = {bool: "boolean", int: "integer", float: "number", str: "string"}
_NO_DEFAULT: Final[Any] = object()


def ref(name: str) -> Schema:
    """Return a reference to definition ``name``."""
    return {"$ref": f"#/$defs/{name}"}


def any_of(schemas: Iterable[Schema]) -> Schema:
    """Return a schema matched by any of ``schemas`` (one ``type`` list for plain types)."""
    unique: list[Schema] = []
    for schema in schemas:
        for part in schema["anyOf"] if list(schema) == ["anyOf"] else [schema]:
            if part not in unique:
                unique.append(part)
    if len(unique) == 1:
        return unique[0]
    if all(list(s) == ["type"] and isinstance(s["type"], str) for s in unique):
        return {"type": [s["type"] for s in unique]}
    return {"anyOf": unique}


def _escape(key: str, body: Schema, description: str) -> Schema:
    return {
        "description": description,
        "type": "object",
        "properties": {key: body},
        "required": [key],
        "additionalProperties": False,
    }


def _plain_map(values: Schema) -> Schema:
    return {
        "type": "object",
        "propertyNames": {"not": {"pattern": "^\\$"}},
        "additionalProperties": values,
    }


def _escaped_map(values: Schema) -> Schema:
    pair = {"type": "array", "prefixItems": [{"type": "string"}, values], "items": False}
    return _escape(
        "$dict",
        {"type": "array", "items": {**pair, "minItems": 2}},
        "A map with a key starting with `$`: every entry, in order, as a [key, value] pair.",
    )


def _tuple(items: Schema) -> Schema:
    return _escape("$tuple", items, "A tuple (distinct from a list): its items.")


def _one_of(description: str, schemas: list[Schema]) -> Schema:
    # With no type registered, nothing matches (an empty oneOf is not a schema).
    return {"description": description, **({"oneOf": schemas} if schemas else {"not": {}})}


def _safe_name(name: str) -> str:
    # Component names in AsyncAPI are limited to these characters.
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


def summary(cls: type[Any]) -> str | None:
    """Return the first paragraph of the docstring of ``cls``, as CommonMark, or None."""
    doc = inspect.getdoc(cls)
    # A dataclass without a docstring gets its signature as one: not a description.
    if not doc or doc.startswith(f"{cls.__name__}("):
        return None
    # Docstrings are reStructuredText; descriptions are CommonMark.
    return doc.split("\n\n", 1)[0].replace("\n", " ").replace("``", "`")


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return _NO_DEFAULT


def _json_literal(value: Any) -> bool:
    """Whether ``value`` has the same form in JSON and in the tree (so it can be a default)."""
    if value is None or type(value) in (bool, int, str):
        return True
    if type(value) is float:
        return value == value and value not in (float("inf"), float("-inf"))
    return type(value) in (list, dict) and not value


class TypeSchemas:
    """The definitions of the registered types of one registry, built on demand.

    Args:
        registry: the registered types to describe.
        reserved: definition names taken by others (the protocol's frames).
    """

    def __init__(self, registry: TypeRegistry, reserved: Iterable[str] = ()) -> None:
        self.registry = registry
        self.types = [cls for tag in registry.tags() if (cls := registry.type_of(tag)) is not None]
        taken = set(reserved) | set(VALUE_MODEL)
        counts: dict[str, int] = {}
        for cls in self.types:
            counts[cls.__name__] = counts.get(cls.__name__, 0) + 1
        self.names: dict[type[Any], str] = {}
        for cls in self.types:
            # A class name shared with another registered type, or with a protocol
            # definition, gives way to its wire tag, which is unique.
            name = _safe_name(cls.__name__)
            if counts[cls.__name__] > 1 or name in taken:
                name = _safe_name(str(registry.tag_of(cls)))
            while name in taken:
                name += "_"
            taken.add(name)
            self.names[cls] = name
        self._taken = taken
        self.defs: dict[str, Schema] = {}
        self._unions: dict[type[Any], str] = {}

    def build(self) -> dict[str, Schema]:
        """Return the value model's definitions and one per registered type, in a stable order."""
        defs: dict[str, Schema] = {
            VALUE: {
                "description": "Any value of the value model: null, a boolean, a number, a "
                "string, an array, a map, an escape, or a registered object.",
                "anyOf": [
                    {"type": ["null", "boolean", "number", "string"]},
                    {"type": "array", "items": ref(VALUE)},
                    ref(MAP),
                    ref(BYTES),
                    ref(TUPLE),
                    ref(ESCAPED_MAP),
                    ref(OBJECT),
                ],
            },
            MAP: {
                "description": "A map whose keys are strings not starting with `$`.",
                **_plain_map(ref(VALUE)),
            },
            BYTES: _escape(
                "$bytes",
                {"type": "string", "contentEncoding": "base64", "pattern": BASE64_PATTERN},
                "Bytes, as base64 (RFC 4648, standard alphabet, padded). msgpack sends them "
                "natively instead.",
            ),
            TUPLE: _tuple({"type": "array", "items": ref(VALUE)}),
            ESCAPED_MAP: _escaped_map(ref(VALUE)),
            OBJECT: _one_of(
                "Any registered object: a map whose `$type` is a wire tag.",
                [ref(self.names[cls]) for cls in self.types],
            ),
            MESSAGE: _one_of(
                "A bus message that may cross a proxy: a registered BusMessage type that is "
                "not local.",
                [
                    ref(self.names[cls])
                    for cls in self.types
                    if issubclass(cls, BusMessage) and not issubclass(cls, BusLocalMessage)
                ],
            ),
        }
        for cls in self.types:
            defs[self.names[cls]] = self._object(cls)
        defs.update(sorted(self.defs.items()))
        return defs

    def _object(self, cls: type[Any]) -> Schema:
        hints = _hints(cls)
        properties: Schema = {"$type": {"const": self.registry.tag_of(cls)}}
        required = ["$type"]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name in self.registry.fields_of(cls):
            schema = self.annotation(hints.get(name, Any))
            default = _default(fields[name])
            if default is _NO_DEFAULT:
                required.append(name)
            elif _json_literal(default):
                schema = {**schema, "default": default}
            properties[name] = schema
        out: Schema = {"title": cls.__name__}
        text, role = summary(cls), _role(cls)
        if text and role and role.split(":")[0] + ":" in text:
            role = None  # the docstring says it already
        description = " ".join(filter(None, (text, role)))
        if description:
            out["description"] = description
        out.update(
            type="object", properties=properties, required=required, additionalProperties=False
        )
        return out

    def annotation(self, hint: Any) -> Schema:
        """Return the schema of the tree form of a value annotated ``hint``."""
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if hint is Any or hint is object:
            return ref(VALUE)
        if hint is None or hint is type(None):
            return {"type": "null"}
        if hint in _SCALARS:
            return {"type": _SCALARS[hint]}
        if hint is bytes:
            return ref(BYTES)
        if origin is typing.Annotated:
            return self.annotation(args[0])
        if isinstance(hint, typing.NewType):
            return self.annotation(hint.__supertype__)
        if origin is typing.Literal and all(_json_literal(a) for a in args):
            return {"enum": list(args)}
        if origin in (typing.Union, types.UnionType):
            return any_of(self.annotation(a) for a in args)
        if hint is list or origin is list:
            return {"type": "array", "items": self.annotation(args[0] if args else Any)}
        if hint is tuple or origin is tuple:
            return _tuple(self._tuple_items(args))
        if hint is dict or origin is dict:
            values = self.annotation(args[1] if len(args) == 2 else Any)
            if values == ref(VALUE):
                return any_of([ref(MAP), ref(ESCAPED_MAP)])
            return any_of([_plain_map(values), _escaped_map(values)])
        if isinstance(hint, type):
            return self._class(hint)
        return ref(VALUE)  # an annotation the value model has no narrower form for

    def _tuple_items(self, args: tuple[Any, ...]) -> Schema:
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return {"type": "array", "items": self.annotation(args[0] if args else Any)}
        if args == ((),):  # tuple[()]
            return {"type": "array", "maxItems": 0}
        items = [self.annotation(a) for a in args]
        return {"type": "array", "prefixItems": items, "items": False, "minItems": len(items)}

    def _class(self, cls: type[Any]) -> Schema:
        try:
            members = [c for c in self.types if issubclass(c, cls)]
        except TypeError:  # a class issubclass() refuses, such as a typing.Protocol
            members = []
        if not members:
            return ref(VALUE)  # not a registered type: the codec cannot send it anyway
        if members == [cls]:
            return ref(self.names[cls])
        name = self._unions.get(cls)
        if name is None:
            name = _safe_name(f"Any{cls.__name__}")
            while name in self._taken:
                name += "_"
            self._taken.add(name)
            self._unions[cls] = name
            self.defs[name] = {
                "description": f"Any registered {cls.__name__}.",
                "oneOf": [ref(self.names[c]) for c in members],
            }
        return ref(name)


def _hints(cls: type[Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # a forward reference that does not resolve: every field is a Value
        return {}


def _role(cls: type[Any]) -> str | None:
    if issubclass(cls, BusLocalMessage):
        return "Local: never crosses a proxy; a receiver drops it."
    if cls in LIFECYCLE_MESSAGES:
        return "Lifecycle: always carried for the worker on the other side."
    if issubclass(cls, Frame):
        return "A frame, carried by a bus.frame message."
    return None
