"""One transport group of ``proxy-core bench``: its child processes and timed steps.

For each repeat and transport, a server and a client process start for each
implementation (proxy, bare, and the peer and floor rows); each row's scenarios
run through the proxy and through the bare library one after the other
(alternating which goes first), and every value is stored as a
``(proxy, bare)`` pair for the records. :class:`GroupSteps` is the part of the
run that does this; ``orchestrate`` chooses what to run and makes the records.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from .bare_side import BARE_LABELS
from .child import Child, ChildDied, StepFailed
from .machine import git_commit
from .spec import METRICS, STREAMS, BenchOptions, Counts, Metric, Stream

__all__ = ["GroupSteps", "Key", "Progress", "timed_runs"]

_GRACE = 5.0  # seconds the parent waits past a child's own deadline
_WARMUP_SESSIONS = 3
_SETTLE = 0.3  # seconds for closed sessions to wind down before reading memory


#: The scenarios ``--profile`` runs once more under cProfile.
_PROFILED: Final = ("stream_200b", "rtt")

#: The module the benchmark's children run.
_WORKER = "proxy_core.bench.worker"

Progress = Callable[[str, int], None]
Key = tuple[str, str, str, str, str]  # impl, transport, codec, scenario, metric


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


def _make_dir(path: str) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


class GroupSteps:
    """The steps of one transport group: start the children, measure each row, store the pairs.

    A mixin of the run: the attributes below are the run's.
    """

    options: BenchOptions
    counts: Counts
    progress: Progress
    notes: list[str]
    pairs: dict[Key, list[_Pair]]
    labels: dict[Key, str]
    cores: tuple[int, int] | None
    pipecat_python: str | None
    loops_seen: set[str]
    log_dir: Path

    def store(self, key: Key, proxy: float | None, bare: float | None, error: str | None) -> None:
        self.pairs.setdefault(key, []).append(_Pair(proxy, bare, error))

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
            f"commit {git_commit() or 'unknown'}"
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
