"""A bus benchmark child: ``python -m proxy_core.bench.bus_side ROLE SPEC_JSON``.

Roles:

- ``local``: both workers in this process. ``ours``: worker ``src`` and
  worker ``dst`` on one :class:`~proxy_core.bus.InProcessBus` (the runner's
  default bus); ``bare``: two asyncio tasks handing the payload over an
  :class:`asyncio.Queue` each way.
- ``receiver`` and ``sender``, one process each, on one Redis server.
  ``ours``: a :class:`~proxy_core.runner.WorkerRunner` on
  ``RedisBus(url, channel=...)`` with worker ``dst`` (receiver) or ``src``
  (sender); ``bare``: redis-py's asyncio client (with hiredis where
  installed) on two streams, ``req`` and ``rep``: the sender ``XADD`` s one
  entry per message, the receiver ``XREADGROUP ... COUNT 256 BLOCK`` s, then
  ``XACK`` s what it read; replies go back the same way on ``rep``.

Payloads are ``BusFrameMessage("src", "dst", AudioRawFrame(<200 random
bytes>, 16000))`` for ours, the same 200 random bytes for bare. Control
commands (``stream``, ``echo``, ``end``: :class:`~proxy_core.bench.links.SinkState`)
travel the same path as ``BusDataMessage`` s (ours) or short entries (bare).

The parent speaks JSON lines, as to :mod:`proxy_core.bench.worker`'s
children: ``{"event": "ready"}`` once set up, then one reply per command.
The sender (or ``local``) takes ``stream`` and ``rtt``; every role takes
``stop``. With ``"profile": {"path": ..., "title": ...}`` in its spec, a
child runs under cProfile (CPU clock) from ready to stop and writes the top
functions by tottime there. Redis is imported only here, and only by the
Redis roles.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..inbox import DEFAULT_MAX_QUEUE
from ..loops import loop_name
from ..registry import WorkerReadyData
from ..runner import WorkerRunner
from ..worker import BaseWorker
from .links import Link, SinkState, chunks, produce, yield_to_loop
from .proxy_side import Sink, Source, SourceLink
from .stats import percentile
from .worker import _Channel, _Profiler, run_role

__all__ = ["SOURCE", "TARGET", "main"]

SOURCE, TARGET = "src", "dst"
_GROUP, _CONSUMER = "g", "c"
_READ_COUNT = 256  # entries per XREADGROUP, bare and ours (RedisBus reads 256 too)
_BLOCK_MS = 1000  # how long the bare receiver's XREADGROUP blocks before it looks again


# ---------------------------------------------------------------- ours: workers


async def _start_runner(
    runner: WorkerRunner, worker: BaseWorker, wait_for: str, timeout: float
) -> asyncio.Task[None]:
    """Add ``worker``, run ``runner`` in a task, and wait until ``wait_for`` is ready."""
    ready = asyncio.Event()

    async def on_ready(data: WorkerReadyData) -> None:
        ready.set()

    runner.registry.watch(wait_for, on_ready)
    await runner.add_workers(worker)
    task = asyncio.get_running_loop().create_task(runner.run())
    try:
        await asyncio.wait_for(ready.wait(), timeout)
    except BaseException:
        await _stop_runner(runner, task)
        raise
    return task


async def _stop_runner(runner: WorkerRunner, task: asyncio.Task[None]) -> None:
    await runner.end("benchmark done")
    try:
        await asyncio.wait_for(task, 15)
    except (TimeoutError, Exception):
        task.cancel()


class WorkerLink(SourceLink):
    """Worker ``src`` sending to worker ``dst`` on whatever bus its runner has."""

    def __init__(self, source: Source, close: Callable[[], Awaitable[None]]) -> None:
        super().__init__(source)
        self._close = close

    async def aclose(self) -> None:
        await self._close()


class QueueLink(Link):
    """Two tasks handing bytes over a bounded :class:`asyncio.Queue` each way."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[bytes | str] = asyncio.Queue(DEFAULT_MAX_QUEUE)
        self.replies: asyncio.Queue[bytes | dict[str, Any]] = asyncio.Queue(DEFAULT_MAX_QUEUE)
        self._task = asyncio.get_running_loop().create_task(self._sink())

    async def _sink(self) -> None:
        state = SinkState()
        get, put = self.requests.get, self.replies.put
        while True:
            item = await get()
            if type(item) is bytes:
                if state.echo:
                    await put(item)
                else:
                    state.count += 1
            else:
                await put(state.control(str(item)))

    async def control(self, command: str) -> dict[str, Any]:
        await self.requests.put(command)
        reply = await self.replies.get()
        if not isinstance(reply, dict):
            raise RuntimeError("expected a control reply, got a payload")
        return reply

    async def stream(self, size: int, count: int, *, back_to_back: bool = False) -> None:
        await produce(self.requests.put, os.urandom(size), count, back_to_back=back_to_back)

    async def round_trips(self, size: int, count: int) -> list[float]:
        payload = os.urandom(size)
        put, get = self.requests.put, self.replies.get
        clock = time.perf_counter
        samples: list[float] = []
        for _ in range(count):
            start = clock()
            await put(payload)
            await get()
            samples.append(clock() - start)
        return samples

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


