"""The reader: this runner's streams, read in one blocking call, handed to local endpoints.

One ``XREADGROUP`` reads every stream the runner holds (its workers' streams
and its own node stream). A stream is first read from its pending list (ID
``0``: what this runner was handed before a cut, a restart or a takeover),
then for new entries (``>``). An entry goes to the inbox of the endpoint that
holds the name (a broadcast: to every local endpoint but its source); when an
inbox is full under ``wait``, the rest of that stream waits in order, and the
stream is not read again until it has gone in. So a slow worker holds back its
own stream only, and the backlog stays in Redis, where senders see it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from proxy_core.errors import CodecError, QueueFull
from proxy_core.messages import BusLocalMessage, BusMessage
from proxy_core.plugins import resolve_codec
from proxy_core.protocol import Msg
from proxy_core.worker import BaseWorker

from .keys import GROUP, parse_id
from .support import CONNECTION_ERRORS, Retry, is_power_of_ten
from .tracking import StreamState

if TYPE_CHECKING:
    from .bus import RedisBus

__all__ = ["Reader"]

logger = logging.getLogger("proxy_core_redis")


class Reader:
    """Reads the streams of ``bus`` and delivers their entries.

    Args:
        bus: the bus it reads for.
        count: the most entries one read returns per stream.
        block_ms: how long one read waits for new entries.
        in_flight: the most entries of one stream delivered and not finished;
            the stream is not read beyond (the bound of what a crash repeats).
    """

    def __init__(self, bus: RedisBus, *, count: int, block_ms: int, in_flight: int) -> None:
        self._bus = bus
        self._count = count
        self._block_ms = block_ms
        self._in_flight = in_flight
        self.streams: dict[str, StreamState] = {}
        self._wake = asyncio.Event()
        self._blocking = False
        self._reading: set[str] = set()  # the streams of the read in progress
        self._delivering: dict[StreamState, asyncio.Task[None]] = {}
        self.poking: asyncio.Task[None] | None = None  # an entry that ends a blocking read

    # ------------------------------------------------------------ streams

    def add(self, state: StreamState) -> None:
        """Start reading ``state`` (from its pending list)."""
        self.streams[state.key] = state
        self.wake()

    def remove(self, key: str) -> StreamState | None:
        """Stop reading stream ``key``; return its state."""
        state = self.streams.pop(key, None)
        if state is not None:
            task = self._delivering.pop(state, None)
            if task is not None:
                task.cancel()
        return state

    def stop(self) -> None:
        """Stop handing held entries over (their workers are stopping; they stay pending)."""
        for task in self._delivering.values():
            task.cancel()
        self._delivering.clear()

    def restart(self) -> None:
        """Read every stream from its pending list again (after a cut or a restart)."""
        for state in self.streams.values():
            state.restart()

    def wake(self) -> None:
        """Have the read loop look at its streams again (one may have become readable).

        A blocking read that leaves out a stream now readable is ended early
        (an entry in our node stream); one that reads them all is left alone.
        """
        self._wake.set()
        if self._blocking:
            now = asyncio.get_running_loop().time()
            reading = self._reading
            if any(k not in reading and self.readable(s, now) for k, s in self.streams.items()):
                self._blocking = False  # one poke per read
                self._poke()

    def _poke(self) -> None:
        """Wake the blocked read: an entry in our own node stream ends its wait."""
        bus = self._bus
        if bus._started and not bus._stopping and self.poking is None:
            self.poking = asyncio.get_running_loop().create_task(self._poke_now())

    async def _poke_now(self) -> None:
        bus = self._bus
        try:
            await bus._redis.xadd(bus.keys.node_stream(bus.node), {"k": "wake"})
        except CONNECTION_ERRORS:
            pass  # the read ends anyway, with the cut connection
        finally:
            self.poking = None

    def readable(self, state: StreamState, now: float) -> bool:
        """Whether ``state`` may be read now.

        Not while entries wait for room in its inbox, nor while as many are
        delivered and unfinished as the window (at most the worker's inbox
        bound: the backlog stays in Redis, where senders see it, instead of
        overflowing the inbox), nor while this runner's leases are not known
        to be valid.
        """
        if state.held or len(state.outstanding) >= self._window(state):
            return False
        return state.name is None or self._bus._members.lease_valid(now)

    def _window(self, state: StreamState) -> int:
        if state.name is None:
            return self._in_flight
        endpoint = self._bus._routes.get(state.name)
        if isinstance(endpoint, BaseWorker):
            return min(self._in_flight, endpoint.max_queue)
        return self._in_flight

    # ------------------------------------------------------------ the task

    async def run(self) -> None:
        """Read and deliver for as long as the task runs."""
        bus = self._bus
        loop = asyncio.get_running_loop()
        retry = Retry(bus, "reading")
        while not bus._stopping:
            now = loop.time()
            wanted = {k: s.cursor for k, s in self.streams.items() if self.readable(s, now)}
            if not wanted:
                self._wake.clear()
                try:
                    async with asyncio.timeout(bus.lease_ttl / 4):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            pending = any(cursor != ">" for cursor in wanted.values())
            self._blocking = not pending
            self._reading = set(wanted)
            reply: Any
            try:
                reply = await bus._redis.xreadgroup(
                    GROUP,
                    bus.node,
                    wanted,  # type: ignore[arg-type]
                    count=self._count,
                    block=None if pending else self._block_ms,
                )
            except ResponseError as exc:
                if any(k not in self.streams for k in wanted):
                    # A name was given up while we read its stream (its key,
                    # deleted, unblocks the read): read the others again.
                    continue
                if "NOGROUP" not in str(exc):
                    raise
                await bus._members.recover(f"a stream lost its group ({exc})")
                continue
            except CONNECTION_ERRORS as exc:
                self.restart()
                await retry.failed(exc)
                continue
            finally:
                self._blocking = False
            if bus._stopping:  # what it returned stays pending, for the next holder
                return
            retry.succeeded()
            returned: set[str] = set()
            for raw_key, entries in reply or ():
                key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
                returned.add(key)
                state = self.streams.get(key)
                if state is not None:
                    self._on_entries(state, entries, pending=wanted.get(key, ">") != ">")
            for key, cursor in wanted.items():
                state = self.streams.get(key)
                if state is not None and cursor != ">" and key not in returned:
                    state.cursor = ">"
            if reply:
                # Let the workers just handed something run, and their replies
                # be written, before this loop spends its time on the next read.
                await asyncio.sleep(0)
                await asyncio.sleep(0)

    # ------------------------------------------------------------ delivery

    def _on_entries(self, state: StreamState, entries: Any, *, pending: bool) -> None:
        bus = self._bus
        if pending and not entries:
            state.cursor = ">"  # our pending list is read: new entries from now on
            return
        window = self._window(state)
        for raw_id, fields in entries:
            entry = parse_id(raw_id)
            if entry <= state.delivered_upto:
                continue  # delivered already in this hold (we read our pending list again)
            if len(state.outstanding) >= window:
                # The rest stays in our pending list, read again once there is room.
                state.cursor = f"{state.delivered_upto[0]}-{state.delivered_upto[1]}"
                break
            if pending:
                state.cursor = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
            if not fields:  # trimmed away while pending: its content is gone
                bus._stats["lost"] += 1
                bus._tracker.finish_entry(state, entry)
                continue
            kind = fields.get(b"k")
            if kind is not None:
                bus._members.on_news(kind, fields)
                bus._tracker.finish_entry(state, entry)
                continue
            message = self._decode(fields)
            if message is None:
                bus._tracker.finish_entry(state, entry)
                continue
            endpoints = self._endpoints_for(state, message)
            if endpoints is None:  # no longer deliverable here: leave it pending
                state.restart()
                return
            if pending and entry <= state.redelivered_upto:
                bus._stats["redelivered"] += 1
            self._deliver(state, entry, message, endpoints)
        if bus._tracker.has_acks:
            bus._acker.soon()

    def _endpoints_for(self, state: StreamState, message: BusMessage) -> list[Any] | None:
        bus = self._bus
        if state.name is not None:
            endpoint = bus._routes.get(state.name)
            if endpoint is None or (isinstance(endpoint, BaseWorker) and not endpoint.accepting):
                return None
            return [endpoint]
        source = message.source
        return [e for e in bus._endpoints if e.name != source]

    def _decode(self, fields: dict[bytes, bytes]) -> BusMessage | None:
        bus = self._bus
        payload = fields.get(b"m")
        try:
            codec_name = fields.get(b"c", b"").decode()
            if payload is None:
                raise CodecError("an entry without a message")
            if len(payload) > bus.max_message_bytes:
                raise CodecError(f"{len(payload)} bytes > max_message_bytes")
            codec = bus._codec if codec_name == bus._codec.name else resolve_codec(codec_name)
            envelope = codec.decode(payload)
            if not isinstance(envelope, Msg):
                raise CodecError(f"not a message: {type(envelope).__name__}")
            message = envelope.message
            if isinstance(message, BusLocalMessage):
                raise CodecError(f"a local message ({type(message).__name__}) never crosses")
        except Exception as exc:  # any failure to decode is the entry's, never ours
            bus._stats["undecodable"] += 1
            count = bus._stats["undecodable"]
            if is_power_of_ten(count):
                logger.warning(
                    "redis bus %r: an entry did not decode (%s: %s); acknowledged and dropped "
                    "(%d so far)",
                    bus.node,
                    type(exc).__name__,
                    exc,
                    count,
                )
            return None
        bus._stats["received"] += 1
        return message

    def _deliver(
        self, state: StreamState, entry: tuple[int, int], message: BusMessage, endpoints: list[Any]
    ) -> None:
        tracker = self._bus._tracker
        tracker.delivered(state, entry, message)
        remaining: list[Any] = []
        for endpoint in endpoints:
            hooked = self._bus._acker.hooked(endpoint)
            if hooked:
                tracker.expect(endpoint, message)
            if remaining or state.held:
                remaining.append(endpoint)
                continue
            try:
                queued = endpoint.offer(message)
            except QueueFull:  # refused by its policy, and counted by its inbox
                queued = True
                if hooked:
                    tracker.finished(endpoint, message)
            if not queued:
                remaining.append(endpoint)
        if remaining:
            state.held.append((entry, (message, remaining)))
            if state not in self._delivering:
                self._delivering[state] = asyncio.get_running_loop().create_task(
                    self._deliver_held(state), name=f"redis-bus-deliver-{state.key}"
                )
        if tracker.settle(message):
            self._bus._acker.soon()

    async def _deliver_held(self, state: StreamState) -> None:
        """Put what a full inbox could not take, in order, waiting for room."""
        tracker = self._bus._tracker
        try:
            while state.held:
                _, (message, endpoints) = state.held[0]
                while endpoints:
                    endpoint = endpoints[0]
                    try:
                        await endpoint.put(message)
                    except QueueFull:
                        if self._bus._acker.hooked(endpoint):
                            tracker.finished(endpoint, message)
                    endpoints.pop(0)
                state.held.popleft()
                if tracker.settle(message):
                    self._bus._acker.soon()
        finally:
            self._delivering.pop(state, None)
        self.wake()
