"""The check of a decoded object's fields against its class's annotations (:func:`check_fields`).

The rules are ``docs/protocol.md`` section 4.1; :mod:`proxy_core.messages`
registers the wire types and re-exports :func:`check_fields`.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import keyword
import logging
import sys
import types
import typing
from collections.abc import Callable
from typing import Any, Final, TypeVar

from .errors import CodecError

__all__ = ["check_fields"]

logger = logging.getLogger("proxy_core.messages")

#: Checks one field value: ``None`` when it fits the annotation, else the end of
#: a sentence saying what is wrong (" must be an int, got str", "[2] must be ...").
_Test = Callable[[Any], "str | None"]
#: How to check the items of a container: the types taken at once, and the test
#: of any other; ``None`` when any item fits.
_Item = tuple[frozenset[type[Any]], _Test] | None

#: Every class registered in any registry, with the first tag it got: an object
#: in a typed field must be of one of them, and errors name it by its tag.
_WIRE_NAMES: dict[type[Any], str] = {}
#: The check of each class's fields, compiled on first use (see check_fields).
_CHECKERS: dict[type[Any], _Test] = {}


# ---------------------------------------------------------------- field types
#
# Codecs build objects from whatever the peer sent: `bus.frame` with a plain map
# as its frame decodes to a BusFrameMessage holding a dict. check_fields is the
# one check, after any codec, between decoding and the worker. Each class's
# check is compiled once from its annotations into closures, so a built-in
# message costs a few type() lookups and isinstance calls.


def check_fields(obj: object) -> None:
    """Check every constructor field of registered object ``obj`` against its annotation.

    The rules (``docs/protocol.md`` section 4.1): ``int`` never accepts a
    ``bool``; ``float`` accepts an ``int`` but not a ``bool``; ``str``,
    ``bytes``, ``bool`` and ``None`` are what they say; a union accepts any of
    its members; ``Any`` and ``object`` accept anything and stop the walk;
    ``list``, ``Sequence`` (a list or a tuple, never a string), ``tuple`` (of
    any length, or fixed) and ``dict``/``Mapping`` are checked item by item,
    keys and values; ``Literal`` accepts its values (of the same type); a class
    accepts an instance of itself or a subclass, which must be a registered
    type if it is a dataclass, and whose own fields are checked in turn.

    Raises:
        CodecError: a field holds a value of another type; the message names
            the type by its tag, the field and what it held, e.g. ``bus.frame:
            field 'frame' must be a Frame, got dict``.
    """
    cls = type(obj)
    try:
        problem = (_CHECKERS.get(cls) or _compile(cls))(obj)
    except RecursionError:
        problem = "nests too deeply to check"
    if problem is not None:
        raise CodecError(f"{_WIRE_NAMES.get(cls) or cls.__qualname__}: {problem}")


def _compile(cls: type[Any]) -> _Test:
    """Build, cache and return the check of the constructor fields of ``cls``."""
    hints = _field_hints(cls)
    plan: list[tuple[str, frozenset[type[Any]], _Test]] = []
    for field in dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ():
        if not field.init:
            continue  # not on the wire
        hint = hints.get(field.name, _UNRESOLVED)
        try:
            test, quick = _test(hint, cls, field.name), _quick(hint)
        except Exception:  # an annotation no rule expects (not even hashable): never fatal
            test, quick = _unchecked(hint, cls, field.name), frozenset()
        if test is not None:
            plan.append((field.name, quick, test))
    checker = _fields_check(plan)
    _CHECKERS[cls] = checker
    return checker


def _fields_check(plan: list[tuple[str, frozenset[type[Any]], _Test]]) -> _Test:
    """Return one function that checks the fields of ``plan`` in turn, as straight-line code.

    Generated, as dataclasses generates ``__init__``: a loop over closures costs
    about twice as much, and this runs on every message received. Each field
    whose value's type is in its ``quick`` set (``str`` for a ``str`` field) is
    accepted by one comparison; any other value goes to its test. Only
    constants are put in the source: names, types and tests are looked up.
    """
    namespace: dict[str, Any] = {}
    lines = ["def check(obj):"]
    for i, (name, quick, test) in enumerate(plan):
        namespace.update({f"n{i}": name, f"q{i}": quick, f"t{i}": test, f"f{i}": f"field {name!r}"})
        if name.isidentifier() and not keyword.iskeyword(name):
            lines.append(f"    v = obj.{name}")
        else:
            lines.append(f"    v = getattr(obj, n{i})")
        if test in _SEEN:  # a registered class: its cache, then its check, with no call between
            namespace[f"s{i}"] = _SEEN[test]
            lines += [
                f"    k = s{i}.get(type(v))",
                "    if k is not None:",
                "        p = k[0](v)",
                "        if p is not None:",
                f"            return f{i} + k[1] + p",
                "    else:",
                f"        p = t{i}(v)",
                "        if p is not None:",
                f"            return f{i} + p",
            ]
            continue
        indent = "    "
        if len(quick) == 1:
            namespace[f"q{i}"] = next(iter(quick))
            lines.append(f"    if type(v) is not q{i}:")
            indent = "        "
        elif quick:
            lines.append(f"    if type(v) not in q{i}:")
            indent = "        "
        lines += [
            f"{indent}p = t{i}(v)",
            f"{indent}if p is not None:",
            f"{indent}    return f{i} + p",
        ]
    lines.append("    return None")
    exec("\n".join(lines), namespace)  # the source holds no value from outside
    checker: _Test = namespace["check"]
    return checker


#: Stands for an annotation that did not resolve.
_UNRESOLVED: Final[Any] = object()


def _field_hints(cls: type[Any]) -> dict[str, Any]:
    """Return the resolved annotation of each field; ``_UNRESOLVED`` where one does not resolve."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # one name does not resolve: resolve the others one by one
        pass
    hints: dict[str, Any] = {}
    for owner in reversed(cls.__mro__):  # a subclass's annotation wins
        module = sys.modules.get(owner.__module__)
        globalns = vars(module) if module is not None else {}
        for name, annotation in vars(owner).get("__annotations__", {}).items():
            holder = types.SimpleNamespace(__annotations__={name: annotation})
            try:
                hints[name] = typing.get_type_hints(holder, globalns, dict(vars(owner)))[name]
            except Exception:
                hints[name] = _UNRESOLVED
    return hints


