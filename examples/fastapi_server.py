"""The server side in FastAPI form: one WebSocketProxyServer per accepted WebSocket.

Run ``python examples/fastapi_server.py --port 8765`` and connect with
``python examples/main.py --remote-url ws://localhost:8765/ws``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

import uvicorn
from assistant import Assistant  # the deterministic worker of examples/assistant.py
from fastapi import FastAPI, WebSocket

from proxy_core import BusFrameMessage, WorkerRunner
from proxy_core_websockets import WebSocketProxyServer

logger = logging.getLogger("fastapi_server")

app = FastAPI()


@app.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket) -> None:
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
    async def on_client_connected(worker: WebSocketProxyServer, connection: Any) -> None:
        logger.info("client connected")

    @proxy.event_handler("on_client_disconnected")
    async def on_client_disconnected(worker: WebSocketProxyServer, connection: Any) -> None:
        logger.info("client disconnected")

    await runner.add_workers(proxy, Assistant("assistant"))
    await runner.run()


async def serve(host: str, port: int) -> None:
    """Run the app with uvicorn and print the bound URL (useful with --port 0)."""
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    # uvicorn offers no event for "started"; poll it, bounded by the task ending.
    while not server.started and not task.done():  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    if server.started:
        bound = server.servers[0].sockets[0].getsockname()[1]
        print(f"fastapi server listening on ws://{host}:{bound}/ws", flush=True)
    await task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
