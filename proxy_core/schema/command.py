"""``proxy-core schema``: its arguments, and writing the document."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from ..errors import ConfigurationError

__all__ = ["FORMATS", "HEADER", "add_arguments", "render", "run_command"]

FORMATS: Final = ("asyncapi", "jsonschema")
#: The comment at the top of every YAML document the command writes.
HEADER: Final = (
    "Generated from the code by `proxy-core schema`: do not edit by hand.\n"
    "Regenerate: proxy-core schema --output docs/asyncapi.yaml\n"
    "The normative text of the protocol is docs/protocol.md."
)
_YAML_SUFFIXES: Final = (".yaml", ".yml")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``schema`` options to ``parser``."""
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="asyncapi",
        help="asyncapi: an AsyncAPI 3.0.0 document of the session protocol (servers, the "
        "session channel, a message per frame kind with its fields, operations, close codes); "
        "jsonschema: one JSON Schema 2020-12 document with a definition per handshake object, "
        "frame kind and registered message or frame type, as the json codec encodes them "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--types",
        nargs="+",
        action="extend",
        default=[],
        metavar="MODULE",
        help="import these modules first (from the current directory too), so that the "
        "message types they register are described as well",
    )
    parser.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        help="write the document to FILE (default: standard output)",
    )
    syntax = parser.add_mutually_exclusive_group()
    syntax.add_argument(
        "--yaml",
        action="store_const",
        const="yaml",
        dest="syntax",
        help="write YAML (the default for an --output ending in .yaml or .yml)",
    )
    syntax.add_argument(
        "--json",
        action="store_const",
        const="json",
        dest="syntax",
        help="write JSON (the default otherwise)",
    )


def import_types(modules: Sequence[str]) -> None:
    """Import ``modules``, with the current directory on the import path, for their types.

    Raises:
        ConfigurationError: a module cannot be imported; the message says why.
    """
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception as exc:  # any failure of the user's module is theirs to see
                raise ConfigurationError(
                    f"--types {name}: cannot import it: {type(exc).__name__}: {exc}"
                ) from exc
    finally:
        if added:
            sys.path.remove(os.getcwd())


def render(document: dict[str, Any], syntax: str) -> str:
    """Return ``document`` as text: ``"yaml"`` (with :data:`HEADER`) or ``"json"``."""
    if syntax == "yaml":
        from .yaml_emit import to_yaml

        return to_yaml(document, header=HEADER)
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def run_command(args: argparse.Namespace) -> int:
    """Write the document ``args`` ask for; return the exit code.

    Raises:
        ConfigurationError: a ``--types`` module cannot be imported, or the
            output cannot be written.
    """
    import_types(args.types)
    from .asyncapi import asyncapi_document
    from .wire import json_schema

    document = asyncapi_document() if args.format == "asyncapi" else json_schema()
    output = args.output
    syntax = args.syntax or (
        "yaml" if output and output.lower().endswith(_YAML_SUFFIXES) else "json"
    )
    text = render(document, syntax)
    if output is None or output == "-":
        sys.stdout.write(text)
        return 0
    try:
        Path(output).write_text(text, encoding="utf-8", newline="\n")
    except OSError as exc:
        raise ConfigurationError(f"cannot write {output}: {exc.strerror or exc}") from None
    return 0
