"""Process B of the distributed example: worker "assistant" on a Redis bus, until Ctrl-C.

    python examples/distributed/worker_node.py --redis-url redis://127.0.0.1:6379/0

It joins the bus on ``--channel`` and holds the name ``assistant`` there: any
runner on the same channel, in any process or on any machine, reaches it by
name (``client_node.py`` does). A second copy started with ``--claim-timeout``
waits as a standby and takes the name over when the first one stops or dies.
See README.md next to this file.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

from proxy_core import BaseWorker, BusFrameMessage, BusMessage, ProxyError, TextFrame, WorkerRunner
from proxy_core_redis import RedisBus
from proxy_core_redis.bus import redact


def say(text: str) -> None:
    print(f"worker_node: {text}", flush=True)


class Assistant(BaseWorker):
    """Answers every text frame sent to it, deterministically, naming the runner that answered."""

    def __init__(self, runner_name: str) -> None:
        super().__init__("assistant")
        self.runner_name = runner_name
        self.answered = 0

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        say(f"assistant activated with args {args}")

    async def on_bus_message(self, message: BusMessage) -> None:
        if not (isinstance(message, BusFrameMessage) and isinstance(message.frame, TextFrame)):
            return
        if message.target != self.name or not message.source:
            return  # a broadcast: nothing to answer
        text = message.frame.text
        say(f"{message.source} -> assistant: {text}")
        reply = f"you said {text!r} (answered by {self.runner_name})"
        await self.send_bus_message(BusFrameMessage(self.name, message.source, TextFrame(reply)))
        self.answered += 1


async def run(args: argparse.Namespace) -> int:
    name = args.name or f"worker-{os.getpid()}"
    try:
        bus = RedisBus(
            args.redis_url,
            channel=args.channel,
            lease_ttl=args.lease_ttl,
            claim_timeout=args.claim_timeout,
        )
    except ProxyError as exc:  # a bad URL, channel or option
        print(f"worker_node: {exc}", file=sys.stderr, flush=True)
        return 2
    runner = WorkerRunner(name, bus=bus)
    assistant = Assistant(name)
    where = redact(args.redis_url)
    say(f"runner {name!r} (pid {os.getpid()}) joins channel {args.channel!r} on {where}")
    try:
        await bus.start()  # connects and learns who is on the channel already
        holder = runner.registry.get("assistant")
        if holder is not None and args.claim_timeout > 0:
            say(
                f"'assistant' is held by runner {holder.node!r}: standing by to take it over "
                f"(for up to {args.claim_timeout:g} s)"
            )
        await runner.add_workers(assistant)
    except ProxyError as exc:
        hint = "; --claim-timeout SECONDS waits as a standby" if "is held" in str(exc) else ""
        print(f"worker_node: {exc}{hint}", file=sys.stderr, flush=True)
        await bus.aclose()
        return 1
    taken = "took 'assistant' over: it" if holder is not None else "'assistant'"
    say(f"{taken} is ready on channel {args.channel!r}; Ctrl-C to stop")
    try:
        await runner.run()
    except ProxyError as exc:  # Redis stayed out of reach past the retry policy
        print(f"worker_node: {exc}", file=sys.stderr, flush=True)
        return 1
    stats = bus.stats()
    say(
        f"stopped after answering {assistant.answered} message(s); bus counters: "
        f"sent={stats['sent']} received={stats['received']} acked={stats['acked']}"
    )
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--channel", default="proxy-core-example", help="the bus's channel")
    parser.add_argument("--name", default=None, help="this runner's name (default: worker-PID)")
    parser.add_argument(
        "--claim-timeout",
        type=float,
        default=0.0,
        help="seconds to wait for 'assistant' if another runner holds it: a standby (default: 0)",
    )
    parser.add_argument(
        "--lease-ttl",
        type=float,
        default=10.0,
        help="seconds this runner's hold outlives it if its process dies (default: 10)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        sys.exit(asyncio.run(run(args)))
    except KeyboardInterrupt:  # Ctrl-C while standing by (the runner handles it afterwards)
        sys.exit(130)


if __name__ == "__main__":
    main()
