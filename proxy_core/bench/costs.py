"""``proxy-core bench-costs``: what one message costs, counted, against the bare library.

Not a timing: counts. For each transport (msgpack by default), a client
process and a server process (``python -m proxy_core.bench.costs_side``) do
the same work through both proxies (a ``Source`` worker to a ``Sink`` worker,
bus to bus) and through the bare library, and count, per side and per
message, in four passes with fresh processes each:

- ``count``: event-loop iterations (one ``epoll_wait`` each), callbacks run
  (task steps, by task, and others), tasks created, timers armed and
  cancelled, ``send``/``recv`` calls on the sockets asyncio owns, and the
  transport messages each way, by kind (MSG, a lone ACK, BATCH, PING...);
- ``strace``: every system call of every thread (``strace -f``), socket
  ``send``/``recv`` on TCP counted apart, where ``strace`` is on PATH;
- ``copies`` (16 KiB messages only): ``malloc``/``calloc``/``realloc`` and
  ``memcpy``/``memmove`` of 16 KiB or more, from a small C library preloaded
  into the children, where a C compiler is on PATH;
- ``calls``: the functions called, by whose code they are (proxy-core's, the
  library's, the standard library's, C functions; cProfile), and proxy-core's
  own by name (:mod:`~proxy_core.bench.calls`).

Scenarios: ``rtt`` (round trips of 200 bytes, the sink echoes), ``stream_200b``
and ``stream_16k`` (one-way messages). Each window opens after a warm-up and
closes ``--settle`` seconds (0.3) after the sink's
reply to the ``end`` command sent after the last message (so one control
round trip and the delayed ACKs count too). Every figure is the median over
``--runs`` runs of the per-message count. See ``docs/benchmarks.md``, "Where
the time goes: counts per message".

Also ``python -m proxy_core.bench.costs``.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from ..plugins import available_transports
from .bare_side import BARE_LABELS
from .child import Child, ChildDied, StepFailed
from .machine import machine_info
from .stats import median

__all__ = [
    "FULL_COUNTS",
    "MARK",
    "MODES",
    "QUICK_COUNTS",
    "SCENARIOS",
    "SHIM_SOURCE",
    "CostOptions",
    "CostResult",
    "main",
    "parse_strace",
    "run_costs",
]

#: The scenarios, in the order they run and are reported.
SCENARIOS: Final = ("rtt", "stream_200b", "stream_16k")
#: Messages (round trips for ``rtt``) per window.
FULL_COUNTS: Final = {"rtt": 2000, "stream_200b": 10000, "stream_16k": 2000}
QUICK_COUNTS: Final = {"rtt": 100, "stream_200b": 500, "stream_16k": 100}
SIDES: Final = ("client", "server")
IMPLS: Final = ("proxy", "bare")

#: The passes, each with fresh processes (see the module's docstring).
MODES: Final = ("count", "strace", "copies", "calls")

#: The folder of the paths a child ``stat``-s to mark a window in a trace: never created.
MARK: Final = "/proxy-core-costs-marker"

_SIDE = "proxy_core.bench.costs_side"
_GRACE = 10.0  # seconds the parent waits past a child's own deadline

#: The copy counter preloaded into the children of the ``copies`` pass (``LD_PRELOAD``).
#: Allocation and copy calls of at least 16 KiB, from any thread, counted atomically;
#: everything is then done by glibc itself. ``costs_read`` hands the counters to ctypes.
SHIM_SOURCE: Final = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
static unsigned long long counts[4];
#define LARGE 16384
#define BUMP(i) __atomic_add_fetch(&counts[i], 1, __ATOMIC_RELAXED)
void *malloc(size_t n) { if (n >= LARGE) BUMP(0); return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { if (a * b >= LARGE) BUMP(0); return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { if (n >= LARGE) BUMP(1); return __libc_realloc(p, n); }
typedef void *(*copy_fn)(void *, const void *, size_t);
static copy_fn real_memcpy, real_memmove;
static void *slow_copy(void *d, const void *s, size_t n) {
  unsigned char *dd = d; const unsigned char *ss = s;
  if (dd < ss) { for (size_t i = 0; i < n; i++) dd[i] = ss[i]; }
  else { for (size_t i = n; i > 0; i--) dd[i - 1] = ss[i - 1]; }
  return d;
}
void *memcpy(void *d, const void *s, size_t n) {
  if (n >= LARGE) BUMP(2);
  if (!real_memcpy) {
    real_memcpy = (copy_fn)dlsym(RTLD_NEXT, "memcpy");
    if (!real_memcpy) return slow_copy(d, s, n);
  }
  return real_memcpy(d, s, n);
}
void *memmove(void *d, const void *s, size_t n) {
  if (n >= LARGE) BUMP(3);
  if (!real_memmove) {
    real_memmove = (copy_fn)dlsym(RTLD_NEXT, "memmove");
    if (!real_memmove) return slow_copy(d, s, n);
  }
  return real_memmove(d, s, n);
}
void *__memcpy_chk(void *d, const void *s, size_t n, size_t m) { (void)m; return memcpy(d, s, n); }
void *__memmove_chk(void *d, const void *s, size_t n, size_t m) {
  (void)m;
  return memmove(d, s, n);
}
void costs_read(unsigned long long *out) {
  for (int i = 0; i < 4; i++) out[i] = __atomic_load_n(&counts[i], __ATOMIC_RELAXED);
}
"""


