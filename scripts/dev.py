#!/usr/bin/env python3
"""Set up a development environment from scratch and run a command in it.

    python3 scripts/dev.py demo      # venv + packages, then `proxy-core demo`
    python3 scripts/dev.py test      # venv + packages + test tools, then lint, types and tests
    python3 scripts/dev.py setup     # only create/refresh .venv

Needs only Python 3.11+ and access to PyPI. The virtual environment lives in
``.venv`` at the repository root; packages are installed editable, so code
changes take effect without reinstalling.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"


def packages() -> list[str]:
    """Return the distributions of this repository, installed editable: the core,
    every backend under transports/ and buses/, and the third-party plugin used by the tests."""
    found = ["."] + sorted(
        str(p.parent.relative_to(ROOT))
        for pattern in ("transports/*/pyproject.toml", "buses/*/pyproject.toml")
        for p in ROOT.glob(pattern)
    )
    if (ROOT / "tests" / "thirdparty_codec" / "pyproject.toml").exists():
        found.append("tests/thirdparty_codec")
    return found


def typed_packages() -> list[str]:
    """Return the package folders that mypy --strict checks."""
    return ["proxy_core"] + sorted(
        str(p.relative_to(ROOT))
        for pattern in ("transports/*/proxy_core_*", "buses/*/proxy_core_*")
        for p in ROOT.glob(pattern)
        if p.is_dir() and not p.name.endswith(".egg-info")
    )


def run(*cmd: str | Path) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], cwd=ROOT, check=True)


def setup(dev: bool) -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this script must explain itself on old Pythons
        sys.exit(f"proxy-core needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not PY.exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    run(PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    root = ".[dev]" if dev else "."
    args: list[str] = []
    for package in packages():
        args += ["-e", root if package == "." else package]
    run(PY, "-m", "pip", "install", "--quiet", *args)


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else "demo"
    extra = sys.argv[2:]
    if command not in {"setup", "demo", "test"}:
        sys.exit(f"unknown command {command!r}; use setup, demo or test")
    setup(dev=command == "test")
    try:
        if command == "demo":
            run(BIN / "proxy-core", "demo", *extra)
        elif command == "test":
            run(BIN / "ruff", "check", ".")
            run(BIN / "ruff", "format", "--check", ".")
            run(BIN / "mypy", *typed_packages())
            run(PY, "-m", "pytest", *extra)
    except subprocess.CalledProcessError as exc:
        return exc.returncode or 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
