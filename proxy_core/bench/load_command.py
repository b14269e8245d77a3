"""The command line and the table of ``proxy-core bench-load`` (the run is in ``load``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..plugins import available_codecs, available_transports
from .load import _MIB, LoadOptions, LoadResult, run_load

__all__ = ["add_arguments", "format_table", "main", "run_command"]


def _mib(value: float | int | None) -> str:
    return "-" if value is None else f"{value / _MIB:.1f} MiB"


def _kib(value: float | None) -> str:
    return "-" if value is None else f"{value / 1024:.1f} KiB"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.2f} ms"


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e6:.1f} µs"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _lag(result: LoadResult, side: str) -> str:
    lags = result.lag.get(side, {})
    return " / ".join(_secs(lags.get(phase)) for phase in ("open", "traffic"))


def format_table(result: LoadResult) -> str:
    """Return the result as a two-column text table."""
    r, o = result, result.options
    srv = r.server
    rows = [
        ("backend", f"{o.transport} / {o.codec}"),
        ("status", r.status),
        ("sessions requested", str(o.sessions)),
        ("sessions opened / failed", f"{r.sessions_opened} / {r.sessions_failed}"),
        ("sessions held at once (server, peak)", str(r.sessions_held_peak)),
        ("sessions connected after traffic", str(r.sessions_connected_after_traffic)),
        ("sessions alive on the server after close", str(r.sessions_left_after_close)),
        ("messages sent / echoed back", f"{r.messages_sent} / {r.messages_received}"),
        ("messages lost", str(r.messages_lost)),
        (
            "messages duplicated / out of order",
            f"{r.messages_duplicated} / {r.messages_out_of_order}",
        ),
        ("server received / echoed", f"{r.server_received} / {r.server_echoed}"),
        ("time to open all sessions", _secs(r.open_seconds)),
        ("time to complete the traffic", _secs(r.traffic_seconds)),
        ("time to close all sessions", _secs(r.close_seconds)),
        ("server RSS before sessions", _mib(srv.get("baseline", {}).get("rss"))),
        ("server RSS, sessions open", _mib(srv.get("open", {}).get("rss"))),
        ("server RSS after traffic", _mib(srv.get("traffic", {}).get("rss"))),
        ("server peak RSS (VmHWM)", _mib(srv.get("traffic", {}).get("hwm"))),
        ("server RSS after close", _mib(srv.get("closed", {}).get("rss"))),
        ("server memory per session (open)", _kib(r.server_bytes_per_session)),
        ("server memory per session (peak)", _kib(r.server_peak_bytes_per_session)),
        ("client memory per session (open)", _kib(r.client_bytes_per_session)),
        ("server CPU per session opened", _ms(r.server_cpu_per_open)),
        ("client CPU per session opened", _ms(r.client_cpu_per_open)),
        (
            "server CPU per message (of it GC)",
            f"{_us(r.server_cpu_per_message)} ({_us(r.server_gc_per_message)})",
        ),
        (
            "client CPU per message (of it GC)",
            f"{_us(r.client_cpu_per_message)} ({_us(r.client_gc_per_message)})",
        ),
        (
            "event loop lag, worst: open / traffic",
            f"server {_lag(r, 'server')}, client {_lag(r, 'client')}",
        ),
        (
            "other processes' CPU: open / traffic",
            " / ".join(
                "-" if r.others.get(p) is None else f"{r.others[p]:.2f} cores"
                for p in ("open", "traffic")
            ),
        ),
        (
            "links re-opened (client / server)",
            f"{r.reconnects.get('client', '-')} / {r.reconnects.get('server', '-')}",
        ),
        ("elapsed", _secs(r.elapsed)),
    ]
    for side, drops in r.drops.items():
        if drops:
            rows.append(
                (f"{side} proxies dropped", ", ".join(f"{k}={v}" for k, v in drops.items()))
            )
    if len(r.rounds) > 1:
        for row in r.rounds:
            rows.append(
                (
                    f"round {row['round']}",
                    f"opened {row.get('opened', '-')}, lost {row.get('lost', '-')}, server RSS "
                    f"open {_mib(row.get('server_rss_open'))}, after close "
                    f"{_mib(row.get('server_rss_closed'))} ({row.get('server_tasks_closed', '-')} "
                    f"tasks, {row.get('server_fds_closed', '-')} fds)",
                )
            )
    for error, count in r.open_errors.items():
        rows.append((f"open error x{count}", error))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines += [f"FAILURE: {failure}" for failure in r.failures]
    lines += [f"note: {note}" for note in r.notes]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench-load`` options to ``parser`` (transports and codecs: the installed ones)."""
    d = LoadOptions()
    # The memory transport cannot reach the server process: not a choice here.
    transports = [t for t in available_transports() if t != "memory"]
    codecs = available_codecs()
    parser.add_argument(
        "--sessions",
        type=int,
        nargs="+",
        default=[d.sessions],
        metavar="N",
        help=f"concurrent sessions to open (default {d.sessions}); several counts sweep them, "
        "one run each, and show the cost per session and per message as they grow",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="sweep 100, 300, 1000, 3000 and 10000 sessions (as --sessions 100 300 ...)",
    )
    parser.add_argument(
        "--messages",
        type=int,
        default=d.messages,
        metavar="M",
        help=f"messages each session sends and gets back (default {d.messages})",
    )
    parser.add_argument(
        "--transport",
        nargs="+",
        default=[d.transport],
        metavar="NAME",
        choices=transports,
        help=f"transport, one of the installed {', '.join(transports)} (default {d.transport}); "
        "a sweep takes several",
    )
    parser.add_argument(
        "--codec",
        default=d.codec,
        metavar="NAME",
        choices=codecs,
        help=f"codec, one of the installed {', '.join(codecs)} (default %(default)s)",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=d.size,
        metavar="BYTES",
        help=f"characters per message (default {d.size})",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=d.concurrency,
        metavar="K",
        help=f"sessions being opened at a time (default {d.concurrency})",
    )
    parser.add_argument(
        "--open-timeout",
        type=float,
        default=d.open_timeout,
        metavar="S",
        help=f"seconds allowed to open one session (default {d.open_timeout:g})",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=None,
        metavar="S",
        help=f"seconds allowed for the whole run (default {d.deadline:g}; in a sweep, per run: "
        "300, more for large counts)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=d.warmup,
        metavar="N",
        help=f"sessions used and closed before the baseline (default {d.warmup})",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=d.rounds,
        metavar="R",
        help="open, use and close all sessions R times; memory after each close shows a leak "
        f"(default {d.rounds})",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the server and the client to separate cores",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="write a cProfile (CPU time) of each child during the first round's open and "
        "traffic phases to DIR",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=None,
        metavar="S",
        help="both proxies' heartbeat interval (timeout 3x it); default the library's (10 s)",
    )
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() in both children once the sessions are open: the cyclic garbage "
        "collector no longer walks the objects of the open sessions",
    )
    parser.add_argument(
        "--tune-gc",
        action="store_true",
        help="proxy_core.tune_gc() in both children at start: the collector's full "
        "collections 10x rarer (see docs/load.md)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="K",
        help="in a sweep, runs per session count (the medians are shown; default 1)",
    )
    parser.add_argument(
        "--chart", metavar="PATH", help="in a sweep, draw the figures against the count (PNG)"
    )
    parser.add_argument(
        "--markdown", metavar="PATH", help="in a sweep, write the table as Markdown"
    )
    parser.add_argument("--json", metavar="PATH", help="write the result as JSON")


