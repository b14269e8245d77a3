"""The peer row: the same scenarios through pipecat-ai's WebSocket proxy workers.

Optional: used only where ``pipecat-ai`` (with its ``websocket`` extra) and
``uvicorn`` are installed, and never imported otherwise. Pipecat's server
proxy needs a Starlette ``WebSocket``, so its sessions are served by uvicorn
(per-message deflate off, as on every other row); the client is pipecat's
``WebSocketProxyClient`` on the ``websockets`` library, with pipecat's default
JSON serializer. Payloads are ``BusFrameMessage`` s carrying an
``OutputAudioRawFrame`` of the same random bytes; control commands and their
replies are ``TextFrame`` s. loguru is set to WARNING, as in a deployment.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from types import SimpleNamespace
from typing import Any

from .links import Link, SinkState, produce

__all__ = ["PipecatLink", "missing", "open_idle_sessions", "serve", "version"]

CLIENT, SERVER = "acme", "assistant"
_MODULES = {
    "WorkerRunner": "pipecat.workers.runner",
    "BaseWorker": "pipecat.workers.base_worker",
    "WebSocketProxyClient": "pipecat.workers.proxy.websocket.client",
    "WebSocketProxyServer": "pipecat.workers.proxy.websocket.server",
    "BusFrameMessage": "pipecat.bus",
    "OutputAudioRawFrame": "pipecat.frames.frames",
    "TextFrame": "pipecat.frames.frames",
    "FrameDirection": "pipecat.processors.frame_processor",
}


def missing() -> str | None:
    """Return why the peer row cannot run here, or ``None`` if it can."""
    try:
        _api()
        importlib.import_module("uvicorn")
        importlib.import_module("starlette.applications")
    except Exception as exc:  # ImportError, or a pipecat without the proxy workers
        return f"{type(exc).__name__}: {exc}"
    return None


def version() -> str:
    """Return the installed pipecat-ai version, or ``"unknown"``."""
    from importlib import metadata

    try:
        return metadata.version("pipecat-ai")
    except metadata.PackageNotFoundError:
        return "unknown"


@cache
def _api() -> SimpleNamespace:
    names = {name: getattr(importlib.import_module(mod), name) for name, mod in _MODULES.items()}
    api = SimpleNamespace(**names)
    logger = importlib.import_module("loguru").logger
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    api.Sink, api.Source = _worker_classes(api)
    return api


def _frame_message(api: Any, source: str, target: str, frame: Any) -> Any:
    return api.BusFrameMessage(
        source=source, target=target, frame=frame, direction=api.FrameDirection.DOWNSTREAM
    )


def _worker_classes(api: Any) -> tuple[type[Any], type[Any]]:
    class Sink(api.BaseWorker):  # type: ignore[misc]
        """Counts or echoes payload frames; answers control text frames."""

        def __init__(self) -> None:
            super().__init__(SERVER)
            self.state = SinkState()

        async def on_bus_message(self, message: Any) -> None:
            if isinstance(message, api.BusFrameMessage):
                if message.target != SERVER:
                    return
                frame, state = message.frame, self.state
                if isinstance(frame, api.TextFrame):
                    reply = api.TextFrame(text=json.dumps(state.control(frame.text)))
                    await self.send_bus_message(_frame_message(api, SERVER, CLIENT, reply))
                elif state.echo:
                    await self.send_bus_message(_frame_message(api, SERVER, CLIENT, frame))
                else:
                    state.count += 1
                return
            await super().on_bus_message(message)

    class Source(api.BaseWorker):  # type: ignore[misc]
        """Hands frames from the remote sink to whoever waits; notes its readiness."""

        def __init__(self) -> None:
            super().__init__(CLIENT)
            self.waiter: asyncio.Future[Any] | None = None
            self.remote_ready = asyncio.Event()

        async def on_worker_ready(self, data: Any) -> None:
            if data.worker_name == SERVER:
                self.remote_ready.set()

        async def on_bus_message(self, message: Any) -> None:
            if isinstance(message, api.BusFrameMessage):
                waiter = self.waiter
                if message.source == SERVER and waiter is not None and not waiter.done():
                    self.waiter = None
                    waiter.set_result(message)
                return
            await super().on_bus_message(message)

    return Sink, Source


@asynccontextmanager
async def serve() -> AsyncIterator[str]:
    """Serve pipecat proxy sessions (a Sink each) with uvicorn on 127.0.0.1; yield the URL."""
    api = _api()
    uvicorn = importlib.import_module("uvicorn")
    starlette_apps = importlib.import_module("starlette.applications")
    routing = importlib.import_module("starlette.routing")

    async def endpoint(websocket: Any) -> None:
        await websocket.accept()
        runner = api.WorkerRunner(handle_sigint=False)
        proxy = api.WebSocketProxyServer(
            "gateway",
            websocket=websocket,
            worker_name=SERVER,
            remote_worker_name=CLIENT,
            forward_messages=(api.BusFrameMessage,),
        )

        @proxy.event_handler("on_client_disconnected")  # type: ignore[untyped-decorator]
        async def on_client_disconnected(worker: Any, ws: Any) -> None:
            await runner.cancel()

        await runner.add_workers(api.Sink(), proxy)
        await runner.run()

    app = starlette_apps.Starlette(routes=[routing.WebSocketRoute("/ws", endpoint)])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", lifespan="off", ws="websockets", ws_per_message_deflate=False
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn stopped while starting")
                await asyncio.sleep(0.01)
        yield f"ws://127.0.0.1:{port}/ws"
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, 10)
        except (TimeoutError, Exception):
            task.cancel()
        sock.close()


class PipecatLink(Link):
    """One pipecat client session: a runner with a Source and a WebSocketProxyClient."""

    def __init__(self, runner: Any, source: Any, task: asyncio.Task[Any]) -> None:
        self.api = _api()
        self.runner = runner
        self.source = source
        self._task = task

    @classmethod
    async def open(cls, url: str, timeout: float) -> PipecatLink:
        """Connect a session and wait until the remote sink is announced ready."""
        api = _api()
        runner = api.WorkerRunner(handle_sigint=False)
        source = api.Source()
        proxy = api.WebSocketProxyClient(
            "proxy",
            url=url,
            remote_worker_name=SERVER,
            local_worker_name=CLIENT,
            forward_messages=(api.BusFrameMessage,),
        )
        started = asyncio.Event()

        @runner.event_handler("on_ready")  # type: ignore[untyped-decorator]
        async def on_ready(runner: Any) -> None:
            started.set()

        await runner.add_workers(source, proxy)
        task = asyncio.get_running_loop().create_task(runner.run(auto_end=False))
        link = cls(runner, source, task)
        try:
            async with asyncio.timeout(timeout):
                await started.wait()
                await source.watch_workers(SERVER)
                await source.activate_worker("proxy")
                await source.remote_ready.wait()
        except BaseException:
            await link.aclose()
            raise
        return link

    def _payload(self, size: int) -> Any:
        frame = self.api.OutputAudioRawFrame(
            audio=os.urandom(size), sample_rate=16000, num_channels=1
        )
        return _frame_message(self.api, CLIENT, SERVER, frame)

    async def control(self, command: str) -> dict[str, Any]:
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.source.waiter = waiter
        message = _frame_message(self.api, CLIENT, SERVER, self.api.TextFrame(text=command))
        await self.source.send_bus_message(message)
        reply = await waiter
        result: dict[str, Any] = json.loads(reply.frame.text)
        return result

    async def stream(self, size: int, count: int, *, back_to_back: bool = False) -> None:
        message = self._payload(size)
        await produce(self.source.send_bus_message, message, count, back_to_back=back_to_back)

    async def round_trips(self, size: int, count: int) -> list[float]:
        message = self._payload(size)
        source = self.source
        loop = asyncio.get_running_loop()
        clock = time.perf_counter
        samples: list[float] = []
        for _ in range(count):
            waiter: asyncio.Future[Any] = loop.create_future()
            source.waiter = waiter
            start = clock()
            await source.send_bus_message(message)
            await waiter
            samples.append(clock() - start)
        return samples

    async def aclose(self) -> None:
        try:
            await asyncio.wait_for(self.runner.cancel(), 5)
            await asyncio.wait_for(self._task, 10)
        except (TimeoutError, Exception):
            self._task.cancel()


async def open_idle_sessions(url: str, count: int, timeout: float) -> list[Link]:
    """Open ``count`` pipecat sessions that then stay idle."""
    links: list[Link] = []
    for _ in range(count):
        links.append(await PipecatLink.open(url, timeout))
    return links
