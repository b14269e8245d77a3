"""The examples, run as real processes talking over 127.0.0.1."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 60


def _start(script: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    """Start an example server on port 0 and return it with the URL it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-u", str(EXAMPLES / script), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:  # bounded by the process: it prints the URL or exits
        seen.append(line)
        match = re.search(r"listening on ((?:ws|grpc)://\S+)", line)
        if match:
            return proc, match.group(1)
    proc.wait(TIMEOUT)
    raise AssertionError(f"{script} exited without listening:\n{''.join(seen)}")


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"server did not stop on SIGINT:\n{out}") from None
    return out


@pytest.fixture(params=["assistant.py", "fastapi_server.py"])
def server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    proc, url = _start(request.param)
    try:
        yield url
    finally:
        _stop(proc)


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_main_talks_to_assistant(server_url: str, codec: str) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "main.py"), "--remote-url", server_url, "--codec", codec],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "'assistant' is ready (remote=True)" in out
    assert "assistant -> acme: Hello! I am the assistant on the other bus." in out
    assert "assistant -> acme: I heard 1600 bytes of audio so far." in out
    assert "assistant -> acme: You're welcome. Goodbye!" in out


def test_assistant_serves_sessions_one_after_another() -> None:
    proc, url = _start("assistant.py")
    try:
        for _ in range(2):
            result = subprocess.run(
                [sys.executable, str(EXAMPLES / "main.py"), "--remote-url", url],
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
            )
            assert result.returncode == 0, result.stdout + result.stderr
    finally:
        out = _stop(proc)
    assert "assistant stopping after 2 session(s)" in out
    assert "Traceback" not in out


@pytest.mark.parametrize("transport", ["aiohttp", "grpc"])
def test_examples_run_on_other_backends(transport: str) -> None:
    proc, url = _start("assistant.py", "--transport", transport)
    try:
        result = subprocess.run(
            [sys.executable, str(EXAMPLES / "main.py"), "--remote-url", url]
            + ["--transport", transport, "--codec", "protobuf"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "assistant -> acme: You're welcome. Goodbye!" in result.stdout
    finally:
        _stop(proc)


def test_main_reports_unreachable_server() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "main.py"), "--remote-url", "ws://127.0.0.1:9/ws"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 1
    assert "could not connect" in result.stderr
    assert "Traceback" not in result.stderr
