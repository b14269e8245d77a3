"""The scale sweep of ``proxy-core bench-load`` and the load tool's own bookkeeping.

No assertion here is about a speed or a memory figure. The sweep runs with a
handful of sessions and checks its shape (one run per count, medians, spreads,
the table, the chart); the server's wait for its sessions to wind down is
checked by counting the callbacks it registers, which must grow linearly with
the tasks, not with their square.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from pathlib import Path
from typing import Any

import pytest

from proxy_core.bench import load_scale, load_side
from proxy_core.bench.load import LoadOptions
from proxy_core.bench.load_scale import (
    FLAT,
    ScalePoint,
    ScaleResult,
    format_scale,
    run_scale,
    scale_markdown,
    write_scale_chart,
)
from proxy_core.cli import main

pytestmark = pytest.mark.timeout(120)


class _CountingTask(asyncio.Task[Any]):
    """A task that counts the done callbacks added to it (all of them, in a class counter)."""

    added = 0

    def add_done_callback(self, fn: Any, *, context: Any = None) -> None:
        type(self).added += 1
        super().add_done_callback(fn, context=context)


def _counting_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
    return _CountingTask(coro, loop=loop, **kwargs)


@pytest.mark.parametrize("count", [100, 400])
async def test_waiting_for_sessions_to_wind_down_is_linear_in_the_tasks(count: int) -> None:
    loop = asyncio.get_running_loop()
    idle = len(asyncio.all_tasks())
    loop.set_task_factory(_counting_factory)
    try:
        gates = [asyncio.Event() for _ in range(count)]
        tasks = [asyncio.ensure_future(gate.wait()) for gate in gates]

        async def end_one_at_a_time() -> None:
            # The worst case for a wait on the first task to end: one per loop turn.
            for gate in gates:
                gate.set()
                await asyncio.sleep(0)

        _CountingTask.added = 0
        ender = asyncio.ensure_future(end_one_at_a_time())
        async with asyncio.timeout(30):  # in this task, as the server calls it: no new task
            await load_side._sessions_wound_down(idle)
        assert all(t.done() for t in tasks) and ender.done()
        # One callback per task and pass (a few passes); waiting again and again
        # for the first task to end would add count**2 / 2 of them.
        assert _CountingTask.added <= 4 * (count + 1), _CountingTask.added
    finally:
        loop.set_task_factory(None)


async def test_wind_down_returns_at_once_when_idle() -> None:
    async with asyncio.timeout(5):
        await load_side._sessions_wound_down(len(asyncio.all_tasks()))


def test_gc_clock_counts_collections() -> None:
    clock = load_side.GcClock()
    clock.install()
    try:
        before = clock.reading()
        gc.collect()
        since = clock.since(before)
    finally:
        gc.callbacks.remove(clock._callback)
    assert since["gc_collections"][2] == 1
    assert since["gc_seconds"][2] >= 0


async def test_lag_probe_sees_a_blocked_loop() -> None:
    probe = load_side.LagProbe(period=0.01)
    probe.start()
    await asyncio.sleep(0.02)
    probe.take()
    # Blocking the loop on purpose: the lag the probe exists to see.
    time.sleep(0.1)  # noqa: ASYNC251
    await asyncio.sleep(0.02)
    assert probe.take() >= 0.05


def _point(transport: str, sessions: int, memory: float, cpu: float) -> ScalePoint:
    return ScalePoint(
        transport,
        sessions,
        "ok",
        server_bytes_per_session=memory,
        server_cpu_per_message=cpu,
    )


def test_medians_spreads_and_tables() -> None:
    result = ScaleResult(LoadOptions(), [100, 1000], ["websockets"], repeat=2)
    result.runs = [
        _point("websockets", 100, 20_000, 100e-6),
        _point("websockets", 100, 22_000, 140e-6),
        _point("websockets", 1000, 30_000, 200e-6),
        _point("websockets", 1000, 32_000, 260e-6),
    ]
    assert result.median("websockets", 100, "server_bytes_per_session") == 21_000
    assert result.spread("websockets", "server_bytes_per_session") == pytest.approx(31 / 21)
    assert result.spread("websockets", "server_cpu_per_message") == pytest.approx(230 / 120)
    assert result.spread("websockets", "client_cpu_per_message") is None  # no values
    text = format_scale(result)
    assert "1.48x ok" in text and "1.92x NO" in text
    table = scale_markdown(result)
    assert table.startswith("| websockets / msgpack | 100 | 1,000 | max / min |")
    assert "| server CPU / message | 120.0 µs | 230.0 µs | 1.92x NO |" in table
    assert "| runs passed | 2 / 2 | 2 / 2 |  |" in table
    record = json.loads(json.dumps(result.to_dict()))
    assert record["spreads"]["websockets"]["server_bytes_per_session"] == pytest.approx(31 / 21)
    assert FLAT == 1.5


def test_chart_is_drawn(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = ScaleResult(LoadOptions(), [100, 1000], ["aiohttp", "websockets"], repeat=1)
    result.runs = [
        _point(t, n, 20_000.0 * (1 + n / 1000), 1e-4)
        for t in result.transports
        for n in (100, 1000)
    ]
    path = tmp_path / "scale.png"
    assert write_scale_chart(result, path) is None
    assert path.read_bytes().startswith(b"\x89PNG")


async def test_a_small_sweep_runs_each_count() -> None:
    base = LoadOptions(messages=5, warmup=1, deadline=60)
    lines: list[str] = []
    result = await run_scale(
        base, counts=[6, 3], transports=["websockets"], deadline=60, progress=lines.append
    )
    assert result.status == "ok", format_scale(result)
    assert result.counts == [3, 6]
    assert [p.sessions for p in result.runs] == [3, 6]
    assert len(lines) == 2 and lines[0].startswith("websockets 3 sessions: ok")
    for point in result.runs:
        assert point.server_bytes_per_session is not None
        assert point.server_cpu_per_message is not None and point.server_cpu_per_message > 0
        assert point.client_cpu_per_message is not None
        assert point.reconnects == 0


def test_command_line_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, table = tmp_path / "sweep.json", tmp_path / "sweep.md"
    argv = ["bench-load", "--sessions", "2", "4", "--messages", "3", "--warmup", "0"]
    code = main([*argv, "--deadline", "60", "--json", str(out), "--markdown", str(table)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    record = json.loads(out.read_text())
    assert record["counts"] == [2, 4] and record["status"] == "ok"
    assert record["command"].startswith("proxy-core bench-load --sessions 2 4")
    assert "server memory / session" in printed
    assert table.read_text().startswith("| websockets / msgpack | 2 | 4 |")


def test_saved_sweeps_are_drawn_again_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = []
    for transport, cpu in (("websockets", 100e-6), ("grpc", 300e-6)):
        result = ScaleResult(LoadOptions(), [100, 1000], [transport], repeat=1)
        result.runs = [_point(transport, n, 25_000, cpu) for n in (100, 1000)]
        paths.append(tmp_path / f"{transport}.json")
        paths[-1].write_text(json.dumps(result.to_dict()))
    table = tmp_path / "both.md"
    assert load_scale.main([*map(str, paths), "--markdown", str(table)]) == 0
    text = table.read_text()
    assert "| websockets / msgpack |" in text and "| grpc / msgpack |" in text
    assert "300.0 µs" in capsys.readouterr().out