@dataclass
class CostOptions:
    """What to count: transports, codec, messages per scenario, runs, passes."""

    transports: list[str] | None = None
    codec: str = "msgpack"
    counts: dict[str, int] = field(default_factory=lambda: dict(FULL_COUNTS))
    runs: int = 3
    modes: tuple[str, ...] = MODES
    pin: bool = True
    deadline: float = 120.0
    settle: float = 0.3

    def check(self) -> None:
        """Raise ``ValueError`` for an option out of range."""
        if self.runs < 1:
            raise ValueError("--runs must be at least 1")
        if not 0.06 <= self.settle <= 10:
            # Below the ACK delay (50 ms), a window would miss the last ACKs.
            raise ValueError("--settle must be within 0.06 and 10 seconds")
        unknown = set(self.counts) - set(SCENARIOS)
        if unknown or not self.counts:
            raise ValueError(f"scenarios are {', '.join(SCENARIOS)}, not {sorted(unknown)}")
        if min(self.counts.values()) < 1:
            raise ValueError("every scenario needs at least one message")
        if set(self.modes) - set(MODES):
            raise ValueError(f"passes are {', '.join(MODES)}")
        if self.transports is not None and set(self.transports) - set(BARE_LABELS):
            raise ValueError(f"only {', '.join(BARE_LABELS)} have a bare baseline")


