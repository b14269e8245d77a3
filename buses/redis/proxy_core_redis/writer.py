"""The writer: messages for other processes, queued per destination and written in batches.

A sender's message is encoded at once (so an unencodable message is the
sender's error) and queued for its destination stream; the writer task sends
what is queued as one script call (``SEND``), so a burst costs one round trip,
and a lone message is written at once. A batch is numbered; if its reply is
lost, the same batch is sent again and Redis answers with the first result
instead of adding the entries twice: exactly once across cut connections.

Every queue is bounded: a destination whose backlog in Redis is full refuses
(under ``wait``) the rest of its messages, which stay first in line, in order,
and are tried again after a short pause; senders to it wait meanwhile, as they
would for a full local inbox.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from proxy_core.errors import ProxyError, QueueFull
from proxy_core.inbox import OverflowPolicy

__all__ = ["Target", "Writer"]

logger = logging.getLogger("proxy_core_redis")

#: Pauses before a destination that refused (its backlog was full) is tried again.
_RETRY_FULL = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
#: How long senders under ``error``/``drop_newest`` take a full backlog as still full.
_FULL_FOR = 0.05


@dataclass(eq=False)
class Target:
    """One destination: a worker's stream, or (``name is None``) every other runner.

    Attributes:
        name: the worker name, or ``None`` for broadcasts.
        queue: encoded messages waiting to be written, in order.
        full_until: its backlog was full at the last write: until this time,
            senders apply ``policy`` (``error``, ``drop_newest``) without writing.
        policy: the overflow policy of its holder (``wait`` until known).
        limit: its backlog limit.
        held: whether a runner held the name at the last write.
        in_flight: messages of the batch being written now.
        retries: refusals in a row (its backlog stayed full).
        room: set while its queue has room (``wait`` senders wait on it).
    """

    name: str | None
    queue: deque[bytes] = field(default_factory=deque)
    full_until: float = 0.0
    policy: OverflowPolicy = OverflowPolicy.WAIT
    limit: int = 0
    held: bool = True
    in_flight: int = 0
    retries: int = 0
    room: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.room.set()


class Writer:
    """Queues messages per destination and writes them in numbered, idempotent batches.

    Args:
        write: runs one batch: ``await write(first_seq, last_seq, [(target, payload)...])``
            and returns the script's JSON result; it retries cut connections itself.
        max_buffer: the most messages queued in all (senders wait beyond).
        max_queue: the most messages queued for one destination (its senders wait beyond).
        max_batch: the most messages in one batch.
        max_batch_bytes: the most payload bytes in one batch.
        put_timeout: how long a sender waits for room before its message is
            dropped (counted as ``timeout``).
        count: ``count(reason, n)`` counts dropped messages.
    """

    def __init__(
        self,
        write: Callable[[int, int, list[tuple[Target, bytes]]], Awaitable[str]],
        *,
        max_buffer: int,
        max_queue: int,
        max_batch: int,
        max_batch_bytes: int,
        put_timeout: float,
        count: Callable[[str, int], None],
    ) -> None:
        self._write = write
        self._max_buffer = max_buffer
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._max_batch_bytes = max_batch_bytes
        self._put_timeout = put_timeout
        self._count = count
        self._targets: dict[str | None, Target] = {}
        self._ready: deque[Target] = deque()  # targets with something to write, not paused
        self._buffered = 0
        self._space = asyncio.Event()
        self._space.set()
        self._wanted = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._seq = 0
        self.written = 0
        self.batches = 0
        self.unheld = 0
        self.stats: Counter[str] = Counter()

    # ------------------------------------------------------------ senders

    def target(self, name: str | None) -> Target:
        """Return the destination for worker ``name`` (``None``: broadcasts)."""
        target = self._targets.get(name)
        if target is None:
            target = self._targets[name] = Target(name)
        return target

    def pending(self, name: str) -> bool:
        """Whether messages for ``name`` are queued or being written."""
        target = self._targets.get(name)
        return target is not None and bool(target.queue or target.in_flight)

    async def put(self, name: str | None, payload: bytes) -> None:
        """Queue ``payload`` for ``name`` (``None``: every other runner), waiting for room.

        Raises:
            QueueFull: the destination is full and its holder's policy is ``error``.
        """
        target = self.target(name)
        policy = target.policy
        if target.full_until and name is not None and policy is not OverflowPolicy.WAIT:
            if asyncio.get_running_loop().time() < target.full_until:
                if policy is OverflowPolicy.ERROR:  # the sender is told: not a silent drop
                    raise QueueFull(name, policy.value, target.limit)
                if policy is OverflowPolicy.DROP_NEWEST:
                    self._count("drop_newest", 1)
                    return
        if len(target.queue) >= self._max_queue and not await self._wait(target.room, name):
            return
        if self._buffered >= self._max_buffer and not await self._wait(self._space, name):
            return
        self._append(target, payload)

    def _append(self, target: Target, payload: bytes) -> None:
        target.queue.append(payload)
        if len(target.queue) >= self._max_queue:
            target.room.clear()
        self._buffered += 1
        if self._buffered >= self._max_buffer:
            self._space.clear()
        if len(target.queue) == 1 and not target.retries:
            self._ready.append(target)
        self._wanted.set()
        self._idle.clear()

    def offer(self, name: str | None, payload: bytes) -> bool:
        """Queue ``payload`` if that needs no wait; return whether it was queued."""
        target = self.target(name)
        if len(target.queue) >= self._max_queue or self._buffered >= self._max_buffer:
            return False
        if target.full_until and target.policy is not OverflowPolicy.WAIT:
            return False  # let put() apply the policy
        self._append(target, payload)
        return True

    async def _wait(self, event: asyncio.Event, name: str | None) -> bool:
        try:
            async with asyncio.timeout(self._put_timeout):
                while not event.is_set():
                    await event.wait()
        except TimeoutError:
            self._count("timeout", 1)
            logger.warning(
                "redis bus: no room for a message to %r within %.1fs; dropped",
                name,
                self._put_timeout,
            )
            return False
        return True

    async def drain(self, timeout: float) -> bool:
        """Wait until everything queued is written (or ``timeout``); return whether it was."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    @property
    def idle(self) -> bool:
        """Whether nothing is queued or being written."""
        return self._idle.is_set()

    async def wait_idle(self) -> None:
        """Wait until nothing is queued or being written."""
        await self._idle.wait()

    @property
    def buffered(self) -> int:
        """Messages queued, not yet written."""
        return self._buffered

    # ------------------------------------------------------------ the task

    async def run(self) -> None:
        """Write batches for as long as the task runs."""
        loop = asyncio.get_running_loop()
        while True:
            if not self._ready:
                if self._buffered == 0 and not self._idle.is_set():
                    self._idle.set()
                self._wanted.clear()
                await self._wanted.wait()
                continue
            batch = self._take()
            first = self._seq + 1
            self._seq += len(batch)
            result = await self._write(first, self._seq, batch)
            self._settle(batch, json.loads(result), loop)

    def _take(self) -> list[tuple[Target, bytes]]:
        batch: list[tuple[Target, bytes]] = []
        size = 0
        ready = self._ready
        while ready and len(batch) < self._max_batch and size < self._max_batch_bytes:
            target = ready.popleft()
            queue = target.queue
            while queue and len(batch) < self._max_batch and size < self._max_batch_bytes:
                payload = queue.popleft()
                batch.append((target, payload))
                size += len(payload)
                target.in_flight += 1
            if len(queue) < self._max_queue:
                target.room.set()
            if queue:  # the batch is full: the rest of it goes first next time
                ready.appendleft(target)
        return batch

    def _settle(self, batch: list[tuple[Target, bytes]], result: dict[str, Any], loop: Any) -> None:
        refused = set(_ints(result.get("r")))
        dropped = set(_ints(result.get("d")))
        order: list[Target] = []
        info: dict[int, Target] = {}
        for target, _ in batch:
            target.in_flight = 0
            if target.name is not None and id(target) not in info:
                info[id(target)] = target
                order.append(target)
        self._learn(order, result, loop.time())
        back: dict[int, list[bytes]] = {}
        for index, (target, payload) in enumerate(batch, 1):
            if index in refused:
                back.setdefault(id(target), []).append(payload)
        written = len(batch) - len(refused) - len(dropped)
        self.written += written
        self.batches += 1
        for index in dropped:
            target = batch[index - 1][0]
            self._count("error" if target.policy is OverflowPolicy.ERROR else "drop_newest", 1)
        if result.get("o"):
            self._count("drop_oldest", int(result["o"]))
        if result.get("b"):
            self._count("broadcast_full", int(result["b"]))
        self._buffered -= len(batch) - sum(len(v) for v in back.values())
        if self._buffered < self._max_buffer:
            self._space.set()
        for target in order:
            again = back.get(id(target))
            if again:
                target.queue.extendleft(reversed(again))
                if len(target.queue) >= self._max_queue:
                    target.room.clear()
                self._pause(target, loop)
            else:
                target.retries = 0

    def _learn(self, order: list[Target], result: dict[str, Any], now: float) -> None:
        held, length = _ints(result.get("h")), _ints(result.get("l"))
        limit, policy = _ints(result.get("m")), result.get("p") or []
        if isinstance(policy, dict):  # cjson writes an empty list as {}
            policy = []
        for index, target in enumerate(order):
            if index >= len(held):
                break
            was_held = target.held
            target.held = bool(held[index])
            if not target.held:
                self.unheld += 1
                if was_held:
                    logger.info(
                        "redis bus: no runner holds %r; its messages wait for one", target.name
                    )
            target.limit = limit[index]
            try:
                target.policy = OverflowPolicy(policy[index])
            except (ValueError, IndexError):
                target.policy = OverflowPolicy.WAIT
            # Senders under error/drop_newest learn of a full backlog for a
            # short while, then write again and let Redis say.
            target.full_until = now + _FULL_FOR if length[index] >= target.limit else 0.0

    def _pause(self, target: Target, loop: Any) -> None:
        if target in self._ready:  # a sender queued more meanwhile: wait all the same
            self._ready.remove(target)
        delay = _RETRY_FULL[min(target.retries, len(_RETRY_FULL) - 1)]
        if not target.retries:
            logger.debug("redis bus: the backlog of %r is full; its messages wait", target.name)
        target.retries += 1
        loop.call_later(delay, self._resume, target)

    def _resume(self, target: Target) -> None:
        # Try again; the next result says whether it is still full.
        if target.queue and target not in self._ready:
            self._ready.append(target)
            self._wanted.set()
        elif not target.queue:
            target.retries = 0


def _ints(value: Any) -> list[int]:
    if not value or isinstance(value, dict):
        return []
    return [int(v) for v in value]


class WriteFailed(ProxyError):
    """A batch could not be written within the retry policy (the bus fails)."""
