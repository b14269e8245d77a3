"""The server side of the two-process example: a deterministic assistant behind a proxy.

Run ``python examples/assistant.py --port 8765``, then, in another terminal,
``python examples/main.py --remote-url ws://localhost:8765/ws``.

Every accepted connection gets its own runner, bus, proxy and ``Assistant``
(``serve_proxy``), so sessions never share state. The assistant is a small
deterministic worker: no LLM, no network.

A mistake in the options (a port in use, a host that does not resolve, an
unknown transport or codec) is one line on stderr and exit status 1: the
library raises a typed :class:`~proxy_core.errors.ProxyError`, caught in
:func:`main`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from proxy_core import (
    AudioRawFrame,
    BaseWorker,
    BusFrameMessage,
    BusMessage,
    TextFrame,
    WorkerRunner,
    serve_proxy,
)
from proxy_core.errors import ProxyError
from proxy_core.plugins import available_codecs

logger = logging.getLogger("assistant")


def respond(text: str) -> str:
    """Return the assistant's reply to ``text`` (deterministic)."""
    lowered = text.lower()
    if "hello" in lowered or "hi" == lowered.strip():
        return "Hello! I am the assistant on the other bus."
    if "?" in text:
        return f"Good question. You asked {len(text.split())} words' worth: {text!r}."
    if "thank" in lowered:
        return "You're welcome. Goodbye!"
    return f"You said: {text}"


class Assistant(BaseWorker):
    """Answers each text frame; counts the audio it hears."""

    def __init__(self, name: str = "assistant") -> None:
        super().__init__(name, active=False)
        self.audio_bytes = 0

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        logger.info("activated with %s", args)

    async def on_bus_message(self, message: BusMessage) -> None:
        if not isinstance(message, BusFrameMessage):
            return
        frame = message.frame
        if isinstance(frame, AudioRawFrame):
            self.audio_bytes += len(frame.audio)
            reply = f"I heard {self.audio_bytes} bytes of audio so far."
        elif isinstance(frame, TextFrame):
            reply = respond(frame.text)
        else:
            return
        await self.send_bus_message(BusFrameMessage(self.name, message.source, TextFrame(reply)))


async def serve(host: str, port: int, transport: str, codecs: list[str] | None = None) -> None:
    """Serve assistant sessions until SIGINT or SIGTERM.

    Args:
        host, port: where to listen (port 0 picks a free one).
        transport: an installed transport's name.
        codecs: the codecs accepted (default: every installed one).

    Raises:
        ProxyError: the port is in use, the host does not resolve, or the
            transport or a codec is not installed.
    """

    async def setup(runner: WorkerRunner) -> None:
        await runner.add_workers(Assistant())

    url = f"grpc://{host}:{port}" if transport == "grpc" else f"ws://{host}:{port}/ws"
    async with serve_proxy(
        url,
        transport=transport,
        worker_name="assistant",
        remote_worker_name="acme",
        forward_messages=(BusFrameMessage,),
        setup=setup,
        # Every installed codec unless told otherwise; the client's preference wins.
        codecs=codecs or available_codecs(),
    ) as service:
        print(f"assistant listening on {service.url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print(f"assistant stopping after {service.sessions_served} session(s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--transport", default="websockets")
    parser.add_argument(
        "--codec",
        action="append",
        help="a codec to accept; repeat for several (default: every installed codec)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    try:
        asyncio.run(serve(args.host, args.port, args.transport, args.codec))
    except ProxyError as exc:  # a user's mistake: one line, not a traceback
        sys.exit(f"assistant: {exc}")


if __name__ == "__main__":
    main()
