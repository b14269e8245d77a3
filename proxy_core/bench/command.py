"""``proxy-core bench``: its arguments, and running it from the command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigurationError
from ..loops import LOOPS, loop_factory
from ..plugins import available_codecs, available_transports
from .bare_side import BARE_LABELS
from .spec import BUS_SCENARIOS, BUSES, FULL_COUNTS, QUICK_COUNTS, SCENARIOS, BenchOptions

__all__ = ["DEFAULT_REPORT", "add_arguments", "options_from", "run_command"]

#: Where a full run writes its Markdown report unless told otherwise.
DEFAULT_REPORT = "docs/benchmarks-results.md"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench`` options to ``parser``.

    ``--transport`` and ``--codec`` accept the installed names only (as found
    now), so a misspelt name fails before any work, with the list.
    """
    transports, codecs = available_transports(), available_codecs()
    parser.add_argument(
        "--quick",
        action="store_true",
        help="reduced counts and one repeat: a smoke test that finishes in under a minute",
    )
    parser.add_argument("--json", metavar="PATH", help="write the records as a JSON list")
    parser.add_argument(
        "--report",
        metavar="PATH.md",
        help=f"write a Markdown report (default for full runs: {DEFAULT_REPORT})",
    )
    parser.add_argument("--no-report", action="store_true", help="write no Markdown report")
    parser.add_argument(
        "--chart", metavar="PATH.png", help="write the chart (default: beside the report)"
    )
    parser.add_argument(
        "--transport",
        nargs="+",
        metavar="NAME",
        choices=transports,
        help=f"transports, of the installed {', '.join(transports)} "
        "(default: every installed one with a bare-library baseline)",
    )
    parser.add_argument(
        "--codec",
        nargs="+",
        metavar="NAME",
        choices=codecs,
        help=f"codecs, of the installed {', '.join(codecs)} (default: all of them)",
    )
    parser.add_argument(
        "--bus",
        nargs="+",
        metavar="NAME",
        choices=BUSES,
        help="bus rows to run: worker to worker on the bus against its bare baseline "
        f"({', '.join(BUSES)}); alone, only these rows run (default: every available bus, "
        "unless --transport is given)",
    )
    parser.add_argument("--no-bus", action="store_true", help="run no bus rows")
    parser.add_argument(
        "--scenario",
        nargs="+",
        metavar="NAME",
        choices=SCENARIOS,
        help=f"scenarios (default: all of {', '.join(SCENARIOS)})",
    )
    parser.add_argument("--repeats", type=int, metavar="N", help="repeats (default 3; quick: 1)")
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default="asyncio",
        help="the event loop of every child process, server and client, proxy and bare "
        "(default: %(default)s; uvloop needs pip install 'proxy-core[uvloop]')",
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin server and client to separate cores"
    )
    parser.add_argument(
        "--no-pipecat", action="store_true", help="skip the pipecat-ai peer row even if installed"
    )
    parser.add_argument(
        "--pipecat-python",
        metavar="PATH",
        help="run the pipecat-ai peer row with this interpreter (a venv with pipecat-ai)",
    )
    parser.add_argument(
        "--no-floor",
        action="store_true",
        help="skip the bare+hop rows (the bare library with a task hop per side: "
        "the floor of the proxy's round trip)",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="also run stream_200b (and rtt, when selected) once more under cProfile per "
        "proxy row, writing the top 30 functions by tottime of each side to DIR",
    )


def options_from(args: argparse.Namespace) -> BenchOptions:
    """Build :class:`BenchOptions` from parsed arguments.

    Raises:
        ValueError: ``--repeats`` is below 1, ``--bus`` goes with ``--no-bus``,
            no transport of ``--transport`` has a bare baseline to measure against,
            or ``--loop uvloop`` without uvloop installed.
    """
    loop = getattr(args, "loop", "asyncio")
    try:
        loop_factory(loop)  # uvloop missing: fail now, not in every child
    except ConfigurationError as exc:
        raise ValueError(f"--loop {loop}: {exc}") from None
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    if repeats < 1:
        raise ValueError("--repeats must be at least 1")
    bus = getattr(args, "bus", None)
    no_bus = getattr(args, "no_bus", False)
    if bus and no_bus:
        raise ValueError("--bus and --no-bus exclude each other")
    transports = args.transport
    if transports and not set(transports) & set(BARE_LABELS):
        measured = ", ".join(sorted(set(BARE_LABELS) & set(available_transports())))
        raise ValueError(
            f"no bare-library baseline for {', '.join(transports)} in the harness; "
            f"the bench measures: {measured or 'none installed'}"
        )
    scenarios = list(args.scenario or SCENARIOS)
    if bus and transports is None and args.codec is None:
        # --bus alone selects the bus rows: no transport rows, no codec micro-benchmark.
        transports = []
        if args.scenario is None:
            scenarios = list(BUS_SCENARIOS)
    return BenchOptions(
        transports=transports,
        codecs=args.codec,
        scenarios=scenarios,
        repeats=repeats,
        counts=QUICK_COUNTS if args.quick else FULL_COUNTS,
        pin=not args.no_pin,
        pipecat=not args.no_pipecat,
        pipecat_python=args.pipecat_python,
        profile_dir=args.profile,
        quick=args.quick,
        buses=[] if no_bus else bus,
        loop=loop,
        floor=not getattr(args, "no_floor", False),
    )


def run_command(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """Run ``proxy-core bench``; return 0 when every figure was measured, 1 otherwise."""
    from .orchestrate import run_bench
    from .report import (
        ProgressBar,
        format_table,
        loop_line,
        only_bus_rows,
        write_chart,
        write_json,
        write_markdown,
    )

    try:
        options = options_from(args)
    except ValueError as exc:
        print(f"proxy-core bench: error: {exc}", file=sys.stderr)
        return 2
    bar = ProgressBar()
    result = asyncio.run(run_bench(options, progress=bar, total=bar.set_total))
    bar.finish()
    shown = list(argv if argv is not None else sys.argv[2:])
    result.command = " ".join(["proxy-core bench", *shown])
    print(format_table(result.records))
    print(f"event loop: {loop_line(result.machine)}")
    for note in result.notes:
        print(f"note: {note}")
    if args.json:
        write_json(result.records, args.json)
        print(f"wrote {args.json}")
    report = args.report or (None if args.quick or args.no_report else DEFAULT_REPORT)
    if args.no_report:
        report = None
    # A run of bus rows only merges its section into the report and leaves its chart alone.
    chart = args.chart
    if chart is None and report and not only_bus_rows(result):
        chart = str(Path(report).with_suffix(".png"))
    chart_ref: str | None = None
    if chart:
        why = write_chart(result.records, chart)
        if why:
            result.notes.append(why)
            print(f"note: {why}")
        else:
            print(f"wrote {chart}")
            chart_ref = _relative(chart, report)
    if report:
        merged = write_markdown(result, report, chart_ref)
        print(f"{'updated the bus section of' if merged else 'wrote'} {report}")
    failed = [r for r in result.records if r.status == "failed"]
    return 1 if failed or not result.records else 0


def _relative(chart: str, report: str | None) -> str:
    if report is None:
        return chart
    chart_path, base = Path(chart).resolve(), Path(report).resolve().parent
    try:
        return str(chart_path.relative_to(base))
    except ValueError:
        return str(chart_path)
