"""The acknowledging loop of a :class:`~proxy_core_redis.bus.RedisBus`.

A worker that holds a name on the bus reports each message it finished
through a hook (:meth:`Acker.finished`). Entries are acknowledged (``XACK``,
and the stream trimmed below its oldest unfinished entry) once every local
endpoint has finished with them (see :mod:`.tracking`), in batches, by one
task per bus, after any write in progress: acknowledgements are never urgent.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from proxy_core.messages import BusMessage
from proxy_core.worker import BaseWorker

from .support import CONNECTION_ERRORS, Retry

if TYPE_CHECKING:
    from .bus import RedisBus

__all__ = ["Acker"]

#: The longest an acknowledgement waits for a write in progress to go first (seconds).
_ACK_DEFER = 0.002


class Acker:
    """Acknowledges what ``bus``'s endpoints finished, in batches, from a task of its own."""

    def __init__(self, bus: RedisBus) -> None:
        self._bus = bus
        self._tracker = bus._tracker
        self._wanted = asyncio.Event()

    def hooked(self, endpoint: Any) -> bool:
        """Whether ``endpoint`` reports to this bus the messages it finished."""
        return isinstance(endpoint, BaseWorker) and endpoint._finished == self.finished

    def finished(self, worker: BaseWorker, message: BusMessage) -> None:
        """``worker`` finished ``message`` (the hook a worker calls): acknowledge it soon."""
        if self._tracker.finished(worker, message):
            self._wanted.set()

    def soon(self) -> None:
        """Ask for a flush: the loop runs it once the writer is idle (or shortly)."""
        self._wanted.set()

    async def run(self) -> None:
        """Flush acknowledgements whenever asked, retrying through cut connections."""
        bus = self._bus
        retry = Retry(bus, "acknowledging")
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            # Acknowledgements are never urgent: let a message being sent (a
            # handler's reply, say) go first, as it is on someone's clock.
            await asyncio.sleep(0)
            if not bus._writer.idle:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_ACK_DEFER):
                        await bus._writer.wait_idle()
            try:
                await self.flush()
            except CONNECTION_ERRORS as exc:
                await retry.failed(exc)
                self._wanted.set()
                continue
            retry.succeeded()

    async def flush(self) -> None:
        """Acknowledge every finished entry now, and trim the streams below what is pending."""
        bus = self._bus
        acks = bus._tracker.take_acks()
        if not acks:
            return
        keys: list[str] = []
        args: list[Any] = [bus.node]
        for state, entries in acks.items():
            lease = bus.keys.lease(state.name) if state.name else bus.keys.alive(bus.node)
            keys += [state.key, lease]
            args += [len(entries), state.trim_below(), *(f"{e[0]}-{e[1]}" for e in entries)]
        try:
            await bus._call("ACK", keys, args)
        except BaseException:
            bus._tracker.requeue(acks)
            raise
        bus._stats["acked"] += sum(len(e) for e in acks.values())
        bus._reader.wake()
