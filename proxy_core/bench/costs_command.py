"""The command line and the tables of ``proxy-core bench-costs`` (the runs are in ``costs``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from ..plugins import available_codecs, available_transports
from .bare_side import BARE_LABELS
from .calls import KINDS
from .costs import (
    FULL_COUNTS,
    IMPLS,
    MODES,
    QUICK_COUNTS,
    SCENARIOS,
    SIDES,
    CostOptions,
    CostResult,
    run_costs,
)
from .stats import median

__all__ = ["add_arguments", "format_tables", "main", "options_from", "run_command"]


# ---------------------------------------------------------------- output


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(ours: float | None, bare: float | None) -> str:
    if ours is None or bare is None:
        return "-"
    text = f"{_number(ours)} / {_number(bare)}"
    if bare >= 0.05:  # a ratio to next to nothing says nothing
        ratio = ours / bare
        text += f" ({ratio:.0f}x)" if ratio >= 10 else f" ({ratio:.2g}x)"
    return text


#: Columns: title, pass, the counts added up.
_LOOP: Final = (
    ("loop iterations", "count", ("loop_iterations",)),
    ("task steps", "count", ("task_steps",)),
    ("other callbacks", "count", ("other_callbacks",)),
    ("tasks created", "count", ("tasks_created",)),
    ("timers armed", "count", ("timers_armed",)),
    ("timers cancelled", "count", ("timers_cancelled",)),
)
_WIRE: Final = (
    ("transport msgs out", "count", ("frames_out",)),
    ("transport msgs in", "count", ("frames_in",)),
    ("lone ACKs out", "count", ("out_ack",)),
    ("socket send calls (asyncio)", "count", ("sock_send",)),
    ("socket recv calls (asyncio)", "count", ("sock_recv",)),
    ("TCP send+recv syscalls", "strace", ("sys_tcp_send", "sys_tcp_recv")),
    ("syscalls, mmap family aside", "strace", ("sys_no_memory",)),
    ("mmap family", "strace", ("sys_memory",)),
)
_CALLS: Final = (
    ("proxy-core", "calls", ("calls_core",)),
    ("bench harness", "calls", ("calls_harness",)),
    ("library (Python)", "calls", ("calls_library",)),
    ("stdlib (asyncio...)", "calls", ("calls_stdlib",)),
    ("C functions", "calls", ("calls_c",)),
    ("generated", "calls", ("calls_generated",)),
    ("all", "calls", KINDS),
)
_COPIES: Final = (
    ("transport msgs out", "copies", ("frames_out",)),
    ("transport msgs in", "copies", ("frames_in",)),
    ("allocations >= 16 KiB", "copies", ("alloc_16k", "realloc_16k")),
    ("memcpy/memmove >= 16 KiB", "copies", ("memcpy_16k", "memmove_16k")),
)


def _table(
    result: CostResult,
    columns: Sequence[tuple[str, str, tuple[str, ...]]],
    scenarios: Sequence[str],
) -> list[str]:
    table = result.per_message()
    head = ["scenario", "transport", "side", *(title for title, _, _ in columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for scenario in scenarios:
        for transport in result.transports:
            for side in SIDES:
                cells = [scenario, transport, side]
                for _, mode, names in columns:
                    if transport == "grpc" and names[0].startswith("sock_"):
                        cells.append("n/a (C core)")
                        continue
                    values = [table.get((transport, scenario, side, impl, mode)) for impl in IMPLS]
                    ours, bare = (
                        None if v is None else sum(v.get(name, 0.0) for name in names)
                        for v in values
                    )
                    cells.append(_cell(ours, bare))
                lines.append("| " + " | ".join(cells) + " |")
    return lines


def _labels(
    result: CostResult,
    scenario: str,
    top: int = 8,
    mode: str = "count",
    what: str = "what (task: coroutine [name]; call; timer)",
    impls: Sequence[str] = IMPLS,
) -> list[str]:
    """The most frequent labels of ``mode``'s windows per message: callbacks run
    and timers armed (count pass), or proxy-core's functions called (calls pass)."""
    table = result.per_message("labels")
    lines = [f"| transport | side | impl | {what} | per message |"]
    lines.append("| --- | --- | --- | --- | --- |")
    for transport in result.transports:
        for side in SIDES:
            for impl in impls:
                labels = table.get((transport, scenario, side, impl, mode), {})
                ranked = sorted(labels.items(), key=lambda item: (-item[1], item[0]))[:top]
                for label, value in ranked:
                    if value >= 0.05:
                        lines.append(
                            f"| {transport} | {side} | {impl} | `{label}` | {_number(value)} |"
                        )
    return lines


