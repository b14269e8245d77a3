"""``proxy-core demo --bus redis``: the demo's workers in two OS processes on one Redis bus.

There is no proxy here: both processes join one ``RedisBus`` channel, so a
worker of one process reaches a worker of the other by name, as if they shared
one in-process bus. Process 1 runs ``acme``; process 2 runs ``assistant``
(deterministic answers) and ``helper``. ``acme`` waits for ``assistant``
through the registry, activates it, sends text frames and gets answers, sends
a broadcast (it reaches both workers of process 2) and a ``BusLocalMessage``
(it stays in process 1). Each process prints what it sees, and its bus's
counters at the end; the demo then checks that Redis holds no key of the
channel any more.

The parent (:func:`run_bus_demo`) starts a throwaway ``redis-server`` unless
given a URL, starts both processes (``python -m proxy_core.demo_bus acme|assistant``),
and prefixes each line with the process it comes from. ``proxy_core_redis`` is
imported lazily: without it, the demo says which package to install.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ProxyError
from .messages import (
    BusFrameMessage,
    BusLocalMessage,
    BusMessage,
    BusWorkerReadyMessage,
    TextFrame,
)
from .plugins import resolve_codec
from .registry import WorkerReadyData
from .runner import WorkerRunner
from .worker import BaseWorker

__all__ = ["DEFAULT_CHANNEL", "run_bus_demo"]

#: The channel the demo uses unless told otherwise.
DEFAULT_CHANNEL = "proxy-core-demo"
#: Seconds the whole demo may take (a reply, a process, the end) before it gives up.
TIMEOUT = 60.0
INSTALL_HINT = "pip install proxy-core-redis"
_CONTROL = "@@"  # a line a child prints for the parent only: not shown
_RUNNERS = {"acme": "process-1", "assistant": "process-2"}
_DONE = "that is all"
_NOTE_CHECK = "did my note arrive?"


def _redis_bus(module: str = "proxy_core_redis") -> Any:
    """Import a module of the Redis bus (a plug-in: the core never needs it to import).

    Raises:
        ProxyError: it is not installed; the one-line message names the package.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ProxyError(f"--bus redis needs the Redis bus ({exc}): {INSTALL_HINT}") from None


# ============================================================================ the parent


def run_bus_demo(
    *, redis_url: str | None = None, channel: str = DEFAULT_CHANNEL, codec: str = "msgpack"
) -> int:
    """Run the two-process demo; return a process exit code (0: it all happened and was clean).

    Raises:
        ProxyError: the Redis bus is not installed, no redis-server could be
            started, or Redis cannot be reached (one line each).
    """
    plugin = _redis_bus()
    resolve_codec(codec)  # an unknown codec fails here, with the list of installed ones
    prefix: str = _redis_bus("proxy_core_redis.keys").Keys(channel).prefix  # a bad channel too
    server: Any = None
    try:
        if redis_url is None:
            server = plugin.RedisServer()
            try:
                server.start()
            except ProxyError as exc:
                # Its message ends with the server's log: keep the first line.
                raise ProxyError(str(exc).splitlines()[0]) from None
            _say("demo", f"started a throwaway redis-server on {server.url} ({server.binary})")
            redis_url = server.url
        return asyncio.run(_parent(redis_url, channel, prefix, codec))
    finally:
        if server is not None:
            started = server.running
            server.close()
            if started:
                _say("demo", "stopped the throwaway redis-server")


def _say(who: str, text: str, *, err: bool = False) -> None:
    print(f"[{who:>6}] {text}", file=sys.stderr if err else sys.stdout, flush=True)


async def _parent(url: str, channel: str, prefix: str, codec: str) -> int:
    aioredis = _redis_bus("redis.asyncio")
    shown: str = _redis_bus("proxy_core_redis.bus").redact(url)
    try:
        admin = aioredis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
    except ValueError as exc:
        raise ProxyError(f"not a Redis URL: {shown!r}: {exc}") from None
    try:
        try:
            await admin.ping()
        except Exception as exc:  # refused, timed out, a TLS or auth failure: all one line
            detail = str(exc).strip().replace("\n", " ") or type(exc).__name__
            raise ProxyError(f"cannot reach Redis at {shown}: {detail}") from None
        version = str((await admin.info("server")).get("redis_version", "0"))
        if tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) < (6, 2):
            raise ProxyError(f"the Redis bus needs Redis 6.2 or later; {shown} runs {version}")
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
        if before := await _keys(admin, pattern):
            raise ProxyError(
                f"channel {channel!r} on {shown} is in use ({len(before)} key(s) match "
                f"{pattern!r}): pick another --channel"
            )
        _say("demo", f"both processes join the bus on channel {channel!r} of {shown}")
        code = await _run_children(url, channel, codec)
        if code != 0:
            return code
        if left := await _keys(admin, pattern):
            _say("demo", f"{len(left)} key(s) left behind in Redis: {', '.join(sorted(left))}")
            return 1
        _say("demo", f"no keys left behind in Redis (SCAN MATCH {pattern!r} finds none)")
        return 0
    finally:
        await admin.aclose()