@dataclass
class CostResult:
    """The windows counted (``samples``) and what happened around them."""

    options: CostOptions
    transports: list[str] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)
    #: One per run, transport, implementation, pass, scenario and side: ``counts``,
    #: ``labels`` (callbacks by what they ran), ``n`` (messages in the window).
    samples: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    date: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    elapsed: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return the result as plain JSON values."""
        return asdict(self)

    def per_message(self, key: str = "counts") -> dict[tuple[str, ...], dict[str, float]]:
        """The median over runs of each count per message.

        Keyed ``(transport, scenario, side, impl, mode)``; ``key`` is ``counts``
        or ``labels``. A count missing from a run is zero in that run.
        """
        groups: defaultdict[tuple[str, ...], list[dict[str, float]]] = defaultdict(list)
        for s in self.samples:
            group = (s["transport"], s["scenario"], s["side"], s["impl"], s["mode"])
            groups[group].append({k: v / s["n"] for k, v in s[key].items()})
        table: dict[tuple[str, ...], dict[str, float]] = {}
        for where, runs in groups.items():
            names = set().union(*runs)
            table[where] = {name: median([run.get(name, 0.0) for run in runs]) for name in names}
        return table


# ---------------------------------------------------------------- strace


_SEND: Final = frozenset({"sendto", "sendmsg", "sendmmsg", "write", "writev", "send"})
_RECV: Final = frozenset({"recvfrom", "recvmsg", "recvmmsg", "read", "readv", "recv"})
_POLL: Final = frozenset(
    {"epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll", "select", "pselect6"}
)
# "1234  sendto(7<TCP:[127.0.0.1:1->127.0.0.1:2]>, ...": thread, call, first fd and its kind.
# Continuations ("<... read resumed>"), signals and exits do not match: a call counts once.
_MEMORY: Final = frozenset({"mmap", "munmap", "mremap", "brk", "madvise"})
_CALL = re.compile(r"^(\d+)\s+(\w+)\((?:\d+<(\w+))?")
_EDGE = re.compile(re.escape(MARK) + r"/(\w+)-(begin|end)")


def parse_strace(path: Path) -> dict[str, Counter[str]]:
    """Count the system calls of each marked window in an ``strace -f -yy`` output file.

    Returns, per window label: ``sys_total``; ``sys_tcp_send`` and
    ``sys_tcp_recv`` (send- and receive-family calls on TCP sockets);
    ``sys_poll`` (``epoll_wait`` and kin), ``sys_futex``, ``sys_memory``
    (``mmap``, ``munmap``, ``mremap``, ``brk``, ``madvise``: the allocator),
    ``sys_other_io`` (reads and writes on pipes, eventfds and Unix sockets:
    wake-ups between threads); ``sys_no_memory`` (all but the allocator's,
    which come and go with glibc's state, not with the code: see
    ``docs/benchmarks.md``); ``threads`` (threads that made a call);
    ``call:<name>`` for every system call by name.
    """
    windows: dict[str, Counter[str]] = {}
    label: str | None = None
    counts: Counter[str] = Counter()
    threads: set[str] = set()
    with open(path, errors="replace") as trace:
        for line in trace:
            if MARK in line:
                edge = _EDGE.search(line)
                if edge is not None and edge[2] == "begin":
                    label, counts, threads = edge[1], Counter(), set()
                elif edge is not None and label is not None and label == edge[1]:
                    counts["threads"] = len(threads)
                    counts["sys_no_memory"] = counts["sys_total"] - counts["sys_memory"]
                    windows[label], label = counts, None
                continue
            match = _CALL.match(line) if label is not None else None
            if match is None:
                continue
            thread, call, kind = match.groups()
            threads.add(thread)
            counts["sys_total"] += 1
            counts["call:" + call] += 1
            tcp = kind is not None and kind.startswith("TCP")
            if call in _SEND or call in _RECV:
                if tcp:
                    counts["sys_tcp_send" if call in _SEND else "sys_tcp_recv"] += 1
                else:
                    counts["sys_other_io"] += 1
            elif call in _POLL:
                counts["sys_poll"] += 1
            elif call == "futex":
                counts["sys_futex"] += 1
            elif call in _MEMORY:
                counts["sys_memory"] += 1
    return windows


# ---------------------------------------------------------------- the runs


class _Context:
    """What every pair of processes shares in one ``run_costs``."""

    def __init__(self, options: CostOptions, result: CostResult, log_dir: Path) -> None:
        self.options = options
        self.result = result
        self.log_dir = log_dir
        self.cores = _cores() if options.pin else None
        self.strace = shutil.which("strace")
        self.shim: str | None = None

    async def spawn(self, name: str, role: str, spec: dict[str, Any]) -> Child:
        """Start a child; under ``strace`` or with the copy counter preloaded, as its pass says."""
        argv = [sys.executable, "-m", _SIDE, role, json.dumps(spec)]
        env = dict(os.environ)
        if spec["mode"] == "strace":
            assert self.strace is not None
            trace = str(self.log_dir / f"{name}.strace")
            argv = [self.strace, "-f", "-qq", "-yy", "-s", "0", "-o", trace, "--", *argv]
        elif spec["mode"] == "copies":
            assert self.shim is not None
            env["LD_PRELOAD"] = self.shim
        log = self.log_dir / f"{name}.log"
        with _open_log(log) as stderr:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env=env,
                limit=1 << 22,
            )
        return Child(name, proc, log)

    async def ask(self, child: Child, cmd: str, **args: Any) -> dict[str, Any]:
        deadline = self.options.deadline
        return await child.ask({"cmd": cmd, "deadline": deadline, **args}, deadline + _GRACE)

    async def pair(self, run: int, transport: str, impl: str, mode: str) -> list[dict[str, Any]]:
        """One client and one server process: every scenario of the pass, a window each."""
        opts = self.options
        scenarios = [s for s in SCENARIOS if s in opts.counts]
        if mode == "copies":
            scenarios = [s for s in scenarios if s == "stream_16k"]
        if not scenarios:
            return []
        spec: dict[str, Any] = {
            "impl": impl,
            "transport": transport,
            "codec": opts.codec,
            "mode": mode,
            "shim": self.shim if mode == "copies" else None,
            "settle": opts.settle,
        }
        name = f"r{run + 1}-{transport}-{impl}-{mode}"
        windows: list[tuple[str, str, dict[str, Any]]] = []
        server = await self.spawn(f"{name}-server", "server", {**spec, "core": self._core(0)})
        client: Child | None = None
        try:
            url = (await server.read(60))["url"]
            client = await self.spawn(f"{name}-client", "client", {**spec, "core": self._core(1)})
            await client.read(60)
            await self.ask(client, "connect", url=url)
            for scenario in scenarios:
                n = opts.counts[scenario]
                await self.ask(client, "prepare", scenario=scenario, warmup=max(10, n // 5))
                await self.ask(server, "begin", label=scenario)
                windows.append(
                    (
                        scenario,
                        "client",
                        await self.ask(client, "measure", **{"scenario": scenario, "count": n}),
                    )
                )
                windows.append((scenario, "server", await self.ask(server, "end", label=scenario)))
        finally:
            for child in (client, server):
                if child is not None:
                    await child.stop(20)
        traces = {}
        if mode == "strace":
            for side in SIDES:
                path = self.log_dir / f"{name}-{side}.strace"
                traces[side] = parse_strace(path)
                path.unlink()  # large, and parsed
        samples = []
        for window, side, reply in windows:
            counts: dict[str, int] = dict(reply["counts"])
            if mode == "strace":
                if window not in traces[side]:
                    raise StepFailed(f"{name}-{side}: no {window} window in the trace")
                counts = dict(traces[side][window])
            samples.append(
                {
                    "run": run + 1,
                    "transport": transport,
                    "impl": impl,
                    "mode": mode,
                    "scenario": window,
                    "side": side,
                    "n": opts.counts[window],
                    "counts": counts,
                    "labels": reply.get("labels", {}),
                }
            )
        return samples

    def _core(self, index: int) -> int | None:
        return None if self.cores is None else self.cores[index]


def _open_log(path: Path) -> IO[bytes]:
    return open(path, "wb")  # once per child, before it starts: not worth a thread


def _cores() -> tuple[int, int] | None:
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


async def _works(*argv: str) -> tuple[bool, str]:
    """Run a short command; return whether it exited 0, and the tail of its output."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await asyncio.wait_for(proc.communicate(), 60)
    except (OSError, TimeoutError) as exc:
        return False, str(exc)
    return proc.returncode == 0, output.decode(errors="replace").strip()[-300:]


