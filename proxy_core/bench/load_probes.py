"""What the ``bench-load`` processes measure about themselves: memory, file
descriptors, CPU, garbage collections and event-loop lag."""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import sys
import time
from typing import Any

__all__ = ["GcClock", "LagProbe", "cpu_seconds", "memory", "raise_fd_limit"]


def memory() -> dict[str, int]:
    """Return this process's resident memory now and at its peak, in bytes."""
    found: dict[str, int] = {}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    found[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = peak if sys.platform == "darwin" else peak * 1024
    return {"rss": found.get("VmRSS", peak), "hwm": found.get("VmHWM", peak)}


def raise_fd_limit() -> dict[str, int]:
    """Raise the soft limit on open files to the hard limit; return both, after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # reported below as it is
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {"soft": int(soft), "hard": int(hard)}


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def cpu_seconds() -> float:
    """Return the CPU time this process has used so far (user + system), in seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class GcClock:
    """Counts the cyclic garbage collector's collections and the CPU time they take, by generation.

    Installed once per child (``gc.callbacks``); the readings of a phase are
    the difference between two :meth:`reading` calls.
    """

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self.collected = [0, 0, 0]
        self._started = 0.0

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.process_time()
            return
        generation = info["generation"]
        self.seconds[generation] += time.process_time() - self._started
        self.collections[generation] += 1
        self.collected[generation] += info["collected"]

    def reading(self) -> dict[str, Any]:
        """Return the totals so far, by generation: seconds, collections, objects freed."""
        return {
            "gc_seconds": list(self.seconds),
            "gc_collections": list(self.collections),
            "gc_collected": list(self.collected),
        }

    def since(self, before: dict[str, Any]) -> dict[str, Any]:
        """Return what was collected since the reading ``before``."""
        now = self.reading()
        return {k: [a - b for a, b in zip(now[k], before[k], strict=True)] for k in now}


GC_CLOCK = GcClock()


class LagProbe:
    """How late a timer armed every ``period`` seconds fires: the event loop's lag.

    A loop that runs every ready callback of thousands of sessions before it
    looks at its timers again is late by that long; so are the proxies'
    heartbeats. :meth:`take` returns the largest lag since the last call.
    """

    def __init__(self, period: float = 0.25) -> None:
        self.period = period
        self.worst = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._arm()

    def _arm(self) -> None:
        assert self._loop is not None
        self._due = self._loop.time() + self.period
        self._loop.call_at(self._due, self._fire)

    def _fire(self) -> None:
        assert self._loop is not None
        self.worst = max(self.worst, self._loop.time() - self._due)
        self._arm()

    def take(self) -> float:
        """Return the largest lag seen since the last call, in seconds, and start again."""
        worst, self.worst = self.worst, 0.0
        return worst


LAG = LagProbe()


def _snapshot(freeze: bool = False) -> dict[str, Any]:
    """Collect, then read memory, CPU, the collector's counts, open files and tasks.

    With ``freeze``, move every object alive after the collection to the
    collector's permanent generation (``gc.freeze()``): later collections no
    longer walk them.
    """
    # CPU time before and after the collection below, which is not the run's work.
    cpu = cpu_seconds()
    collector = GC_CLOCK.reading()
    gc.collect()
    if freeze:
        gc.freeze()
    after = GC_CLOCK.reading()
    return {
        **memory(),
        "cpu": cpu,
        "cpu_after": cpu_seconds(),
        "gc": collector,
        "gc_after": after,
        "lag_max": LAG.take(),
        "fds": _open_fds(),
        "tasks": len(asyncio.all_tasks()),
    }