def _syscalls(result: CostResult, scenario: str) -> list[str]:
    """System calls per message by name, ours / bare, for each transport and side."""
    table = result.per_message()
    lines = ["| transport | side | system call | ours / bare |", "| --- | --- | --- | --- |"]
    for transport in result.transports:
        for side in SIDES:
            ours, bare = (
                table.get((transport, scenario, side, impl, "strace"), {}) for impl in IMPLS
            )
            names = {n for n in (*ours, *bare) if n.startswith("call:")}
            ranked = sorted(names, key=lambda n: (-max(ours.get(n, 0.0), bare.get(n, 0.0)), n))
            for name in ranked:
                if max(ours.get(name, 0.0), bare.get(name, 0.0)) >= 0.05:
                    cell = _cell(ours.get(name, 0.0), bare.get(name, 0.0))
                    lines.append(f"| {transport} | {side} | `{name[5:]}` | {cell} |")
    return lines


def _spreads(result: CostResult) -> str:
    """The largest run-to-run spread, (max - min) / median, of a count >= 0.05 per message.

    System calls by name are left out: their totals are in the tables.
    """
    runs: defaultdict[tuple[str, ...], list[float]] = defaultdict(list)
    for s in result.samples:
        for name, value in s["counts"].items():
            if name.startswith("call:"):
                continue
            where = (s["scenario"], s["mode"], s["transport"], s["side"], s["impl"], name)
            runs[where].append(value / s["n"])
    worst: dict[tuple[str, str], float] = {}
    for (scenario, mode, *_), values in runs.items():
        middle = median(values)
        if len(values) > 1 and middle >= 0.05:
            spread = (max(values) - min(values)) / middle
            worst[scenario, mode] = max(worst.get((scenario, mode), 0.0), spread)
    parts = [f"{scenario} {mode} {spread:.0%}" for (scenario, mode), spread in worst.items()]
    return "largest run-to-run spread of a count: " + (", ".join(sorted(parts)) or "-")


def format_tables(result: CostResult) -> str:
    """Return the result as Markdown tables: event loop, wire and kernel, copies, callbacks."""
    counts = ", ".join(
        f"{s} {result.options.counts[s]}" for s in SCENARIOS if s in result.options.counts
    )
    runs = result.options.runs
    scenarios = [s for s in SCENARIOS if s in result.options.counts]
    out = [
        f"Per message (per round trip for rtt), ours / bare (ratio); median of {runs} run(s); "
        f"messages per window: {counts}; codec {result.options.codec}; passes: "
        f"{', '.join(result.modes) or 'none'}.",
    ]
    machine = result.machine
    if machine:
        out.append(
            f"Machine: {machine.get('cpu') or 'CPU unknown'}; commit "
            f"{machine.get('commit') or 'unknown'}; {result.date or 'date unknown'}."
        )
    if "count" in result.modes:
        out += ["", "Event loop (count pass):", "", *_table(result, _LOOP, scenarios)]
    if {"count", "strace"} & set(result.modes):
        out += [
            "",
            "Wire and kernel (transport messages and socket calls: count pass; "
            "syscalls: strace pass):",
            "",
            *_table(result, _WIRE, scenarios),
        ]
    if "calls" in result.modes:
        out += ["", "Functions called, by whose code they are (calls pass):", ""]
        out += _table(result, _CALLS, scenarios)
        if "rtt" in scenarios:
            out += ["", "proxy-core's functions called per round trip (rtt, calls pass):", ""]
            out += _labels(result, "rtt", 60, "calls", "function", ("proxy",))
    if "copies" in result.modes and "stream_16k" in scenarios:
        out += ["", "Buffers of a 16 KiB message (copies pass):", ""]
        out += _table(result, _COPIES, ["stream_16k"])
    if "strace" in result.modes and "rtt" in scenarios:
        out += ["", "System calls per round trip by name (rtt, strace pass, >= 0.05):", ""]
        out += _syscalls(result, "rtt")
    if "count" in result.modes and "rtt" in scenarios:
        out += [
            "",
            "What the loop ran, and timers armed, per round trip (rtt, count pass, >= 0.05 each):",
            "",
        ]
        out += _labels(result, "rtt")
    out += ["", _spreads(result)]
    out += [f"FAILURE: {failure}" for failure in result.failures]
    out += [f"note: {note}" for note in result.notes]
    return "\n".join(out)


