"""The examples, run as real processes talking over 127.0.0.1.

Every file in examples/ and examples/distributed/ is run here or by
tests/test_readme.py (``test_every_example_is_run`` checks). Nothing sleeps to
synchronise: a test waits for a line a process prints, with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 60
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


class Running:
    """A process started by a test; threads read its output, so waits have a deadline.

    Use it as a context manager: leaving the block kills the process if it still runs.
    """

    def __init__(self, *argv: str | Path, cwd: Path | None = None) -> None:
        self.argv = [str(arg) for arg in argv]
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=ENV,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()  # stdout; None at its end
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout, True)),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr, False)),
        ]
        for reader in self._readers:
            reader.daemon = True
            reader.start()

    def _read(self, stream: IO[str], into: list[str], announce: bool) -> None:
        for line in stream:
            into.append(line)
            if announce:
                self._lines.put(line)
        if announce:
            self._lines.put(None)

    def output(self) -> str:
        """What the process printed so far: stdout, then stderr."""
        return "".join(self.stdout) + "".join(self.stderr)

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        """Return the match of the first stdout line (from here on) that matches ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise AssertionError(
                    f"{self.argv[1:]}: no line matching {pattern!r} within {timeout} s:\n"
                    + self.output()
                ) from None
            if line is None:
                code = self.proc.wait(TIMEOUT)
                self._join()
                raise AssertionError(
                    f"{self.argv[1:]} exited ({code}) before a line matching {pattern!r}:\n"
                    + self.output()
                )
            match = re.search(pattern, line)
            if match:
                return match

    def stop(self) -> int:
        """Send SIGINT (Ctrl-C) and return the exit status; kill it and fail if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
            self._join()
            raise AssertionError(
                f"{self.argv[1:]} did not stop on SIGINT:\n{self.output()}"
            ) from None
        self._join()
        return code

    def _join(self) -> None:
        """Wait for the readers (the process has exited), then close the pipes."""
        for reader in self._readers:
            reader.join(TIMEOUT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        self._join()


def python(script: Path, *args: str) -> list[str]:
    """The command line that runs ``script`` with this test run's interpreter."""
    return [sys.executable, "-u", str(script), *args]


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a command to its end (within the deadline) and return what it printed."""
    return subprocess.run(
        [str(arg) for arg in argv], capture_output=True, text=True, timeout=TIMEOUT, env=ENV
    )


@contextlib.contextmanager
def started(script: str, *args: str) -> Iterator[tuple[Running, str]]:
    """An example server on port 0, with the URL it printed; stopped by SIGINT, cleanly."""
    with Running(*python(EXAMPLES / script, "--port", "0", *args)) as server:
        url = server.wait_for(r"listening on ((?:ws|grpc)://\S+)").group(1)
        yield server, url
        code = server.stop()
        assert code == 0, server.output()
        assert "Traceback" not in server.output()


def talk(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run examples/main.py against ``url``."""
    return run(*python(EXAMPLES / "main.py", "--remote-url", url, *args))