def _unchecked(hint: Any, owner: type[Any], name: str) -> _Test | None:
    """Say once that field ``name`` of ``owner`` takes any value; return no test."""
    shown = "a name that does not resolve" if hint is _UNRESOLVED else repr(hint)
    logger.warning(
        "%s.%s: the annotation (%s) cannot be checked; the field accepts any value",
        owner.__qualname__,
        name,
        shown,
    )
    return None


# The scalars: the types taken at once, and the base classes whose subclasses
# are taken too (never a bool where an int or a float is expected).
_NONE: Final = type(None)
_SCALARS: Final[dict[Any, tuple[frozenset[type[Any]], tuple[type[Any], ...]]]] = {
    str: (frozenset((str,)), (str,)),
    bytes: (frozenset((bytes,)), (bytes,)),
    int: (frozenset((int,)), (int,)),
    float: (frozenset((float, int)), (float, int)),
    bool: (frozenset((bool,)), ()),
    _NONE: (frozenset((_NONE,)), ()),
    None: (frozenset((_NONE,)), ()),
}
# What a sequence or mapping annotation accepts (a Sequence is never a string).
_SEQUENCES: Final[dict[Any, tuple[type[Any], ...]]] = {
    list: (list,),
    collections.abc.Sequence: (list, tuple),
    collections.abc.MutableSequence: (list,),
}
_MAPPINGS: Final[dict[Any, type[Any]]] = {
    dict: dict,
    collections.abc.Mapping: collections.abc.Mapping,
    collections.abc.MutableMapping: collections.abc.MutableMapping,
}


