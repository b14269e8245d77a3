"""The bus rows of ``proxy-core bench``: worker to worker on a bus, against the bare library.

Two rows, each a ratio against a baseline measured in the same run:

- ``bus:redis``: worker ``src`` in one OS process sends to worker ``dst`` in
  another, both runners on ``RedisBus(url, channel=<fresh>)`` on one
  throwaway ``RedisServer`` (127.0.0.1, a free port; never the machine's
  6379), against redis-py's asyncio client doing the same between two
  processes: one ``XADD`` per message, ``XREADGROUP ... COUNT 256 BLOCK`` and
  ``XACK`` on the other side. Only this row needs ``proxy-core-redis`` and a
  redis-server binary; without them it is skipped with a note. Nothing of
  Redis is imported before the row runs.
- ``bus:local``: two workers on one :class:`~proxy_core.bus.InProcessBus` in
  one process, against two asyncio tasks handing bytes over an
  :class:`asyncio.Queue`.

Each measurement (an implementation x a scenario x a repeat) has processes of
its own (``python -m proxy_core.bench.bus_side``); ours and bare run back to
back, the order alternating between repeats, as for the transport rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .child import Child, ChildDied, StepFailed
from .spec import BUS_SCENARIOS, BUSES, BenchOptions, Counts

__all__ = ["BUS_LABELS", "BUS_TARGETS", "BusBench", "bus_codec", "select_buses"]

#: The module the bus rows' children run.
_SIDE = "proxy_core.bench.bus_side"
_GRACE = 5.0  # seconds the parent waits past a child's own deadline
_SIZE = 200

#: What "bare" means for each bus row, for reports.
BUS_LABELS = {
    "bus:redis": "redis-py XADD / XREADGROUP / XACK",
    "bus:local": "asyncio.Queue hand-off",
}

#: The targets of the bus rows: (transport, scenario, metric) -> the ratio to reach
#: (at least, for rates; at most, for latency).
BUS_TARGETS: dict[tuple[str, str, str], float] = {
    ("bus:redis", "stream_200b", "rate"): 1.0,
    ("bus:redis", "rtt", "p50"): 1.5,
}

Key = tuple[str, str, str, str, str]  # impl, transport, codec, scenario, metric
Store = Callable[[Key, float | None, float | None, str | None], None]
Progress = Callable[[str, int], None]


def bus_codec(bus: str) -> str:
    """The ``codec`` of a bus row's records: the Redis bus's codec, or ``-`` in process."""
    return "msgpack" if bus == "redis" else "-"


def select_buses(options: BenchOptions, notes: list[str]) -> list[str]:
    """Return the bus rows that can run; say in ``notes`` why any asked for cannot."""
    wanted = options.selected_buses()
    if not wanted or not set(BUS_SCENARIOS) & set(options.scenarios):
        return []
    explicit = options.buses is not None
    chosen: list[str] = []
    for bus in wanted:
        if bus not in BUSES:
            notes.append(f"bus {bus!r} skipped: the harness has no bus row for it")
            continue
        if bus == "redis":
            why = _redis_missing()
            if why:
                notes.append(f"bus 'redis' rows skipped: {why}")
                continue
        chosen.append(bus)
    if explicit and not chosen:
        notes.append("no bus row could run")
    return chosen


def _redis_missing() -> str | None:
    """Why the Redis bus row cannot run here, or ``None`` (nothing of Redis is imported)."""
    for module, dist in (("proxy_core_redis", "proxy-core-redis"), ("redis", "redis")):
        if importlib.util.find_spec(module) is None:
            return f"{dist} is not installed (pip install -e buses/redis)"
    if _redis_bus().find_redis_server() is None:
        return (
            "no redis-server binary (install redis-server 6.2+, "
            "`pip install 'proxy-core-redis[server]'`, or set PROXY_CORE_REDIS_SERVER)"
        )
    return None


def _make_dir(path: str) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _redis_bus() -> Any:
    """The ``proxy_core_redis`` module, imported on first use (the core never needs it)."""
    return importlib.import_module("proxy_core_redis")


@dataclass
class BusBench:
    """Runs the bus rows, one repeat at a time, and stores each paired figure.

    Args:
        buses: the rows to run (from :func:`select_buses`).
        scenarios: the run's scenarios (the bus rows run ``stream_200b``,
            with ``cpu``, and ``rtt``).
        counts: the work per scenario.
        cores: (receiver core, sender core), or ``None`` not to pin.
        log_dir: where the children's stderr goes.
        store: records one (ours, bare) pair under a key.
        progress: reports steps done.
        notes: notes for the reader.
        profile_dir: if set, the first repeat runs the Redis row's ``rtt`` once
            more per implementation under cProfile, each side written to
            ``profile-bus-redis-<ours|bare>-rtt-<sender|receiver>.txt`` there
            (not counted in the results).
        loop: the event loop the children run on (``asyncio`` or ``uvloop``);
            the classes they report are gathered in ``loops_seen``.
    """

    buses: list[str]
    scenarios: list[str]
    counts: Counts
    cores: tuple[int, int] | None
    log_dir: Path
    store: Store
    progress: Progress
    notes: list[str]
    profile_dir: str | None = None
    loop: str = "asyncio"
    loops_seen: set[str] = field(default_factory=set)
    server: Any = None
    machine: dict[str, Any] = field(default_factory=dict)
    _token: str = field(default_factory=lambda: secrets.token_hex(3))
    _n: int = 0

    def runs(self) -> list[str]:
        """The scenarios each bus row runs, in order."""
        wanted = set(self.scenarios)
        out = []
        if wanted & {"stream_200b", "cpu"}:
            out.append("stream_200b")
        if "rtt" in wanted:
            out.append("rtt")
        return out

    def steps(self) -> int:
        """Steps per repeat, for the progress bar."""
        return len(self.buses) * len(self.runs()) * 2

    def _metrics(self, bus: str, scenario: str) -> list[tuple[str, str]]:
        wanted = set(self.scenarios)
        if scenario == "rtt":
            return [("rtt", "p50"), ("rtt", "p99")]
        out = [("stream_200b", "rate")] if "stream_200b" in wanted else []
        if "cpu" in wanted and bus == "redis":
            out += [("cpu", "client"), ("cpu", "server"), ("cpu", "engine")]
        return out

    @property
    def _timeout(self) -> float:
        return self.counts.deadline + _GRACE

    # -------------------------------------------------------- server

    async def start(self) -> None:
        """Start the one throwaway redis-server of the run (if the Redis row runs)."""
        if "redis" not in self.buses:
            return
        module = _redis_bus()
        server = module.RedisServer()
        try:
            await asyncio.to_thread(server.start)
            version = ".".join(map(str, server.version))
        except module.RedisServerError as exc:
            server.close()
            self.notes.append(f"bus 'redis' rows skipped: the redis-server did not start: {exc}")
            self.buses = [b for b in self.buses if b != "redis"]
            return
        self.server = server
        self.machine["redis_server"] = f"{version} ({server.binary})"

    async def aclose(self) -> None:
        """Stop the redis-server."""
        server, self.server = self.server, None
        if server is not None:
            await asyncio.to_thread(server.close)

    # -------------------------------------------------------- one repeat

    async def repeat(self, repeat: int) -> None:
        """Measure every bus row once: ours and bare back to back, per scenario."""
        for bus in self.buses:
            transport = f"bus:{bus}"
            for scenario in self.runs():
                order = ["ours", "bare"] if repeat % 2 == 0 else ["bare", "ours"]
                results: dict[str, dict[str, float] | str] = {}
                for impl in order:
                    try:
                        results[impl] = await self._measure(bus, impl, scenario, repeat)
                    except (ChildDied, StepFailed) as exc:
                        results[impl] = str(exc)
                    self.progress(f"{transport} {scenario} ({impl})", 1)
                if self.profile_dir and repeat == 0 and bus == "redis" and scenario == "rtt":
                    await self._profile(bus, scenario)
                mine, bare = results["ours"], results["bare"]
                error = next((r for r in (mine, bare) if isinstance(r, str)), None)
                for metric_scenario, metric in self._metrics(bus, scenario):
                    key: Key = ("proxy", transport, bus_codec(bus), metric_scenario, metric)
                    self.store(
                        key,
                        mine.get(metric) if isinstance(mine, dict) else None,
                        bare.get(metric) if isinstance(bare, dict) else None,
                        error,
                    )

    async def _profile(self, bus: str, scenario: str) -> None:
        """Run ``scenario`` once more per implementation with both sides under cProfile."""
        out = _make_dir(self.profile_dir or ".")
        written: list[str] = []
        for impl in ("ours", "bare"):
            base = out / f"profile-bus-{bus}-{impl}-{scenario}"
            try:
                await self._measure(bus, impl, scenario, 0, profile=base)
            except (ChildDied, StepFailed) as exc:
                self.notes.append(f"profile of bus:{bus} {scenario} ({impl}) failed: {exc}")
                continue
            written += [f"{base}-sender.txt", f"{base}-receiver.txt"]
        if written:
            self.notes.append(f"profiles written: {', '.join(written)}")

    async def _measure(
        self, bus: str, impl: str, scenario: str, repeat: int, profile: Path | None = None
    ) -> dict[str, float]:
        c = self.counts
        if bus == "local":
            count = c.stream_200b if scenario == "stream_200b" else c.rtt
        else:
            count = c.bus_stream if scenario == "stream_200b" else c.bus_rtt
        command = {
            "cmd": "stream" if scenario == "stream_200b" else "rtt",
            "size": _SIZE,
            "count": count,
            "warmup": c.warmup,
            "deadline": c.deadline,
        }
        self._n += 1
        tag = f"bus-{bus}-{impl}-{scenario}-r{repeat}"
        receiver_core, sender_core = self.cores if self.cores else (None, None)
        base: dict[str, Any] = {"impl": impl, "deadline": max(c.deadline, 30), "loop": self.loop}
        profiles: dict[str, dict[str, Any]] = {}
        if profile is not None:
            what = f"bus:{bus} {impl} {scenario}, {count} round trips or messages"
            for side in ("sender", "receiver"):
                profiles[side] = {
                    "profile": {
                        "path": f"{profile}-{side}.txt",
                        "title": f"{what}: {side} process, ready to stop, top 30 by tottime",
                    }
                }
        children: list[Child] = []
        try:
            if bus == "local":
                sender = await Child.spawn(
                    tag, "local", base | {"core": sender_core}, self.log_dir, module=_SIDE
                )
                children.append(sender)
                self.loops_seen.add(str((await sender.read(max(self._timeout, 30))).get("loop")))
            else:
                assert self.server is not None
                base |= {
                    "url": self.server.url,
                    "channel": f"bench-{self._token}-{self._n}",
                    "streams": [
                        f"bench:{self._token}:{self._n}:req",
                        f"bench:{self._token}:{self._n}:rep",
                    ],
                }
                spawned = await asyncio.gather(
                    Child.spawn(
                        f"{tag}-receiver",
                        "receiver",
                        base | {"core": receiver_core} | profiles.get("receiver", {}),
                        self.log_dir,
                        module=_SIDE,
                    ),
                    Child.spawn(
                        f"{tag}-sender",
                        "sender",
                        base | {"core": sender_core} | profiles.get("sender", {}),
                        self.log_dir,
                        module=_SIDE,
                    ),
                    return_exceptions=True,
                )
                children += [child for child in spawned if isinstance(child, Child)]
                for failed in spawned:
                    if isinstance(failed, BaseException):
                        raise ChildDied(str(failed))
                receiver, sender = children
                for child in (receiver, sender):
                    self.loops_seen.add(str((await child.read(max(self._timeout, 30))).get("loop")))
            reply = await sender.ask(command, self._timeout)
        finally:
            await asyncio.gather(*(child.stop() for child in children), return_exceptions=True)
            if bus == "redis" and self.server is not None:
                await self._flush()
        if scenario == "rtt":
            return {"p50": reply["p50"], "p99": reply["p99"]}
        elapsed = reply["elapsed"]
        out = {
            "rate": count / elapsed,
            "client": reply["client_cpu"] / count * 1e6,
            "server": reply["server_cpu"] / count * 1e6,
        }
        if "engine_cpu" in reply:
            out["engine"] = reply["engine_cpu"] / count * 1e6
        return out

    async def _flush(self) -> None:
        """Empty the server between measurements, so each starts from the same state."""
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.server.url)
        try:
            with contextlib.suppress(Exception):
                await client.flushall()
        finally:
            await client.aclose()
