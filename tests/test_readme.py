"""Every snippet of README.md, run for real on 127.0.0.1, as a user would run it.

Each ```python block runs as a program of its own, unchanged but for where it
listens or connects; each ```sh line runs too, or is listed in :data:`NOT_RUN`
with the reason. A snippet that does not run fails its test (never a skip), and
so does a block no test knows: teach this file to run it.

What is replaced, so that the tests never touch a port a user might hold:

- the server snippet's ``ws://127.0.0.1:8765/ws`` by port 0, and the client
  snippet's by the URL the server printed;
- the Redis snippet's ``redis://127.0.0.1:6379/0`` by this test run's own
  throwaway redis-server (never the machine's Redis on 6379);
- the examples' ``--port 8765`` and ``--metrics-port 9100`` by 0, and
  ``examples/main.py``'s ``--remote-url`` by the URL the server printed.

A replaced text that is not in the README fails the test: the README changed,
and this file must follow.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import shlex
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_examples import Running, run

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")

SERVER_URL = "ws://127.0.0.1:8765/ws"
REDIS_URL = "redis://127.0.0.1:6379/0"
TOKEN = "Bearer s3cret"


def blocks(language: str) -> list[str]:
    """The README's fenced blocks of ``language``, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", README, flags=re.MULTILINE | re.DOTALL)


#: Which ```python block is which: a text only that block holds.
SNIPPETS = {
    "redis": "RedisBus(",
    "client": "WebSocketProxyClient(",
    "server": "serve_proxy(",
    "uvloop": "uvloop.run(",
}


def snippet(kind: str) -> str:
    """The one ```python block of ``kind``."""
    found = [block for block in blocks("python") if SNIPPETS[kind] in block]
    assert len(found) == 1, f"{len(found)} README snippets hold {SNIPPETS[kind]!r}"
    return found[0]


def replaced(text: str, old: str, new: str) -> str:
    """``text`` with ``old`` replaced by ``new``; fails if ``old`` is not there."""
    assert old in text, f"the README snippet no longer holds {old!r}:\n{text}"
    return text.replace(old, new)


def write(tmp_path: Path, name: str, code: str) -> Path:
    path = tmp_path / name
    path.write_text(code, encoding="utf-8")
    return path


@contextlib.contextmanager
def readme_server(tmp_path: Path) -> Iterator[tuple[Running, str]]:
    """The server snippet, on a free port, with the URL it printed; stopped by Ctrl-C."""
    code = replaced(snippet("server"), SERVER_URL, SERVER_URL.replace("8765", "0"))
    with Running(sys.executable, "-u", write(tmp_path, "server.py", code), cwd=tmp_path) as server:
        url = server.wait_for(r"^listening on (ws://\S+)$").group(1)
        yield server, url
        assert server.stop() == 0, server.output()  # Ctrl-C ends it quietly
        assert server.stderr == [], server.output()


def run_client(tmp_path: Path, url: str, token: str = TOKEN) -> tuple[str, str, int]:
    """Run the client snippet against ``url``; return its stdout, stderr and exit status."""
    code = replaced(snippet("client"), SERVER_URL, url)
    code = replaced(code, TOKEN, token)
    result = run(sys.executable, write(tmp_path, "client.py", code))
    return result.stdout, result.stderr, result.returncode


# ------------------------------------------------------------ the ```python blocks


def test_every_python_snippet_is_known() -> None:
    for block in blocks("python"):
        kinds = [kind for kind, text in SNIPPETS.items() if text in block]
        assert len(kinds) == 1, f"no test of tests/test_readme.py runs this snippet:\n{block}"
    assert len(blocks("python")) == len(SNIPPETS)


def test_client_snippet_talks_to_server_snippet(tmp_path: Path) -> None:
    with readme_server(tmp_path) as (_, url):
        out, err, code = run_client(tmp_path, url)
    assert code == 0, out + err
    assert out == "assistant: you said 'hello'\n"
    assert "Traceback" not in err


