"""The Pipecat documentation's FastAPI server, with our imports, under a real uvicorn."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from _support import (
    CLIENT_WORKER,
    SERVER_OTHER,
    SERVER_WORKER,
    Recorder,
    frame,
    no_leaked_tasks,  # noqa: F401 -- the fixture, used through pytestmark
    raw_handshake,
    run_client,
    text_tree,
    wait,
)
from fastapi import FastAPI, WebSocket

from proxy_core import AudioRawFrame, BusFrameMessage, TextFrame, WorkerRunner
from proxy_core_websockets import WebSocketProxyServer

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")


@dataclass
class App:
    """The running app, and what its endpoint saw."""

    url: str
    sessions: asyncio.Queue[tuple[WebSocketProxyServer, Recorder]] = field(
        default_factory=asyncio.Queue
    )
    events: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    finished: asyncio.Queue[WorkerRunner] = field(default_factory=asyncio.Queue)


def make_app(app_state: dict[str, Any]) -> Any:
    app = FastAPI()

    @app.websocket("/ws")
    async def ws_endpoint(websocket: WebSocket) -> None:
        state: App = app_state["app"]
        await websocket.accept()
        runner = WorkerRunner(handle_sigint=False)
        proxy = WebSocketProxyServer(
            "gateway",
            websocket=websocket,
            worker_name="assistant",
            remote_worker_name="acme",
            forward_messages=(BusFrameMessage,),
        )

        @proxy.event_handler("on_client_connected")
        async def on_client_connected(proxy: WebSocketProxyServer, client: Any) -> None:
            state.events.put_nowait("connected")

        @proxy.event_handler("on_client_disconnected")
        async def on_client_disconnected(proxy: WebSocketProxyServer, client: Any) -> None:
            state.events.put_nowait("disconnected")

        assistant = Recorder("assistant", active=False)
        await runner.add_workers(proxy, assistant, Recorder(SERVER_OTHER))
        state.sessions.put_nowait((proxy, assistant))
        await runner.run()
        state.finished.put_nowait(runner)

    return app


@pytest.fixture
async def app() -> AsyncIterator[App]:
    app_state: dict[str, Any] = {}
    config = uvicorn.Config(
        make_app(app_state),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="off",
        ws="websockets-sansio",  # the legacy implementation warns about deprecations
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(3000):  # bounded: 30 s at most
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    state = App(f"ws://127.0.0.1:{port}/ws")
    app_state["app"] = state
    try:
        yield state
    finally:
        server.should_exit = True
        await wait(task)


async def test_fastapi_gateway_end_to_end(app: App) -> None:
    async with run_client(app.url, headers={"Authorization": "Bearer t"}) as client:
        await client.activate()
        proxy, assistant = await wait(app.sessions.get())
        assert await wait(app.events.get()) == "connected"
        assert proxy.session_id == client.proxy.session_id

        await client.acme.activate_worker(SERVER_WORKER, args={"language": "en"})
        assert await wait(assistant.activations.get()) == {"language": "en"}
        for message in (
            frame(CLIENT_WORKER, SERVER_WORKER, "hello"),
            BusFrameMessage(CLIENT_WORKER, SERVER_WORKER, AudioRawFrame(b"\x01\x02" * 512, 16000)),
        ):
            await client.acme.send_bus_message(message)
            assert await assistant.wait_for(lambda m, sent=message: m == sent) == message
        for message in (
            BusFrameMessage(SERVER_WORKER, CLIENT_WORKER, TextFrame("HELLO")),
            BusFrameMessage(SERVER_WORKER, CLIENT_WORKER, AudioRawFrame(b"\xfe" * 960, 24000, 2)),
        ):
            await assistant.send_bus_message(message)
            assert await client.acme.wait_for(lambda m, sent=message: m == sent) == message
        # A broadcast on the server stays there.
        await assistant.send_bus_message(frame(SERVER_WORKER, None, "server only"))
        marker = frame(SERVER_WORKER, CLIENT_WORKER, "marker")
        await assistant.send_bus_message(marker)
        await client.acme.wait_for(lambda m: m == marker)
        assert "server only" not in client.acme.texts()
        assert proxy.stats.dropped_out["broadcast"] == 1

    # Leaving run_client ended the client runner: it said BYE.
    assert await wait(app.events.get()) == "disconnected"
    await wait(app.finished.get())  # end_runner_on_disconnect: the endpoint returned
    assert client.events == ["connected", "disconnected"]
    assert not client.runner.registry.is_ready(SERVER_WORKER)


async def test_fastapi_client_vanishing_fires_on_client_disconnected(app: App) -> None:
    ws, peer = await raw_handshake(app.url)
    _, assistant = await wait(app.sessions.get())
    assert await wait(app.events.get()) == "connected"
    await peer.send_msg(text_tree(CLIENT_WORKER, SERVER_WORKER, "before the cable is cut"))
    await assistant.wait_text("before the cable is cut")
    ws.transport.abort()  # no BYE, no close frame: the TCP connection just drops
    assert await wait(app.events.get()) == "disconnected"
    await wait(app.finished.get())
    await wait(ws.wait_closed())
