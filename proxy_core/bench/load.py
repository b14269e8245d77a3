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

import datetime
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .child import Child, ChildDied, StepFailed
from .machine import machine_info

__all__ = ["LoadOptions", "LoadResult", "main", "run_load"]

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
    profile_dir: str | None = None
    heartbeat_interval: float | None = None
    gc_freeze: bool = False
    tune_gc: bool = False

    def check(self) -> None:
        """Raise ``ValueError`` for an option out of range."""
        for name in ("sessions", "messages", "concurrency", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1")
        if self.size < 8 or self.warmup < 0:
            raise ValueError("--size must be at least 8 and --warmup at least 0")
        if self.open_timeout <= 0 or self.deadline <= 0:
            raise ValueError("--open-timeout and --deadline must be positive")
        if self.heartbeat_interval is not None and self.heartbeat_interval <= 0:
            raise ValueError("--heartbeat-interval must be positive")


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
    # CPU seconds of the first round: per session opened, per message echoed
    # (one round trip: the server reads it and writes it back), and how much of
    # each the cyclic garbage collector took.
    server_cpu_per_open: float | None = None
    client_cpu_per_open: float | None = None
    server_cpu_per_message: float | None = None
    client_cpu_per_message: float | None = None
    server_gc_per_message: float | None = None
    client_gc_per_message: float | None = None
    # The event loop's worst lag in the first round, by side and phase (seconds);
    # links lost and opened again (the session resumed), by side, over all rounds.
    lag: dict[str, dict[str, float]] = field(default_factory=dict)
    # The cores' worth of CPU that other processes on the machine used, by phase
    # (first round): they competed with the run, so its times are indicative.
    others: dict[str, float | None] = field(default_factory=dict)
    reconnects: dict[str, int] = field(default_factory=dict)
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
        self.server_cpu_mark = 0.0  # the server's CPU seconds when its last phase ended
        self.server_gc_mark: dict[str, list[float]] = {}  # and its collector's readings

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
        self.server_cpu_mark = float(base["cpu_after"])
        self.server_gc_mark = base["gc_after"]
        for number in range(self.options.rounds):
            await self.round(number, base, client_base)

    async def round(self, number: int, base: dict[str, Any], client_base: dict[str, Any]) -> None:
        """Open every session, run the traffic, close them; fold the figures into the result.

        Each phase's figures are folded in as soon as it ends, so that a run
        cut short (past its deadline) still reports how far it got.
        """
        r, first = self.result, number == 0
        profile = first and self.options.profile_dir is not None
        summary: dict[str, Any] = {"round": number + 1}
        r.rounds.append(summary)
        await self.profile("open", "start", profile)
        machine = machine_seconds()
        opened = await self.ask(self.client, "open", url=self.url, count=self.options.sessions)
        busy = _busy(machine)
        await self.profile("open", "stop", profile)
        held = await self.ask(self.server, "mem", freeze=self.options.gc_freeze)
        self._fold_open(summary, first, opened, held, base, client_base)
        summary["machine_cpu_open"] = busy
        await self.profile("traffic", "start", profile)
        machine = machine_seconds()
        traffic = await self.ask(self.client, "traffic")
        busy = _busy(machine)
        await self.profile("traffic", "stop", profile)
        after = await self.ask(self.server, "mem")
        self._fold_traffic(summary, first, traffic, held, after, base)
        summary["machine_cpu_traffic"] = busy
        if first:
            r.others = {phase: _others(summary, phase) for phase in ("open", "traffic")}
        await self.profile("close", "start", profile)
        closed, gone = await self.close()
        await self.profile("close", "stop", profile)
        self._fold_close(summary, first, closed, gone)

    def _fold_open(
        self,
        summary: dict[str, Any],
        first: bool,
        opened: dict[str, Any],
        held: dict[str, Any],
        base: dict[str, Any],
        client_base: dict[str, Any],
    ) -> None:
        r, live = self.result, held["live"]
        summary.update(
            opened=opened["opened"],
            held=live,
            open_seconds=opened["seconds"],
            server_rss_open=held["rss"],
            # CPU seconds per phase: the server's from its readings between the
            # phases (each taken before its own gc.collect), the client's its own;
            # and the cyclic collector's share: seconds and collections by generation.
            server_cpu_open=held["cpu"] - self.server_cpu_mark,
            client_cpu_open=opened["cpu_used"],
            server_gc_open=_gc_between(self.server_gc_mark, held["gc"]),
            client_gc_open=opened["gc_used"],
            server_lag_open=held["lag_max"],
            client_lag_open=opened["lag_max"],
        )
        r.sessions_opened = opened["opened"] if first else min(r.sessions_opened, opened["opened"])
        r.sessions_held_peak = max(r.sessions_held_peak, live)
        r.sessions_failed += opened["failed"]
        for error, count in opened["errors"].items():
            r.open_errors[error] = r.open_errors.get(error, 0) + count
        if not first:
            return
        r.open_seconds = opened["seconds"]
        r.server["open"], r.client["open"] = _mem(held), _mem(opened)
        r.lag = {"server": {"open": held["lag_max"]}, "client": {"open": opened["lag_max"]}}
        if live:
            r.server_bytes_per_session = (held["rss"] - base["rss"]) / live
            r.client_bytes_per_session = (opened["rss"] - client_base["rss"]) / live
        if opened["opened"]:
            r.server_cpu_per_open = summary["server_cpu_open"] / opened["opened"]
            r.client_cpu_per_open = summary["client_cpu_open"] / opened["opened"]

    def _fold_traffic(
        self,
        summary: dict[str, Any],
        first: bool,
        traffic: dict[str, Any],
        held: dict[str, Any],
        after: dict[str, Any],
        base: dict[str, Any],
    ) -> None:
        r, number = self.result, summary["round"]
        summary.update(
            connected_after_traffic=traffic["connected"],
            sent=traffic["sent"],
            received=traffic["received"],
            lost=traffic["lost"],
            incomplete=traffic["incomplete"],
            traffic_seconds=traffic["seconds"],
            server_rss_after_traffic=after["rss"],
            server_cpu_traffic=after["cpu"] - held["cpu_after"],
            client_cpu_traffic=traffic["cpu_used"],
            server_gc_traffic=_gc_between(held["gc_after"], after["gc"]),
            client_gc_traffic=traffic["gc_used"],
            server_lag_traffic=after["lag_max"],
            client_lag_traffic=traffic["lag_max"],
            client_reconnects=traffic["reconnects"],
            client_resumes=traffic["resumes"],
        )
        r.sessions_held_peak = max(r.sessions_held_peak, after["peak_live"])
        r.messages_sent += traffic["sent"]
        r.messages_received += traffic["received"]
        r.messages_lost += traffic["lost"]
        r.server_received = after["received"] - base["received"]
        r.server_echoed = after["echoed"] - base["echoed"]
        r.drops = {"client": traffic["drops"], "server": after["drops"]}
        r.reconnects = {
            "client": r.reconnects.get("client", 0) + traffic["reconnects"],
            "server": r.reconnects.get("server", 0) + after["reconnects"],
        }
        if traffic["incomplete"]:
            r.failures.append(
                f"round {number}: {traffic['incomplete']} sessions did not get all "
                "their echoes in time"
            )
        if not first:
            return
        r.sessions_connected_after_traffic = traffic["connected"]
        r.traffic_seconds = traffic["seconds"]
        r.server["traffic"], r.client["traffic"] = _mem(after), _mem(traffic)
        r.lag["server"]["traffic"] = after["lag_max"]
        r.lag["client"]["traffic"] = traffic["lag_max"]
        if summary["held"]:
            r.server_peak_bytes_per_session = (after["hwm"] - base["rss"]) / summary["held"]
        if traffic["received"]:
            echoed = traffic["received"]
            r.server_cpu_per_message = summary["server_cpu_traffic"] / echoed
            r.client_cpu_per_message = summary["client_cpu_traffic"] / echoed
            r.server_gc_per_message = sum(summary["server_gc_traffic"]["gc_seconds"]) / echoed
            r.client_gc_per_message = sum(summary["client_gc_traffic"]["gc_seconds"]) / echoed

    def _fold_close(
        self, summary: dict[str, Any], first: bool, closed: dict[str, Any], gone: dict[str, Any]
    ) -> None:
        r, final = self.result, closed["final"]
        summary.update(
            duplicated=final["duplicated"],
            out_of_order=final["out_of_order"],
            close_seconds=closed["seconds"],
            server_rss_closed=gone["rss"],
            server_tasks_closed=gone["tasks"],
            server_fds_closed=gone["fds"],
            server_left_after_close=gone["live"],
        )
        self.server_gc_mark = gone["gc_after"]
        self.server_cpu_mark = gone["cpu_after"]
        r.sessions_closed += closed["closed"]
        r.sessions_left_after_close = gone["live"]
        r.messages_duplicated += final["duplicated"]
        r.messages_out_of_order += final["out_of_order"]
        if first:
            r.close_seconds = closed["seconds"]
            r.server["closed"], r.client["closed"] = _mem(gone), _mem(closed)

    async def profile(self, phase: str, action: str, on: bool) -> None:
        """Start or stop a cProfile of ``phase`` in both children (if ``on``)."""
        if not on:
            return
        o = self.options
        for role, child in (("server", self.server), ("client", self.client)):
            path = _profile_path(o, phase, role)
            title = f"bench-load {o.transport}/{o.codec}, {o.sessions} sessions, {phase}, {role}"
            await self.ask(child, "profile", action=action, path=str(path), title=title, top=400)
            if action == "stop":
                self.result.notes.append(f"profile written: {path}")

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


def machine_seconds() -> float | None:
    """Return the CPU seconds all cores have been busy so far (``/proc/stat``), or ``None``."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal: idle and iowait are not busy.
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _busy(since: float | None) -> float | None:
    now = machine_seconds()
    return None if now is None or since is None else now - since


def _others(summary: dict[str, Any], phase: str) -> float | None:
    """The cores' worth of CPU other processes used during ``phase`` (not our two children)."""
    busy, wall = summary.get(f"machine_cpu_{phase}"), summary.get(f"{phase}_seconds")
    if busy is None or not wall:
        return None
    ours = float(summary.get(f"server_cpu_{phase}", 0.0) + summary.get(f"client_cpu_{phase}", 0.0))
    return round(max(0.0, float(busy) - ours) / float(wall), 2)


def _profile_path(options: LoadOptions, phase: str, role: str) -> Path:
    """Where the profile of ``phase`` in ``role`` goes (the folder is made)."""
    out = Path(options.profile_dir or ".")
    out.mkdir(parents=True, exist_ok=True)
    return out / f"profile-load-{options.transport}-{options.sessions}-{phase}-{role}.txt"


def _gc_between(before: dict[str, list[float]], after: dict[str, list[float]]) -> dict[str, Any]:
    """Return the collector's work between two readings: seconds and collections by generation."""
    return {k: [a - b for a, b in zip(after[k], before[k], strict=True)] for k in after}


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
    expected = sum(int(row.get("opened", 0)) for row in r.rounds) * opts.messages
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m proxy_core.bench.load [options]`` (the command line is in ``load_command``)."""
    from .load_command import main as command_main

    return command_main(argv)


if __name__ == "__main__":
    sys.exit(main())
