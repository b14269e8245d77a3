"""The benchmark harness: its arithmetic, its outputs, and a quick run end to end.

Nothing here asserts a speed: figures on a shared machine are whatever they
are. The tests check that the harness measures (positive numbers, complete
records), reports, and fails a step that misses its deadline instead of hanging.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

import pytest

from proxy_core.bench import (
    METRICS,
    QUICK_COUNTS,
    SCENARIOS,
    BenchOptions,
    Counts,
    Record,
    median,
    percentile,
    ratio,
    run_bench,
    spread,
)
from proxy_core.bench.orchestrate import BenchResult, _fill, _Pair
from proxy_core.bench.report import format_table, markdown, write_chart, write_json
from proxy_core.cli import main

REQUIRED = {"transport", "codec", "scenario", "proxy", "bare", "ratio", "unit", "spread"}
EXTRA = {"metric", "better", "repeats", "date", "machine", "impl", "status"}


# ---------------------------------------------------------------- arithmetic


def test_median_of_odd_and_even_counts() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert median([7.0]) == 7.0
    with pytest.raises(ValueError):
        median([])


def test_spread_is_range_over_median() -> None:
    assert spread([10.0]) == 0.0
    assert spread([9.0, 10.0, 11.0]) == pytest.approx(0.2)
    assert spread([1.0, 1.0, 4.0]) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        spread([])
    with pytest.raises(ValueError):
        spread([0.0, 0.0, 1.0])  # a median of zero makes no relative spread


def test_ratio_is_proxy_over_bare() -> None:
    assert ratio(50.0, 100.0) == 0.5  # a rate at half the bare library's
    assert ratio(300.0, 100.0) == 3.0  # a latency three times the bare library's
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            ratio(1.0, bad)


def test_percentile_by_nearest_rank() -> None:
    samples = [float(n) for n in range(1, 101)]
    assert percentile(samples, 50) == 50.0
    assert percentile(samples, 99) == 99.0
    assert percentile(samples, 100) == 100.0
    assert percentile(samples, 0) == 1.0
    assert percentile([5.0, 1.0], 50) == 1.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def _record(scenario: str = "stream_200b", metric: str = "rate") -> Record:
    m = next(m for m in METRICS if m.scenario == scenario and m.name == metric)
    return Record("websockets", "msgpack", scenario, metric, m.unit, m.better)


def test_repeats_aggregate_to_the_median_of_paired_ratios() -> None:
    record = _record()
    _fill(record, [_Pair(50.0, 100.0), _Pair(60.0, 100.0), _Pair(40.0, 50.0)])
    assert record.status == "ok" and record.repeats == 3
    assert record.ratio == pytest.approx(0.6)  # median of 0.5, 0.6 and 0.8
    assert record.spread == pytest.approx((0.8 - 0.5) / 0.6)
    assert record.proxy == 50.0 and record.bare == 100.0
    assert record.proxy_samples == [50.0, 60.0, 40.0]


def test_failed_repeats_are_reported_not_hidden() -> None:
    partial = _record()
    _fill(partial, [_Pair(50.0, 100.0), _Pair(None, 100.0, "TimeoutError")])
    assert partial.status == "partial" and partial.repeats == 1
    assert partial.error is not None and "TimeoutError" in partial.error
    failed = _record()
    _fill(failed, [_Pair(None, None, "child exited")])
    assert failed.status == "failed" and failed.ratio is None and failed.error == "child exited"


# ---------------------------------------------------------------- outputs


def _result(records: list[Record]) -> BenchResult:
    machine = {"cpu": "test cpu", "cores": 2, "python": "CPython 3", "libraries": {}}
    return BenchResult(
        records, ["a note"], machine, "2026-01-01T00:00:00+00:00", BenchOptions(), 1.0
    )


def _filled(scenario: str, metric: str, proxy: float, bare: float) -> Record:
    record = _record(scenario, metric)
    _fill(record, [_Pair(proxy, bare)])
    return record


def test_reports_say_which_direction_is_better(tmp_path: Path) -> None:
    records = [
        _filled("stream_200b", "rate", 25_000.0, 100_000.0),
        _filled("rtt", "p50", 300.0, 150.0),
    ]
    failed = _record("stream_16k", "throughput")
    _fill(failed, [_Pair(None, None, "deadline")])
    records.append(failed)
    table = format_table(records)
    assert "0.25x" in table and "2.00x" in table and "FAILED" in table
    assert "higher" in table and "lower" in table
    text = markdown(_result(records), "chart.png")
    assert "higher is better" in text and "lower is better" in text
    assert "![ratios per scenario](chart.png)" in text and "a note" in text
    path = tmp_path / "out.json"
    write_json(records, path)
    data = json.loads(path.read_text())
    assert isinstance(data, list) and len(data) == 3
    assert REQUIRED | EXTRA <= set(data[0])


def test_chart_is_a_png_or_a_note(tmp_path: Path) -> None:
    path = tmp_path / "chart.png"
    why = write_chart([_filled("stream_200b", "rate", 25_000.0, 100_000.0)], path)
    if why is not None:
        assert "matplotlib" in why
        pytest.skip(why)
    assert path.read_bytes().startswith(b"\x89PNG")


# ---------------------------------------------------------------- end to end


def test_quick_bench_writes_complete_positive_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    report = tmp_path / "report.md"
    argv = ["bench", "--quick", "--transport", "websockets", "--codec", "msgpack", "--no-pipecat"]
    argv += ["--json", str(out), "--report", str(report)]
    code = main(argv)
    printed = capsys.readouterr().out
    records = json.loads(out.read_text())
    assert code == 0, printed
    assert "websockets/msgpack" in printed and "ratio" in printed
    text = report.read_text()
    assert text.startswith("# proxy-core benchmark results")
    assert "stream_200b_b2b.rate" in text and "cpu_b2b.server" in text
    assert "- Event loop of every server and client process: asyncio (Python " in text
    assert "event loop: asyncio" in printed
    ours = [r for r in records if r["impl"] == "proxy-core"]
    assert {(r["scenario"], r["metric"]) for r in ours} == {(m.scenario, m.name) for m in METRICS}
    # The floor rows: the bare library with a task hop per side, on every timed scenario.
    floors = [r for r in records if r["impl"] == "bare+hop"]
    assert {(r["scenario"], r["metric"]) for r in floors} == {
        (m.scenario, m.name) for m in METRICS if m.scenario not in ("idle_memory", "codec")
    }
    assert len(ours) + len(floors) == len(records)
    assert "bare+hop (websockets, -)" in printed
    for r in records:
        assert REQUIRED | EXTRA <= set(r), r
        assert r["status"] == "ok", r
        assert r["codec"] == ("msgpack" if r["impl"] == "proxy-core" else "-")
        assert r["transport"] == ("in-process" if r["scenario"] == "codec" else "websockets")
        for key in ("proxy", "bare", "ratio"):
            assert isinstance(r[key], float) and r[key] > 0 and math.isfinite(r[key]), (key, r)
        assert r["spread"] == 0.0 and r["repeats"] == 1  # one repeat in quick mode
        assert r["better"] in ("higher", "lower") and r["unit"]
        assert r["machine"]["cores"] and r["machine"]["python"] and r["date"]
        assert r["machine"]["loop"]["name"] == "asyncio"
        assert all(c.startswith("asyncio.") for c in r["machine"]["loop"]["classes"])


def test_a_step_past_its_deadline_fails_instead_of_hanging() -> None:
    counts = Counts(stream_200b=1_000_000, stream_16k=10, rtt=10, idle_sessions=2, deadline=0.05)
    options = BenchOptions(
        transports=["websockets"],
        codecs=["msgpack"],
        scenarios=["stream_200b"],
        repeats=1,
        counts=counts,
        pin=False,
        pipecat=False,
        floor=False,
    )
    start = time.monotonic()
    result = asyncio.run(run_bench(options))
    assert time.monotonic() - start < 60
    assert [r.metric for r in result.records] == ["rate"]
    assert result.records[0].status == "failed"
    assert "TimeoutError" in (result.records[0].error or "")


def test_a_back_to_back_producer_past_its_deadline_fails_instead_of_hanging() -> None:
    """It yields only when a send blocks: the deadlines still end it, in the child or the parent.

    A send that never has to wait (the bare library's, while the socket keeps
    up) gives the child's deadline no point to cancel at, so the parent kills
    the child past the deadline plus its grace; either way the step fails.
    """
    counts = Counts(stream_200b=1_000_000, stream_16k=10, rtt=10, idle_sessions=2, deadline=0.05)
    options = BenchOptions(
        transports=["websockets"],
        codecs=["msgpack"],
        scenarios=["stream_200b_b2b"],
        repeats=1,
        counts=counts,
        pin=False,
        pipecat=False,
        floor=False,
    )
    start = time.monotonic()
    result = asyncio.run(run_bench(options))
    assert time.monotonic() - start < 60
    assert [(r.scenario, r.metric) for r in result.records] == [("stream_200b_b2b", "rate")]
    assert result.records[0].status == "failed"
    error = result.records[0].error or ""
    assert "TimeoutError" in error or "no answer within" in error, error


def test_which_timed_runs_a_row_makes() -> None:
    from proxy_core.bench.groups import timed_runs

    def names(scenarios: list[str]) -> list[str]:
        return [r if isinstance(r, str) else r.scenario for r in timed_runs(scenarios)]

    assert names(list(SCENARIOS)) == [
        "stream_200b",
        "stream_200b_b2b",
        "stream_16k",
        "stream_16k_b2b",
        "rtt",
    ]
    assert names(["cpu_b2b"]) == ["stream_200b_b2b"]  # measured during the 200 B b2b stream
    assert names(["cpu", "rtt"]) == ["stream_200b", "rtt"]
    assert names(["stream_16k_b2b", "idle_memory"]) == ["stream_16k_b2b"]


async def test_a_back_to_back_producer_yields_only_when_a_send_waits() -> None:
    from proxy_core.bench.links import YIELD_EVERY, produce

    ran: list[int] = []  # how many sends had happened each time another task ran
    sent: list[int] = []
    stop = asyncio.Event()

    async def other() -> None:
        while not stop.is_set():
            ran.append(len(sent))
            await asyncio.sleep(0)

    async def send(item: int) -> None:  # never suspends, as a send with room does
        sent.append(item)

    task = asyncio.create_task(other())
    await asyncio.sleep(0)
    ran.clear()
    await produce(send, 1, 3 * YIELD_EVERY, back_to_back=True)
    assert ran == [] and len(sent) == 3 * YIELD_EVERY  # nothing else ran in between
    sent.clear()
    await produce(send, 1, 3 * YIELD_EVERY, back_to_back=False)
    assert ran[:3] == [YIELD_EVERY, 2 * YIELD_EVERY, 3 * YIELD_EVERY]
    room = asyncio.Semaphore(5)

    async def blocking_send(item: int) -> None:  # backpressure: waits until there is room
        await room.acquire()
        sent.append(item)

    async def make_room() -> None:
        for _ in range(10):
            await asyncio.sleep(0)
            room.release()

    sent.clear()
    freer = asyncio.create_task(make_room())
    await asyncio.wait_for(produce(blocking_send, 1, 15, back_to_back=True), 30)
    assert len(sent) == 15
    stop.set()
    await asyncio.wait_for(asyncio.gather(task, freer), 30)


def test_transports_without_a_baseline_are_skipped_with_a_note() -> None:
    options = BenchOptions(
        transports=["memory", "carrier-pigeon"],
        codecs=["msgpack"],
        scenarios=["rtt"],
        repeats=1,
        counts=QUICK_COUNTS,
        pipecat=False,
        floor=False,
    )
    result = asyncio.run(run_bench(options))
    assert result.records == []
    notes = " ".join(result.notes)
    assert "'memory' skipped" in notes and "'carrier-pigeon' skipped" in notes


@pytest.mark.parametrize("transport", ["aiohttp", "grpc"])
def test_other_backends_and_their_bare_baselines_measure(transport: str) -> None:
    from proxy_core.plugins import available_transports

    if transport not in available_transports():
        pytest.skip(
            f"transport {transport!r} is not installed here "
            "(python3 scripts/dev.py test installs every transport of this repository)"
        )
    options = BenchOptions(
        transports=[transport],
        codecs=["msgpack"],
        scenarios=["rtt", "idle_memory"],
        repeats=1,
        counts=QUICK_COUNTS,
        pipecat=False,
        floor=False,
    )
    result = asyncio.run(run_bench(options))
    assert {(r.scenario, r.metric) for r in result.records} == {
        ("rtt", "p50"),
        ("rtt", "p99"),
        ("rtt", "cpu_client"),
        ("rtt", "cpu_server"),
        ("idle_memory", "per_session"),
    }
    for r in result.records:
        assert r.status == "ok", r.error
        assert r.transport == transport and r.proxy and r.bare and r.ratio
        assert r.proxy > 0 and r.bare > 0 and r.ratio > 0


# ---------------------------------------------------------------- bus rows


def _redis_available() -> bool:
    import importlib.util

    if importlib.util.find_spec("proxy_core_redis") is None:
        return False
    from proxy_core_redis import find_redis_server

    return find_redis_server() is not None


def test_bus_options_select_rows() -> None:
    import argparse

    from proxy_core.bench.command import add_arguments, options_from

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    everything = options_from(parser.parse_args([]))
    assert everything.transports is None and everything.selected_buses() == ["local", "redis"]
    only_bus = options_from(parser.parse_args(["--bus", "redis"]))
    assert only_bus.transports == [] and only_bus.selected_buses() == ["redis"]
    assert "codec" not in only_bus.scenarios and "rtt" in only_bus.scenarios
    only_transport = options_from(parser.parse_args(["--transport", "websockets"]))
    assert only_transport.selected_buses() == []
    both = options_from(parser.parse_args(["--transport", "grpc", "--bus", "local"]))
    assert both.transports == ["grpc"] and both.selected_buses() == ["local"]
    assert options_from(parser.parse_args(["--no-bus"])).selected_buses() == []


def test_quick_bus_rows_measure_against_their_baselines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bus.json"
    start = time.monotonic()
    code = main(["bench", "--quick", "--bus", "local", "redis", "--json", str(out)])
    elapsed = time.monotonic() - start
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert elapsed < 60, elapsed
    records = json.loads(out.read_text())
    seen = {(r["transport"], r["scenario"], r["metric"]) for r in records}
    wanted = {("bus:local", "stream_200b", "rate"), ("bus:local", "rtt", "p50")}
    wanted.add(("bus:local", "rtt", "p99"))
    if _redis_available():
        for scenario, metric in [("stream_200b", "rate"), ("rtt", "p50"), ("rtt", "p99")]:
            wanted.add(("bus:redis", scenario, metric))
        for side in ("client", "server", "engine"):
            wanted.add(("bus:redis", "cpu", side))
        assert "bus:redis/msgpack" in printed
    else:
        assert "bus 'redis' rows skipped" in printed
    assert seen == wanted
    for r in records:
        assert REQUIRED | EXTRA <= set(r), r
        assert r["status"] == "ok", r
        for key in ("proxy", "bare", "ratio"):
            assert isinstance(r[key], float) and r[key] > 0 and math.isfinite(r[key]), (key, r)
        assert r["bare_label"] and r["repeats"] == 1


def test_a_run_of_bus_rows_only_rewrites_the_bus_section(tmp_path: Path) -> None:
    from proxy_core.bench.report import BUS_BEGIN, BUS_END, write_markdown

    def bus_result(rate: float) -> BenchResult:
        m = next(m for m in METRICS if m.scenario == "stream_200b")
        record = Record("bus:redis", "msgpack", "stream_200b", "rate", m.unit, m.better)
        _fill(record, [_Pair(rate, 1000.0)])
        return _result([record])

    report = tmp_path / "results.md"
    report.write_text("# results\n\nthe transport rows\n")
    assert write_markdown(bus_result(2000.0), report, None)
    first = report.read_text()
    assert first.startswith("# results\n\nthe transport rows\n")
    assert BUS_BEGIN in first and BUS_END in first and "2.00x" in first and "met" in first
    assert write_markdown(bus_result(500.0), report, None)
    second = report.read_text()
    assert second.count(BUS_BEGIN) == 1 and "0.50x" in second and "2.00x" not in second
    assert "**missed**" in second and second.startswith("# results\n\nthe transport rows\n")
    fresh = tmp_path / "fresh.md"
    assert not write_markdown(bus_result(2000.0), fresh, None)  # no file yet: a whole report
    assert fresh.read_text().startswith("# proxy-core benchmark results")


# ---------------------------------------------------------------- the command line


def _no_run(*args: object, **kwargs: object) -> None:
    raise AssertionError("the run started: a wrong name must fail before any work")


@pytest.mark.parametrize(
    ("argv", "option", "wrong"),
    [
        (["bench", "--transport", "nosuch"], "--transport", "nosuch"),
        (["bench", "--transport", "websockets", "nosuch"], "--transport", "nosuch"),
        (["bench", "--codec", "nosuch"], "--codec", "nosuch"),
        (["bench-load", "--transport", "nosuch"], "--transport", "nosuch"),
        (["bench-load", "--codec", "nosuch"], "--codec", "nosuch"),
        # The load test's server is another process: the in-process transport cannot reach it.
        (["bench-load", "--transport", "memory"], "--transport", "memory"),
    ],
)
def test_unknown_names_fail_at_once_with_the_installed_ones(
    argv: list[str],
    option: str,
    wrong: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from proxy_core.bench import load, orchestrate
    from proxy_core.plugins import available_codecs, available_transports

    monkeypatch.setattr(orchestrate, "run_bench", _no_run)
    monkeypatch.setattr(load, "run_load", _no_run)
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    names = available_transports() if option == "--transport" else available_codecs()
    if argv[0] == "bench-load" and option == "--transport":
        names = [n for n in names if n != "memory"]
    listed = ", ".join(repr(n) for n in names)
    assert err.splitlines() == [
        f"proxy-core {argv[0]}: error: argument {option}: invalid choice: {wrong!r} "
        f"(choose from {listed})"
    ]


def test_a_transport_without_a_baseline_fails_at_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from proxy_core.bench import orchestrate
    from proxy_core.bench.bare_side import BARE_LABELS
    from proxy_core.plugins import available_transports

    monkeypatch.setattr(orchestrate, "run_bench", _no_run)
    assert main(["bench", "--transport", "memory"]) == 2
    out, err = capsys.readouterr()
    measured = ", ".join(sorted(set(BARE_LABELS) & set(available_transports())))
    assert out == ""
    assert err.splitlines() == [
        "proxy-core bench: error: no bare-library baseline for memory in the harness; "
        f"the bench measures: {measured}"
    ]


def test_bench_help_lists_the_installed_names(capsys: pytest.CaptureFixture[str]) -> None:
    from proxy_core.plugins import available_codecs, available_transports

    for command in ("bench", "bench-load"):
        with pytest.raises(SystemExit) as exited:
            main([command, "--help"])
        assert exited.value.code == 0
        out = " ".join(capsys.readouterr().out.split())
        assert ", ".join(available_codecs()) in out
        transports = available_transports()
        if command == "bench-load":
            transports = [t for t in transports if t != "memory"]
            assert "(default websockets)" in out and "(default msgpack)" in out
        assert ", ".join(transports) in out


def test_a_wrong_name_exits_2_with_one_line() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "proxy_core.cli", "bench", "--codec", "nosuch"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "invalid choice: 'nosuch'" in result.stderr and "msgpack" in result.stderr


# ---------------------------------------------------------------- the event loop


def test_loop_uvloop_without_uvloop_fails_at_once_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from proxy_core.bench import orchestrate

    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` now fails, as if absent
    monkeypatch.setattr(orchestrate, "run_bench", _no_run)
    assert main(["bench", "--quick", "--loop", "uvloop"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "proxy-core bench: error: --loop uvloop: uvloop is not installed "
        "(pip install 'proxy-core[uvloop]')"
    ]


def test_loop_is_asyncio_unless_asked(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from proxy_core.bench.command import add_arguments, options_from

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert options_from(parser.parse_args([])).loop == "asyncio"
    with pytest.raises(SystemExit):
        parser.parse_args(["--loop", "trio"])
    assert "invalid choice: 'trio'" in capsys.readouterr().err


def test_quick_rows_on_uvloop_run_both_sides_on_it() -> None:
    pytest.importorskip(
        "uvloop", reason="uvloop is not installed (pip install 'proxy-core[uvloop]')"
    )
    options = BenchOptions(
        transports=["websockets"],
        codecs=["msgpack"],
        scenarios=["stream_200b_b2b", "cpu_b2b", "rtt"],
        repeats=1,
        counts=QUICK_COUNTS,
        pipecat=False,
        floor=False,
        loop="uvloop",
    )
    result = asyncio.run(run_bench(options))
    assert {(r.scenario, r.metric) for r in result.records} == {
        ("stream_200b_b2b", "rate"),
        ("cpu_b2b", "client"),
        ("cpu_b2b", "server"),
        ("rtt", "p50"),
        ("rtt", "p99"),
        ("rtt", "cpu_client"),
        ("rtt", "cpu_server"),
    }
    for r in result.records:
        assert r.status == "ok", r.error
        assert r.proxy and r.bare and r.ratio and r.ratio > 0
    loop = result.machine["loop"]
    assert loop["name"] == "uvloop" and loop["version"] and loop["classes"] == ["uvloop.Loop"]
    assert f"uvloop {loop['version']}; the children ran on uvloop.Loop" in markdown(result, None)


async def test_a_hop_hands_frames_over_in_order_bounded_then_the_error() -> None:
    """The floor rows' hop: every frame in order, at most its bound read ahead, then the end."""
    from proxy_core.bench import bare_side

    total, taken = 1000, 0

    async def receive() -> bytes:
        nonlocal taken
        if taken == total:
            raise bare_side._Closed("peer gone")
        taken += 1
        return taken.to_bytes(4, "big")

    hop = bare_side._Hop(receive)
    try:
        first = await asyncio.wait_for(hop.receive(), 30)
        # Let the receive loop run ahead as far as it may: it stops at the bound.
        for _ in range(3 * bare_side._HOP_BOUND):
            await asyncio.sleep(0)
        assert taken <= bare_side._HOP_BOUND + 1
        got = [first] + [await asyncio.wait_for(hop.receive(), 30) for _ in range(total - 1)]
        assert [int.from_bytes(g, "big") for g in got] == list(range(1, total + 1))
        with pytest.raises(bare_side._Closed, match="peer gone"):
            await asyncio.wait_for(hop.receive(), 30)
    finally:
        await hop.aclose()


def test_the_cold_path_tool_times_every_workload_both_ways() -> None:
    from proxy_core.bench import cold

    results = cold.measure(count=5, rounds=1)
    assert {"proxy-core sans-I/O core", "msgpack pack+unpack"} <= set(results)
    for rounds in results.values():
        assert len(rounds) == 1
        hot, cold_us = rounds[0]
        assert hot > 0 and cold_us > 0 and math.isfinite(hot) and math.isfinite(cold_us)
    assert cold.main(["--count", "3", "--rounds", "1"]) == 0