@pytest.fixture(params=["assistant.py", "fastapi_server.py", "prometheus_exporter.py"])
def server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each example server (ended by SIGINT, with exit status 0 and no traceback)."""
    args = ("--metrics-port", "0") if request.param == "prometheus_exporter.py" else ()
    with started(request.param, *args) as (_, url):
        yield url


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_main_talks_to_assistant(server_url: str, codec: str) -> None:
    result = talk(server_url, "--codec", codec)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "'assistant' is ready (remote=True)" in out
    assert "assistant -> acme: Hello! I am the assistant on the other bus." in out
    assert "assistant -> acme: I heard 1600 bytes of audio so far." in out
    assert "assistant -> acme: You're welcome. Goodbye!" in out


def test_assistant_serves_sessions_one_after_another() -> None:
    with started("assistant.py") as (server, url):
        for _ in range(2):
            result = talk(url)
            assert result.returncode == 0, result.stdout + result.stderr
    assert "assistant stopping after 2 session(s)" in server.output()


@pytest.mark.parametrize("transport", ["aiohttp", "grpc"])
def test_examples_run_on_other_backends(transport: str) -> None:
    with started("assistant.py", "--transport", transport) as (_, url):
        result = talk(url, "--transport", transport, "--codec", "protobuf")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "assistant -> acme: You're welcome. Goodbye!" in result.stdout


def test_prometheus_exporter_serves_the_proxies_metrics() -> None:
    script = EXAMPLES / "prometheus_exporter.py"
    with Running(*python(script, "--port", "0", "--metrics-port", "0")) as server:
        metrics = server.wait_for(r"metrics on (http://\S+)").group(1)
        url = server.wait_for(r"listening on (ws://\S+)").group(1)
        result = talk(url)
        assert result.returncode == 0, result.stdout + result.stderr
        with urllib.request.urlopen(metrics, timeout=TIMEOUT) as response:
            text = response.read().decode()
        assert server.stop() == 0, server.output()
    # The session has ended: its counts stay (counters never go down).
    labels = 'proxy="proxy",side="server"'
    assert f"proxy_core_sessions_total{{{labels}}} 1.0" in text
    received = re.search(rf'proxy_core_messages_total{{direction="in",{labels}}} (\S+)', text)
    assert received and float(received.group(1)) >= 4, text  # activate, 3 texts, audio
    assert "Traceback" not in server.output()


@pytest.mark.parametrize(
    ("script", "module", "extra"),
    [
        ("prometheus_exporter.py", "prometheus_client", "prometheus"),
        ("fastapi_server.py", "fastapi", "fastapi"),
        ("fastapi_server.py", "uvicorn", "fastapi"),
    ],
)
def test_an_example_names_the_extra_it_misses(script: str, module: str, extra: str) -> None:
    # Run the example as `python script.py` would, with `module` not importable.
    hide = (
        "import runpy, sys; "
        f"sys.modules[{module!r}] = None; "  # None in sys.modules: `import` raises ImportError
        f"sys.path.insert(0, {str(EXAMPLES)!r}); "
        f"sys.argv = [{script!r}]; "
        f"runpy.run_path({str(EXAMPLES / script)!r}, run_name='__main__')"
    )
    result = run(sys.executable, "-c", hide)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"{script} needs {module.replace('_', '-')}: pip install 'proxy-core[{extra}]'"
    ]


# ------------------------------------------------------------ a user's mistake: one line


@pytest.fixture
def busy_port() -> Iterator[str]:
    """A port of 127.0.0.1 that another socket listens on."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield str(sock.getsockname()[1])


IN_USE = "address already in use (another process listens on that port)"
LISTEN = "could not listen on ws://127.0.0.1:{busy}/ws"
NOT_WS = "the URL scheme must be one of ws, wss"

#: A mistake a user makes: the example, its arguments ({busy}: a port in use), the
#: start of the one line it prints on stderr.
MISTAKES = {
    "assistant-port-in-use": ("assistant.py", "--port {busy}", f"assistant: {LISTEN}: {IN_USE}"),
    "assistant-port-in-use-aiohttp": (
        "assistant.py",
        "--port {busy} --transport aiohttp",
        f"assistant: {LISTEN}: {IN_USE}",
    ),
    "assistant-port-in-use-grpc": (  # gRPC's C core prints no line of its own
        "assistant.py",
        "--port {busy} --transport grpc",
        f"assistant: could not listen on grpc://127.0.0.1:{{busy}}: {IN_USE}",
    ),
    "assistant-address-not-here": (  # 192.0.2.1: TEST-NET-1, never a local address
        "assistant.py",
        "--host 192.0.2.1 --port 0",
        "assistant: could not listen on ws://192.0.2.1:0/ws: address not available on this machine",
    ),
    "assistant-unknown-codec": (
        "assistant.py",
        "--port 0 --codec nosuch",
        "assistant: unknown codec 'nosuch'; installed codecs: json, msgpack",
    ),
    "assistant-unknown-transport": (
        "assistant.py",
        "--port 0 --transport nosuch",
        "assistant: unknown transport 'nosuch'; installed transports: aiohttp",
    ),
    "main-http-url": (
        "main.py",
        "--remote-url http://127.0.0.1:{busy}/ws",
        f"acme: transport 'websockets' cannot use http://127.0.0.1:{{busy}}/ws: {NOT_WS}",
    ),
    "main-grpc-url-for-websockets": (
        "main.py",
        "--remote-url grpc://127.0.0.1:{busy}",
        f"acme: transport 'websockets' cannot use grpc://127.0.0.1:{{busy}}: {NOT_WS}",
    ),
    "main-unknown-codec": (
        "main.py",
        "--remote-url ws://127.0.0.1:{busy}/ws --codec nosuch",
        "acme: unknown codec 'nosuch'; installed codecs: json, msgpack",
    ),
    "main-unknown-transport": (
        "main.py",
        "--remote-url ws://127.0.0.1:{busy}/ws --transport nosuch",
        "acme: unknown transport 'nosuch'; installed transports: aiohttp",
    ),
    "fastapi-port-in-use": (
        "fastapi_server.py",
        "--port {busy}",
        "fastapi_server: could not listen on 127.0.0.1:{busy}: Address already in use",
    ),
    "prometheus-metrics-port-in-use": (
        "prometheus_exporter.py",
        "--port 0 --metrics-port {busy}",
        "prometheus_exporter: could not serve metrics on port {busy}: ",
    ),
    "prometheus-port-in-use": (
        "prometheus_exporter.py",
        "--port {busy} --metrics-port 0",
        f"prometheus_exporter: {LISTEN}: {IN_USE}",
    ),
}


