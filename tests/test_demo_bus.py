"""``proxy-core demo --bus redis``: the demo's workers in two processes on one Redis bus.

Each run is a real ``proxy-core`` process that starts its own two processes,
and its own throwaway redis-server unless given ``--redis-url`` (then the
session's, never the machine's 6379).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest

from proxy_core.cli import main

TIMEOUT = 120


def demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy_core.cli", "demo", "--bus", "redis", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, **(env or {})},
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there any more


def test_the_demo_runs_two_processes_on_a_throwaway_redis() -> None:
    result = demo()
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "[  demo] started a throwaway redis-server on redis://127.0.0.1:" in out
    # acme learns of the assistant of the other process through the registry...
    assert (
        "[proc 1] registry: 'assistant' is ready in runner 'process-2' (in another process)" in out
    )
    # ...activates it, and talks to it across processes.
    assert "[proc 2] assistant: activated across processes with args " in out
    assert "[proc 2] assistant <- acme: 'hi there'" in out
    assert """[proc 1] acme <- assistant: "you said 'hi there'\"""" in out
    assert """[proc 1] acme <- assistant: "you said 'how are you?'\"""" in out
    # A broadcast reaches both workers of the other process.
    assert "[proc 2] assistant <- acme: 'hello, everyone'  (broadcast)" in out
    assert "[proc 2] helper <- acme: 'hello, everyone'  (broadcast)" in out
    assert """[proc 1] acme <- helper: "heard 'hello, everyone'\"""" in out
    # A local message stays in its process: the assistant saw nothing but text frames.
    assert "[proc 1] acme <- assistant: 'no, nothing but text frames reached me'" in out
    assert "[proc 1] acme: the note was not seen across: it stayed in process 1" in out
    assert not [line for line in out.splitlines() if line.startswith("[proc 2]") and "Note" in line]
    assert "[proc 1] acme <- assistant: 'goodbye'" in out
    assert "[proc 2] registry: 'acme' is gone (runner 'process-1' left the bus)" in out
    # The counters of each side, and nothing left in Redis.
    assert re.search(r"\[proc 1\] bus counters: sent=6 received=5 acked=\d+ kept_local=1\n", out)
    assert re.search(r"\[proc 2\] bus counters: sent=5 received=6 acked=\d+\n", out)
    assert "[  demo] no keys left behind in Redis (SCAN MATCH 'pc:{proxy-core-demo}:*'" in out
    assert out.rstrip().endswith("[  demo] stopped the throwaway redis-server")
    assert "Traceback" not in result.stderr


def test_the_demo_runs_on_a_given_redis_and_leaves_nothing_there(redis_url: str) -> None:
    import redis

    result = demo("--redis-url", redis_url, "--channel", "t-demo-bus")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "throwaway" not in result.stdout
    assert "[  demo] both processes join the bus on channel 't-demo-bus' of " in result.stdout
    assert "no keys left behind in Redis" in result.stdout
    with redis.Redis.from_url(redis_url) as client:
        assert list(client.scan_iter(match="pc:{t-demo-bus}:*")) == []


def test_a_channel_in_use_is_refused(redis_url: str) -> None:
    import redis

    with redis.Redis.from_url(redis_url) as client:
        client.set("pc:{t-demo-busy}:lease:acme", "someone", px=60_000)
        try:
            result = demo("--redis-url", redis_url, "--channel", "t-demo-busy")
        finally:
            client.delete("pc:{t-demo-busy}:lease:acme")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"proxy-core: error: channel 't-demo-busy' on {redis_url} is in use (1 key(s) match "
        "'pc:{t-demo-busy}:*'): pick another --channel"
    ]


def test_an_unreachable_redis_url_is_one_line() -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    result = demo("--redis-url", url)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"proxy-core: error: cannot reach Redis at {url}: ")


def test_a_missing_redis_server_is_one_line() -> None:
    result = demo(env={"PROXY_CORE_REDIS_SERVER": "/nonexistent/redis-server"})
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("proxy-core: error: cannot run '/nonexistent/redis-server'")
    assert "pip install 'proxy-core-redis[server]'" in lines[0]


def test_a_missing_redis_bus_names_the_package() -> None:
    code = (
        "import sys; sys.modules['proxy_core_redis'] = None\n"
        "from proxy_core.cli import main; sys.exit(main(['demo', '--bus', 'redis']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("proxy-core: error: --bus redis needs the Redis bus")
    assert lines[0].endswith(": pip install proxy-core-redis")


def test_demo_help_names_the_buses_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--help"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--bus {local,redis}" in out
    assert "(default: local)" in out
    assert "(default: start a throwaway redis-server on 127.0.0.1 and a free port)" in out
    assert "(default: proxy-core-demo)" in out
    assert "(default: msgpack)" in out
    assert "(default: websockets)" in out


@pytest.mark.parametrize(
    "args", [["--redis-url", "redis://127.0.0.1:1/0"], ["--channel", "x"]], ids=["url", "channel"]
)
def test_redis_options_need_the_redis_bus(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", *args])
    assert exited.value.code == 2
    assert "--redis-url and --channel go with --bus redis" in capsys.readouterr().err