def _test(hint: Any, owner: type[Any], name: str) -> _Test | None:
    """Return the test of a value annotated ``hint``; ``None`` if any value fits."""
    if hint is Any or hint is object:
        return None
    if hint is _UNRESOLVED:
        return _unchecked(hint, owner, name)
    if isinstance(hint, typing.NewType):
        return _test(hint.__supertype__, owner, name)
    if isinstance(hint, TypeVar):
        if hint.__bound__ is not None:
            return _test(hint.__bound__, owner, name)
        if hint.__constraints__:
            return _union(hint.__constraints__, owner, name)
        return _unchecked(hint, owner, name)
    if hint in _SCALARS:
        return _scalar(*_SCALARS[hint], _want(hint))
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return _test(args[0], owner, name)
    if origin in (typing.Union, types.UnionType):
        return _union(args, owner, name)
    if origin is typing.Literal:
        return _literal(args, _want(hint))
    base = origin if origin is not None else hint
    if base in _SEQUENCES:
        item = _item(args[0], owner, name) if args else None
        return _sequence(_SEQUENCES[base], item, _want(hint))
    if base is tuple:
        return _tuple(hint, args, owner, name)
    if base in _MAPPINGS:
        key, value = (_item(a, owner, name) for a in args) if len(args) == 2 else (None, None)
        return _mapping(_MAPPINGS[base], key, value, _want(hint))
    if isinstance(base, type) and not getattr(base, "_is_protocol", False):
        return _instance(base, _want(hint))  # a class, or a generic one such as Box[int]
    return _unchecked(hint, owner, name)  # a Protocol, a forward reference, a special form


def _quick(hint: Any) -> frozenset[type[Any]]:
    """Return the types whose values a field annotated ``hint`` accepts without looking at them."""
    if hint in _SCALARS:
        return _SCALARS[hint][0]
    if isinstance(hint, typing.NewType):
        return _quick(hint.__supertype__)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return frozenset().union(*(_quick(a) for a in typing.get_args(hint)))
    if origin is typing.Annotated:
        return _quick(typing.get_args(hint)[0])
    return frozenset()


def _want(hint: Any) -> str:
    """Describe what a value annotated ``hint`` must be: ``an int``, ``a Frame``, ``None``."""
    if hint is None or hint is _NONE:
        return "None"
    if isinstance(hint, type) and not typing.get_args(hint):
        text = hint.__qualname__
    else:
        text = repr(hint).replace("typing.", "").replace("collections.abc.", "")
        text = text.replace("NoneType", "None")
    if text == "bytes":
        return text
    return f"{'an' if text[0] in 'aeiouAEIOU' else 'a'} {text}"


def _got(value: Any) -> str:
    return "None" if value is None else type(value).__qualname__


def _at(key: Any) -> str:
    shown = repr(key)
    return shown if len(shown) <= 40 else f"{shown[:37]}..."


def _scalar(exact: frozenset[type[Any]], bases: tuple[type[Any], ...], want: str) -> _Test:
    def test(value: Any) -> str | None:
        kind = type(value)
        if kind in exact or (bases and kind is not bool and isinstance(value, bases)):
            return None
        return f" must be {want}, got {_got(value)}"

    return test


def _union(members: tuple[Any, ...], owner: type[Any], name: str) -> _Test | None:
    exact: set[type[Any]] = set()
    bases: list[type[Any]] = []
    others: list[_Test] = []
    for member in members:
        if member in _SCALARS:
            exact |= _SCALARS[member][0]
            bases += _SCALARS[member][1]
            continue
        test = _test(member, owner, name)
        if test is None:
            return None  # one member takes any value: so does the union
        others.append(test)
    want = " or ".join(_want(m) for m in members)
    if not others:
        return _scalar(frozenset(exact), tuple(bases), want)
    taken, subclassed = frozenset(exact), tuple(bases)
    # With one member that is not a scalar (``Frame | None``), its reason for refusing a
    # value of its own type is the most precise.
    precise = len(others) == 1 and exact <= {_NONE}

    def either(value: Any) -> str | None:
        kind = type(value)
        if kind in taken or (subclassed and kind is not bool and isinstance(value, subclassed)):
            return None
        problem = None
        for other in others:
            problem = other(value)
            if problem is None:
                return None
        if precise and problem is not None and not problem.startswith(" must be "):
            return problem  # the value has the member's type, and something inside is wrong
        return f" must be {want}, got {_got(value)}"

    return either


