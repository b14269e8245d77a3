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


# ------------------------------------------------------------ examples/distributed: a Redis bus

DISTRIBUTED = EXAMPLES / "distributed"


def _start_node(redis_url: str, channel: str, *args: str, until: str) -> subprocess.Popen[str]:
    """Start ``worker_node.py`` on ``channel``; return it once it printed ``until``."""
    proc = subprocess.Popen(
        [sys.executable, "-u", str(DISTRIBUTED / "worker_node.py")]
        + ["--redis-url", redis_url, "--channel", channel, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:  # bounded by the process: it prints the line or exits
        seen.append(line)
        if until in line:
            return proc
    proc.wait(TIMEOUT)
    raise AssertionError(f"worker_node.py exited before {until!r}:\n{''.join(seen)}")


def _wait_for(proc: subprocess.Popen[str], text: str) -> None:
    """Read ``proc``'s output until a line holds ``text``."""
    assert proc.stdout is not None
    for line in proc.stdout:  # bounded by the process: it prints the line or exits
        if text in line:
            return
    raise AssertionError(f"worker_node.py exited before {text!r}")


def _client(redis_url: str, channel: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DISTRIBUTED / "client_node.py")]
        + ["--redis-url", redis_url, "--channel", channel, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def test_distributed_client_talks_to_a_worker_in_another_process(redis_url: str) -> None:
    channel = "t-examples-distributed"
    worker = _start_node(redis_url, channel, "--name", "node-b", until="is ready on channel")
    try:
        result = _client(redis_url, channel)
    finally:
        out = _stop(worker)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "client_node: registry: 'assistant' is ready in runner 'node-b'" in result.stdout
    for i in (1, 2, 3):
        assert f"client_node: acme -> assistant: message {i} of 3" in result.stdout
        assert (
            f"client_node: assistant -> acme: you said 'message {i} of 3' (answered by node-b)"
            in result.stdout
        )
    assert "client_node: done: 3 answer(s); bus counters: sent=4 received=3" in result.stdout
    # The worker saw the conversation, and ends cleanly on SIGINT.
    assert worker.returncode == 0, out
    assert "worker_node: assistant activated with args {'caller': 'acme'}" in out
    assert "worker_node: stopped after answering 3 message(s)" in out
    assert "Traceback" not in out


def test_distributed_standby_takes_over_from_a_killed_worker(redis_url: str) -> None:
    channel = "t-examples-failover"
    ttl = ("--lease-ttl", "1")
    first = _start_node(redis_url, channel, "--name", "first", *ttl, until="is ready on channel")
    standby = None
    try:
        standby = _start_node(
            redis_url,
            channel,
            *("--name", "standby", "--claim-timeout", "60", *ttl),
            until="'assistant' is held by runner 'first': standing by",
        )
        first.kill()  # kill -9: no goodbye, the lease runs out
        first.communicate(timeout=TIMEOUT)
        _wait_for(standby, "took 'assistant' over: it is ready on channel")
        result = _client(redis_url, channel, "--messages", "1")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "(answered by standby)" in result.stdout
    finally:
        if first.returncode is None:
            first.kill()
            first.communicate(timeout=TIMEOUT)
        if standby is not None:
            out = _stop(standby)
            assert standby.returncode == 0, out
            assert "stopped after answering 1 message(s)" in out


def test_distributed_client_without_a_worker_says_so(redis_url: str) -> None:
    result = _client(redis_url, "t-examples-nobody", "--timeout", "1")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "client_node: no 'assistant' on the channel within 1 s: is worker_node.py running, "
        "on the same --redis-url and --channel?"
    ]


def test_distributed_client_reports_an_unreachable_redis() -> None:
    result = _client("redis://127.0.0.1:9/0", "t-examples-unreachable")
    assert result.returncode == 1
    assert "could not connect to Redis at redis://127.0.0.1:9/0" in result.stderr
    assert "Traceback" not in result.stderr
