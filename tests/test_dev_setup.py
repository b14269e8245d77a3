"""What ``scripts/dev.py`` installs, and what a user's environment lists afterwards.

The README's two commands set up ``.venv`` with ``scripts/dev.py``. A user's
install holds only the project's own distributions: the tests' plug-in (the
``zjson`` codec of ``tests/thirdparty_codec``) is visible to the test run alone.
And the set-up speaks in a few lines, keeping pip's log for when it fails.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from proxy_core.plugins import available_codecs

ROOT = Path(__file__).resolve().parent.parent


def _dev() -> ModuleType:
    spec = importlib.util.spec_from_file_location("proxy_core_dev_script", ROOT / "scripts/dev.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _user_env() -> dict[str, str]:
    """The environment of a user's shell: none of what the test run adds."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PROXY_CORE_TEST_PLUGINS"):
        env.pop(name, None)
    return env


def test_the_test_plugin_is_seen_by_the_tests() -> None:
    assert "zjson" in available_codecs()


def test_a_users_environment_lists_only_what_was_installed() -> None:
    listed = subprocess.run(
        [
            sys.executable,
            "-c",
            "from proxy_core.cli import main; raise SystemExit(main(['plugins']))",
        ],
        cwd=ROOT / "docs",  # not the repository root or tests/: nothing found by accident
        env=_user_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "msgpack" in listed.stdout and "websockets" in listed.stdout
    assert "zjson" not in listed.stdout, listed.stdout
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "show", "--quiet", "proxy-core-example-codec"],
        env=_user_env(),
        capture_output=True,
        timeout=120,
    )
    assert probe.returncode != 0, "the test plug-in is installed in the environment"


def test_dev_installs_the_projects_distributions_only() -> None:
    packages = _dev().packages()
    assert packages[0] == "."
    assert {"transports/websockets", "transports/aiohttp", "transports/grpc", "buses/redis"} <= set(
        packages
    )
    assert not [p for p in packages if p.startswith("tests")]


def test_quiet_steps_print_one_line_or_the_whole_log(capsys: pytest.CaptureFixture[str]) -> None:
    dev = _dev()
    noisy = "import sys\nfor i in range(50): print('BuildBackendWarning', i, file=sys.stderr)"
    dev.quietly("doing a noisy thing", sys.executable, "-c", noisy)
    out = capsys.readouterr().out
    assert out == "doing a noisy thing ... done\n"
    failing = noisy + "\nraise SystemExit(3)"
    with pytest.raises(subprocess.CalledProcessError) as caught:
        dev.quietly("doing a failing thing", sys.executable, "-c", failing)
    assert caught.value.returncode == 3
    out = capsys.readouterr().out
    assert out.startswith("doing a failing thing ... failed:\n")
    assert all(f"BuildBackendWarning {i}\n" in out for i in range(50))  # the whole log