async def _build_shim(directory: Path) -> tuple[str | None, str]:
    """Compile :data:`SHIM_SOURCE`; return the library's path, or ``None`` and why not."""
    if not sys.platform.startswith("linux"):
        return None, "the copy counter needs Linux and glibc: copies not counted"
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        return None, "no C compiler (cc) on PATH: copies not counted"
    source, library = directory / "costs_shim.c", directory / "costs_shim.so"
    source.write_text(SHIM_SOURCE)
    ok, output = await _works(
        compiler, "-O2", "-shared", "-fPIC", "-o", str(library), str(source), "-ldl"
    )
    if not ok:
        return None, f"the copy counter did not compile ({output}): copies not counted"
    return str(library), ""


async def _usable_modes(ctx: _Context) -> list[str]:
    modes = []
    for mode in ctx.options.modes:
        if mode == "strace":
            if ctx.strace is None:
                ctx.result.notes.append("strace is not on PATH: system calls not counted")
                continue
            ok, output = await _works(ctx.strace, "-f", "-qq", "-o", os.devnull, "--", "true")
            if not ok:
                ctx.result.notes.append(f"strace cannot trace here ({output}): not counted")
                continue
        if mode == "copies":
            ctx.shim, why = await _build_shim(ctx.log_dir)
            if ctx.shim is None:
                ctx.result.notes.append(why)
                continue
        modes.append(mode)
    return modes


def default_transports() -> list[str]:
    """The installed transports that have a bare baseline."""
    installed = available_transports()
    return [t for t in BARE_LABELS if t in installed]


async def run_costs(
    options: CostOptions, progress: Callable[[str], None] | None = None
) -> CostResult:
    """Count the costs described by ``options``; a failed pair is reported, never raised."""
    options.check()
    result = CostResult(options)
    result.date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    started = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="proxy-core-costs-"))
    ctx = _Context(options, result, log_dir)
    result.machine = machine_info(ctx.cores)
    result.transports = options.transports or default_transports()
    result.modes = await _usable_modes(ctx)
    steps = options.runs * len(result.transports) * len(IMPLS) * len(result.modes)
    step = 0
    for run in range(options.runs):
        for transport in result.transports:
            # Alternate which implementation goes first, as the bench does.
            for impl in IMPLS if run % 2 == 0 else IMPLS[::-1]:
                for mode in result.modes:
                    step += 1
                    if progress is not None:
                        progress(f"[{step}/{steps}] run {run + 1}: {transport} {impl} {mode}")
                    try:
                        result.samples += await ctx.pair(run, transport, impl, mode)
                    except (ChildDied, StepFailed, OSError, KeyError) as exc:
                        result.failures.append(f"run {run + 1} {transport} {impl} {mode}: {exc}")
    result.elapsed = time.monotonic() - started
    result.notes.append(f"child logs: {log_dir}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m proxy_core.bench.costs [options]`` (the command line is in ``costs_command``)."""
    from .costs_command import main as command_main

    return command_main(argv)


if __name__ == "__main__":
    sys.exit(main())