def _options(args: argparse.Namespace) -> LoadOptions:
    d = LoadOptions()
    return LoadOptions(
        transport=args.transport[0],
        codec=args.codec,
        sessions=args.sessions[0],
        messages=args.messages,
        size=args.size,
        concurrency=args.concurrency,
        open_timeout=args.open_timeout,
        deadline=args.deadline if args.deadline is not None else d.deadline,
        warmup=args.warmup,
        rounds=args.rounds,
        pin=not args.no_pin,
        profile_dir=args.profile,
        heartbeat_interval=args.heartbeat_interval,
        gc_freeze=args.gc_freeze,
        tune_gc=args.tune_gc,
    )


def run_command(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """Run ``bench-load`` from parsed arguments: 0 if the run passed, 1 if not, 2 on misuse."""
    options = _options(args)
    shown = " ".join(["proxy-core bench-load", *(argv if argv is not None else sys.argv[1:])])
    try:
        options.check()
        if min(args.sessions) < 1 or args.repeat < 1:
            raise ValueError("--sessions and --repeat must be at least 1")
    except ValueError as exc:
        print(f"proxy-core bench-load: error: {exc}", file=sys.stderr)
        return 2
    if args.sweep or len(args.sessions) > 1 or len(args.transport) > 1 or args.repeat > 1:
        return _run_scale(args, options, shown)
    result = asyncio.run(run_load(options))
    result.command = shown
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if result.status == "ok" else 1


def _run_scale(args: argparse.Namespace, options: LoadOptions, shown: str) -> int:
    from . import load_scale

    counts = list(load_scale.DEFAULT_COUNTS) if args.sweep else list(args.sessions)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = asyncio.run(
        load_scale.run_scale(
            options,
            counts=counts,
            transports=list(dict.fromkeys(args.transport)),
            repeat=args.repeat,
            deadline=args.deadline,
            progress=progress,
        )
    )
    result.command = shown
    if args.chart:
        why = load_scale.write_scale_chart(result, args.chart)
        result.notes.append(why or f"chart written: {args.chart}")
    if args.markdown:
        Path(args.markdown).write_text(load_scale.scale_markdown(result))
        result.notes.append(f"table written: {args.markdown}")
    print(load_scale.format_scale(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if result.status == "ok" else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m proxy_core.bench.load [options]``."""
    parser = argparse.ArgumentParser(
        prog="python -m proxy_core.bench.load",
        description="Hold many concurrent sessions on one server process, with traffic on each.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_command(args, argv)
