"""``proxy-core bench-costs``: its counters, its parsers, and short runs end to end.

Nothing here asserts a speed, or an exact count where timing decides it (how
many messages share a BATCH): only that the tool counts, and that the counts
are plausible (at least a frame each way per round trip, system calls > 0).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from proxy_core.bench.calls import CallCounter, kind_of
from proxy_core.bench.costs import (
    MARK,
    CostOptions,
    CostResult,
    parse_strace,
)
from proxy_core.bench.costs_command import format_tables
from proxy_core.bench.costs_side import CountingLoop, classify_frames
from proxy_core.cli import main
from proxy_core.messages import AudioRawFrame, BusFrameMessage
from proxy_core.plugins import resolve_codec
from proxy_core.protocol import Ack, Msg, Ping

# ---------------------------------------------------------------- pure parts


def test_the_counting_loop_counts_steps_tasks_and_timers() -> None:
    async def work() -> None:
        async with asyncio.timeout(10):  # a timer armed, then cancelled
            await asyncio.sleep(0)  # a task step
        await asyncio.get_running_loop().create_task(asyncio.sleep(0))  # a task

    with asyncio.Runner(loop_factory=CountingLoop) as runner:
        loop = runner.get_loop()
        assert isinstance(loop, CountingLoop)
        before = dict(loop.counts)
        runner.run(work())
        counts = {k: v - before.get(k, 0) for k, v in loop.counts.items()}
        labels = dict(loop.labels)
    assert counts["timers_armed"] >= 1 and counts["timers_cancelled"] >= 1
    assert counts["tasks_created"] >= 2  # the runner's main task and ours
    assert counts["task_steps"] >= 4 and counts["loop_iterations"] >= 2
    assert any(label.startswith("task ") and "<locals>.work" in label for label in labels)
    assert "timer Timeout._on_timeout" in labels


def test_frames_are_classified_by_kind_inside_batches_too() -> None:
    codec = resolve_codec("msgpack")
    message = BusFrameMessage("acme", "assistant", AudioRawFrame(b"x" * 300, 16000))
    msg, ack, ping = codec.encode(Msg(1, message)), codec.encode(Ack(1)), codec.encode(Ping(7))
    frames = [("out", msg), ("in", ack), ("out", codec.encode_batch([msg, ack])), ("in", ping)]
    frames.append(("in", b"\xc1 not a frame"))
    counts = classify_frames(frames, codec)
    assert counts == {
        "out_msg": 1,
        "in_ack": 1,
        "out_batch": 1,
        "out_batched_msg": 1,
        "out_batched_ack": 1,
        "in_ping": 1,
        "in_other": 1,
    }
    # The bare library: a payload is longer than a control command.
    assert classify_frames([("out", b"x" * 200), ("in", b'{"ok": true}')], None) == {
        "out_msg": 1,
        "in_other": 1,
    }


def test_strace_windows_count_calls_by_kind(tmp_path: Path) -> None:
    tcp = "7<TCP:[127.0.0.1:1->127.0.0.1:2]>"
    trace = tmp_path / "side.strace"
    trace.write_text(
        "\n".join(
            [
                '10  read(3<pipe:[1]>, ""..., 10) = 5',  # before the window
                f'10  newfstatat(AT_FDCWD</>, "{MARK}/rtt-begin", 0x1, 0) = -1 ENOENT',
                f'10  sendto({tcp}, ""..., 300, 0, NULL, 0) = 300',
                "10  epoll_wait(3<anon_inode:[eventpoll]>, [], 3, 0) = 0",
                f"11  recvfrom({tcp}, <unfinished ...>",
                "10  getpid()                          = 10",
                '11  <... recvfrom resumed>""..., 262144, 0, NULL, NULL) = 300',
                "11  futex(0x1, FUTEX_WAKE_PRIVATE, 1) = 0",
                "10  munmap(0x7f57bcb02000, 4096)      = 0",
                '11  write(9<anon_inode:[eventfd]>, ""..., 8) = 8',
                "11  +++ exited with 0 +++",
                f'10  newfstatat(AT_FDCWD</>, "{MARK}/rtt-end", 0x1, 0) = -1 ENOENT',
                f'10  sendto({tcp}, ""..., 300, 0, NULL, 0) = 300',  # after it
            ]
        )
    )
    counts = parse_strace(trace)["rtt"]
    assert counts["sys_total"] == 7 and counts["threads"] == 2
    assert counts["sys_tcp_send"] == 1 and counts["sys_tcp_recv"] == 1
    assert counts["sys_poll"] == 1 and counts["sys_futex"] == 1 and counts["sys_other_io"] == 1
    assert counts["sys_memory"] == 1 and counts["sys_no_memory"] == 6
    assert counts["call:getpid"] == 1


def test_calls_are_sorted_by_whose_code_runs(tmp_path: Path) -> None:
    import asyncio as stdlib_module

    import websockets

    import proxy_core.bench.worker as harness_module
    import proxy_core.session as core_module
    import proxy_core_websockets.connection as backend_module

    assert kind_of(core_module.__file__ or "") == "calls_core"
    assert kind_of(backend_module.__file__ or "") == "calls_core"
    assert kind_of(harness_module.__file__ or "") == "calls_harness"
    assert kind_of(websockets.__file__ or "") == "calls_library"
    assert kind_of(stdlib_module.__file__ or "") == "calls_stdlib"
    assert kind_of("<string>") == "calls_generated"
    # The innermost package folder decides, wherever the checkout lives: a
    # checkout named like the package is a folder, not the package.
    inside = "/home/me/proxy_core/.venv/lib/python3.11/site-packages/websockets/frames.py"
    assert kind_of(inside) == "calls_library"
    checkout = tmp_path / "proxy_core_dev" / "tests"
    checkout.mkdir(parents=True)
    assert kind_of(str(checkout / "test_x.py")) == "calls_library"
    package = tmp_path / "proxy_core_dev" / "proxy_core_x"
    package.mkdir()
    (package / "__init__.py").write_text("")
    assert kind_of(str(package / "connection.py")) == "calls_core"

    def mine(n: int) -> int:
        return n + 1

    counter = CallCounter()
    counter.start()
    for n in range(7):
        mine(n)
    len("abc")
    calls, functions = counter.stop()
    # This test module is none of proxy-core's, so it counts as a library's code.
    assert calls["calls_library"] >= 7 and calls["calls_c"] >= 1, calls
    assert functions == {}
    assert counter.stop() == ({}, {})  # stopped: nothing more to read


def test_tables_show_ours_over_bare_per_message() -> None:
    result = CostResult(CostOptions(transports=["websockets"], counts={"rtt": 10}, runs=3))
    result.transports, result.modes = ["websockets"], ["count"]
    for run, steps in enumerate((30, 40, 50)):  # per message: 3, 4, 5 -> median 4
        for impl, factor in (("proxy", 1), ("bare", 4)):
            for side in ("client", "server"):
                result.samples.append(
                    {
                        "run": run + 1,
                        "transport": "websockets",
                        "impl": impl,
                        "mode": "count",
                        "scenario": "rtt",
                        "side": side,
                        "n": 10,
                        "counts": {"task_steps": steps // factor, "frames_out": 10},
                        "labels": {},
                    }
                )
    per = result.per_message()[("websockets", "rtt", "client", "proxy", "count")]
    assert per["task_steps"] == 4.0
    text = format_tables(result)
    assert "| rtt | websockets | client | 0.00 / 0.00 | 4.00 / 1.00 (4x) |" in text
    assert "median of 3 run(s)" in text


# ---------------------------------------------------------------- end to end


def _run(tmp_path: Path, *args: str) -> tuple[int, str, dict[str, Any]]:
    out = tmp_path / "costs.json"
    argv = ["bench-costs", "--transport", "websockets", "--runs", "1", "--settle", "0.1"]
    argv += ["--json", str(out)]
    code = main([*argv, *args])
    return code, out.name, json.loads(out.read_text())


def _windows(data: dict[str, Any], mode: str) -> dict[tuple[str, str, str], dict[str, float]]:
    """Per message counts of each (scenario, side, impl) window of one pass."""
    return {
        (s["scenario"], s["side"], s["impl"]): {k: v / s["n"] for k, v in s["counts"].items()}
        for s in data["samples"]
        if s["mode"] == mode
    }


def test_a_short_count_pass_gives_plausible_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--scenario", "rtt", "stream_16k", "--messages", "20", "--passes", "count"]
    code, _, data = _run(tmp_path, *args)
    printed = capsys.readouterr().out
    assert code == 0, (printed, data["failures"])
    assert "Event loop (count pass)" in printed and "| rtt | websockets | client |" in printed
    windows = _windows(data, "count")
    assert len(windows) == 2 * 2 * 2  # scenarios x sides x implementations
    for side in ("client", "server"):
        for impl in ("proxy", "bare"):
            rtt = windows[("rtt", side, impl)]
            # A round trip is at least one transport message each way, on both sides.
            assert rtt["frames_out"] >= 1 and rtt["frames_in"] >= 1, (side, impl, rtt)
            assert rtt["sock_send"] >= 1 and rtt["sock_recv"] >= 1, (side, impl, rtt)
            assert rtt["loop_iterations"] >= 1 and rtt["task_steps"] >= 1, (side, impl, rtt)
            assert rtt.get("out_msg", 0) + rtt.get("out_batched_msg", 0) >= 1
    # One-way 16 KiB messages: every one arrives, alone or in a BATCH.
    server = windows[("stream_16k", "server", "proxy")]
    assert server.get("in_msg", 0) + server.get("in_batched_msg", 0) >= 1
    assert windows[("stream_16k", "server", "bare")]["frames_in"] >= 1


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not on PATH")
def test_a_short_strace_pass_counts_system_calls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--scenario", "rtt", "--messages", "20", "--passes", "strace"]
    code, _, data = _run(tmp_path, *args)
    capsys.readouterr()
    if any("strace cannot trace here" in note for note in data["notes"]):
        pytest.skip("strace cannot trace processes on this machine (ptrace is not allowed)")
    assert code == 0, data["failures"]
    windows = _windows(data, "strace")
    for side in ("client", "server"):
        for impl in ("proxy", "bare"):
            counts = windows[("rtt", side, impl)]
            assert counts["sys_tcp_send"] >= 1 and counts["sys_tcp_recv"] >= 1, (side, impl)
            assert counts["sys_total"] > counts["sys_tcp_send"] + counts["sys_tcp_recv"]


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) for the copy counter")
def test_a_short_copies_pass_sees_the_payload_copied(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--scenario", "stream_16k", "--messages", "20", "--passes", "copies"]
    code, _, data = _run(tmp_path, *args)
    capsys.readouterr()
    assert code == 0, data["failures"]
    windows = _windows(data, "copies")
    # Encoding the message copies its 16 KiB payload at least once on the way out.
    client = windows[("stream_16k", "client", "proxy")]
    assert client.get("memcpy_16k", 0) + client.get("memmove_16k", 0) >= 1, client
    assert windows[("stream_16k", "server", "bare")].get("alloc_16k", 0) > 0


def test_a_short_calls_pass_counts_proxy_cores_functions_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--scenario", "rtt", "--messages", "20", "--passes", "calls"]
    code, _, data = _run(tmp_path, *args)
    printed = capsys.readouterr().out
    assert code == 0, data["failures"]
    assert "Functions called, by whose code they are (calls pass)" in printed
    windows = _windows(data, "calls")
    for side in ("client", "server"):
        proxy, bare = windows[("rtt", side, "proxy")], windows[("rtt", side, "bare")]
        # Both run the library and the event loop; only the proxy runs proxy-core.
        for counts in (proxy, bare):
            assert counts["calls_library"] >= 1 and counts["calls_stdlib"] >= 1, (side, counts)
            assert counts["calls_c"] >= 1, (side, counts)
        assert proxy["calls_core"] >= 10 and bare.get("calls_core", 0) == 0, (side, proxy, bare)
    sample = next(s for s in data["samples"] if s["mode"] == "calls" and s["impl"] == "proxy")
    # proxy-core's functions by name: the session decodes or encodes on each side.
    assert any(name.startswith("proxy_core/session.py:") for name in sample["labels"])
    assert "proxy-core's functions called per round trip" in printed


def test_bench_costs_refuses_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench-costs", "--runs", "0"]) == 2
    assert "--runs must be at least 1" in capsys.readouterr().err