def _literal(values: tuple[Any, ...], want: str) -> _Test:
    choices = frozenset((type(v), v) for v in values)

    def test(value: Any) -> str | None:
        try:
            if (type(value), value) in choices:
                return None
        except TypeError:  # an unhashable value: not one of the literals
            pass
        return f" must be {want}, got {_got(value)}"

    return test


def _item(hint: Any, owner: type[Any], name: str) -> _Item:
    """Return how to check an item annotated ``hint`` in a container: (quick set, test)."""
    test = _test(hint, owner, name)
    return None if test is None else (_quick(hint), test)


def _sequence(kinds: tuple[type[Any], ...], item: _Item, want: str) -> _Test:
    quick, check = item if item is not None else (frozenset(), None)

    def test(value: Any) -> str | None:
        if not isinstance(value, kinds):
            return f" must be {want}, got {_got(value)}"
        if check is not None:
            for index, element in enumerate(value):
                if type(element) not in quick and (problem := check(element)) is not None:
                    return f"[{index}]{problem}"
        return None

    return test


def _tuple(hint: Any, args: tuple[Any, ...], owner: type[Any], name: str) -> _Test:
    want = _want(hint)
    bare = hint is tuple or hint is typing.Tuple  # noqa: UP006 - the old spelling, as written
    if bare or (len(args) == 2 and args[1] is Ellipsis):
        return _sequence((tuple,), _item(args[0], owner, name) if args else None, want)
    items = [_test(a, owner, name) for a in args]

    def test(value: Any) -> str | None:
        if not isinstance(value, tuple) or len(value) != len(items):
            shown = f"tuple of {len(value)}" if isinstance(value, tuple) else _got(value)
            return f" must be {want}, got {shown}"
        for index, (check, element) in enumerate(zip(items, value, strict=True)):
            problem = None if check is None else check(element)
            if problem is not None:
                return f"[{index}]{problem}"
        return None

    return test


def _mapping(kind: type[Any], key: _Item, item: _Item, want: str) -> _Test:
    key_quick, key_check = key if key is not None else (frozenset(), None)
    quick, check = item if item is not None else (frozenset(), None)

    def test(value: Any) -> str | None:
        if type(value) is not dict and not isinstance(value, kind):
            return f" must be {want}, got {_got(value)}"
        if key_check is not None:
            for k in value:
                if type(k) not in key_quick and (problem := key_check(k)) is not None:
                    return f" has a key {_at(k)} that{problem}"
        if check is not None:
            for k, v in value.items():
                if type(v) not in quick and (problem := check(v)) is not None:
                    return f"[{_at(k)}]{problem}"
        return None

    return test


def _instance(cls: type[Any], want: str) -> _Test:
    # The classes already accepted here, with their check and the words that
    # introduce its complaint: one dict lookup. _fields_check inlines it.
    seen: dict[type[Any], tuple[_Test, str]] = {}

    def test(value: Any) -> str | None:
        known = seen.get(type(value))
        if known is None:
            return first(value)
        problem = known[0](value)
        return None if problem is None else known[1] + problem

    def first(value: Any) -> str | None:
        if not isinstance(value, cls):
            return f" must be {want}, got {_got(value)}"
        kind = type(value)
        name = _WIRE_NAMES.get(kind)
        if name is None:
            if dataclasses.is_dataclass(kind):
                return f" must be {want} of a registered type, got {kind.__qualname__}"
            return None  # not a dataclass (a subclass of str, say): nothing more to check
        seen[kind] = (_CHECKERS.get(kind) or _compile(kind), f" holds a {name} whose ")
        return test(value)

    _SEEN[test] = seen
    return test


#: The cache of each class test (see _instance), for _fields_check to inline.
_SEEN: dict[_Test, dict[type[Any], tuple[_Test, str]]] = {}