def test_client_snippet_on_uvloop_talks_to_server_snippet(tmp_path: Path) -> None:
    """The README's "Running on uvloop": the client snippet, its last line replaced so."""
    uvloop = snippet("uvloop")
    code = replaced(snippet("client"), "\nasyncio.run(main())\n", "\n" + uvloop)
    code = replaced(code, SERVER_URL, "{url}")
    with readme_server(tmp_path) as (_, url):
        result = run(sys.executable, write(tmp_path, "client.py", code.replace("{url}", url)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "assistant: you said 'hello'\n"
    assert "Traceback" not in result.stderr


def test_client_snippet_with_a_wrong_token_ends_with_the_error(tmp_path: Path) -> None:
    """What the README says: ``runner.run()`` raises ``AuthenticationError``, no hang."""
    with readme_server(tmp_path) as (_, url):
        out, err, code = run_client(tmp_path, url, token="Bearer wrong")
    assert code != 0, out + err
    assert out == ""
    assert "proxy_core.errors.AuthenticationError: " in err, err


def test_redis_snippet_answers_the_distributed_client(redis_url: str, tmp_path: Path) -> None:
    """The Redis snippet holds ``assistant``; the README's client_node.py line talks to it."""
    code = replaced(snippet("redis"), REDIS_URL, redis_url)
    line = re.search(r"`(\.venv/bin/python examples/distributed/client_node\.py [^`]*)`", README)
    assert line, "the README no longer shows how to talk to the Redis snippet"
    argv = shlex.split(line.group(1))
    assert argv[:2] == [".venv/bin/python", "examples/distributed/client_node.py"]
    client = [sys.executable, str(ROOT / argv[1]), *argv[2:]]
    with Running(sys.executable, "-u", write(tmp_path, "node.py", code), cwd=tmp_path) as node:
        # client_node.py waits (--timeout) until the registry says 'assistant' is ready.
        result = run(*client, "--redis-url", redis_url, "--timeout", "60")
        assert result.returncode == 0, result.stdout + result.stderr + node.output()
        assert "assistant -> acme: you said 'message 3 of 3'" in result.stdout
        assert node.stop() == 0, node.output()  # Ctrl-C: the runner ends gracefully
    assert "Traceback" not in node.output()


# ------------------------------------------------------------ the ```sh lines


def sh_lines() -> list[str]:
    """Every command of the README's ```sh blocks, without its comment."""
    lines = []
    for block in blocks("sh"):
        for line in block.splitlines():
            command = line.split("  #", 1)[0].strip()
            if command and not command.startswith("#"):
                lines.append(command)
    return lines


#: The ```sh lines that no test here runs, and why.
NOT_RUN = {
    "python3 scripts/dev.py demo": "it sets up .venv first; tests/test_demo.py runs the demo",
    "python3 scripts/dev.py test": "it is the test command: this run",
    ".venv/bin/pip install -e '.[fastapi,prometheus]'": (
        "it installs; test_the_extras_the_readme_names_exist_and_are_installed checks them"
    ),
}

SERVERS = ("examples/assistant.py", "examples/fastapi_server.py", "examples/prometheus_exporter.py")
CLIENT = "examples/main.py"


def commands(script: str) -> list[list[str]]:
    """The README's ```sh lines that run ``script``, split into arguments."""
    return [
        argv
        for argv in map(shlex.split, sh_lines())
        if len(argv) > 1 and argv[0] == ".venv/bin/python" and argv[1] == script
    ]


def test_every_sh_line_is_run_or_said_why() -> None:
    runs = {shlex.join(argv) for script in (*SERVERS, CLIENT) for argv in commands(script)}
    for line in sh_lines():
        assert shlex.join(shlex.split(line)) in runs or line in NOT_RUN, (
            f"no test of tests/test_readme.py runs this README line: {line}"
        )
    assert len(commands(CLIENT)) == 1
    for script in SERVERS:
        assert commands(script), f"the README no longer runs {script}"
    assert set(NOT_RUN) <= set(sh_lines()), "NOT_RUN names a line the README no longer has"


def with_ports_zero(argv: list[str]) -> list[str]:
    """``argv`` with the README's ports (--port 8765, --metrics-port 9100) made 0."""
    out = list(argv)
    for option, port in (("--port", "8765"), ("--metrics-port", "9100")):
        if option in out:
            index = out.index(option) + 1
            assert out[index] == port, f"{shlex.join(argv)}: {option} is not {port}"
            out[index] = "0"
    assert "--port" in out, f"{shlex.join(argv)}: no --port"
    return out


@pytest.mark.parametrize(
    "argv", [argv for script in SERVERS for argv in commands(script)], ids=shlex.join
)
def test_readme_server_line_serves_the_readme_client_line(argv: list[str]) -> None:
    (client,) = commands(CLIENT)
    server_argv = [sys.executable, "-u", str(ROOT / argv[1]), *with_ports_zero(argv[2:])]
    with Running(*server_argv, cwd=ROOT) as server:
        url = server.wait_for(r"listening on (ws://\S+)").group(1)
        client = [url if arg == "ws://localhost:8765/ws" else arg for arg in client]
        assert url in client, f"{shlex.join(client)}: no --remote-url ws://localhost:8765/ws"
        result = run(sys.executable, str(ROOT / client[1]), *client[2:])
        assert result.returncode == 0, result.stdout + result.stderr + server.output()
        assert "assistant -> acme: You're welcome. Goodbye!" in result.stdout
        assert server.stop() == 0, server.output()
    assert "Traceback" not in server.output()


def test_the_extras_the_readme_names_exist_and_are_installed() -> None:
    """``pip install 'proxy-core[NAME]'`` in the README: NAME is an extra, and the tests have it."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = pyproject["project"]["optional-dependencies"]
    named = set()
    for group in re.findall(r"(?:proxy-core|\.)\[([a-z,]+)\]", README):
        named.update(group.split(","))
    assert {"fastapi", "prometheus", "protobuf"} <= named
    modules = {
        "fastapi": ["fastapi", "uvicorn"],
        "prometheus": ["prometheus_client"],
        "uvloop": ["uvloop"],
    }
    for name in sorted(named):
        assert name in extras, f"the README names the extra {name!r}; pyproject.toml has not"
        for module in modules.get(name, []):
            assert importlib.util.find_spec(module), f"{module} (extra {name!r}) is not installed"
