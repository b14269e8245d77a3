#!/usr/bin/env python3
"""Fetch the official AsyncAPI 3.0.0 JSON Schema that the tests validate `proxy-core schema` with.

    python3 scripts/fetch_asyncapi_spec.py                  # into .venv/share/asyncapi/
    python3 scripts/fetch_asyncapi_spec.py --prefix DIR     # into DIR/share/asyncapi/

The schema is published in the npm package ``@asyncapi/specs``
(``schemas/3.0.0.json``); no PyPI package ships it, and the repository does
not copy it. This downloads the pinned tarball from the npm registry, checks
it against the pinned sha512 (the registry's ``integrity``), and keeps only
that file, itself checked against a pinned sha256. When the file is there and
intact it does nothing. ``scripts/dev.py setup``/``test`` run it.

Standard library only: it runs before the virtual environment has packages.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import sys
import tarfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PACKAGE = "@asyncapi/specs"
VERSION = "6.11.1"
TARBALL = f"https://registry.npmjs.org/{PACKAGE}/-/specs-{VERSION}.tgz"
#: The registry's integrity for that tarball (`npm view @asyncapi/specs@6.11.1 dist.integrity`).
INTEGRITY = (
    "sha512-A3WBLqAKGoJ2+6FWFtpjBlCQ1oFCcs4GxF7zsIGvNqp/"
    "klGUHjlA3aAcZ9XMMpLGE8zPeYDz2x9FmO6DSuKraQ=="
)
MEMBER = "package/schemas/3.0.0.json"
#: The sha256 of that file, so that a damaged copy is fetched again.
SCHEMA_SHA256 = "d4571a420e6ffb7fcc7066c95a6db1202f299a3c51daa103d0706bf30f95e626"


def cached_path(prefix: Path) -> Path:
    """Return where the schema is kept under ``prefix`` (a virtual environment)."""
    return prefix / "share" / "asyncapi" / f"specs-{VERSION}" / "3.0.0.json"


def is_intact(path: Path) -> bool:
    """Whether ``path`` holds the pinned schema, byte for byte."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == SCHEMA_SHA256
    except OSError:
        return False


def _check_integrity(data: bytes) -> None:
    algorithm, _, expected = INTEGRITY.partition("-")
    digest = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if digest != expected:
        raise ValueError(f"{TARBALL}: {algorithm} is {digest}, pinned {expected}")


def _schema_from(tarball: bytes) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        member = archive.extractfile(MEMBER)  # read in memory: nothing is extracted to disk
        if member is None:
            raise ValueError(f"{TARBALL} has no {MEMBER}")
        data = member.read()
    if hashlib.sha256(data).hexdigest() != SCHEMA_SHA256:
        raise ValueError(f"{MEMBER} in {TARBALL} is not the pinned file")
    json.loads(data)
    return data


def fetch(prefix: Path, *, timeout: float = 60.0) -> Path:
    """Make sure the pinned schema is under ``prefix``; return its path.

    Raises:
        OSError: the registry could not be reached or the file not written.
        ValueError: what was downloaded is not what was pinned.
    """
    target = cached_path(prefix)
    if is_intact(target):
        return target
    with urllib.request.urlopen(TARBALL, timeout=timeout) as response:
        tarball = response.read()
    _check_integrity(tarball)
    data = _schema_from(tarball)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    partial.write_bytes(data)
    os.replace(partial, target)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--prefix",
        type=Path,
        default=ROOT / ".venv",
        help="the virtual environment to keep it in (default: .venv)",
    )
    args = parser.parse_args()
    try:
        path = fetch(args.prefix)
    except (OSError, ValueError) as exc:
        print(f"could not fetch the AsyncAPI schema ({PACKAGE} {VERSION}): {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
