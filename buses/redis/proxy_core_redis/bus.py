"""RedisBus: one bus shared by the runners of many processes, on Redis Streams.

Each worker name has a stream, read by the one runner that holds the name (a
lease, renewed); each runner has a stream for broadcasts and registry news.
Messages between two workers of the same runner never touch Redis. See
``docs/distributed.md`` for the guarantees, the keys, sizing and failures.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from proxy_core.backoff import Backoff
from proxy_core.bus import BaseBus, Endpoint
from proxy_core.codecs.base import Codec
from proxy_core.errors import ConfigurationError, ConnectError, MessageTooLarge, ProxyError
from proxy_core.inbox import DEFAULT_PUT_TIMEOUT
from proxy_core.messages import BusLocalMessage, BusMessage
from proxy_core.plugins import resolve_codec
from proxy_core.protocol import Msg
from proxy_core.transport import DEFAULT_MAX_MESSAGE_BYTES, check_max_message_bytes

from . import scripts
from .acker import Acker
from .claims import Claims
from .keys import Keys, NodeId
from .membership import Membership
from .reader import Reader
from .support import (
    CONNECTION_ERRORS,
    RedisBusError,
    Retry,
    cancel_all,
    check_options,
    describe_client,
    field,
    make_client,
    probe_server,
    redact,
    text,
)
from .tracking import AckTracker, StreamState
from .writer import Writer

__all__ = ["MIN_REDIS_VERSION", "RedisBus", "RedisBusError", "redact"]

logger = logging.getLogger("proxy_core_redis")

#: The oldest Redis server the bus runs on.
MIN_REDIS_VERSION = (6, 2)

#: The counters of :meth:`RedisBus.stats` besides those of the writer (always present).
_COUNTERS = (
    "received",
    "broadcasts_out",
    "acked",
    "claimed",
    "redelivered",
    "undecodable",
    "lost",
    "reconnects",
    "state_lost",
    "leases_lost",
)


class RedisBus(BaseBus):
    """A bus shared by many runners (processes, machines) on one Redis channel.

    ``WorkerRunner("node-1", bus=RedisBus("redis://127.0.0.1:6379/0", channel="bots"))``:
    a worker of this runner reaches any worker on the channel by name, and
    broadcasts reach every worker on the channel but their source.
    :class:`~proxy_core.messages.BusLocalMessage`\\ s stay in their process.

    Args:
        url: a ``redis://`` or ``rediss://`` URL (user and password as redis-py
            takes them); or give ``redis`` instead.
        redis: a ``redis.asyncio.Redis`` you own (it is not closed by the bus;
            create it with ``decode_responses=False``).
        channel: the channel; runners on the same channel share one bus.
        codec: the codec of messages in Redis (a name or an instance).
        lease_ttl: seconds a runner holds its names without renewing them; a
            runner whose process died is noticed (its workers gone, their
            names free) within about 1.5 times this.
        max_backlog: the most entries a worker's stream holds unfinished; then
            the holder's overflow policy applies to senders.
        orphan_ttl: seconds messages wait for a name that no runner holds.
        in_flight: the most entries of one stream delivered to a worker and not
            finished; after a crash, at most this many are delivered again.
        max_buffer: the most messages this runner queues for Redis.
        max_message_bytes: the largest encoded message.
        reconnect: the retry policy when Redis is out of reach.
        put_timeout: seconds a sender waits for room before its message is dropped.
        close_timeout: seconds :meth:`aclose` waits for queued messages to be written.
        claim_timeout: seconds ``add_workers`` waits for a name another runner
            holds to become free (a standby taking over from a runner that
            died); ``0`` (the default) refuses it at once.

    Raises:
        ConfigurationError: an option is out of range (the message says which).
    """

    name: ClassVar[str] = "redis"

    def __init__(
        self,
        url: str | None = None,
        *,
        redis: aioredis.Redis | None = None,
        channel: str = "proxy-core",
        codec: str | Codec = "msgpack",
        lease_ttl: float = 10.0,
        max_backlog: int = 10_000,
        orphan_ttl: float = 60.0,
        in_flight: int = 1024,
        max_buffer: int = 10_000,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        reconnect: Backoff | None = None,
        put_timeout: float = DEFAULT_PUT_TIMEOUT,
        close_timeout: float = 5.0,
        claim_timeout: float = 0.0,
    ) -> None:
        super().__init__()
        check_options(
            url,
            redis,
            lease_ttl=lease_ttl,
            orphan_ttl=orphan_ttl,
            max_backlog=max_backlog,
            in_flight=in_flight,
            max_buffer=max_buffer,
            put_timeout=put_timeout,
            close_timeout=close_timeout,
            claim_timeout=claim_timeout,
        )
        check_max_message_bytes(max_message_bytes)
        self.url = redact(url) if url is not None else describe_client(redis)
        self._owned = redis is None
        self._redis: aioredis.Redis = redis if redis is not None else make_client(url or "")
        self.keys = Keys(channel)
        self.channel = channel
        self._codec = resolve_codec(codec)
        self.lease_ttl = float(lease_ttl)
        self.max_backlog = max_backlog
        self.orphan_ttl = float(orphan_ttl)
        self.max_message_bytes = max_message_bytes
        self.reconnect = reconnect or Backoff(max_elapsed=300.0)
        self.close_timeout = close_timeout
        self.claim_timeout = claim_timeout
        self.node: NodeId = NodeId("")
        self._tracker = AckTracker()
        self._members = Membership(self)
        self._reader = Reader(self, count=256, block_ms=2000, in_flight=in_flight)
        self._writer = Writer(
            self._write_batch,
            max_buffer=max_buffer,
            max_queue=min(max_buffer, 1024),
            max_batch=512,
            max_batch_bytes=512 * 1024,
            put_timeout=put_timeout,
            count=self._count,
        )
        self._scripts: dict[str, Any] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._start_lock = asyncio.Lock()
        self._started = False
        self._closed = False
        self._stopping = False
        self._valid_until = 0.0
        self._news: list[tuple[str, str]] = []
        self._news_wanted = asyncio.Event()
        self._acker = Acker(self)
        self._remote_ready: dict[str, tuple[str, str]] = {}
        self._claims = Claims(self)
        self._stats: Counter[str] = Counter(dict.fromkeys(_COUNTERS, 0))
        self._dropped: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"<RedisBus {self.url} channel={self.channel!r} node={self.node or None!r}>"

    # ------------------------------------------------------------ lifecycle

    def bind(self, runner: Any) -> None:
        """Become the bus of ``runner`` (called by the runner)."""
        super().bind(runner)
        runner.registry._publish = self._members.on_local_ready

    async def start(self) -> None:
        """Connect, check the server, and register this runner on the channel; idempotent.

        Raises:
            ConfigurationError: not bound to a runner, or the server is older than 6.2.
            ConnectError: Redis cannot be reached (or refuses the credentials).
        """
        if self._started:
            return
        async with self._start_lock:
            if self._started:
                return
            if self._closed:
                raise ConfigurationError("this RedisBus is closed; create a new one")
            runner = self._runner
            if runner is None:
                raise ConfigurationError("give this RedisBus to a WorkerRunner(bus=...) first")
            await self._probe()
            self.node = NodeId(f"{field(runner.name)}-{secrets.token_hex(4)}")
            for name in scripts.__all__:
                self._scripts[name] = self._redis.register_script(getattr(scripts, name))
            try:
                await self._members.register()
            except CONNECTION_ERRORS as exc:
                raise ConnectError(
                    f"lost Redis at {self.url} while joining: {type(exc).__name__}: {exc}"
                ) from exc
            self._valid_until = asyncio.get_running_loop().time() + self.lease_ttl * 0.8
            self._reader.add(StreamState(self.keys.node_stream(self.node), None))
            loop = asyncio.get_running_loop()
            for coro, what in (
                (self._reader.run(), "reader"),
                (self._writer.run(), "writer"),
                (self._acker.run(), "acker"),
                (self._members.control_loop(), "control"),
            ):
                task = loop.create_task(coro, name=f"redis-bus-{what}")
                task.add_done_callback(self._task_done)
                self._tasks.append(task)
            self._started = True
            logger.info(
                "redis bus: runner %r joined channel %r on %s as %s",
                runner.name,
                self.channel,
                self.url,
                self.node,
            )

    async def _probe(self) -> None:
        self.server_version = await probe_server(self._redis, self.url, MIN_REDIS_VERSION)

    def stopping(self) -> None:
        """Stop handing messages to workers: the runner is stopping them.

        What is not finished stays pending in Redis, for the next holder of each name.
        """
        self._stopping = True
        for task in self._tasks[:1]:  # the reader
            task.cancel()
        self._reader.stop()

    async def aclose(self) -> None:
        """Write what is queued, give up every name, leave the channel, and disconnect.

        Bounded by ``close_timeout`` for the writes; names whose release fails
        expire by themselves after ``lease_ttl``.
        """
        if self._closed:
            return
        self._closed = True
        if not self._started:
            if self._owned:
                await self._redis.aclose()
            return
        self.stopping()
        # The reader must be gone before we leave: it would set the channel up again.
        await cancel_all(self._tasks[:1], self.close_timeout)
        if not await self._writer.drain(self.close_timeout):
            left = self._writer.buffered
            self._count("closed", left)
            logger.warning("redis bus %r: %d message(s) not written at close", self.node, left)
        try:
            async with asyncio.timeout(self.close_timeout):
                await self._acker.flush()
                await self._claims.release_all()
                await self._members.leave()
        except (TimeoutError, RedisBusError, *CONNECTION_ERRORS) as exc:  # type: ignore[misc]
            logger.warning(
                "redis bus %r: could not leave the channel cleanly (%s); its keys expire "
                "within %.0fs",
                self.node,
                exc,
                self.lease_ttl,
            )
        tasks = [*self._tasks, *([self._reader.poking] if self._reader.poking else [])]
        await cancel_all(tasks, self.close_timeout)
        if self._owned:
            await self._redis.aclose()
        logger.info("redis bus: runner %s left channel %r", self.node, self.channel)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._closed:
            return
        error = task.exception()
        if error is None:
            return
        if not isinstance(error, ProxyError):
            logger.error("redis bus %r: %s failed", self.node, task.get_name(), exc_info=error)
            error = RedisBusError(f"{task.get_name()} failed: {type(error).__name__}: {error}")
        if self._runner is not None:
            self._runner.bus_failed(error)

    # ------------------------------------------------------------ routing

    async def claim(self, endpoint: Endpoint, names: list[str]) -> None:
        """Take ``names`` on the channel for ``endpoint`` (a lease each).

        Raises:
            ConfigurationError: a live runner holds one of the names (the message names it).
        """
        await self.start()
        await self._claims.claim(endpoint, names)

    async def release(self, endpoint: Endpoint, names: list[str]) -> None:
        """Give ``names`` up on the channel (what is left waits for a next holder)."""
        await self._claims.release(endpoint, names)

    # ------------------------------------------------------------ sending

    def _direct(self, name: str, message: BusMessage) -> Endpoint | None:
        """The local endpoint to hand ``message`` to at once, if it goes to one."""
        endpoint = self._routes.get(name)
        if endpoint is None or isinstance(message, BusLocalMessage):
            return endpoint  # a local message never goes through Redis
        state = self._reader.streams.get(self.keys.stream(name))
        return endpoint if state is None or state.direct else None

    async def send(self, message: BusMessage) -> None:
        """Deliver ``message``: to its target, wherever it is held, or as a broadcast.

        A targeted message for a worker of this runner is delivered at once; for
        another runner's worker, or a name nobody holds, it is queued for Redis
        (in order) and written in a batch. A broadcast reaches this runner's
        endpoints, then every other runner's. A local message stays here.

        Raises:
            QueueFull: a receiving inbox (or a destination's backlog) is full
                and its policy is ``"error"``.
            CodecError: the message cannot be encoded.
            MessageTooLarge: its encoding exceeds ``max_message_bytes``.
        """
        target = message.target
        if target is None:
            refused = None
            try:
                await self.broadcast_local(message)
            except ProxyError as exc:
                refused = exc
            if self._started and not isinstance(message, BusLocalMessage):
                await self._writer.put(None, self._encode(message))
                self._stats["broadcasts_out"] += 1
            if refused is not None:
                raise refused
            return
        await self.send_to(target, message)

    async def send_to(self, name: str, message: BusMessage) -> None:
        """Deliver ``message`` to the endpoint holding ``name``, wherever it is, waiting for room.

        Raises:
            QueueFull: the destination is full and its policy is ``"error"``.
            CodecError: the message cannot be encoded.
        """
        endpoint = self._direct(name, message)
        if endpoint is not None:
            if getattr(endpoint, "inline_put", False) or not endpoint.offer(message):
                await endpoint.put(message)
            return
        if isinstance(message, BusLocalMessage) or not self._started:
            self._undeliverable(name, message)
            return
        await self._writer.put(name, self._encode(message))

    def offer_to(self, name: str, message: BusMessage) -> bool:
        """Queue ``message`` for ``name`` without waiting; ``False`` if that needs a wait."""
        endpoint = self._direct(name, message)
        if endpoint is not None:
            return endpoint.offer(message)
        if isinstance(message, BusLocalMessage) or not self._started:
            self._undeliverable(name, message)
            return True
        return self._writer.offer(name, self._encode(message))

    def deliver_to(self, name: str, message: BusMessage) -> None:
        """Queue ``message`` for ``name`` without waiting; dropped (counted) if it must wait."""
        if not self.offer_to(name, message):
            self._count("full", 1)

    def _undeliverable(self, name: str, message: BusMessage) -> None:
        self.undeliverable += 1
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("redis bus: %r stays in its process; dropped for %r", message, name)

    def _encode(self, message: BusMessage) -> bytes:
        payload = self._codec.encode(Msg(1, message))
        if len(payload) > self.max_message_bytes:
            raise MessageTooLarge(len(payload), self.max_message_bytes)
        return payload

    async def _write_batch(self, first: int, last: int, batch: list[tuple[Any, bytes]]) -> str:
        keys = [self.keys.seq]
        index: dict[str | None, int] = {None: 0}
        args: list[Any] = [
            self.node,
            first,
            last,
            self.max_backlog,
            self._backstop_ms(),
            self._codec.name,
            self.keys.prefix,
        ]
        for target, payload in batch:
            position = index.get(target.name)
            if position is None:
                position = index[target.name] = len(index)
                keys += [self.keys.stream(target.name), self.keys.lease(target.name)]
            args += [position, payload]
        result = await self._call("SEND", keys, args, retry_as="writing")
        return text(result)

    # ------------------------------------------------------------ helpers

    async def _call(
        self, script: str, keys: list[str], args: list[Any], *, retry_as: str | None = None
    ) -> Any:
        """Run one of :mod:`.scripts`; with ``retry_as``, retry cut connections (idempotent)."""
        call: Callable[..., Awaitable[Any]] = self._scripts[script]
        if retry_as is None:
            return await call(keys=keys, args=args)
        retry = Retry(self, retry_as)
        while True:
            try:
                result = await call(keys=keys, args=args)
            except CONNECTION_ERRORS as exc:
                await retry.failed(exc)
                continue
            except ResponseError as exc:
                if "NOSCRIPT" in str(exc) or "LOADING" in str(exc):
                    await retry.failed(exc)
                    continue
                raise
            retry.succeeded()
            return result

    def _backstop_ms(self) -> int:
        # A stream no runner holds is dropped (counted) by a sweep after the
        # orphan ttl; its key expires later still, for a channel nobody sweeps.
        return int((2 * self.orphan_ttl + self.lease_ttl) * 1000)

    def _ttl_ms(self) -> int:
        return int(self.lease_ttl * 1000)

    def _count(self, reason: str, n: int) -> None:
        self._dropped[reason] += n

    def stats(self) -> dict[str, Any]:
        """Return the bus's counters: messages sent, received, acknowledged, dropped by reason..."""
        return {
            "bus": self.name,
            "channel": self.channel,
            "node": self.node,
            "undeliverable": self.undeliverable,
            "sent": self._writer.written,
            "batches": self._writer.batches,
            "queued": self._writer.buffered,
            "in_flight": len(self._tracker),
            "unheld": self._writer.unheld,
            **{k: v for k, v in self._stats.items() if k != "sent"},
            "dropped": dict(self._dropped),
        }
