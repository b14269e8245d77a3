"""The server side in FastAPI form: one WebSocketProxyServer per accepted WebSocket.

Needs ``pip install 'proxy-core[fastapi]'`` (fastapi and uvicorn). Run
``python examples/fastapi_server.py --port 8765`` and connect with
``python examples/main.py --remote-url ws://localhost:8765/ws``.

The socket is bound here, before uvicorn starts, so that a port in use or a
host that does not resolve is one line on stderr (exit status 1), and the URL
printed is the one bound (``--port 0`` picks a free port).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
from typing import Any

try:
    import uvicorn
    from fastapi import FastAPI, WebSocket
except ImportError as exc:  # the optional packages of this example
    sys.exit(f"fastapi_server.py needs {exc.name}: pip install 'proxy-core[fastapi]'")

from assistant import Assistant  # the deterministic worker of examples/assistant.py

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


async def serve(sock: socket.socket) -> None:
    """Serve the app with uvicorn on ``sock`` until SIGINT or SIGTERM."""
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, log_level="warning", ws="websockets-sansio")
    print(f"fastapi server listening on ws://{host}:{port}/ws", flush=True)
    await uvicorn.Server(config).serve(sockets=[sock])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    try:
        sock = socket.create_server((args.host, args.port))
    except OSError as exc:  # a user's mistake: one line, not a traceback
        sys.exit(f"fastapi_server: could not listen on {args.host}:{args.port}: {exc.strerror}")
    try:
        asyncio.run(serve(sock))
    except KeyboardInterrupt:  # uvicorn stopped gracefully, then passed Ctrl-C on
        pass
    print("fastapi server stopped", flush=True)


if __name__ == "__main__":
    main()