# ---------------------------------------------------------------- bare: redis-py


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The entries of an ``XREADGROUP`` reply on one stream (RESP2 or RESP3)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [e for entries in reply.values() for e in entries[0]]
    return [e for _, entries in reply for e in entries]


class RedisBareLink(Link):
    """The sender's end of the bare baseline: ``XADD`` to ``req``, replies from ``rep``."""

    def __init__(self, client: Any, req: str, rep: str, block_ms: int) -> None:
        self._r = client
        self._req, self._rep = req, rep
        self._block_ms = block_ms

    async def _reply(self) -> dict[bytes, bytes]:
        entries = _entries(
            await self._r.xreadgroup(
                _GROUP, _CONSUMER, {self._rep: ">"}, count=1, block=self._block_ms
            )
        )
        if not entries:
            raise TimeoutError("no reply from the receiver")
        entry_id, fields = entries[0]
        await self._r.xack(self._rep, _GROUP, entry_id)
        return fields

    async def control(self, command: str) -> dict[str, Any]:
        await self._r.xadd(self._req, {"c": command})
        fields = await self._reply()
        reply: dict[str, Any] = json.loads(fields[b"r"])
        return reply

    async def stream(self, size: int, count: int, *, back_to_back: bool = False) -> None:
        fields = {"m": os.urandom(size)}
        xadd, req = self._r.xadd, self._req
        for run in (count,) if back_to_back else chunks(count):
            for _ in range(run):
                await xadd(req, fields)
            if not back_to_back:
                await yield_to_loop()

    async def round_trips(self, size: int, count: int) -> list[float]:
        fields = {"m": os.urandom(size)}
        r, req, rep, block = self._r, self._req, self._rep, self._block_ms
        clock = time.perf_counter
        samples: list[float] = []
        for _ in range(count):
            start = clock()
            await r.xadd(req, fields)
            entries = _entries(await r.xreadgroup(_GROUP, _CONSUMER, {rep: ">"}, block=block))
            samples.append(clock() - start)
            if not entries:
                raise TimeoutError("no echo from the receiver")
            await r.xack(rep, _GROUP, *(entry_id for entry_id, _ in entries))
        return samples

    async def aclose(self) -> None:
        await self._r.aclose()


async def _bare_receive(client: Any, req: str, rep: str) -> None:
    """The bare receiver: read ``req`` in batches, count or echo, reply to controls, ack."""
    state = SinkState()
    xadd, xack, xreadgroup = client.xadd, client.xack, client.xreadgroup
    streams = {req: ">"}
    while True:
        entries = _entries(
            await xreadgroup(_GROUP, _CONSUMER, streams, count=_READ_COUNT, block=_BLOCK_MS)
        )
        if not entries:
            continue
        for _, fields in entries:
            payload = fields.get(b"m")
            if payload is not None:
                if state.echo:
                    await xadd(rep, {"m": payload})
                else:
                    state.count += 1
            else:
                answer = state.control(fields.get(b"c", b"").decode())
                await xadd(rep, {"r": json.dumps(answer)})
        await xack(req, _GROUP, *(entry_id for entry_id, _ in entries))


def _bare_client(url: str) -> Any:
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(url, decode_responses=False)


async def _bare_streams(client: Any, req: str, rep: str) -> None:
    for stream in (req, rep):
        await client.xgroup_create(stream, _GROUP, id="$", mkstream=True)


# ---------------------------------------------------------------- the engine's CPU


class _EngineClock:
    """The redis-server's CPU seconds (``INFO cpu``: user + system, from getrusage)."""

    def __init__(self, url: str | None) -> None:
        self._client = _bare_client(url) if url else None

    async def now(self) -> float | None:
        if self._client is None:
            return None
        info = await self._client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


# ---------------------------------------------------------------- timed scenarios


async def timed_stream(
    link: Link, size: int, count: int, warmup: int, engine: _EngineClock
) -> dict[str, Any]:
    """Warm up, then time ``count`` messages from the first send to the reply to ``end``."""
    if warmup:
        await link.control("stream")
        await link.stream(size, warmup)
        await link.control("end")
    await link.control("stream")
    engine_start = await engine.now()
    start, cpu = time.perf_counter(), time.process_time()
    await link.stream(size, count)
    reply = await link.control("end")
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    engine_end = await engine.now()
    if reply.get("count") != count:
        raise RuntimeError(f"the receiver counted {reply.get('count')} of {count} messages")
    result: dict[str, Any] = {
        "ok": True,
        "elapsed": elapsed,
        "client_cpu": cpu,
        "server_cpu": reply["cpu"],
    }
    if engine_start is not None and engine_end is not None:
        result["engine_cpu"] = engine_end - engine_start
    return result


