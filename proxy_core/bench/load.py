"""``proxy-core bench-load``: many concurrent sessions on one server process, with traffic on each.

The parent starts a server process (:func:`~proxy_core.serve_proxy` on
127.0.0.1, an echo worker per session) and a client process, both
``python -m proxy_core.bench.load_side``. The client opens ``--sessions``
sessions, a bounded number at a time, each a ProxyClient in its own runner;
then every session sends ``--messages`` numbered messages and checks that
exactly those come back, once each, in order. The run reads the server's
memory before, with all sessions open, after the traffic and after closing,
and reports sessions held, messages lost / duplicated / out of order and
memory per session. Every phase runs under one global deadline
(``--deadline``): past it, the run reports a failure instead of hanging.

Also ``python -m proxy_core.bench.load``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..plugins import available_codecs, available_transports
from .child import Child, ChildDied, StepFailed
from .orchestrate import machine_info

__all__ = ["LoadOptions", "LoadResult", "add_arguments", "format_table", "main", "run_load"]

_GRACE = 10.0  # seconds the parent waits past a child's own deadline
_MIB = 1024 * 1024


@dataclass
class LoadOptions:
    """What to run: the backend, how many sessions, how much traffic, the time allowed."""

    transport: str = "websockets"
    codec: str = "msgpack"
    sessions: int = 1000
    messages: int = 100
    size: int = 64
    concurrency: int = 50
    open_timeout: float = 30.0
    deadline: float = 300.0
    warmup: int = 2
    rounds: int = 1
    pin: bool = True

    def check(self) -> None:
        """Raise ``ValueError`` for an option out of range."""
        for name in ("sessions", "messages", "concurrency", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1")
        if self.size < 8 or self.warmup < 0:
            raise ValueError("--size must be at least 8 and --warmup at least 0")
        if self.open_timeout <= 0 or self.deadline <= 0:
            raise ValueError("--open-timeout and --deadline must be positive")


@dataclass
class LoadResult:
    """The outcome of a run: ``status`` is ``ok`` if every session held and nothing was lost."""

    options: LoadOptions
    status: str = "failed"
    failures: list[str] = field(default_factory=list)
    sessions_opened: int = 0
    sessions_failed: int = 0
    open_errors: dict[str, int] = field(default_factory=dict)
    sessions_held_peak: int = 0
    sessions_connected_after_traffic: int = 0
    sessions_closed: int = 0
    sessions_left_after_close: int | None = None
    messages_sent: int = 0
    messages_received: int = 0
    messages_lost: int = 0
    messages_duplicated: int = 0
    messages_out_of_order: int = 0
    server_received: int = 0
    server_echoed: int = 0
    drops: dict[str, dict[str, int]] = field(default_factory=dict)
    open_seconds: float | None = None
    traffic_seconds: float | None = None
    close_seconds: float | None = None
    server: dict[str, dict[str, int]] = field(default_factory=dict)
    client: dict[str, dict[str, int]] = field(default_factory=dict)
    server_bytes_per_session: float | None = None
    server_peak_bytes_per_session: float | None = None
    client_bytes_per_session: float | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    nofile: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    date: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    command: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the result as plain JSON values."""
        return asdict(self)


#: The module the load test's children run.
_SIDE = "proxy_core.bench.load_side"


