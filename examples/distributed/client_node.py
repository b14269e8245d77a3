"""Process A of the distributed example: "acme" finds "assistant" on a Redis bus, talks, exits.

    python examples/distributed/client_node.py --redis-url redis://127.0.0.1:6379/0

``acme`` joins the bus on ``--channel``, waits through the registry until
``assistant`` is ready (in whatever process holds it: ``worker_node.py``),
activates it, sends ``--messages`` text frames one at a time, prints each
answer, and exits. The registry also tells it when ``assistant`` goes (its
runner stopped or died) and when a standby takes it over. See README.md next
to this file.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from proxy_core import (
    BaseWorker,
    BusFrameMessage,
    BusMessage,
    ProxyError,
    TextFrame,
    WorkerReadyData,
    WorkerRunner,
)
from proxy_core_redis import RedisBus
from proxy_core_redis.bus import redact


def say(text: str) -> None:
    print(f"client_node: {text}", flush=True)


class Acme(BaseWorker):
    """Waits for assistant, then sends numbered messages and waits for each answer."""

    def __init__(self, messages: int, interval: float, timeout: float) -> None:
        super().__init__("acme")
        self.messages = messages
        self.interval = interval
        self.timeout = timeout
        self.ready = asyncio.Event()
        self.answers: asyncio.Queue[str] = asyncio.Queue()
        self.error: str | None = None
        self.ok = False

    async def on_start(self) -> None:
        self.registry.watch("assistant", self.on_assistant_ready)
        self.registry.watch_gone("assistant", self.on_assistant_gone)
        self.create_task(self.converse())

    async def on_assistant_ready(self, data: WorkerReadyData) -> None:
        say(f"registry: 'assistant' is ready in runner {data.node!r}")
        self.ready.set()

    async def on_assistant_gone(self, data: WorkerReadyData) -> None:
        say(
            f"registry: 'assistant' is gone from runner {data.node!r}; what acme sends "
            "now waits in Redis for its next holder"
        )

    async def converse(self) -> None:
        try:
            await self.talk()
        except TimeoutError as exc:
            self.error = str(exc)
        await self.runner.end("conversation over")

    async def talk(self) -> None:
        try:
            await asyncio.wait_for(self.ready.wait(), self.timeout)
        except TimeoutError:
            raise TimeoutError(
                f"no 'assistant' on the channel within {self.timeout:g} s: "
                "is worker_node.py running, on the same --redis-url and --channel?"
            ) from None
        await self.activate_worker("assistant", args={"caller": "acme"})
        for i in range(1, self.messages + 1):
            text = f"message {i} of {self.messages}"
            say(f"acme -> assistant: {text}")
            await self.send_bus_message(BusFrameMessage(self.name, "assistant", TextFrame(text)))
            while True:  # an earlier answer may come again after a crash: delivered at least once
                try:
                    answer = await asyncio.wait_for(self.answers.get(), self.timeout)
                except TimeoutError:
                    raise TimeoutError(f"no answer to {text!r} within {self.timeout:g} s") from None
                say(f"assistant -> acme: {answer}")
                if repr(text) in answer:
                    break
            if i < self.messages and self.interval:
                await asyncio.sleep(self.interval)
        self.ok = True

    async def on_bus_message(self, message: BusMessage) -> None:
        if (
            message.source == "assistant"
            and isinstance(message, BusFrameMessage)
            and isinstance(message.frame, TextFrame)
        ):
            self.answers.put_nowait(message.frame.text)


async def run(args: argparse.Namespace) -> int:
    try:
        bus = RedisBus(args.redis_url, channel=args.channel)
    except ProxyError as exc:  # a bad URL or channel
        print(f"client_node: {exc}", file=sys.stderr, flush=True)
        return 2
    runner = WorkerRunner("client", bus=bus)
    acme = Acme(args.messages, args.interval, args.timeout)
    say(f"runner 'client' joins channel {args.channel!r} on {redact(args.redis_url)}")
    try:
        await runner.add_workers(acme)
    except ProxyError as exc:  # Redis out of reach, or another 'acme' on the channel
        print(f"client_node: {exc}", file=sys.stderr, flush=True)
        await bus.aclose()
        return 1
    try:
        await runner.run()
    except ProxyError as exc:  # Redis stayed out of reach past the retry policy
        print(f"client_node: {exc}", file=sys.stderr, flush=True)
        return 1
    if not acme.ok:
        error = acme.error or "stopped before the conversation was over"
        print(f"client_node: {error}", file=sys.stderr, flush=True)
        return 1
    stats = bus.stats()
    say(
        f"done: {acme.messages} answer(s); bus counters: sent={stats['sent']} "
        f"received={stats['received']} acked={stats['acked']}"
    )
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--channel", default="proxy-core-example", help="the bus's channel")
    parser.add_argument("--messages", type=int, default=3, help="how many to send (default: 3)")
    parser.add_argument(
        "--interval", type=float, default=0.0, help="seconds between messages (default: 0)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds to wait for assistant, and for each answer (default: 30)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