async def _keys(admin: Any, pattern: str) -> list[str]:
    return [
        k.decode(errors="replace") if isinstance(k, bytes) else str(k)
        async for k in admin.scan_iter(match=pattern, count=1000)
    ]


class _Child:
    """One process of the demo: its lines are shown, prefixed, as they come."""

    def __init__(self, label: str, process: asyncio.subprocess.Process) -> None:
        self.label = label
        self.process = process
        self.control: asyncio.Queue[str] = asyncio.Queue()
        assert process.stdout is not None and process.stderr is not None
        self._relays = [
            asyncio.create_task(self._relay(process.stdout, err=False)),
            asyncio.create_task(self._relay(process.stderr, err=True)),
        ]

    @classmethod
    async def start(cls, role: str, label: str, url: str, channel: str, codec: str) -> _Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "proxy_core.demo_bus",
            role,
            "--redis-url",
            url,
            "--channel",
            channel,
            "--codec",
            codec,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        return cls(label, process)

    async def _relay(self, stream: asyncio.StreamReader, *, err: bool) -> None:
        async for raw in stream:
            line = raw.decode(errors="replace").rstrip("\n")
            if not err and line.startswith(_CONTROL):
                self.control.put_nowait(line[len(_CONTROL) :])
            else:
                _say(self.label, line, err=err)
        if not err:
            self.control.put_nowait("exit")

    async def expect(self, event: str) -> None:
        """Wait for the control line ``event``; raise if the process ends first."""
        while (got := await self.control.get()) != event:
            if got == "exit":
                raise ProxyError(f"{self.label} ended before {event!r}")

    async def wait(self) -> int:
        code = await self.process.wait()
        await asyncio.gather(*self._relays)
        return code

    async def stop(self) -> None:
        """End it if it still runs: SIGINT (a graceful end), then SIGKILL."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
        await self.process.wait()
        for relay in self._relays:
            relay.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)


async def _run_children(url: str, channel: str, codec: str) -> int:
    children: list[_Child] = []
    try:
        async with asyncio.timeout(TIMEOUT):
            first = await _Child.start("acme", "proc 1", url, channel, codec)
            children.append(first)
            _say("demo", f"process 1 (pid {first.process.pid}) runs worker acme")
            await first.expect("waiting")
            second = await _Child.start("assistant", "proc 2", url, channel, codec)
            children.append(second)
            _say("demo", f"process 2 (pid {second.process.pid}) runs workers assistant and helper")
            # Both end by themselves; if one fails, the other is stopped (below) at once.
            pending = {asyncio.ensure_future(child.wait()) for child in children}
            try:
                while pending:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    if any(task.result() != 0 for task in done):
                        break
            finally:
                for task in pending:
                    task.cancel()
    except TimeoutError:
        _say("demo", f"the demo did not complete within {TIMEOUT:g} s; stopping it", err=True)
        return 1
    finally:
        for child in children:
            await child.stop()
    codes = [child.process.returncode for child in children]
    if codes != [0, 0]:
        _say("demo", f"the processes exited with {codes[0]} and {codes[1]}", err=True)
        return 1
    _say("demo", "both processes ended cleanly")
    _say(
        "demo",
        "sent/received: messages written to/read from Redis; acked: entries finished "
        "(registry news too); kept_local: local messages kept in their process",
    )
    return 0


# ============================================================================ the children


@dataclass
class _Note(BusLocalMessage, BusMessage):
    """A message that never leaves its process, whatever the bus."""

    text: str = ""


def _out(text: str) -> None:
    print(text, flush=True)


def _text(message: BusMessage) -> str | None:
    if isinstance(message, BusFrameMessage) and isinstance(message.frame, TextFrame):
        return message.frame.text
    return None


def _counters(bus: Any) -> str:
    stats = bus.stats()
    line = f"bus counters: sent={stats['sent']} received={stats['received']}"
    line += f" acked={stats['acked']}"
    if bus.undeliverable:
        line += f" kept_local={bus.undeliverable}"
    return line


class _Acme(BaseWorker):
    """Process 1: waits for assistant through the registry, then runs the script."""

    def __init__(self) -> None:
        super().__init__("acme")
        self.replies: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.ok = False

    async def on_start(self) -> None:
        self.registry.watch("assistant", self._assistant_ready)
        _out("acme: waiting for 'assistant' to appear on the bus (registry.watch)")
        _out(f"{_CONTROL}waiting")

    async def _assistant_ready(self, data: WorkerReadyData) -> None:
        where = "in another process" if data.node else "in this process"
        _out(f"registry: 'assistant' is ready in runner {data.node!r} ({where}); activating it")
        try:
            await self._script()
        except TimeoutError:
            _out(f"acme: no answer within {TIMEOUT:g} s; giving up")
        await self.runner.end("acme is done")

    async def _say(self, target: str | None, text: str, note: str = "") -> None:
        _out(f"acme -> {target or 'everyone'}: {text!r}{note}")
        await self.send_bus_message(BusFrameMessage(self.name, target, TextFrame(text)))

    async def _answer(self, source: str) -> str:
        while True:
            got_from, text = await asyncio.wait_for(self.replies.get(), TIMEOUT)
            _out(f"acme <- {got_from}: {text!r}")
            if got_from == source:
                return text

    async def _script(self) -> None:
        await self.activate_worker("assistant", args={"greeting": "hello from process 1"})
        for text in ("hi there", "how are you?"):
            await self._say("assistant", text)
            await self._answer("assistant")
        await self._say(None, "hello, everyone", "  (a broadcast)")
        await self._answer("helper")
        note = _Note(self.name, "assistant", "private note")
        _out("acme -> assistant: _Note('private note')  (a BusLocalMessage)")
        await self.send_bus_message(note)
        await self._say("assistant", _NOTE_CHECK)
        if await self._answer("assistant") == "no, nothing but text frames reached me":
            kept = self.bus.undeliverable
            _out(f"acme: the note was not seen across: it stayed in process 1 (kept_local={kept})")
        await self._say("assistant", _DONE)
        self.ok = await self._answer("assistant") == "goodbye"

    async def on_bus_message(self, message: BusMessage) -> None:
        text = _text(message)
        if text is not None and message.source:
            self.replies.put_nowait((message.source, text))


class _Assistant(BaseWorker):
    """Process 2: answers every text frame sent to it, deterministically."""

    def __init__(self) -> None:
        super().__init__("assistant")
        self.other: list[str] = []  # anything else than a text frame that reached it
        self.acme_left = False

    async def on_start(self) -> None:
        self.registry.watch_gone("acme", self._acme_gone)

    async def _acme_gone(self, data: WorkerReadyData) -> None:
        _out(f"registry: 'acme' is gone (runner {data.node!r} left the bus); ending process 2")
        self.acme_left = True
        await self.runner.end("acme left")

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        _out(f"assistant: activated across processes with args {args}")

    async def on_bus_message(self, message: BusMessage) -> None:
        text = _text(message)
        if isinstance(message, BusWorkerReadyMessage):
            return  # helper's readiness, announced on this process's side of the bus
        if text is None:
            self.other.append(type(message).__name__)
            _out(f"assistant <- {message.source}: {type(message).__name__}")
            return
        if message.target is None:
            _out(f"assistant <- {message.source}: {text!r}  (broadcast)")
            return
        _out(f"assistant <- {message.source}: {text!r}")
        if text == _DONE:
            reply = "goodbye"
        elif text == _NOTE_CHECK:
            seen = ", ".join(self.other)
            reply = f"yes: {seen}" if seen else "no, nothing but text frames reached me"
        else:
            reply = f"you said {text!r}"
        await self.send_bus_message(BusFrameMessage(self.name, message.source, TextFrame(reply)))


class _Helper(BaseWorker):
    """Process 2: a second worker; it answers broadcasts only."""

    def __init__(self) -> None:
        super().__init__("helper")

    async def on_bus_message(self, message: BusMessage) -> None:
        text = _text(message)
        if text is not None and message.target is None and message.source:
            _out(f"helper <- {message.source}: {text!r}  (broadcast)")
            answer = BusFrameMessage(self.name, message.source, TextFrame(f"heard {text!r}"))
            await self.send_bus_message(answer)


async def _child(role: str, url: str, channel: str, codec: str) -> int:
    bus = _redis_bus().RedisBus(url, channel=channel, codec=codec)
    runner = WorkerRunner(_RUNNERS[role], bus=bus)
    done: Callable[[], bool]
    workers: Sequence[BaseWorker]
    if role == "acme":
        acme = _Acme()
        workers, done = [acme], lambda: acme.ok
    else:
        assistant, helper = _Assistant(), _Helper()
        workers, done = [assistant, helper], lambda: assistant.acme_left
        ready: set[str] = set()

        async def local_ready(data: WorkerReadyData) -> None:
            ready.add(data.name)
            if len(ready) == 2:
                _out(f"assistant and helper are ready on the bus (runner {runner.name!r})")

        for worker in workers:
            runner.registry.watch(worker.name, local_ready)
    try:
        await runner.add_workers(*workers)
        await runner.run()
    except ProxyError as exc:
        print(f"{role}: {exc}", file=sys.stderr, flush=True)
        await bus.aclose()
        return 1
    _out(_counters(bus))
    return 0 if done() else 1


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proxy_core.demo_bus")
    parser.add_argument("role", choices=sorted(_RUNNERS))
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--channel", default=DEFAULT_CHANNEL)
    parser.add_argument("--codec", default="msgpack")
    args = parser.parse_args(argv)
    try:
        _redis_bus()
        return asyncio.run(_child(args.role, args.redis_url, args.channel, args.codec))
    except ProxyError as exc:
        print(f"{args.role}: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(_main())