class _Run:
    def __init__(self, options: LoadOptions, result: LoadResult) -> None:
        self.options = options
        self.result = result
        self.end = time.monotonic() + options.deadline
        self.server: Child | None = None
        self.client: Child | None = None
        self.url = ""

    def left(self) -> float:
        """The seconds left before the global deadline."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise StepFailed(f"the global deadline of {self.options.deadline:.0f} s passed")
        return left

    async def ask(self, child: Child | None, cmd: str, **args: Any) -> dict[str, Any]:
        assert child is not None
        left = self.left()
        return await child.ask({"cmd": cmd, "deadline": left, **args}, left + _GRACE)

    async def start(self, log_dir: Path) -> None:
        opts = self.options
        cores = _cores() if opts.pin else None
        spec: dict[str, Any] = asdict(opts)
        self.server = await Child.spawn(
            "server", "server", {**spec, "core": cores and cores[0]}, log_dir, module=_SIDE
        )
        ready = await self.server.read(min(self.left(), 60))
        self.url = ready["url"]
        self.client = await Child.spawn(
            "client", "client", {**spec, "core": cores and cores[1]}, log_dir, module=_SIDE
        )
        client_ready = await self.client.read(min(self.left(), 60))
        self.result.nofile = {"server": ready["nofile"], "client": client_ready["nofile"]}
        if cores is None:
            self.result.notes.append("processes not pinned to cores")
        else:
            self.result.notes.append(f"server pinned to core {cores[0]}, client to core {cores[1]}")
        need = opts.sessions + 64
        for role, limits in self.result.nofile.items():
            if limits["soft"] < need:
                self.result.notes.append(
                    f"the {role}'s open-file limit ({limits['soft']}, hard {limits['hard']}) is "
                    f"below the ~{need} descriptors {opts.sessions} sessions need"
                )

    async def warm_up(self) -> None:
        """Open, use and close a few sessions, so first-use costs stay out of the baseline."""
        if self.options.warmup:
            reply = await self.ask(self.client, "open", url=self.url, count=self.options.warmup)
            if reply["failed"]:
                raise StepFailed(f"warm-up sessions failed to open: {reply['errors']}")
            await self.ask(self.client, "traffic")
            await self.ask(self.client, "close")
        await self.ask(self.server, "wait_live", at_most=0, settle=True)

    async def measure(self) -> None:
        r = self.result
        base = await self.ask(self.server, "mem")
        client_base = await self.ask(self.client, "mem")
        r.server["baseline"], r.client["baseline"] = _mem(base), _mem(client_base)
        for number in range(self.options.rounds):
            await self.round(number, base, client_base)

    async def round(self, number: int, base: dict[str, Any], client_base: dict[str, Any]) -> None:
        """Open every session, run the traffic, close them; fold the figures into the result."""
        r, first = self.result, number == 0
        opened = await self.ask(self.client, "open", url=self.url, count=self.options.sessions)
        held = await self.ask(self.server, "mem")
        traffic = await self.ask(self.client, "traffic")
        after = await self.ask(self.server, "mem")
        closed, gone = await self.close()
        final = closed["final"]
        live = held["live"]
        summary = {
            "round": number + 1,
            "opened": opened["opened"],
            "held": live,
            "connected_after_traffic": traffic["connected"],
            "sent": traffic["sent"],
            "received": traffic["received"],
            "lost": traffic["lost"],
            "duplicated": final["duplicated"],
            "out_of_order": final["out_of_order"],
            "incomplete": traffic["incomplete"],
            "open_seconds": opened["seconds"],
            "traffic_seconds": traffic["seconds"],
            "close_seconds": closed["seconds"],
            "server_rss_open": held["rss"],
            "server_rss_after_traffic": after["rss"],
            "server_rss_closed": gone["rss"],
            "server_tasks_closed": gone["tasks"],
            "server_fds_closed": gone["fds"],
            "server_left_after_close": gone["live"],
        }
        r.rounds.append(summary)
        r.sessions_opened = opened["opened"] if first else min(r.sessions_opened, opened["opened"])
        r.sessions_failed += opened["failed"]
        for error, count in opened["errors"].items():
            r.open_errors[error] = r.open_errors.get(error, 0) + count
        r.sessions_held_peak = after["peak_live"]
        r.sessions_closed += closed["closed"]
        r.sessions_left_after_close = gone["live"]
        r.messages_sent += traffic["sent"]
        r.messages_received += traffic["received"]
        r.messages_lost += traffic["lost"]
        r.messages_duplicated += final["duplicated"]
        r.messages_out_of_order += final["out_of_order"]
        r.server_received = after["received"] - base["received"]
        r.server_echoed = after["echoed"] - base["echoed"]
        r.drops = {"client": traffic["drops"], "server": after["drops"]}
        if traffic["incomplete"]:
            r.failures.append(
                f"round {number + 1}: {traffic['incomplete']} sessions did not get all "
                "their echoes in time"
            )
        if not first:
            return
        r.sessions_connected_after_traffic = traffic["connected"]
        r.open_seconds, r.traffic_seconds = opened["seconds"], traffic["seconds"]
        r.close_seconds = closed["seconds"]
        r.server.update(open=_mem(held), traffic=_mem(after), closed=_mem(gone))
        r.client.update(open=_mem(opened), traffic=_mem(traffic), closed=_mem(closed))
        if live:
            r.server_bytes_per_session = (held["rss"] - base["rss"]) / live
            r.server_peak_bytes_per_session = (after["hwm"] - base["rss"]) / live
            r.client_bytes_per_session = (opened["rss"] - client_base["rss"]) / live

    async def close(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Close the client's sessions; wait until the server has none. Return both replies."""
        closed = await self.ask(self.client, "close")
        try:
            gone = await self.ask(self.server, "wait_live", at_most=0, settle=True)
        except (ChildDied, StepFailed) as exc:
            gone = await self.ask(self.server, "mem")
            self.result.failures.append(
                f"the server did not wind its sessions down after they closed ({gone['live']} "
                f"alive, {gone['tasks']} tasks): {exc}"
            )
        return closed, gone

    async def stop(self) -> None:
        for child in (self.client, self.server):
            if child is not None:
                await child.stop(15)


