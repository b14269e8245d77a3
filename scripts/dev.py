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
    and every backend under transports/ and buses/.

    The tests' own plug-ins (tests/thirdparty_codec) are not among them: the
    test run makes them visible to itself alone (tests/_plugins.py), so that a
    user's ``proxy-core plugins`` lists only what the user installed.
    """
    return ["."] + sorted(
        str(p.parent.relative_to(ROOT))
        for pattern in ("transports/*/pyproject.toml", "buses/*/pyproject.toml")
        for p in ROOT.glob(pattern)
    )


#: Distributions an earlier version of this script installed and that must go.
RETIRED = ("proxy-core-example-codec",)


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


def quietly(what: str, *cmd: str | Path) -> None:
    """Run ``cmd`` with its output kept back: one line saying what, then done or the log.

    pip and the build backends print dozens of lines (warnings about editable
    installs, a machine's index settings); a newcomer needs only the result,
    and the whole log when something fails.
    """
    print(f"{what} ...", end=" ", flush=True)
    done = subprocess.run(
        [str(c) for c in cmd], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    if done.returncode != 0:
        print("failed:", flush=True)
        print(done.stdout.decode(errors="replace"), flush=True)
        print("+", " ".join(str(c) for c in cmd), flush=True)
        raise subprocess.CalledProcessError(done.returncode, [str(c) for c in cmd])
    print("done", flush=True)


def setup(dev: bool) -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this script must explain itself on old Pythons
        sys.exit(f"proxy-core needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"creating {VENV.relative_to(ROOT)} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    quietly("upgrading pip", PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    root = ".[dev]" if dev else "."
    args: list[str] = []
    for package in packages():
        args += ["-e", root if package == "." else package]
    names = ", ".join(_distribution_name(package) for package in packages())
    what = "the test tools and " if dev else ""
    quietly(
        f"installing {what}{names} (a minute the first time)",
        PY,
        "-m",
        "pip",
        "install",
        "--quiet",
        *args,
    )
    retired = [name for name in RETIRED if _installed(name)]
    if retired:
        quietly(f"removing {', '.join(retired)}", PY, "-m", "pip", "uninstall", "-y", *retired)
    if dev:
        # The official AsyncAPI schema that tests/test_schema.py checks `proxy-core schema`
        # against: kept in .venv, not committed (scripts/fetch_asyncapi_spec.py).
        try:
            quietly(
                "fetching the AsyncAPI 3.0 schema for the tests",
                sys.executable,
                ROOT / "scripts" / "fetch_asyncapi_spec.py",
                "--prefix",
                VENV,
            )
        except subprocess.CalledProcessError:
            print("the AsyncAPI validation test will skip here (and fail in CI)", flush=True)


def _distribution_name(package: str) -> str:
    text = (ROOT / package / "pyproject.toml").read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.startswith("name = "):
            return line.split("=", 1)[1].strip().strip('"')
    return package


def _installed(name: str) -> bool:
    """Whether distribution ``name`` is installed in .venv."""
    shown = subprocess.run(
        [str(PY), "-m", "pip", "show", "--quiet", name],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return shown.returncode == 0


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
