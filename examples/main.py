"""The client side of the two-process example: worker "acme" talks to a remote "assistant".

Start ``python examples/assistant.py --port 8765`` first, then run
``python examples/main.py --remote-url ws://localhost:8765/ws``.

``acme`` activates the proxy (which connects only then), waits through the
registry until the remote ``assistant`` is ready, activates it across the
link, and holds a short scripted conversation before ending the runner.

A mistake in the options (a URL the transport cannot use, an unknown codec or
transport) and a server that refuses the client are one line on stderr and
exit status 1: the library raises a typed
:class:`~proxy_core.errors.ProxyError`, caught in :func:`main`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from proxy_core import (
    AudioRawFrame,
    Backoff,
    BaseWorker,
    BusEndMessage,
    BusFrameMessage,
    BusMessage,
    ProxyClient,
    TextFrame,
    WorkerReadyData,
    WorkerRunner,
)
from proxy_core.errors import ProxyError
from proxy_core_websockets import WebSocketProxyClient

SCRIPT = ["hello", "can you hear this audio?", "thank you"]


class Acme(BaseWorker):
    """Holds a scripted conversation with the remote assistant."""

    def __init__(self) -> None:
        super().__init__("acme")
        self.replies: list[str] = []
        self.ok = False

    async def on_start(self) -> None:
        self.registry.watch("assistant", self.on_assistant_ready)
        await self.activate_worker("proxy")

    async def on_assistant_ready(self, data: WorkerReadyData) -> None:
        print(f"acme: {data.name!r} is ready (remote={data.remote}), activating it", flush=True)
        await self.activate_worker("assistant", args={"caller": "acme"})
        await self.say(SCRIPT[0])

    async def say(self, text: str) -> None:
        print(f"acme -> assistant: {text}", flush=True)
        await self.send_bus_message(BusFrameMessage(self.name, "assistant", TextFrame(text)))
        if "audio" in text:
            chunk = AudioRawFrame(b"\x00\x01" * 800, sample_rate=16000, num_channels=1)
            await self.send_bus_message(BusFrameMessage(self.name, "assistant", chunk))

    async def on_bus_message(self, message: BusMessage) -> None:
        if not (isinstance(message, BusFrameMessage) and isinstance(message.frame, TextFrame)):
            return
        print(f"assistant -> acme: {message.frame.text}", flush=True)
        self.replies.append(message.frame.text)
        said = len([t for t in self.replies if not t.startswith("I heard")])
        if message.frame.text.startswith("I heard"):
            return
        if said < len(SCRIPT):
            await self.say(SCRIPT[said])
        else:
            self.ok = True
            await self.send_bus_message(BusEndMessage(self.name, reason="conversation over"))


async def run(url: str, codec: str, timeout: float, transport: str) -> int:
    """Hold the conversation; return the exit status.

    Raises:
        ProxyError: a bad URL, codec or transport, or the server refused us.
    """
    runner = WorkerRunner()
    acme = Acme()
    # A first connection that fails is reported at once (runner.run() raises it),
    # not retried for minutes; a link lost later is reconnected and resumed.
    reconnect = Backoff(retry_first_connect=False)
    proxy: ProxyClient
    if transport == "websockets":
        proxy = WebSocketProxyClient(
            "proxy",
            url=url,
            local_worker_name="acme",
            remote_worker_name="assistant",
            forward_messages=(BusFrameMessage,),
            codec=codec,
            reconnect=reconnect,
        )
    else:  # any other installed backend, by name (aiohttp, grpc with a grpc:// URL...)
        proxy = ProxyClient(
            "proxy",
            url=url,
            transport=transport,
            local_worker_name="acme",
            remote_worker_name="assistant",
            forward_messages=(BusFrameMessage,),
            codec=codec,
            reconnect=reconnect,
        )

    @proxy.event_handler("on_connected")
    async def on_connected(proxy: ProxyClient, connection: Any) -> None:
        print(f"proxy: connected to {url}", flush=True)

    await runner.add_workers(acme, proxy)
    try:
        await asyncio.wait_for(runner.run(), timeout)
    except TimeoutError:
        print(f"acme: no conversation within {timeout:.0f} s", file=sys.stderr)
        return 1
    return 0 if acme.ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--remote-url", default="ws://localhost:8765/ws")
    parser.add_argument("--codec", default="msgpack", help="json, msgpack or protobuf")
    parser.add_argument("--transport", default="websockets", help="websockets, aiohttp or grpc")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    try:
        status = asyncio.run(run(args.remote_url, args.codec, args.timeout, args.transport))
    except ProxyError as exc:  # a user's mistake, or a refusal: one line, not a traceback
        sys.exit(f"acme: {exc}")
    sys.exit(status)


if __name__ == "__main__":
    main()
