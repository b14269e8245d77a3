"""The load test tool (``proxy-core bench-load``) end to end, with a small number of sessions.

Nothing here asserts a speed or a memory figure: on a shared machine they are
whatever they are. The tests check that every session is held, that every
message comes back exactly once and in order, that the sessions wind down on
the server after closing, and that a run past its deadline reports a failure
instead of hanging.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy_core.bench.load import LoadOptions, run_load
from proxy_core.bench.load_command import format_table
from proxy_core.cli import main

pytestmark = pytest.mark.timeout(90)


async def test_fifty_sessions_hold_and_lose_nothing() -> None:
    options = LoadOptions(sessions=50, messages=20, rounds=2, deadline=50)
    result = await run_load(options)
    assert result.failures == []
    assert result.status == "ok"
    assert result.sessions_opened == 50 and result.sessions_failed == 0
    assert result.sessions_held_peak == 50
    assert result.sessions_connected_after_traffic == 50
    assert result.messages_sent == result.messages_received == 2 * 50 * 20
    assert result.messages_lost == 0
    assert result.messages_duplicated == 0
    assert result.messages_out_of_order == 0
    assert result.server_received == result.server_echoed == 2 * 50 * 20
    assert result.sessions_left_after_close == 0
    assert [row["held"] for row in result.rounds] == [50, 50]
    # Every session's tasks and sockets are gone once it closed.
    closed, baseline = result.server["closed"], result.server["baseline"]
    assert closed["tasks"] == baseline["tasks"]
    assert closed["fds"] == baseline["fds"]
    assert result.server_bytes_per_session is not None
    assert "messages lost" in format_table(result)


def test_command_line_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "load.json"
    argv = ["bench-load", "--sessions", "5", "--messages", "5", "--deadline", "40"]
    code = main([*argv, "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    record = json.loads(out.read_text())
    assert record["status"] == "ok"
    assert record["messages_lost"] == 0
    assert record["options"]["sessions"] == 5
    assert record["command"].startswith("proxy-core bench-load --sessions 5")
    assert record["machine"]["python"]
    assert "sessions held at once" in printed


async def test_a_run_past_its_deadline_reports_failure() -> None:
    result = await run_load(LoadOptions(sessions=20, messages=5, deadline=0.05))
    assert result.status == "failed"
    assert any("deadline" in f or "no answer" in f for f in result.failures), result.failures
    assert result.elapsed < 30


def test_bad_options_are_refused() -> None:
    assert main(["bench-load", "--sessions", "0"]) == 2
    with pytest.raises(ValueError):
        LoadOptions(messages=0).check()
