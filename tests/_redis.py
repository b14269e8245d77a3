"""Helpers of the Redis bus tests: channels, runners on a RedisBus, what Redis holds."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from _support import wait

from proxy_core import WorkerRunner
from proxy_core_redis import RedisBus

_channels = itertools.count(1)


def channel(prefix: str = "t") -> str:
    """A channel no other test uses."""
    return f"{prefix}-{next(_channels)}"


@contextlib.asynccontextmanager
async def running(
    url: str, channel: str, *workers: Any, name: str | None = None, **options: Any
) -> AsyncIterator[WorkerRunner]:
    """A runner on a RedisBus (``lease_ttl`` 2 s unless given), running in a task; ended on exit."""
    options.setdefault("lease_ttl", 2.0)
    runner = WorkerRunner(name, bus=RedisBus(url, channel=channel, **options), handle_sigint=False)
    await runner.add_workers(*workers)
    task = asyncio.create_task(runner.run())
    try:
        yield runner
    finally:
        await runner.end()
        await wait(task)


async def keys_of(url: str, channel: str) -> list[bytes]:
    """The keys of ``channel`` in Redis now."""
    client = aioredis.Redis.from_url(url)
    try:
        return sorted([k async for k in client.scan_iter(match=f"pc:{{{channel}}}:*")])
    finally:
        await client.aclose()


async def stream_length(url: str, channel: str, name: str) -> int:
    """The entries in worker ``name``'s stream now."""
    client = aioredis.Redis.from_url(url)
    try:
        return int(await client.xlen(f"pc:{{{channel}}}:w:{name}"))
    finally:
        await client.aclose()
