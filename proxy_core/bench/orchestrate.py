"""The parent of a run: child processes per transport and repeat, paired measurements, records.

For each repeat and transport, a server and a client process start for the
proxy, for the bare library (and for the pipecat peer, on ``websockets``),
servers pinned to one core and clients to another, all on the event loop
the options name (asyncio's or uvloop). Idle memory is measured first, in
the fresh servers. Then, for each codec, every scenario runs once through
the proxy and once through the bare library, one after the other (the order
alternates between repeats), so each ratio compares two runs a few seconds
apart. Every command to a child has a deadline; a child that
misses it is killed and the rest of its group is reported as failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import importlib.util
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from ..errors import PluginError
from ..loops import loop_version
from ..plugins import available_codecs, available_transports, load_transport, resolve_codec
from .bare_side import BARE_LABELS
from .bus import BUS_LABELS, BusBench, select_buses
from .child import ROOT, Child, ChildDied, StepFailed
from .spec import (
    METRICS,
    SCENARIOS,
    STREAMS,
    BenchOptions,
    Counts,
    Metric,
    Record,
    Stream,
    metric_of,
    order_records,
)
from .stats import median, ratio, spread

__all__ = ["BenchResult", "machine_info", "run_bench"]

#: Scenarios that need processes talking over loopback (all but the codec's).
WIRE_SCENARIOS = tuple(name for name in SCENARIOS if name != "codec")
_GRACE = 5.0  # seconds the parent waits past a child's own deadline
_WARMUP_SESSIONS = 3
_BUSY_CORES = 0.25  # other processes using this many cores before the run is worth a note
_SETTLE = 0.3  # seconds for closed sessions to wind down before reading memory
_LIBRARIES = (
    "proxy-core",
    "proxy-core-websockets",
    "proxy-core-aiohttp",
    "proxy-core-grpc",
    "proxy-core-redis",
    "websockets",
    "aiohttp",
    "grpcio",
    "msgpack",
    "protobuf",
    "pipecat-ai",
    "redis",
    "hiredis",
    "uvloop",
)


#: The scenarios ``--profile`` runs once more under cProfile.
_PROFILED: Final = ("stream_200b", "rtt")

#: The record's ``impl`` of each implementation the children run (the rest: proxy-core).
_IMPL_NAMES: Final = {"pipecat": "pipecat-ai", "hop": "bare+hop"}

#: The module the benchmark's children run.
_WORKER = "proxy_core.bench.worker"

Progress = Callable[[str, int], None]
Key = tuple[str, str, str, str, str]  # impl, transport, codec, scenario, metric


@dataclass
class BenchResult:
    """The outcome of a run: records plus what a reader needs to trust them."""

    records: list[Record]
    notes: list[str]
    machine: dict[str, Any]
    date: str
    options: BenchOptions
    elapsed: float
    command: str = ""


@dataclass
class _Pair:
    proxy: float | None
    bare: float | None
    error: str | None = None


@dataclass
class _Row:
    impl: str
    codec: str


@dataclass
class _Plan:
    """What one transport group does in one repeat."""

    transport: str
    impls: list[str]
    rows: list[_Row]
    scenarios: list[str]
    idle: bool
    idle_codec: str
    keys: list[Key] = field(default_factory=list)

    def steps(self) -> int:
        runs = timed_runs(self.scenarios)
        return 1 + (len(self.impls) if self.idle else 0) + len(self.rows) * len(runs) * 2


def timed_runs(scenarios: Iterable[str]) -> list[Stream | str]:
    """Return the timed runs a row makes for ``scenarios``, in order: streams, then ``rtt``.

    A stream runs when its own scenario or the CPU scenario measured during it is asked for.
    """
    wanted = set(scenarios)
    runs: list[Stream | str] = [s for s in STREAMS if {s.scenario, s.cpu} & wanted]
    return runs + (["rtt"] if "rtt" in wanted else [])


# ---------------------------------------------------------------- child processes


# ---------------------------------------------------------------- the run


class _Run:
    def __init__(self, options: BenchOptions, progress: Progress | None) -> None:
        self.options = options
        self.counts: Counts = options.counts
        self.progress = progress or (lambda label, steps: None)
        self.notes: list[str] = []
        self.pairs: dict[Key, list[_Pair]] = {}
        self.labels: dict[Key, str] = {}
        self.cores: tuple[int, int] | None = None
        self._cores_chosen = False
        self.pipecat_python: str | None = None
        self.pipecat_version: str | None = None
        self.loops_seen: set[str] = set()  # the event loop classes the children reported
        self.log_dir = Path(tempfile.mkdtemp(prefix="proxy-core-bench-"))

    # -------------------------------------------------------- selection

    def select(self) -> tuple[list[str], list[str]]:
        opts = self.options
        transports: list[str] = []
        # None: every installed transport; an empty list: none (a run of bus rows only).
        wanted_t = available_transports() if opts.transports is None else opts.transports
        for name in wanted_t:
            try:
                load_transport(name)
            except PluginError as exc:
                self.notes.append(f"transport {name!r} skipped: {exc}")
                continue
            if name not in BARE_LABELS:
                why = (
                    "in-process only, nothing crosses a socket"
                    if name == "memory"
                    else "no bare-library baseline in the harness"
                )
                if opts.transports or name != "memory":
                    self.notes.append(f"transport {name!r} skipped: {why}")
                continue
            transports.append(name)
        codecs: list[str] = []
        for name in opts.codecs or available_codecs():
            try:
                resolve_codec(name)  # constructing it is the check (a missing library...)
            except Exception as exc:
                self.notes.append(f"codec {name!r} skipped: {type(exc).__name__}: {exc}")
                continue
            codecs.append(name)
        return transports, codecs

    def select_pipecat(self, transports: list[str]) -> bool:
        opts = self.options
        wire = set(WIRE_SCENARIOS) & set(opts.scenarios)
        if not opts.pipecat or "websockets" not in transports or not wire:
            return False
        python = opts.pipecat_python or sys.executable
        if python == sys.executable:
            if importlib.util.find_spec("pipecat") is None:
                self.notes.append(
                    "pipecat peer row skipped: pipecat-ai is not installed "
                    "(see benchmarks/README.md)"
                )
                return False
            from .pipecat_side import missing, version

            why, self.pipecat_version = missing(), version()
        else:
            why, self.pipecat_version = _check_other_python(python)
        if why:
            self.notes.append(f"pipecat peer row skipped: {why}")
            return False
        self.pipecat_python = python
        return True

    def select_cores(self) -> None:
        if self._cores_chosen:
            return
        self._cores_chosen = True
        if not self.options.pin or not hasattr(os, "sched_getaffinity"):
            self.notes.append("processes not pinned to cores (not asked, or not supported here)")
            return
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            self.notes.append(f"processes not pinned: only {len(cpus)} usable core(s)")
            return
        self.cores = (cpus[0], cpus[1])

    # -------------------------------------------------------- recording

    def store(self, key: Key, proxy: float | None, bare: float | None, error: str | None) -> None:
        self.pairs.setdefault(key, []).append(_Pair(proxy, bare, error))

    # -------------------------------------------------------- groups

    def plan(self, transport: str, codecs: list[str], pipecat: bool) -> _Plan:
        scenarios = self.options.scenarios
        impls = ["proxy", "bare"] + (["pipecat"] if pipecat and transport == "websockets" else [])
        rows = [_Row("proxy", c) for c in codecs]
        if "pipecat" in impls:
            rows.append(_Row("pipecat", "json"))
        if self.options.floor:
            impls.append("hop")
            rows.append(_Row("hop", "-"))
        idle_codec = "msgpack" if "msgpack" in codecs else codecs[0]
        plan = _Plan(transport, impls, rows, scenarios, "idle_memory" in scenarios, idle_codec)
        metrics = [m for m in METRICS if m.scenario in scenarios and m.scenario != "codec"]
        for row in rows:
            for m in metrics:
                if m.scenario == "idle_memory" and row.impl == "proxy" and row.codec != idle_codec:
                    continue
                if m.scenario == "idle_memory" and row.impl == "hop":
                    continue  # the same connection as bare: nothing to compare
                plan.keys.append((row.impl, transport, row.codec, m.scenario, m.name))
        return plan

    async def group(self, plan: _Plan, repeat: int) -> None:
        done: set[Key] = set()
        servers: dict[str, Child] = {}
        clients: dict[str, Child] = {}
        budget = plan.steps()
        try:
            await self._start(plan, repeat, servers, clients)
            self.progress(f"{plan.transport}: processes started", 1)
            budget -= 1
            if plan.idle:
                budget -= await self._idle_all(plan, servers, clients, done)
            await clients["bare"].ask(self._connect(servers["bare"], "-"), self._timeout)
            for row in plan.rows:
                budget -= await self._row(plan, row, repeat, servers, clients, done)
        except (ChildDied, StepFailed) as exc:
            for key in plan.keys:
                if key not in done:
                    self.store(key, None, None, str(exc))
            self.progress(f"{plan.transport}: FAILED ({exc})", max(budget, 0))
        finally:
            await asyncio.gather(
                *(c.stop() for c in (*clients.values(), *servers.values())),
                return_exceptions=True,
            )

    @property
    def _timeout(self) -> float:
        return self.counts.deadline + _GRACE

    def _connect(self, server: Child, codec: str) -> dict[str, Any]:
        return {"cmd": "connect", "url": server.url, "codec": codec, "deadline": 30}

    def _check_loop(self, child: Child, ready: dict[str, Any]) -> None:
        """Fail the group if ``child`` does not run on the loop asked for (checked, not assumed)."""
        seen = str(ready.get("loop", "unknown"))
        self.loops_seen.add(seen)
        if not seen.startswith(f"{self.options.loop}."):
            raise ChildDied(f"{child.name} runs on {seen}, not on {self.options.loop}")

    async def _start(
        self, plan: _Plan, repeat: int, servers: dict[str, Child], clients: dict[str, Child]
    ) -> None:
        server_core, client_core = self.cores if self.cores else (None, None)
        spawns = []
        for impl in plan.impls:
            python = sys.executable
            if impl == "pipecat" and self.pipecat_python:
                python = self.pipecat_python
            base = {"impl": impl, "transport": plan.transport, "loop": self.options.loop}
            tag = f"{plan.transport}-{impl}-r{repeat}"
            spawns.append(
                Child.spawn(
                    f"{tag}-server",
                    "server",
                    {**base, "codecs": [r.codec for r in plan.rows if r.impl == "proxy"]}
                    | {"core": server_core},
                    self.log_dir,
                    module=_WORKER,
                    python=python,
                )
            )
            spawns.append(
                Child.spawn(
                    f"{tag}-client",
                    "client",
                    base | {"core": client_core},
                    self.log_dir,
                    module=_WORKER,
                    python=python,
                )
            )
        children = await asyncio.gather(*spawns, return_exceptions=True)
        for impl, server, client in zip(plan.impls, children[::2], children[1::2], strict=True):
            if isinstance(server, Child):
                servers[impl] = server
            if isinstance(client, Child):
                clients[impl] = client
        failed = [c for c in children if isinstance(c, BaseException)]
        if failed:
            raise ChildDied(str(failed[0]))
        for impl in plan.impls:
            ready = await servers[impl].read(max(self._timeout, 30))
            servers[impl].url = ready["url"]
            self._check_loop(servers[impl], ready)
            self._check_loop(clients[impl], await clients[impl].read(max(self._timeout, 30)))

    async def _idle_all(
        self,
        plan: _Plan,
        servers: dict[str, Child],
        clients: dict[str, Child],
        done: set[Key],
    ) -> int:
        values: dict[str, float | None] = {}
        errors: dict[str, str] = {}
        impls = [i for i in plan.impls if i != "hop"]
        for impl in sorted(impls, key=lambda i: i != "bare"):
            codec = plan.idle_codec if impl == "proxy" else "json"
            try:
                values[impl] = await self._idle(servers[impl], clients[impl], codec)
            except StepFailed as exc:
                values[impl], errors[impl] = None, str(exc)
            self.progress(f"{plan.transport}: idle_memory ({impl})", 1)
        for impl in impls:
            if impl == "bare":
                continue
            codec = plan.idle_codec if impl == "proxy" else "json"
            key: Key = (impl, plan.transport, codec, "idle_memory", "per_session")
            error = errors.get(impl) or errors.get("bare")
            self.store(key, values[impl], values["bare"], error)
            done.add(key)
        return len(impls)

    async def _idle(self, server: Child, client: Child, codec: str) -> float:
        t = self._timeout
        deadline = self.counts.deadline
        url = server.url
        await client.ask(
            {"cmd": "open_idle", "url": url, "codec": codec, "count": _WARMUP_SESSIONS}
            | {"deadline": deadline},
            t,
        )
        await client.ask({"cmd": "close_idle", "deadline": deadline}, t)
        await asyncio.sleep(_SETTLE)
        before = (await server.ask({"cmd": "rss"}, t))["rss"]
        sessions = self.counts.idle_sessions
        await client.ask(
            {"cmd": "open_idle", "url": url, "codec": codec, "count": sessions}
            | {"deadline": deadline},
            t,
        )
        await asyncio.sleep(_SETTLE)
        after = (await server.ask({"cmd": "rss"}, t))["rss"]
        await client.ask({"cmd": "close_idle", "deadline": deadline}, t)
        delta = (after - before) / sessions / 1024
        if delta <= 0:
            raise StepFailed(
                f"server memory did not grow with {sessions} sessions ({delta:.2f} KiB)"
            )
        return float(delta)

    async def _row(
        self,
        plan: _Plan,
        row: _Row,
        repeat: int,
        servers: dict[str, Child],
        clients: dict[str, Child],
        done: set[Key],
    ) -> int:
        steps = 0
        client = clients[row.impl]
        await client.ask(self._connect(servers[row.impl], row.codec), self._timeout)
        for run in timed_runs(self.options.scenarios):
            scenario = run if isinstance(run, str) else run.scenario
            metrics = self._metrics_of(run)
            order = [row.impl, "bare"] if repeat % 2 == 0 else ["bare", row.impl]
            results: dict[str, dict[str, float] | str] = {}
            for who in order:
                label = f"{plan.transport}/{row.codec} {scenario} ({who})"
                try:
                    results[who] = await self._measure(clients[who], run)
                except StepFailed as exc:
                    results[who] = str(exc)
                self.progress(label, 1)
                steps += 1
            if self.options.profile_dir and repeat == 0 and scenario in _PROFILED:
                await self._profile(plan.transport, row, servers[row.impl], client, run)
            for m in metrics:
                key: Key = (row.impl, plan.transport, row.codec, m.scenario, m.name)
                mine, bare = results[row.impl], results["bare"]
                error = next((r for r in (mine, bare) if isinstance(r, str)), None)
                self.store(
                    key,
                    mine.get(m.name) if isinstance(mine, dict) else None,
                    bare.get(m.name) if isinstance(bare, dict) else None,
                    error,
                )
                self.labels[key] = BARE_LABELS[plan.transport]
                done.add(key)
        await client.ask({"cmd": "disconnect", "deadline": self.counts.deadline}, self._timeout)
        return steps

    def _metrics_of(self, run: Stream | str) -> list[Metric]:
        """Return the wanted metrics that ``run`` measures (a stream's CPU scenario among them)."""
        wanted = set(self.options.scenarios)
        scenarios = {run} if isinstance(run, str) else {run.scenario, run.cpu or run.scenario}
        return [m for m in METRICS if m.scenario in scenarios & wanted]

    async def _measure(self, client: Child, run: Stream | str) -> dict[str, float]:
        c = self.counts
        deadline = {"deadline": c.deadline}
        if isinstance(run, str):  # rtt
            cmd = {"cmd": "rtt", "size": 200, "count": c.rtt, "warmup": c.warmup}
            reply = await client.ask(cmd | deadline, self._timeout)
            return {k: reply[k] for k in ("p50", "p99", "cpu_client", "cpu_server")}
        size, count = run.size, c.of(run)
        warmup = c.warmup if size == 200 else max(10, c.warmup // 5)
        cmd = {"cmd": "stream", "size": size, "count": count, "warmup": warmup}
        cmd["back_to_back"] = run.back_to_back
        reply = await client.ask(cmd | deadline, self._timeout)
        elapsed = reply["elapsed"]
        return {
            "rate": count / elapsed,
            "throughput": count * size / elapsed / 1e6,
            "client": reply["client_cpu"] / count * 1e6,
            "server": reply["server_cpu"] / count * 1e6,
        }

    async def _profile(
        self, transport: str, row: _Row, server: Child, client: Child, run: Stream | str
    ) -> None:
        """Run ``run`` (stream_200b or rtt) once more under cProfile on both sides (not counted)."""
        out = _make_dir(self.options.profile_dir or ".")
        t = self._timeout
        scenario = run if isinstance(run, str) else run.scenario
        count = self.counts.rtt if scenario == "rtt" else self.counts.stream_200b
        title = (
            f"{row.impl} {transport}/{row.codec} {scenario}, {count} messages, "
            f"commit {_git_commit() or 'unknown'}"
        )
        stem = f"profile-{row.impl}-{transport}-{row.codec}"
        if scenario != "stream_200b":  # the stream's files keep their earlier names
            stem += f"-{scenario}"
        paths = {side: str(out / f"{stem}-{side}.txt") for side in ("client", "server")}
        try:
            for child in (server, client):
                await child.ask({"cmd": "profile", "action": "start"}, t)
            await self._measure(client, run)
        finally:
            for side, child in (("server", server), ("client", client)):
                with contextlib.suppress(StepFailed):
                    await child.ask(
                        {"cmd": "profile", "action": "stop", "path": paths[side]}
                        | {"title": f"{title}: {side} process, top 30 by tottime"},
                        t,
                    )
        self.notes.append(f"profiles written: {paths['client']}, {paths['server']}")

    # -------------------------------------------------------- codecs

    async def codecs(self, codecs: list[str]) -> None:
        core = self.cores[1] if self.cores else None
        spec = {"codecs": codecs, "seconds": self.counts.codec_seconds, "core": core}
        child = await Child.spawn("codec", "codec", spec, self.log_dir, module=_WORKER)
        try:
            await child.read(self._timeout)
            reply = await child.read(self._timeout + 2 * len(codecs))
        except ChildDied as exc:
            for codec in codecs:
                self.store(
                    ("proxy", "in-process", codec, "codec", "encode_decode"), None, None, str(exc)
                )
            return
        finally:
            await child.stop()
        for codec, result in reply["codecs"].items():
            key: Key = ("proxy", "in-process", codec, "codec", "encode_decode")
            self.store(key, result.get("proxy"), result.get("bare"), result.get("error"))
            if "label" in result:
                self.labels[key] = result["label"]

    # -------------------------------------------------------- records

    def records(self, date: str, machine: dict[str, Any]) -> list[Record]:
        out: list[Record] = []
        for key, pairs in self.pairs.items():
            impl, transport, codec, scenario, metric = key
            m = metric_of(scenario, metric)
            record = Record(
                transport=transport,
                codec=codec,
                scenario=scenario,
                metric=metric,
                unit=m.unit,
                better=m.better,
                impl=_IMPL_NAMES.get(impl, "proxy-core"),
                bare_label=self.labels.get(
                    key, BARE_LABELS.get(transport) or BUS_LABELS.get(transport, "")
                ),
                date=date,
                machine=machine,
            )
            _fill(record, pairs)
            out.append(record)
        return order_records(out)


def _fill(record: Record, pairs: list[_Pair]) -> None:
    good = [
        (p.proxy, p.bare)
        for p in pairs
        if p.proxy is not None and p.bare is not None and p.proxy > 0 and p.bare > 0
    ]
    errors = [p.error for p in pairs if p.error]
    if not good:
        record.status = "failed"
        record.error = errors[0] if errors else "no valid measurement"
        return
    proxies = [p for p, _ in good]
    bares = [b for _, b in good]
    ratios = [ratio(p, b) for p, b in good]
    record.proxy, record.bare = median(proxies), median(bares)
    record.ratio, record.spread = median(ratios), spread(ratios)
    record.proxy_spread, record.bare_spread = spread(proxies), spread(bares)
    record.repeats = len(good)
    record.proxy_samples, record.bare_samples = proxies, bares
    if errors:
        record.status = "partial"
        record.error = f"{len(errors)} of {len(pairs)} repeats failed: {errors[0]}"


def _make_dir(path: str) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _check_other_python(python: str) -> tuple[str | None, str | None]:
    """Return (why the peer cannot run with ``python`` or None, its pipecat-ai version)."""
    import subprocess

    code = (
        "from proxy_core.bench.pipecat_side import missing, version; "
        "print(missing() or ''); print(version())"
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    try:
        done = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=120, env=env
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {python}: {exc}", None
    if done.returncode != 0:
        return f"{python} cannot import the peer: {done.stderr.strip().splitlines()[-1:]}", None
    why, _, found = done.stdout.partition("\n")
    return why.strip() or None, found.strip() or None


def machine_info(cores: Iterable[int] | None = None, loop: str = "asyncio") -> dict[str, Any]:
    """Describe this machine, the event loop the children run on and the library versions."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions: dict[str, str] = {}
    for dist in _LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    info: dict[str, Any] = {
        "cpu": model,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "libraries": versions,
        "pinned": {"server": list(cores)[0], "client": list(cores)[1]} if cores else None,
        "loop": {"name": loop, "version": loop_version(loop)},
    }
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    info["commit"] = _git_commit()
    return info


def _git_commit() -> str | None:
    """Return the commit of the checkout this package runs from (``+dirty`` if changed)."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if head.returncode != 0:
            return None
        status = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "proxy_core",
                "transports",
                "buses",
                ":!proxy_core/bench",  # the harness does not change what is measured
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def _cpu_times() -> tuple[int, int] | None:
    """Return (all, idle) jiffies of all cores from ``/proc/stat``, or None where it is missing."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal: steal is a busy host, so it counts as busy.
    return sum(fields), fields[3] + fields[4]


async def cpu_in_use(seconds: float = 1.0) -> float | None:
    """Return how many cores' worth of CPU the machine used over ``seconds``, or None.

    Measured when the benchmark itself is not running, it is the foreign load
    the figures compete with (the load average would still include the
    benchmark's own last minutes).
    """
    first = _cpu_times()
    await asyncio.sleep(seconds)
    second = _cpu_times()
    if first is None or second is None or second[0] <= first[0]:
        return None
    total, idle = second[0] - first[0], second[1] - first[1]
    cores = os.cpu_count() or 1
    return round((1 - idle / total) * cores, 2)


def _busy_note(machine: dict[str, Any], pinned: bool) -> list[str]:
    """Say so when other work was running before the run: it skews rates and tails."""
    busy = machine.get("busy_cores_before")
    if busy is None or busy < _BUSY_CORES:
        return []
    note = (
        f"the machine was busy before the run ({busy} of {machine.get('cores')} cores in use by "
        "other processes): they competed with the benchmark; rates and rtt.p99 suffer most, "
        "CPU per message least"
    )
    if pinned:
        note += (
            "; a pinned process cannot move off a core that a foreign process keeps busy, "
            "so tail latencies include its time slices (compare with --no-pin)"
        )
    return [note]


def _count_steps(run: _Run, plans: list[_Plan], codecs: bool, bus: BusBench | None) -> int:
    per_repeat = sum(p.steps() for p in plans) + (1 if codecs else 0)
    per_repeat += bus.steps() if bus is not None else 0
    return per_repeat * run.options.repeats


async def run_bench(
    options: BenchOptions,
    progress: Progress | None = None,
    total: Callable[[int], None] | None = None,
) -> BenchResult:
    """Run the benchmark described by ``options``.

    Args:
        options: what to run.
        progress: called as ``progress(label, steps_done)`` after each step.
        total: called once with the number of steps, before the first.
    """
    started = time.perf_counter()
    run = _Run(options, progress)
    date = datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()
    transports, codecs = run.select()
    wire = [s for s in options.scenarios if s in WIRE_SCENARIOS]
    plans: list[_Plan] = []
    if wire and transports and codecs:
        run.select_cores()
        pipecat = run.select_pipecat(transports)
        plans = [run.plan(t, codecs, pipecat) for t in transports]
    elif wire and options.transports != []:
        run.notes.append("no transport or codec to run the wire scenarios with")
    do_codecs = "codec" in options.scenarios and bool(codecs)
    if do_codecs:
        run.select_cores()
    buses = select_buses(options, run.notes)
    bus: BusBench | None = None
    if buses:
        run.select_cores()
        bus = BusBench(
            buses,
            options.scenarios,
            options.counts,
            run.cores,
            run.log_dir,
            run.store,
            run.progress,
            run.notes,
            options.profile_dir,
            options.loop,
        )
    if total is not None:
        total(_count_steps(run, plans, do_codecs, bus))
    machine = machine_info(run.cores, options.loop)
    if run.pipecat_python and run.pipecat_version:
        where = "" if run.pipecat_python == sys.executable else f" (in {run.pipecat_python})"
        machine["libraries"]["pipecat-ai"] = run.pipecat_version + where
    work = bool(plans) or do_codecs or bus is not None
    machine["busy_cores_before"] = await cpu_in_use() if work else None
    run.notes.extend(_busy_note(machine, run.cores is not None))
    if bus is not None:
        await bus.start()
        machine.update(bus.machine)
    try:
        for repeat in range(options.repeats):
            for plan in plans:
                await run.group(plan, repeat)
            if do_codecs:
                await run.codecs(codecs)
                run.progress(f"codecs (repeat {repeat + 1})", 1)
            if bus is not None:
                await bus.repeat(repeat)
    finally:
        if bus is not None:
            await bus.aclose()
    machine["load_average_after"] = (
        [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    )
    machine["busy_cores_after"] = await cpu_in_use() if work else None
    machine["loop"]["classes"] = sorted(run.loops_seen | (bus.loops_seen if bus else set()))
    return BenchResult(
        records=run.records(date, machine),
        notes=run.notes,
        machine=machine,
        date=date,
        options=options,
        elapsed=time.perf_counter() - started,
    )
