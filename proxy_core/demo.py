"""``proxy-core demo``: both sides of a proxy over loopback, narrating what crosses and why.

The server side runs a deterministic ``assistant`` worker; the client side
runs ``acme``, which waits for the remote assistant through the registry,
activates it, and then sends a scripted set of messages: some cross, some are
stopped by the filter rules. Every message is shown where it is sent and where
it arrives; the proxies' drop log says what was filtered and why, every drop
that the closing table counts.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from .loops import loop_name
from .messages import (
    AudioRawFrame,
    BusDataMessage,
    BusFrameMessage,
    BusLocalMessage,
    BusMessage,
    BusWorkerReadyMessage,
    TextFrame,
)
from .plugins import available_codecs, resolve_codec, resolve_transport
from .proxy import ProxyClient, ProxyServer
from .registry import WorkerReadyData
from .runner import WorkerRunner
from .service import serve_proxy
from .transport import Transport
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
    if isinstance(message, _Note):
        return f"_Note({message.text!r})"
    if isinstance(message, BusDataMessage):
        return f"BusDataMessage({message.data!r})"
    if isinstance(message, BusWorkerReadyMessage):
        return f"BusWorkerReadyMessage({message.worker!r})"
    return type(message).__name__


def _sent(out: _Printer, side: str, message: BusMessage, expect: str = "") -> None:
    """Narrate a message as it is sent, so that every message shown has its sender's line."""
    target = message.target if message.target is not None else "everyone"
    note = f"  (expect: {expect})" if expect else ""
    out(side, f"{message.source} -> {target}: {_show(message)}{note}")


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
            answer = BusFrameMessage(self.name, message.source, TextFrame(reply))
            _sent(self.out, "server", answer)
            await self.send_bus_message(answer)


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
        # The expectations name the filter's drop reasons, as the filter lines do.
        script: list[tuple[str, BusMessage]] = [
            ("crosses", BusFrameMessage("acme", "assistant", TextFrame("hi there"))),
            ("crosses", BusFrameMessage("acme", "assistant", AudioRawFrame(b"\0" * 320, 16000))),
            ("kept back: broadcast", BusFrameMessage("acme", None, TextFrame("to everyone"))),
            ("kept back: local", _Note("acme", "assistant", "private note")),
            ("kept back: not_allowed", BusDataMessage("acme", "assistant", {"k": "v"})),
            ("crosses; the last", BusFrameMessage("acme", "assistant", TextFrame(_DONE))),
        ]
        for expect, message in script:
            _sent(self.out, "client", message, expect)
            await self.send_bus_message(message)

    async def on_bus_message(self, message: BusMessage) -> None:
        if isinstance(message, BusFrameMessage):
            self.out("client", f"acme <- {message.source}: {_show(message)}")
            frame = message.frame
            if isinstance(frame, TextFrame) and frame.text == "goodbye":
                self.finished.set()


class _Intruder(BaseWorker):
    """Another local worker that tries to talk to the remote assistant."""

    def __init__(self, out: _Printer) -> None:
        super().__init__("intruder", active=False)
        self.out = out

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        message = BusFrameMessage(self.name, "assistant", TextFrame("let me in"))
        _sent(self.out, "client", message, "kept back: wrong_source, the proxy speaks for acme")
        await self.send_bus_message(message)


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
            side = "client" if proxy == "proxy" else "server"
            what = _show(message) if isinstance(message, BusMessage) else str(message)
            why = ""
            if isinstance(message, BusWorkerReadyMessage):
                # The table counts these too: say what they are, or the count puzzles.
                why = " (a runner's readiness news stays on its own bus)"
            self.out(side, f"filter: {proxy} kept {direction} {what} back: {reason}{why}")


async def run_demo(*, transport: str = "websockets", codec: str = "msgpack") -> int:
    """Run the demo; return a process exit code (0 when the conversation completed).

    Raises:
        PluginError: ``transport`` or ``codec`` is not installed (before anything runs).
        ProxyError: the server could not listen, or the client could not connect.
    """
    out = _Printer()
    backend = resolve_transport(transport)
    resolve_codec(codec)
    offered = tuple(available_codecs())
    kind = loop_name().split(".")[0]  # say so when it is not asyncio's own loop
    on = "" if kind == "asyncio" else f"; loop: {kind}"
    out(
        "demo",
        f"transport: {transport}; codec: {codec}{on} (the server accepts {', '.join(offered)})",
    )
    log = logging.getLogger("proxy_core.proxy")
    handler = _DropLog(out)
    previous = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        client, server = await _converse(out, backend, codec, offered)
    finally:
        log.removeHandler(handler)
        log.setLevel(previous)
    # Read once everything has stopped, so the table counts every drop narrated above.
    _summary(client.stats.snapshot(), server[0].stats.snapshot() if server else {})
    return 0


async def _converse(
    out: _Printer, backend: Transport, codec: str, offered: tuple[str, ...]
) -> tuple[ProxyClient, list[ProxyServer]]:
    """Serve, connect, run the script to its goodbye; return both proxies, stopped."""

    async def setup(runner: WorkerRunner) -> None:
        await runner.add_workers(_Assistant(out))

    url = f"{backend.schemes[0]}://127.0.0.1:0/ws"
    async with serve_proxy(
        url,
        transport=backend,
        worker_name="assistant",
        remote_worker_name="acme",
        forward_messages=(BusFrameMessage,),
        setup=setup,
        proxy_name="gateway",
        codecs=offered,
    ) as service:
        out("server", f"serving on {service.url} ({backend.name})")
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
            out("client", f"proxy connected to {proxy.url} (codec {proxy.codec})")

        await runner.add_workers(acme, proxy, _Intruder(out))
        run = asyncio.create_task(runner.run())
        await acme.activate_worker("proxy")
        await proxy.wait_connected(30)
        await acme.activate_worker("intruder")
        await asyncio.wait_for(acme.finished.wait(), 30)
        gateways = list(service.proxies)  # the set forgets a session once it closes
        await runner.end("demo finished")
        await run
    return proxy, gateways


def _summary(client: dict[str, Any], server: dict[str, Any]) -> None:
    rows: list[tuple[str, int, int]] = [
        (key, client.get(key, 0), server.get(key, 0))
        for key in ("messages_out", "messages_in", "bytes_out", "bytes_in")
    ]
    for key in ("dropped_out", "dropped_in"):
        c_drops, s_drops = client.get(key, {}), server.get(key, {})
        for reason in sorted(set(c_drops) | set(s_drops)):
            rows.append((f"{key}[{reason}]", c_drops.get(reason, 0), s_drops.get(reason, 0)))
    width = max(len(label) for label, _, _ in rows) + 2
    print()
    print(f"{'':{width}}{'client proxy':>14}{'server proxy':>14}")
    for label, c, s in rows:
        print(f"{label:{width}}{c:>14}{s:>14}")
