"""Plug-ins that exist for the tests only, made visible to one test run.

``tests/thirdparty_codec`` is a codec distribution as a third party would write
it (its own ``pyproject.toml`` and entry point). The tests must find it by name
through the entry point, exactly as an installed one, but a user's environment
must not: ``proxy-core plugins``, ``demo`` and ``bench`` list only what the user
installed. So it is never pip-installed; instead :func:`install_test_plugins`
writes the distribution's metadata (from its ``pyproject.toml``) into a
temporary folder for this process, puts that folder and the package's source
on ``sys.path``, and on ``PYTHONPATH`` for the processes the tests start.
The folder is removed when the test run exits.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import tomllib
from pathlib import Path

#: The distributions (folders under tests/) that only the tests see.
TEST_PLUGINS = ("thirdparty_codec",)

_HERE = Path(__file__).resolve().parent


def _write_metadata(project: dict[str, object], into: Path) -> None:
    """Write a minimal ``.dist-info`` for ``project`` (name, version, entry points)."""
    name = str(project["name"])
    version = str(project["version"])
    dist = into / f"{name.replace('-', '_')}-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
    )
    lines: list[str] = []
    groups = project.get("entry-points", {})
    assert isinstance(groups, dict)
    for group, points in groups.items():
        lines.append(f"[{group}]")
        lines += [f"{key} = {value}" for key, value in points.items()]
        lines.append("")
    (dist / "entry_points.txt").write_text("\n".join(lines), encoding="utf-8")


def install_test_plugins() -> list[Path]:
    """Make every test plug-in importable and discoverable in this run; return the paths added.

    Idempotent: a second call (a test process started by the tests) adds nothing new.
    """
    if os.environ.get("PROXY_CORE_TEST_PLUGINS"):
        added = [Path(p) for p in os.environ["PROXY_CORE_TEST_PLUGINS"].split(os.pathsep)]
    else:
        metadata = Path(tempfile.mkdtemp(prefix="proxy-core-test-plugins-"))
        atexit.register(shutil.rmtree, metadata, ignore_errors=True)
        added = [metadata]
        for folder in TEST_PLUGINS:
            root = _HERE / folder
            project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
            _write_metadata(project["project"], metadata)
            added.append(root)
        os.environ["PROXY_CORE_TEST_PLUGINS"] = os.pathsep.join(str(p) for p in added)
    for path in reversed(added):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    inherited = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    wanted = [str(p) for p in added if str(p) not in inherited]
    os.environ["PYTHONPATH"] = os.pathsep.join([*wanted, *filter(None, inherited)])
    return added
