"""A benchmark child process: ``python -m proxy_core.bench.worker ROLE SPEC_JSON``.

Roles: ``server`` (serves sinks for one implementation), ``client`` (opens
links and runs the timed scenarios on command) and ``codec`` (the codec
micro-benchmark). A child runs on the event loop its spec names (``"loop"``:
``asyncio``, the default, or ``uvloop``) and says which in its ready event.
The parent talks to a child in JSON lines: commands on the child's stdin,
one reply per command on its stdout (kept apart from anything a library
prints, which goes to stderr). A child pins itself to
the core named in its spec where the OS allows, runs every command under a
deadline, and exits when told to stop or when its stdin closes.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import json
import logging
import os
import pstats
import resource
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager
from typing import IO, Any

from ..loops import loop_name
from ..loops import run as run_on
from .links import Link, close_all
from .stats import percentile

__all__ = ["main", "pin_to", "rss_bytes"]


def pin_to(core: int | None) -> bool:
    """Pin this process to ``core`` where the OS allows; return whether it is pinned."""
    if core is None or not hasattr(os, "sched_setaffinity"):
        return False
    try:
        os.sched_setaffinity(0, {core})
    except OSError:
        return False
    return True


def rss_bytes() -> int:
    """Return this process's resident memory now (``/proc``), or its peak where that is missing."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class _Channel:
    """JSON lines: commands from stdin, replies to a private copy of stdout."""

    def __init__(self, reader: asyncio.StreamReader, out: IO[str]) -> None:
        self._reader = reader
        self._out = out

    @classmethod
    async def open(cls) -> _Channel:
        out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints go to stderr
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        return cls(reader, out)

    async def receive(self) -> dict[str, Any] | None:
        line = await self._reader.readline()
        if not line:
            return None
        command: dict[str, Any] = json.loads(line)
        return command

    def send(self, message: dict[str, Any]) -> None:
        self._out.write(json.dumps(message) + "\n")
        self._out.flush()


class _Profiler:
    """A cProfile switched on and off by commands; writes the top functions by tottime."""

    def __init__(self) -> None:
        self._profile: cProfile.Profile | None = None

    def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        if command.get("action") == "start":
            # CPU time, not wall time: on a shared machine a preempted process
            # would otherwise charge the wait to whatever function was running.
            self._profile = cProfile.Profile(time.process_time)
            self._profile.enable()
            return {"ok": True}
        profile, self._profile = self._profile, None
        if profile is None:
            return {"ok": False, "error": "the profiler is not running"}
        profile.disable()
        with open(command["path"], "w") as out:
            out.write(f"# {command.get('title', 'profile')}\n")
            out.write("# timer: process CPU time (time.process_time), so waiting is not counted\n")
            stats = pstats.Stats(profile, stream=out)
            stats.sort_stats("tottime").print_stats(int(command.get("top", 30)))
        return {"ok": True}


# ---------------------------------------------------------------- server


def _server(spec: dict[str, Any]) -> AbstractAsyncContextManager[str]:
    impl = spec["impl"]
    if impl == "proxy":
        from . import proxy_side

        return proxy_side.serve(spec["transport"], spec["codecs"])
    if impl in ("bare", "hop"):
        from . import bare_side

        return bare_side.serve(spec["transport"], hop=impl == "hop")
    if impl == "pipecat":
        from . import pipecat_side

        return pipecat_side.serve()
    raise ValueError(f"unknown implementation {impl!r}")


async def _server_role(spec: dict[str, Any]) -> int:
    channel = await _Channel.open()
    profiler = _Profiler()
    async with _server(spec) as url:
        channel.send({"event": "ready", "url": url, "pid": os.getpid(), "loop": loop_name()})
        while (command := await channel.receive()) is not None:
            name = command.get("cmd")
            if name == "stop":
                break
            if name == "rss":
                gc.collect()
                channel.send({"ok": True, "rss": rss_bytes()})
            elif name == "profile":
                channel.send(profiler.handle(command))
            else:
                channel.send({"ok": False, "error": f"unknown command {name!r}"})
    return 0


# ---------------------------------------------------------------- client


