"""A small, deterministic YAML writer for JSON-like data (no YAML library needed).

It writes block mappings and sequences in the order given, strings plain when
no YAML 1.1 or 1.2 reader could take them for anything else, as literal
blocks when they span lines, and double-quoted otherwise. Every document it
writes reads back, with any YAML reader, as the same data.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

__all__ = ["to_yaml"]

#: Strings safe unquoted: a letter, `$` or `_` first, then nothing that YAML gives a
#: meaning to inside a plain scalar (no `:`, no `#`, no quote first).
_PLAIN: Final = re.compile(r"[A-Za-z_$][A-Za-z0-9_$ .,;/()+'`-]*")
#: Words that YAML 1.1 readers take for booleans or null whatever their case.
_RESERVED: Final = frozenset(("y", "n", "yes", "no", "true", "false", "on", "off", "null"))
_ESCAPES: Final = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0"}
#: The longest key a YAML reader takes without the explicit `? ` form.
_MAX_KEY: Final = 1024


def _printable(char: str) -> bool:
    # YAML's printable set, less the characters some readers take as line breaks.
    code = ord(char)
    return (
        0x20 <= code <= 0x7E
        or 0xA0 <= code <= 0xD7FF
        or (0xE000 <= code <= 0xFFFD and code != 0xFEFF)
        or 0x10000 <= code <= 0x10FFFF
    ) and char not in "\u2028\u2029"


def _quoted(text: str) -> str:
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif _printable(char):
            out.append(char)
        elif ord(char) <= 0xFF:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'


def _plain(text: str) -> bool:
    return (
        _PLAIN.fullmatch(text) is not None
        and not text.endswith(" ")
        and text.lower() not in _RESERVED
    )


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if type(value) is int:
        return str(value)
    if type(value) is float:
        if not math.isfinite(value):
            raise ValueError(f"{value} is not JSON")
        text = repr(value)
        mantissa, _, exponent = text.partition("e")
        if "." not in mantissa:  # 1e+20: YAML 1.1 readers need the dot to see a float
            mantissa += ".0"
        return f"{mantissa}e{exponent}" if exponent else mantissa
    if type(value) is str:
        return value if _plain(value) else _quoted(value)
    raise TypeError(f"cannot write a {type(value).__qualname__} as YAML")


def _block(text: str) -> str | None:
    """Return the header of a literal block for ``text`` (``|`` or ``|-``), or None."""
    lines = text.split("\n")
    if len(lines) < 2 or text.endswith("\n\n") or text.startswith("\n"):
        return None
    body = lines[:-1] if text.endswith("\n") else lines
    for line in body:
        if line[:1] in (" ", "\t") or line[-1:] in (" ", "\t") or not all(map(_printable, line)):
            return None
    return "|" if text.endswith("\n") else "|-"


def _node(value: Any, indent: str) -> list[str]:
    """Return the lines of ``value`` in block style; a scalar is one line, unindented."""
    if isinstance(value, dict) and value:
        lines = []
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(f"map keys must be strings, got {type(key).__qualname__}")
            if len(key) > _MAX_KEY:
                raise ValueError(f"a key of {len(key)} characters is too long for YAML")
            lines += _entry(f"{indent}{_scalar(key)}:", item, indent)
        return lines
    if isinstance(value, list) and value:
        lines = []
        for item in value:
            lines += _entry(f"{indent}-", item, indent)
        return lines
    if isinstance(value, dict | list):
        return ["{}" if isinstance(value, dict) else "[]"]
    return [_scalar(value)]


def _entry(head: str, value: Any, indent: str) -> list[str]:
    """Return the lines of one mapping entry or sequence item: ``head`` then ``value``."""
    inner = indent + "  "
    if isinstance(value, str) and (style := _block(value)) is not None:
        body = value[:-1] if value.endswith("\n") else value  # `|` adds the final line break
        return [f"{head} {style}", *(f"{inner}{line}" if line else "" for line in body.split("\n"))]
    if not isinstance(value, dict | list) or not value:
        return [f"{head} {_node(value, '')[0]}"]
    lines = _node(value, inner)
    if head.endswith("-"):
        # A sequence item holding a collection starts on the dash's line.
        return [f"{head} {lines[0][len(inner) :]}", *lines[1:]]
    return [head, *lines]


def to_yaml(data: Any, *, header: str | None = None) -> str:
    """Return ``data`` (maps with string keys, lists, strings, numbers, booleans, null) as YAML.

    Args:
        data: the document; maps keep their order.
        header: a comment for the first lines (each line gets its ``# ``).

    Raises:
        TypeError: a value is not JSON-like.
        ValueError: a float is not finite, or a key is too long to write.
    """
    lines = [f"# {line}".rstrip() for line in header.split("\n")] if header else []
    return "\n".join([*lines, *_node(data, "")]) + "\n"
