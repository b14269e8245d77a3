"""The `proxy-core` command: demo over real loopback sockets, plugins listing, errors."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import proxy_core.demo
from proxy_core.cli import main
from proxy_core.plugins import available_codecs, available_transports


def proxy_core_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy_core.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port of 127.0.0.1 where something listens already."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_demo_runs_and_explains_drops(codec: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--codec", codec]) == 0
    out = capsys.readouterr().out
    # What crossed, as seen by each side.
    assert "assistant <- acme: TextFrame('hi there')" in out
    assert "assistant <- acme: AudioRawFrame(320 bytes @ 16000 Hz)" in out
    assert "acme <- assistant: TextFrame('goodbye')" in out
    assert "assistant activated with args {'greeting': 'hello from acme'}" in out
    # What was filtered, and why.
    assert "kept outbound TextFrame('to everyone') back: broadcast" in out
    assert "kept outbound _Note('private note') back: local" in out
    assert "kept outbound BusDataMessage({'k': 'v'}) back: not_allowed" in out
    assert "kept outbound TextFrame('let me in') back: wrong_source" in out
    # Nothing filtered ever reached the server.
    assert "assistant <- acme: TextFrame('to everyone')" not in out
    assert "assistant <- intruder" not in out
    assert "messages_out" in out


@pytest.mark.parametrize(
    ("option", "name", "installed"),
    [
        ("--codec", "cbor", available_codecs),
        ("--transport", "carrier-pigeon", available_transports),
    ],
)
def test_demo_unknown_name_is_one_line_before_any_work(
    option: str, name: str, installed: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", option, name])
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""  # nothing served, nothing connected
    names = ", ".join(repr(n) for n in installed())
    assert err.splitlines() == [
        f"proxy-core demo: error: argument {option}: invalid choice: {name!r} (choose from {names})"
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["demo", "--transport", "nosuch"],
        ["demo", "--codec", "nosuch"],
        ["demo", "--bus", "redis", "--transport", "websockets"],
        ["demo", "--bus", "redis", "--redis-url", "not a url"],
        ["nosuch"],
    ],
)
def test_a_users_mistake_is_one_line_and_a_nonzero_exit(args: list[str]) -> None:
    result = proxy_core_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("proxy-core") and ": error: " in lines[0]
    assert "Traceback" not in result.stdout


@pytest.mark.parametrize("transport", ["websockets", "aiohttp"])
def test_a_port_in_use_is_one_line(
    transport: str,
    busy_port: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if transport not in available_transports():
        pytest.skip(
            f"transport {transport!r} is not installed here "
            "(python3 scripts/dev.py test installs every transport of this repository)"
        )
    serve = proxy_core.demo.serve_proxy

    def serve_on_the_busy_port(url: str, **options: Any) -> Any:
        return serve(url.replace("127.0.0.1:0", f"127.0.0.1:{busy_port}"), **options)

    monkeypatch.setattr(proxy_core.demo, "serve_proxy", serve_on_the_busy_port)
    assert main(["demo", "--transport", transport]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("proxy-core: error: ")
    assert f"127.0.0.1:{busy_port}" in lines[0] and "in use" in lines[0]


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(**options: Any) -> int:
        raise RuntimeError("a bug, not a user's mistake")

    monkeypatch.setattr(proxy_core.demo, "run_demo", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["demo"])


def test_plugins_lists_transports_and_codecs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy_core.cli", "plugins"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "websockets" in result.stdout
    assert "proxy_core.codecs.json.JsonCodec" in result.stdout
    assert "proxy_core.codecs.msgpack.MsgpackCodec" in result.stdout
