"""``proxy-core demo``: both sides of a proxy over loopback, narrating what crosses and why.

The server side runs a deterministic ``assistant`` worker; the client side
runs ``acme``, which waits for the remote assistant through the registry,
activates it, and then sends a scripted set of messages: some cross, some are
stopped by the filter rules. Each side prints what it receives, and the
proxies' drop log says what was filtered and why.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from .messages import (
    AudioRawFrame,
    BusDataMessage,
    BusFrameMessage,
    BusLocalMessage,
    BusMessage,
    BusWorkerReadyMessage,
    TextFrame,
)
from .plugins import available_codecs, resolve_transport
from .proxy import ProxyClient
from .registry import WorkerReadyData
from .runner import WorkerRunner
from .service import serve_proxy
from .worker import BaseWorker

__all__ = ["run_demo"]

_DONE = "that is all"


@dataclass
class _Note(BusLocalMessage, BusMessage):
    """A message that must never leave its bus."""

    text: str = ""


def _show(message: BusMessage) -> str:
    if isinstance(message, BusFrameMessage):
        frame = message.frame
        if isinstance(frame, TextFrame):
            return f"TextFrame({frame.text!r})"
        if isinstance(frame, AudioRawFrame):
            return f"AudioRawFrame({len(frame.audio)} bytes @ {frame.sample_rate} Hz)"
        return type(frame).__name__
    return type(message).__name__


class _Assistant(BaseWorker):
    """Answers every text frame, deterministically."""

    def __init__(self, out: _Printer) -> None:
        super().__init__("assistant")
        self.out = out

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        self.out("server", f"assistant activated with args {args}")

    async def on_bus_message(self, message: BusMessage) -> None:
        if not isinstance(message, BusFrameMessage):
            return
        self.out("server", f"assistant <- {message.source}: {_show(message)}")
        frame = message.frame
        if isinstance(frame, TextFrame):
            reply = "goodbye" if frame.text == _DONE else f"you said {frame.text!r}"
            await self.send_bus_message(
                BusFrameMessage(self.name, message.source, TextFrame(reply))
            )


class _Acme(BaseWorker):
    """Drives the scripted conversation from the client side."""

    def __init__(self, out: _Printer) -> None:
        super().__init__("acme")
        self.out = out
        self.finished = asyncio.Event()

    async def on_start(self) -> None:
        self.registry.watch("assistant", self._assistant_ready)

    async def _assistant_ready(self, data: WorkerReadyData) -> None:
        self.out("client", f"registry: {data.name!r} is ready (remote={data.remote}); activating")
        await self.activate_worker("assistant", args={"greeting": "hello from acme"})
        script: list[tuple[str, BusMessage]] = [
            ("crosses", BusFrameMessage("acme", "assistant", TextFrame("hi there"))),
            ("crosses", BusFrameMessage("acme", "assistant", AudioRawFrame(b"\0" * 320, 16000))),
            ("broadcast", BusFrameMessage("acme", None, TextFrame("to everyone"))),
            ("local", _Note("acme", "assistant", "private note")),
            ("not allowed", BusDataMessage("acme", "assistant", {"k": "v"})),
        ]
        for expect, message in script:
            self.out("client", f"acme -> {message.target}: {_show(message)}  (expect: {expect})")
            await self.send_bus_message(message)
        await self.send_bus_message(BusFrameMessage("acme", "assistant", TextFrame(_DONE)))

    async def on_bus_message(self, message: BusMessage) -> None:
        if isinstance(message, BusFrameMessage):
            self.out("client", f"acme <- {message.source}: {_show(message)}")
            frame = message.frame
            if isinstance(frame, TextFrame) and frame.text == "goodbye":
                self.finished.set()


class _Intruder(BaseWorker):
    """Another local worker that tries to talk to the remote assistant."""

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        await self.send_bus_message(BusFrameMessage(self.name, "assistant", TextFrame("let me in")))


class _Printer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, side: str, text: str) -> None:
        line = f"[{side:>6}] {text}"
        self.lines.append(line)
        print(line, flush=True)


class _DropLog(logging.Handler):
    """Shows the proxies' debug log of filtered messages as demo lines."""

    def __init__(self, out: _Printer) -> None:
        super().__init__(logging.DEBUG)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        if "dropped" in record.msg and isinstance(record.args, tuple) and len(record.args) == 4:
            proxy, direction, message, reason = record.args
            if isinstance(message, BusWorkerReadyMessage):
                return  # the runner's own readiness broadcasts: local by design
            side = "client" if proxy == "proxy" else "server"
            what = _show(message) if isinstance(message, BusMessage) else str(message)
            self.out(side, f"filter: {proxy} kept {direction} {what} back: {reason}")


async def run_demo(*, transport: str = "websockets", codec: str = "msgpack") -> int:
    """Run the demo; return a process exit code (0 when the conversation completed)."""
    out = _Printer()
    backend = resolve_transport(transport)
    url = f"{backend.schemes[0]}://127.0.0.1:0/ws"
    log = logging.getLogger("proxy_core.proxy")
    handler = _DropLog(out)
    previous = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)

    async def setup(runner: WorkerRunner) -> None:
        await runner.add_workers(_Assistant(out))

    try:
        async with serve_proxy(
            url,
            transport=backend,
            worker_name="assistant",
            remote_worker_name="acme",
            forward_messages=(BusFrameMessage,),
            setup=setup,
            proxy_name="gateway",
            codecs=tuple(available_codecs()),
        ) as service:
            out("server", f"serving on {service.url} ({transport})")
            runner = WorkerRunner("client", handle_sigint=False)
            acme = _Acme(out)
            proxy = ProxyClient(
                "proxy",
                url=service.url,
                transport=backend,
                codec=codec,
                local_worker_name="acme",
                remote_worker_name="assistant",
                forward_messages=(BusFrameMessage,),
            )

            @proxy.event_handler("on_connected")
            async def on_connected(proxy: ProxyClient, connection: object) -> None:
                out("client", f"proxy connected to {proxy.url}")

            intruder = _Intruder("intruder", active=False)
            await runner.add_workers(acme, proxy, intruder)
            run = asyncio.create_task(runner.run())
            await acme.activate_worker("proxy")
            await proxy.wait_connected(30)
            await acme.activate_worker("intruder")
            await asyncio.wait_for(acme.finished.wait(), 30)
            server_stats = [p.stats.snapshot() for p in service.proxies]
            await runner.end("demo finished")
            await run
    finally:
        log.removeHandler(handler)
        log.setLevel(previous)
    _summary(proxy.stats.snapshot(), server_stats[0] if server_stats else {})
    return 0


def _summary(client: dict[str, Any], server: dict[str, Any]) -> None:
    print()
    print(f"{'':24}{'client proxy':>14}{'server proxy':>14}")
    for key in ("messages_out", "messages_in", "bytes_out", "bytes_in"):
        print(f"{key:24}{client.get(key, 0):>14}{server.get(key, 0):>14}")
    for key in ("dropped_out", "dropped_in"):
        reasons = sorted(set(client.get(key, {})) | set(server.get(key, {})))
        for reason in reasons:
            label = f"{key}[{reason}]"
            c, s = client.get(key, {}).get(reason, 0), server.get(key, {}).get(reason, 0)
            print(f"{label:24}{c:>14}{s:>14}")