# ---------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench-costs`` options to ``parser``."""
    transports = [t for t in available_transports() if t in BARE_LABELS]
    codecs = available_codecs()
    parser.add_argument(
        "--transport",
        nargs="+",
        metavar="NAME",
        choices=transports,
        help=f"transports, of {', '.join(transports)} (default: all of them)",
    )
    parser.add_argument(
        "--codec",
        default="msgpack" if "msgpack" in codecs else codecs[0],
        choices=codecs,
        metavar="NAME",
        help=f"the codec, one of {', '.join(codecs)} (default: %(default)s)",
    )
    parser.add_argument(
        "--scenario", nargs="+", choices=SCENARIOS, metavar="NAME", help="scenarios (default: all)"
    )
    parser.add_argument("--runs", type=int, metavar="N", help="runs; medians are reported (3)")
    parser.add_argument(
        "--quick", action="store_true", help=f"counts {QUICK_COUNTS}, one run: a smoke test"
    )
    parser.add_argument(
        "--messages",
        type=int,
        metavar="N",
        help=f"messages per window in every scenario (default {FULL_COUNTS})",
    )
    parser.add_argument(
        "--passes",
        nargs="+",
        choices=MODES,
        metavar="NAME",
        help=f"passes, of {', '.join(MODES)} (default: all; strace and copies only where "
        "strace and a C compiler are on PATH)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.3,
        metavar="SECONDS",
        help="how long a window stays open after the last reply, for the delayed ACKs "
        "(default %(default)s)",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--json", metavar="PATH", help="write every window's counts as JSON")


def options_from(args: argparse.Namespace) -> CostOptions:
    """Build :class:`CostOptions` from parsed arguments."""
    counts = dict(QUICK_COUNTS if args.quick else FULL_COUNTS)
    if args.messages is not None:
        counts = {s: args.messages for s in counts}
    if args.scenario:
        counts = {s: n for s, n in counts.items() if s in args.scenario}
    modes = tuple(m for m in MODES if args.passes is None or m in args.passes)
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    return CostOptions(
        transports=args.transport,
        codec=args.codec,
        counts=counts,
        runs=runs,
        modes=modes,
        pin=not args.no_pin,
        settle=args.settle,
    )


def run_command(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """Run ``bench-costs``; print the tables; return 0 if every window was counted, else 1."""
    try:
        options = options_from(args)
        options.check()
    except ValueError as exc:
        print(f"proxy-core bench-costs: error: {exc}", file=sys.stderr)
        return 2
    result = asyncio.run(run_costs(options, lambda line: print(line, file=sys.stderr)))
    shown = list(argv if argv is not None else sys.argv[1:])
    result.command = " ".join(["proxy-core bench-costs", *shown])
    print(format_tables(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=1) + "\n")
        print(f"wrote {args.json}")
    return 1 if result.failures or not result.samples else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m proxy_core.bench.costs [options]``."""
    parser = argparse.ArgumentParser(
        prog="python -m proxy_core.bench.costs",
        description="Count wake-ups, frames, system calls and copies per message, "
        "against the bare library.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_command(args, argv)