def _mem(reply: dict[str, Any]) -> dict[str, int]:
    keys = ("rss", "hwm", "fds", "tasks", "live", "runners")
    return {k: int(reply[k]) for k in keys if k in reply}


def _cores() -> tuple[int, int] | None:
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


def _judge(result: LoadResult) -> None:
    opts, r = result.options, result
    if r.sessions_opened < opts.sessions:
        r.failures.append(f"only {r.sessions_opened} of {opts.sessions} sessions opened")
    if r.sessions_held_peak < opts.sessions:
        r.failures.append(f"the server held at most {r.sessions_held_peak} sessions at once")
    expected = sum(int(row["opened"]) for row in r.rounds) * opts.messages
    if r.messages_sent != expected:
        r.failures.append(f"{r.messages_sent} of {expected} messages were sent")
    for what, count in (
        ("lost", r.messages_lost),
        ("duplicated", r.messages_duplicated),
        ("out of order", r.messages_out_of_order),
    ):
        if count:
            r.failures.append(f"{count} messages {what}")
    r.status = "failed" if r.failures else "ok"


async def run_load(options: LoadOptions) -> LoadResult:
    """Run the load test described by ``options``; never raises for a failed run, reports it."""
    options.check()
    result = LoadResult(options)
    result.date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    result.machine = machine_info()
    started = time.monotonic()
    run = _Run(options, result)
    log_dir = Path(tempfile.mkdtemp(prefix="proxy-core-load-"))
    try:
        await run.start(log_dir)
        await run.warm_up()
        await run.measure()
    except (ChildDied, StepFailed) as exc:
        result.failures.append(str(exc))
    except (OSError, KeyError) as exc:
        result.failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        await run.stop()
    _judge(result)
    result.elapsed = time.monotonic() - started
    result.notes.append(f"child logs: {log_dir}")
    return result


# ---------------------------------------------------------------- output


def _mib(value: float | int | None) -> str:
    return "-" if value is None else f"{value / _MIB:.1f} MiB"


def _kib(value: float | None) -> str:
    return "-" if value is None else f"{value / 1024:.1f} KiB"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


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
                    f"opened {row['opened']}, lost {row['lost']}, server RSS open "
                    f"{_mib(row['server_rss_open'])}, after close {_mib(row['server_rss_closed'])}"
                    f" ({row['server_tasks_closed']} tasks, {row['server_fds_closed']} fds)",
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
        default=d.sessions,
        metavar="N",
        help=f"concurrent sessions to open (default {d.sessions})",
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
        default=d.transport,
        metavar="NAME",
        choices=transports,
        help=f"transport, one of the installed {', '.join(transports)} (default %(default)s)",
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
        default=d.deadline,
        metavar="S",
        help=f"seconds allowed for the whole run (default {d.deadline:g})",
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
    parser.add_argument("--json", metavar="PATH", help="write the result as JSON")


def run_command(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """Run ``bench-load`` from parsed arguments; return 0 if the run passed, 1 if not."""
    options = LoadOptions(
        transport=args.transport,
        codec=args.codec,
        sessions=args.sessions,
        messages=args.messages,
        size=args.size,
        concurrency=args.concurrency,
        open_timeout=args.open_timeout,
        deadline=args.deadline,
        warmup=args.warmup,
        rounds=args.rounds,
        pin=not args.no_pin,
    )
    try:
        options.check()
    except ValueError as exc:
        print(f"proxy-core bench-load: error: {exc}", file=sys.stderr)
        return 2
    result = asyncio.run(run_load(options))
    shown = list(argv if argv is not None else sys.argv[1:])
    result.command = " ".join(["proxy-core bench-load", *shown])
    print(format_table(result))
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


if __name__ == "__main__":
    sys.exit(main())