class _Client:
    """The client's state: the main link, idle links, and the scenario drivers."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.impl: str = spec["impl"]
        self.transport: str = spec["transport"]
        self.link: Link | None = None
        self.idle: list[Link] = []
        self.profiler = _Profiler()

    async def open_link(self, url: str, codec: str, timeout: float) -> Link:
        if self.impl == "proxy":
            from .proxy_side import ProxyLink

            return await ProxyLink.open(self.transport, url, codec, timeout)
        if self.impl in ("bare", "hop"):
            from .bare_side import connect

            return await connect(self.transport, url, hop=self.impl == "hop")
        from .pipecat_side import PipecatLink

        return await PipecatLink.open(url, timeout)

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        name = command["cmd"]
        deadline = float(command.get("deadline", 60))
        if name == "connect":
            if self.link is None:
                self.link = await self.open_link(command["url"], command["codec"], deadline)
            return {"ok": True}
        if name == "disconnect":
            link, self.link = self.link, None
            if link is not None:
                await close_all([link], deadline)
            return {"ok": True}
        if name == "stream":
            return await self.stream(int(command["size"]), int(command["count"]), command)
        if name == "rtt":
            return await self.rtt(int(command["size"]), int(command["count"]), command)
        if name == "open_idle":
            count = int(command["count"])
            return await self.open_idle(command["url"], command["codec"], count, deadline)
        if name == "close_idle":
            idle, self.idle = self.idle, []
            await close_all(idle, deadline)
            return {"ok": True, "closed": len(idle)}
        if name == "profile":
            return self.profiler.handle(command)
        return {"ok": False, "error": f"unknown command {name!r}"}

    def _main_link(self) -> Link:
        if self.link is None:
            raise RuntimeError("no connection: send 'connect' first")
        return self.link

    async def stream(self, size: int, count: int, command: dict[str, Any]) -> dict[str, Any]:
        link = self._main_link()
        warmup = int(command.get("warmup", 0))
        back_to_back = bool(command.get("back_to_back", False))
        if warmup:
            await link.control("stream")
            await link.stream(size, warmup, back_to_back=back_to_back)
            await link.control("end")
        await link.control("stream")
        start, cpu = time.perf_counter(), time.process_time()
        await link.stream(size, count, back_to_back=back_to_back)
        reply = await link.control("end")
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        if reply.get("count") != count:
            raise RuntimeError(f"the sink counted {reply.get('count')} of {count} messages")
        return {"ok": True, "elapsed": elapsed, "client_cpu": cpu, "server_cpu": reply["cpu"]}

    async def rtt(self, size: int, count: int, command: dict[str, Any]) -> dict[str, Any]:
        link = self._main_link()
        await link.control("echo")
        warmup = int(command.get("warmup", 0))
        if warmup:
            await link.round_trips(size, warmup)
            await link.control("echo")  # the sink's CPU clock starts again
        cpu = time.process_time()
        samples = await link.round_trips(size, count)
        cpu = time.process_time() - cpu
        # The server's CPU since "echo" holds one control round trip more: negligible.
        server_cpu = (await link.control("end"))["cpu"]
        await link.control("stream")  # back to counting: no echoes in flight later
        return {
            "ok": True,
            "p50": percentile(samples, 50) * 1e6,
            "p99": percentile(samples, 99) * 1e6,
            "cpu_client": cpu / count * 1e6,
            "cpu_server": server_cpu / count * 1e6,
        }

    async def open_idle(self, url: str, codec: str, count: int, deadline: float) -> dict[str, Any]:
        if self.impl == "proxy":
            from . import proxy_side

            links = await proxy_side.open_idle_sessions(self.transport, url, codec, count, deadline)
        elif self.impl == "bare":
            from . import bare_side

            links = await bare_side.open_idle_sessions(self.transport, url, count)
        else:
            from . import pipecat_side

            links = await pipecat_side.open_idle_sessions(url, count, deadline)
        self.idle.extend(links)
        return {"ok": True, "opened": len(links)}

    async def aclose(self) -> None:
        links = self.idle + ([self.link] if self.link is not None else [])
        self.idle, self.link = [], None
        await close_all(links, 10)


async def _client_role(spec: dict[str, Any]) -> int:
    channel = await _Channel.open()
    client = _Client(spec)
    channel.send({"event": "ready", "pid": os.getpid(), "loop": loop_name()})
    try:
        while (command := await channel.receive()) is not None:
            if command.get("cmd") == "stop":
                break
            try:
                async with asyncio.timeout(float(command.get("deadline", 60))):
                    reply = await client.handle(command)
            except Exception as exc:
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            channel.send(reply)
    finally:
        await client.aclose()
    return 0


# ---------------------------------------------------------------- codec


async def _codec_role(spec: dict[str, Any]) -> int:
    from .codec_bench import measure

    channel = await _Channel.open()
    channel.send({"event": "ready", "pid": os.getpid()})
    channel.send({"ok": True, "codecs": measure(list(spec["codecs"]), float(spec["seconds"]))})
    return 0


_ROLES = {"server": _server_role, "client": _client_role, "codec": _codec_role}


def run_role(
    module: str,
    roles: Mapping[str, Callable[[dict[str, Any]], Coroutine[Any, Any, int]]],
    argv: list[str] | None,
) -> int:
    """Run the child role named in ``argv`` (``ROLE SPEC_JSON``) of ``module``; return its code.

    The role runs on the event loop named by the spec's ``"loop"`` (default ``asyncio``).
    """
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in roles:
        print(f"usage: python -m {module} {{{','.join(roles)}}} SPEC_JSON")
        return 2
    spec: dict[str, Any] = json.loads(args[1])
    pin_to(spec.get("core"))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    return run_on(roles[args[0]](spec), loop=str(spec.get("loop", "asyncio")))


def main(argv: list[str] | None = None) -> int:
    """Run a child role; return its exit code."""
    return run_role("proxy_core.bench.worker", _ROLES, argv)


if __name__ == "__main__":
    sys.exit(main())