@pytest.mark.parametrize(("script", "args", "expected"), MISTAKES.values(), ids=MISTAKES.keys())
def test_a_mistake_is_one_line_on_stderr(
    script: str, args: str, expected: str, busy_port: str
) -> None:
    argv = args.replace("{busy}", busy_port).split()
    result = run(*python(EXAMPLES / script, *argv))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(expected.replace("{busy}", busy_port)), result.stderr


def test_main_reports_unreachable_server() -> None:
    result = talk("ws://127.0.0.1:9/ws")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    # The failure reaches the example through run(): it says it once, in one line.
    assert result.stderr.splitlines() == [
        "acme: could not connect to ws://127.0.0.1:9/ws: connection refused "
        "(is the server running, on that port?)"
    ]


def test_main_reports_a_refusal() -> None:
    with started("assistant.py", "--codec", "json") as (_, url):
        result = talk(url, "--codec", "msgpack")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "acme: session rejected by server (4003): no common codec: client offered "
        "['msgpack'], server has ['json']"
    ]


def test_every_example_is_run() -> None:
    """Each script of examples/ is started by this file or by tests/test_readme.py."""
    here = Path(__file__).parent
    tests = (here / "test_examples.py").read_text() + (here / "test_readme.py").read_text()
    for script in sorted(EXAMPLES.rglob("*.py")):
        assert f'"{script.name}"' in tests, f"no test runs {script.relative_to(EXAMPLES)}"


# ------------------------------------------------------------ examples/distributed: a Redis bus

DISTRIBUTED = EXAMPLES / "distributed"


def worker_node(redis_url: str, channel: str, *args: str) -> Running:
    """Start ``worker_node.py`` on ``channel``."""
    script = DISTRIBUTED / "worker_node.py"
    return Running(*python(script, "--redis-url", redis_url, "--channel", channel, *args))


def client_node(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``client_node.py`` to its end."""
    return run(*python(DISTRIBUTED / "client_node.py", "--redis-url", redis_url, *args))


def test_distributed_client_talks_to_a_worker_in_another_process(redis_url: str) -> None:
    channel = "t-examples-distributed"
    with worker_node(redis_url, channel, "--name", "node-b") as worker:
        worker.wait_for("is ready on channel")
        result = client_node(redis_url, "--channel", channel)
        code = worker.stop()
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
    out = worker.output()
    assert code == 0, out
    assert "worker_node: assistant activated with args {'caller': 'acme'}" in out
    assert "worker_node: stopped after answering 3 message(s)" in out
    assert "Traceback" not in out


def test_distributed_standby_takes_over_from_a_killed_worker(redis_url: str) -> None:
    channel = "t-examples-failover"
    ttl = ("--lease-ttl", "1")
    with (
        worker_node(redis_url, channel, "--name", "first", *ttl) as first,
        contextlib.ExitStack() as stack,
    ):
        first.wait_for("is ready on channel")
        standby = stack.enter_context(
            worker_node(redis_url, channel, "--name", "standby", "--claim-timeout", "60", *ttl)
        )
        standby.wait_for("'assistant' is held by runner 'first': standing by")
        first.proc.kill()  # kill -9: no goodbye, the lease runs out
        first.proc.wait(TIMEOUT)
        standby.wait_for("took 'assistant' over: it is ready on channel")
        result = client_node(redis_url, "--channel", channel, "--messages", "1")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "(answered by standby)" in result.stdout
        assert standby.stop() == 0, standby.output()
        assert "stopped after answering 1 message(s)" in standby.output()


def test_distributed_client_without_a_worker_says_so(redis_url: str) -> None:
    result = client_node(redis_url, "--channel", "t-examples-nobody", "--timeout", "1")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "client_node: no 'assistant' on the channel within 1 s: is worker_node.py running, "
        "on the same --redis-url and --channel?"
    ]


def test_distributed_client_reports_an_unreachable_redis() -> None:
    result = client_node("redis://127.0.0.1:9/0", "--channel", "t-examples-unreachable")
    assert result.returncode == 1
    assert "could not connect to Redis at redis://127.0.0.1:9/0" in result.stderr
    assert "Traceback" not in result.stderr
