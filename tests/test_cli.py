"""The `proxy-core` command: demo over real loopback sockets, plugins listing, errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from proxy_core.cli import main


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
    assert "kept outbound _Note back: local" in out
    assert "kept outbound BusDataMessage back: not_allowed" in out
    assert "kept outbound TextFrame('let me in') back: wrong_source" in out
    # Nothing filtered ever reached the server.
    assert "assistant <- acme: TextFrame('to everyone')" not in out
    assert "assistant <- intruder" not in out
    assert "messages_out" in out


def test_demo_unknown_codec_lists_installed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--codec", "cbor"]) == 2
    err = capsys.readouterr().err
    assert "unknown codec 'cbor'" in err
    assert "json" in err and "msgpack" in err


def test_demo_unknown_transport_lists_installed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--transport", "carrier-pigeon"]) == 2
    err = capsys.readouterr().err
    assert "unknown transport 'carrier-pigeon'" in err
    assert "websockets" in err


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
