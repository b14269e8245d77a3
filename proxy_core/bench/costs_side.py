"""A child of ``proxy-core bench-costs``: one side of one implementation, with its costs counted.

``python -m proxy_core.bench.costs_side ROLE SPEC_JSON``, ROLE ``server`` or
``client``. The spec names the implementation (``proxy``: bus to bus through
both proxies, as in :mod:`~proxy_core.bench.proxy_side`; ``bare``: the library
alone, as in :mod:`~proxy_core.bench.bare_side`), the transport, the codec and
the *mode*, which decides what is counted between the ``begin`` and the
``end`` of a window:

- ``count``: the event loop is a :class:`CountingLoop` (loop iterations, the
  callbacks it runs and which task or function each one is, tasks created,
  timers armed and cancelled, ``send``/``recv`` calls on the sockets asyncio
  owns), and every frame is kept and classified after the window (MSG, ACK,
  PING, BATCH...) by decoding it with the session's codec;
- ``strace``: a plain loop; the parent runs the child under ``strace -f``, and
  the child marks each window in the trace by ``stat``-ing a path that does
  not exist (:data:`~proxy_core.bench.costs.MARK`);
- ``copies``: a plain loop; the parent preloads a small C library that counts
  ``malloc``/``calloc``/``realloc`` of >= 16 KiB and ``memcpy``/``memmove`` of
  >= 16 KiB in every thread, read here through ``ctypes``;
- ``calls``: a plain loop; the functions called during the window, by whose
  code they are (:class:`~proxy_core.bench.calls.CallCounter`, cProfile), and
  proxy-core's own by name.

Transport messages are counted in every mode, below the proxy (a counting
:class:`~proxy_core.transport.Connection` around the backend's) or around the
bare library's send and receive calls. Nothing here is imported by the rest of
the package; everything it changes (the loop, ``bare_side``'s sink) is changed
in this process only.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final

from ..codecs.base import Codec
from ..plugins import resolve_codec, resolve_transport
from ..proxy import ProxyClient
from ..registry import WorkerReadyData
from ..runner import WorkerRunner
from ..service import serve_proxy
from ..transport import (
    Transport,
)
from . import bare_side
from .calls import CallCounter
from .costs import MARK
from .counting import (
    CountingLoop,
    FrameLog,
    _CountingTransport,
    classify_frames,
)
from .links import Link
from .proxy_side import CLIENT, FORWARD, SERVER, ProxyLink, Sink, Source
from .worker import _Channel, pin_to

__all__ = ["SIZES", "CountingLoop", "FrameLog", "Probe", "classify_frames", "main"]


#: The payload size of each scenario, in bytes.
SIZES: Final = {"rtt": 200, "stream_200b": 200, "stream_16k": 16 * 1024}


# ---------------------------------------------------------------- the windows


class _Copies:
    """The counters of the preloaded copy-counting library (see ``costs.SHIM_SOURCE``)."""

    NAMES: Final = ("alloc_16k", "realloc_16k", "memcpy_16k", "memmove_16k")

    def __init__(self, path: str) -> None:
        self._read = ctypes.CDLL(path).costs_read
        self._buffer = (ctypes.c_ulonglong * len(self.NAMES))()

    def read(self) -> dict[str, int]:
        self._read(self._buffer)
        return dict(zip(self.NAMES, self._buffer, strict=True))


def _mark(label: str, edge: str) -> None:
    """Leave ``stat(MARK/label-edge)`` in a trace: the edge of a counted window."""
    try:
        os.stat(f"{MARK}/{label}-{edge}")
    except OSError:
        pass


class Probe:
    """Reads every counter of this process at the edges of a window; returns the differences."""

    def __init__(self, mode: str, frames: FrameLog, codec: Codec | None, shim: str | None) -> None:
        self.mode = mode
        self.frames = frames
        self.codec = codec
        loop = asyncio.get_running_loop()
        self.loop = loop if isinstance(loop, CountingLoop) else None
        self.copies = _Copies(shim) if shim else None
        self.calls = CallCounter() if mode == "calls" else None
        self._start: dict[str, int] = {}
        self._labels: Counter[str] = Counter()

    def _read(self) -> dict[str, int]:
        counts = dict(self.frames.counts)
        if self.loop is not None:
            counts.update(self.loop.counts)
        if self.copies is not None:
            counts.update(self.copies.read())
        return counts

    def begin(self, label: str) -> None:
        if self.mode == "strace":
            _mark(label, "begin")
        if self.loop is not None:
            self._labels = Counter(self.loop.labels)
            self.frames.kept = []
        self._start = self._read()
        if self.calls is not None:
            self.calls.start()

    def end(self, label: str) -> dict[str, Any]:
        calls, functions = self.calls.stop() if self.calls is not None else ({}, {})
        now = self._read()
        if self.mode == "strace":
            _mark(label, "end")
        counts = {name: value - self._start.get(name, 0) for name, value in now.items()}
        labels: dict[str, int] = {}
        if self.loop is not None:
            labels = {
                name: value - self._labels[name]
                for name, value in self.loop.labels.items()
                if value > self._labels[name]
            }
        kept, self.frames.kept = self.frames.kept, None
        if kept is not None:
            counts.update(classify_frames(kept, self.codec))
        counts.update(calls)
        labels.update(functions)
        return {"counts": counts, "labels": labels}


# ---------------------------------------------------------------- server


def _count_bare_sink(log: FrameLog) -> None:
    """Make the bare servers' sink (in this process) count the frames it sends and receives."""
    sink = bare_side._sink

    async def counted(send: bare_side.Send, receive: bare_side.Receive) -> None:
        async def counted_send(data: bytes) -> Any:
            log.sent(data)
            return await send(data)

        async def counted_receive() -> bytes:
            data = await receive()
            log.received(data)
            return data

        await sink(counted_send, counted_receive)

    bare_side._sink = counted


