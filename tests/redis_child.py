"""A runner on a RedisBus in its own OS process, for the multi-process tests.

    python tests/redis_child.py ROLE --url URL --channel CH --name WORKER [--log FILE]

Roles:
- ``echo``: worker WORKER answers each text frame with the same text, to its source.
- ``sink``: worker WORKER appends the text of each message to FILE (one line
  each, flushed before its handler returns, so the file is what was handled),
  and reports its progress every ``--every`` messages; on the text ``stats?``
  it reports the bus's counters.
- ``listener``: worker WORKER reports every message it gets.

Everything the child reports is one JSON object per line on stdout:
``{"event": "ready"}`` once its worker is on the bus, ``{"event": "got", ...}``,
``{"event": "progress", "n": ...}``, ``{"event": "stats", "stats": {...}}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _support import text_of  # noqa: E402

from proxy_core import BaseWorker, BusFrameMessage, BusMessage, TextFrame, WorkerRunner  # noqa: E402
from proxy_core_redis import RedisBus  # noqa: E402


def report(event: str, **data: Any) -> None:
    print(json.dumps({"event": event, **data}), flush=True)


class Echo(BaseWorker):
    async def on_bus_message(self, message: BusMessage) -> None:
        text = text_of(message)
        if text is not None and message.source:
            await self.send_bus_message(BusFrameMessage(self.name, message.source, TextFrame(text)))


class Sink(BaseWorker):
    def __init__(self, name: str, log: Path, every: int) -> None:
        super().__init__(name)
        self.file = log.open("a", encoding="utf-8")
        self.every = every
        self.n = 0

    async def on_bus_message(self, message: BusMessage) -> None:
        text = text_of(message)
        if text == "stats?":
            report("stats", stats=self.bus.stats())
            return
        self.file.write(f"{text}\n")
        self.file.flush()
        self.n += 1
        if self.n % self.every == 0:
            report("progress", n=self.n)


class Listener(BaseWorker):
    async def on_bus_message(self, message: BusMessage) -> None:
        report(
            "got",
            type=type(message).__name__,
            source=message.source,
            target=message.target,
            text=text_of(message),
        )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("echo", "sink", "listener"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--channel", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--runner", default=None)
    parser.add_argument("--log", type=Path)
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument("--lease-ttl", type=float, default=2.0)
    parser.add_argument("--in-flight", type=int, default=1024)
    args = parser.parse_args()
    bus = RedisBus(
        args.url,
        channel=args.channel,
        lease_ttl=args.lease_ttl,
        in_flight=args.in_flight,
        claim_timeout=60.0,
    )
    runner = WorkerRunner(args.runner or f"child-{args.name}", bus=bus)
    worker: BaseWorker
    if args.role == "echo":
        worker = Echo(args.name)
    elif args.role == "sink":
        worker = Sink(args.name, args.log, args.every)
    else:
        worker = Listener(args.name)

    async def announce(_: Any) -> None:
        report("ready", node=bus.node)

    runner.registry.watch(args.name, announce)
    await runner.add_workers(worker)
    await runner.run()
    report("stopped", stats=bus.stats())


if __name__ == "__main__":
    asyncio.run(main())
