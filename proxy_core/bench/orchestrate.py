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

import datetime
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ..errors import PluginError
from ..plugins import available_codecs, available_transports, load_transport, resolve_codec
from .bare_side import BARE_LABELS
from .bus import BUS_LABELS, BusBench, select_buses
from .child import Child, ChildDied
from .groups import _WORKER, GroupSteps, Key, Progress, _Pair, _Plan, _Row
from .machine import busy_note, check_other_python, cpu_in_use, machine_info
from .spec import (
    METRICS,
    SCENARIOS,
    BenchOptions,
    Counts,
    Record,
    metric_of,
    order_records,
)
from .stats import median, ratio, spread

__all__ = ["BenchResult", "machine_info", "run_bench"]

#: Scenarios that need processes talking over loopback (all but the codec's).
WIRE_SCENARIOS = tuple(name for name in SCENARIOS if name != "codec")

#: The record's ``impl`` of each implementation the children run (the rest: proxy-core).
_IMPL_NAMES: Final = {"pipecat": "pipecat-ai", "hop": "bare+hop"}


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


# ---------------------------------------------------------------- the run


class _Run(GroupSteps):
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
            why, self.pipecat_version = check_other_python(python)
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
    run.notes.extend(busy_note(machine, run.cores is not None))
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