@asynccontextmanager
async def _serve_proxy(transport: _CountingTransport, codec: str) -> AsyncIterator[str]:
    """Serve proxy sessions with a :class:`Sink` each, as ``proxy_side.serve`` does, counted."""

    async def setup(runner: WorkerRunner) -> None:
        await runner.add_workers(Sink())

    async with serve_proxy(
        f"{transport.inner.schemes[0]}://127.0.0.1:0/ws",
        transport=transport,
        codecs=(codec,),
        worker_name=SERVER,
        remote_worker_name=CLIENT,
        forward_messages=FORWARD,
        setup=setup,
    ) as service:
        yield service.url


class _Side:
    """What both roles share: the frame log, the counting transport, the probe."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.impl: str = spec["impl"]
        self.transport: str = spec["transport"]
        self.codec: str = spec["codec"]
        self.frames = FrameLog()
        self.counting = _CountingTransport(resolve_transport(self.transport), self.frames)
        proxy = self.impl == "proxy"
        self.probe = Probe(
            spec["mode"],
            self.frames,
            resolve_codec(self.codec) if proxy else None,
            spec.get("shim"),
        )

    def serve(self) -> AbstractAsyncContextManager[str]:
        if self.impl == "proxy":
            return _serve_proxy(self.counting, self.codec)
        _count_bare_sink(self.frames)
        return bare_side.serve(self.transport)


async def _server_role(spec: dict[str, Any]) -> int:
    channel = await _Channel.open()
    side = _Side(spec)
    async with side.serve() as url:
        channel.send({"event": "ready", "url": url, "pid": os.getpid()})
        while (command := await channel.receive()) is not None:
            name = command.get("cmd")
            if name == "stop":
                break
            if name == "begin":
                side.probe.begin(command["label"])
                channel.send({"ok": True})
            elif name == "end":
                channel.send({"ok": True, **side.probe.end(command["label"])})
            else:
                channel.send({"ok": False, "error": f"unknown command {name!r}"})
    return 0


# ---------------------------------------------------------------- client


async def _open_proxy(transport: Transport, url: str, codec: str, timeout: float) -> ProxyLink:
    """Connect a session as ``ProxyLink.open`` does, on ``transport`` (an instance)."""
    runner = WorkerRunner("bench-costs-client", handle_sigint=False)
    source = Source()
    proxy = ProxyClient(
        "proxy",
        url=url,
        transport=transport,
        codec=codec,
        local_worker_name=CLIENT,
        remote_worker_name=SERVER,
        forward_messages=FORWARD,
    )
    ready = asyncio.Event()

    async def on_ready(data: WorkerReadyData) -> None:
        ready.set()

    runner.registry.watch(SERVER, on_ready)
    await runner.add_workers(source, proxy)
    link = ProxyLink(runner, source, asyncio.get_running_loop().create_task(runner.run()))
    try:
        await source.activate_worker("proxy")
        await proxy.wait_connected(timeout)
        await asyncio.wait_for(ready.wait(), timeout)
    except BaseException:
        await link.aclose()
        raise
    return link


async def _open_bare(transport: str, url: str, log: FrameLog) -> Link:
    link = await bare_side.connect(transport, url)
    send, receive = link._send, link._receive

    async def counted_send(data: bytes) -> Any:
        log.sent(data)
        return await send(data)

    async def counted_receive() -> bytes:
        data = await receive()
        log.received(data)
        return data

    link._send, link._receive = counted_send, counted_receive
    return link


class _Client(_Side):
    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.link: Link | None = None
        # Seconds a window stays open after the work: the delayed ACKs (50 ms) belong to it.
        self.settle = float(spec["settle"])

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        name = command["cmd"]
        if name == "connect":
            if self.impl == "proxy":
                deadline = float(command.get("deadline", 60))
                self.link = await _open_proxy(self.counting, command["url"], self.codec, deadline)
            else:
                self.link = await _open_bare(self.transport, command["url"], self.frames)
            return {"ok": True}
        if name == "prepare":
            await self.prepare(command["scenario"], int(command["warmup"]))
            return {"ok": True}
        if name == "measure":
            return await self.measure(command["scenario"], int(command["count"]))
        return {"ok": False, "error": f"unknown command {name!r}"}

    def _link(self) -> Link:
        if self.link is None:
            raise RuntimeError("no connection: send 'connect' first")
        return self.link

    async def prepare(self, scenario: str, warmup: int) -> None:
        """Put the sink in the scenario's mode and warm the path up, outside any window."""
        link, size = self._link(), SIZES[scenario]
        if scenario == "rtt":
            await link.control("echo")
            await link.round_trips(size, warmup)
        else:
            await link.control("stream")
            await link.stream(size, warmup)
            await link.control("end")
            await link.control("stream")
        await asyncio.sleep(self.settle)

    async def measure(self, scenario: str, count: int) -> dict[str, Any]:
        """One window: the work, the sink's ``end`` reply, then ``settle`` seconds."""
        link, size = self._link(), SIZES[scenario]
        self.probe.begin(scenario)
        if scenario == "rtt":
            await link.round_trips(size, count)
        else:
            await link.stream(size, count)
        reply = await link.control("end")
        await asyncio.sleep(self.settle)
        result = self.probe.end(scenario)
        if scenario == "rtt":
            await link.control("stream")  # no echoes after this
        elif reply.get("count") != count:
            raise RuntimeError(f"the sink counted {reply.get('count')} of {count} messages")
        return {"ok": True, **result}

    async def aclose(self) -> None:
        link, self.link = self.link, None
        if link is not None:
            await asyncio.wait_for(link.aclose(), 20)


async def _client_role(spec: dict[str, Any]) -> int:
    channel = await _Channel.open()
    client = _Client(spec)
    channel.send({"event": "ready", "pid": os.getpid()})
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


_ROLES = {"server": _server_role, "client": _client_role}


def main(argv: list[str] | None = None) -> int:
    """Run a child role (``ROLE SPEC_JSON``); return its exit code."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in _ROLES:
        print(f"usage: python -m proxy_core.bench.costs_side {{{','.join(_ROLES)}}} SPEC_JSON")
        return 2
    spec: dict[str, Any] = json.loads(args[1])
    pin_to(spec.get("core"))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    factory = CountingLoop if spec["mode"] == "count" else asyncio.SelectorEventLoop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_ROLES[args[0]](spec))


if __name__ == "__main__":
    sys.exit(main())
