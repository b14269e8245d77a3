"""What the benchmark reports about where it ran: the machine, the libraries, the load.

Shared by ``proxy-core bench``, ``bench-costs`` and ``bench-load``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from ..loops import loop_version
from .child import ROOT

__all__ = ["busy_note", "check_other_python", "cpu_in_use", "git_commit", "machine_info"]

_BUSY_CORES = 0.25  # other processes using this many cores before the run is worth a note
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


def check_other_python(python: str) -> tuple[str | None, str | None]:
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
    info["commit"] = git_commit()
    return info


def git_commit() -> str | None:
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


def busy_note(machine: dict[str, Any], pinned: bool) -> list[str]:
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