async def timed_round_trips(link: Link, size: int, count: int, warmup: int) -> dict[str, Any]:
    """Switch the receiver to echo, warm up, time ``count`` round trips; p50 and p99 in us."""
    await link.control("echo")
    if warmup:
        await link.round_trips(size, warmup)
    samples = await link.round_trips(size, count)
    await link.control("stream")  # back to counting: nothing echoed later
    return {"ok": True, "p50": percentile(samples, 50) * 1e6, "p99": percentile(samples, 99) * 1e6}


async def _serve_commands(
    channel: _Channel, link: Link | None, engine: _EngineClock, spec: dict[str, Any]
) -> None:
    """Answer the parent's commands until ``stop`` (or its stdin closes), profiled if asked."""
    profile = spec.get("profile")
    profiler = _Profiler()
    if profile:
        profiler.handle({"action": "start"})
    try:
        await _answer(channel, link, engine)
    finally:
        if profile:
            profiler.handle({"action": "stop", **profile})


async def _answer(channel: _Channel, link: Link | None, engine: _EngineClock) -> None:
    while (command := await channel.receive()) is not None:
        name = command.get("cmd")
        if name == "stop":
            return
        try:
            async with asyncio.timeout(float(command.get("deadline", 60))):
                if link is None:
                    raise RuntimeError(f"this role takes no command {name!r}")
                size, count = int(command.get("size", 200)), int(command["count"])
                warmup = int(command.get("warmup", 0))
                if name == "stream":
                    reply = await timed_stream(link, size, count, warmup, engine)
                elif name == "rtt":
                    reply = await timed_round_trips(link, size, count, warmup)
                else:
                    reply = {"ok": False, "error": f"unknown command {name!r}"}
        except Exception as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        channel.send(reply)


# ---------------------------------------------------------------- roles


async def _local_role(spec: dict[str, Any]) -> int:
    channel = await _Channel.open()
    timeout = float(spec.get("deadline", 30))
    link: Link
    if spec["impl"] == "ours":
        runner = WorkerRunner("bench-bus-local", handle_sigint=False)
        source = Source(SOURCE, peer=TARGET)
        await runner.add_workers(Sink(TARGET))
        task = await _start_runner(runner, source, TARGET, timeout)
        link = WorkerLink(source, lambda: _stop_runner(runner, task))
    else:
        link = QueueLink()
    channel.send({"event": "ready", "pid": os.getpid(), "loop": loop_name()})
    try:
        await _serve_commands(channel, link, _EngineClock(None), spec)
    finally:
        await link.aclose()
    return 0


def _redis_bus(spec: dict[str, Any]) -> Any:
    # A plug-in, imported only by the Redis roles (mypy does not see editable installs).
    module = importlib.import_module("proxy_core_redis")
    return module.RedisBus(spec["url"], channel=spec["channel"])


async def _receiver_role(spec: dict[str, Any]) -> int:
    channel = await _Channel.open()
    timeout = float(spec.get("deadline", 30))
    if spec["impl"] == "ours":
        runner = WorkerRunner("bench-receiver", bus=_redis_bus(spec), handle_sigint=False)
        task = await _start_runner(runner, Sink(TARGET), TARGET, timeout)
        channel.send({"event": "ready", "pid": os.getpid(), "loop": loop_name()})
        try:
            await _serve_commands(channel, None, _EngineClock(None), spec)
        finally:
            await _stop_runner(runner, task)
        return 0
    client = _bare_client(spec["url"])
    req, rep = spec["streams"]
    await _bare_streams(client, req, rep)
    receive = asyncio.get_running_loop().create_task(_bare_receive(client, req, rep))
    channel.send({"event": "ready", "pid": os.getpid(), "loop": loop_name()})
    try:
        await _serve_commands(channel, None, _EngineClock(None), spec)
    finally:
        receive.cancel()
        with contextlib.suppress(BaseException):
            await receive
        if receive.done() and not receive.cancelled() and receive.exception() is not None:
            print(f"bare receiver failed: {receive.exception()!r}", file=sys.stderr)
        await client.aclose()
    return 0


async def _sender_role(spec: dict[str, Any]) -> int:
    channel = await _Channel.open()
    timeout = float(spec.get("deadline", 30))
    link: Link
    if spec["impl"] == "ours":
        runner = WorkerRunner("bench-sender", bus=_redis_bus(spec), handle_sigint=False)
        source = Source(SOURCE, peer=TARGET)
        task = await _start_runner(runner, source, TARGET, timeout)
        link = WorkerLink(source, lambda: _stop_runner(runner, task))
    else:
        req, rep = spec["streams"]
        link = RedisBareLink(_bare_client(spec["url"]), req, rep, int(timeout * 1000))
    engine = _EngineClock(spec["url"])
    channel.send({"event": "ready", "pid": os.getpid(), "loop": loop_name()})
    try:
        await _serve_commands(channel, link, engine, spec)
    finally:
        await engine.aclose()
        await link.aclose()
    return 0


_ROLES = {"local": _local_role, "receiver": _receiver_role, "sender": _sender_role}


def main(argv: list[str] | None = None) -> int:
    """Run a role; return its exit code."""
    return run_role("proxy_core.bench.bus_side", _ROLES, argv)


if __name__ == "__main__":
    sys.exit(main())
