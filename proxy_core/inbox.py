"""A bounded single-consumer queue with an overflow policy: every worker's inbox.

:class:`Inbox` is what stands between the bus and a worker. It holds at most
``maxsize`` items; when it is full, its :class:`OverflowPolicy` decides: the
sender waits for room (``wait``, the default), the oldest queued item is
dropped to make room (``drop_oldest``), the new item is dropped
(``drop_newest``), or the sender gets :class:`~proxy_core.errors.QueueFull`
(``error``). Every drop is counted by reason in :attr:`Inbox.stats`.

It is cheaper than :class:`asyncio.Queue` on the hot path: putting appends to
a deque and wakes the consumer only when it is waiting; taking never awaits
while items are there (:meth:`Inbox.get_nowait`). A sender that waits for room
does not poll: the consumer hands the waiting items over, in arrival order,
once it has taken the inbox down to half (so waiting senders never lose their
turn to a newcomer, and a stream wakes its sender once per half inbox, not
once per message).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .errors import ConfigurationError, QueueFull

__all__ = ["DEFAULT_MAX_QUEUE", "DEFAULT_PUT_TIMEOUT", "Inbox", "OverflowPolicy", "QueueStats"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The default bound of a worker's inbox, in messages.
DEFAULT_MAX_QUEUE = 1024
#: The default number of seconds a sender waits for room under ``wait``.
DEFAULT_PUT_TIMEOUT = 30.0


class OverflowPolicy(enum.StrEnum):
    """What happens when a message arrives at a full inbox."""

    WAIT = "wait"
    """The sender waits for room, up to ``put_timeout``; then the message is dropped."""
    DROP_OLDEST = "drop_oldest"
    """The oldest queued message is dropped to make room; the sender never waits."""
    DROP_NEWEST = "drop_newest"
    """The arriving message is dropped; the sender never waits."""
    ERROR = "error"
    """The sender gets :class:`~proxy_core.errors.QueueFull`; the message is not queued."""

    @classmethod
    def parse(cls, value: OverflowPolicy | str) -> OverflowPolicy:
        """Return the policy named ``value``.

        Raises:
            ConfigurationError: no such policy (the message lists the allowed values).
        """
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(repr(p.value) for p in cls)
            raise ConfigurationError(f"overflow must be one of {allowed}, got {value!r}") from None


@dataclass(frozen=True)
class QueueStats:
    """A snapshot of an inbox's counters.

    Attributes:
        depth: items queued now.
        high_water: the largest depth seen.
        maxsize: the bound.
        overflow: the policy.
        dropped: dropped items by reason: ``drop_oldest``, ``drop_newest``,
            ``error`` (refused with ``QueueFull``), ``timeout`` (a ``wait``
            sender found no room within ``put_timeout``), ``full`` (a sender
            that cannot wait, ``deliver``, found a ``wait`` inbox full),
            ``closed`` (the inbox was closed: its worker stopped).
        bypassed: items queued over the bound on purpose (control messages,
            and a worker sending to itself; see ``docs/concepts.md``).
        waiting: senders waiting for room now.
    """

    depth: int
    high_water: int
    maxsize: int
    overflow: OverflowPolicy
    dropped: dict[str, int] = field(default_factory=dict)
    bypassed: int = 0
    waiting: int = 0

    @property
    def dropped_total(self) -> int:
        """All drops, whatever the reason."""
        return sum(self.dropped.values())


class Inbox(Generic[T]):
    """A bounded FIFO queue with one consumer and an overflow policy.

    Args:
        maxsize: the most items it holds (at least 1), except those put with
            :meth:`put_over_bound`.
        overflow: what happens when it is full (an :class:`OverflowPolicy` or its value).
        put_timeout: seconds a sender waits for room under ``wait`` (positive, finite).
        name: the worker that owns it, for errors and logs.
        over_bound: called with an item that finds the inbox full (or closed
            to newcomers by waiting senders); if it returns true, the item is
            queued at once over the bound instead of the policy applying. For
            rare control messages that must get through a flood.

    Raises:
        ConfigurationError: an argument is out of range.
    """

    __slots__ = (
        "_items",
        "_maxsize",
        "_low_water",
        "_overflow",
        "_put_timeout",
        "_name",
        "_getter",
        "_putters",
        "_high_water",
        "_dropped",
        "_bypassed",
        "_closed",
        "_over_bound",
        "on_drop",
    )

    def __init__(
        self,
        maxsize: int = DEFAULT_MAX_QUEUE,
        overflow: OverflowPolicy | str = OverflowPolicy.WAIT,
        *,
        put_timeout: float = DEFAULT_PUT_TIMEOUT,
        name: str = "inbox",
        over_bound: Callable[[T], bool] | None = None,
    ) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ConfigurationError(f"max_queue must be an integer of at least 1, got {maxsize!r}")
        if (
            isinstance(put_timeout, bool)
            or not isinstance(put_timeout, int | float)
            or not 0 < put_timeout < math.inf
        ):
            raise ConfigurationError(
                f"put_timeout must be a positive finite number of seconds, got {put_timeout!r}"
            )
        self._items: deque[T] = deque()
        self._maxsize = maxsize
        # Waiting senders are let in once the consumer has taken the inbox
        # down to half, not one by one: a sender that wakes up then fills it
        # again in a burst, so a stream costs two task switches per half
        # inbox instead of two per message.
        self._low_water = maxsize // 2
        self._overflow = OverflowPolicy.parse(overflow)
        self._put_timeout = float(put_timeout)
        self._name = name
        self._getter: asyncio.Future[None] | None = None
        # Senders waiting for room, in arrival order, each with its item: the
        # consumer moves the first one's item in when it takes one out. Made
        # on the first wait, as the drop counters on the first drop: an empty
        # deque costs ~770 bytes, and most inboxes never fill (idle sessions).
        self._putters: deque[tuple[T, asyncio.Future[bool]]] | None = None
        self._high_water = 0
        self._dropped: Counter[str] | None = None
        self._bypassed = 0
        self._closed = False
        self._over_bound = over_bound
        #: Called with each item dropped (whatever the reason), if set.
        self.on_drop: Callable[[T], None] | None = None

    # ------------------------------------------------------------ state

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (new items are dropped)."""
        return self._closed

    @property
    def maxsize(self) -> int:
        """The bound."""
        return self._maxsize

    @property
    def overflow(self) -> OverflowPolicy:
        """The overflow policy."""
        return self._overflow

    @property
    def put_timeout(self) -> float:
        """Seconds a sender waits for room under ``wait``."""
        return self._put_timeout

    @property
    def stats(self) -> QueueStats:
        """A snapshot of the counters."""
        return QueueStats(
            depth=len(self._items),
            high_water=self._high_water,
            maxsize=self._maxsize,
            overflow=self._overflow,
            dropped=dict(self._dropped) if self._dropped else {},
            bypassed=self._bypassed,
            waiting=len(self._putters) if self._putters else 0,
        )

    # ------------------------------------------------------------ putting

    def offer(self, item: T) -> bool:
        """Queue ``item`` if there is room, else apply the policy without waiting.

        Returns ``False`` only under ``wait`` when the inbox is full (or other
        senders are already waiting): the caller should then ``await``
        :meth:`put`, or give up.

        Raises:
            QueueFull: the inbox is full and its policy is ``error``.
        """
        items = self._items
        if len(items) < self._maxsize and not self._putters and not self._closed:
            items.append(item)
            if len(items) > self._high_water:
                self._high_water = len(items)
            getter = self._getter
            if getter is not None and not getter.done():
                getter.set_result(None)
            return True
        return self._overflow_nowait(item)

    def put_nowait(self, item: T) -> None:
        """Queue ``item`` or apply the policy; never wait.

        Under ``wait`` a full inbox drops ``item`` (counted as ``full``),
        because this caller cannot wait.

        Raises:
            QueueFull: the inbox is full and its policy is ``error``.
        """
        if not self.offer(item):
            self._drop("full", item)

    async def put(self, item: T) -> None:
        """Queue ``item``, waiting for room under ``wait`` (up to ``put_timeout``).

        A sender that waits keeps its place: items go in in the order their
        senders arrived, once the consumer has taken the inbox down to half.
        If no room appears within ``put_timeout`` seconds, the item is
        dropped, counted as ``timeout`` and logged as a warning.
        If the waiting sender is cancelled, its item was either queued before
        the cancellation (then it stays queued) or not at all.

        Raises:
            QueueFull: the inbox is full and its policy is ``error``.
        """
        if self.offer(item):
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()
        entry = (item, done)
        if self._putters is None:
            self._putters = deque()
        self._putters.append(entry)
        self._fill()  # room may be there already (another waiter just gave up)
        timer = loop.call_later(self._put_timeout, self._expire, entry)
        try:
            queued = await done
        except asyncio.CancelledError:
            self._forget(entry)
            raise
        finally:
            timer.cancel()
        if not queued:
            self._forget(entry)
            self._drop("timeout" if not self._closed else "closed", item)

    def put_over_bound(self, item: T) -> None:
        """Queue ``item`` now, even over the bound (for rare control messages)."""
        items = self._items
        if len(items) >= self._maxsize:
            self._bypassed += 1
        items.append(item)
        if len(items) > self._high_water:
            self._high_water = len(items)
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    # ------------------------------------------------------------ taking

    def get_nowait(self) -> T:
        """Take the oldest item without waiting.

        Raises:
            IndexError: the inbox is empty.
        """
        items = self._items
        item = items.popleft()
        if self._putters and len(items) <= self._low_water:
            self._fill()
        return item

    async def get(self) -> T:
        """Take the oldest item, waiting for one if the inbox is empty.

        One consumer only. If it is cancelled while waiting, nothing is taken.

        Raises:
            RuntimeError: another task is already waiting in ``get``.
        """
        while not self._items:
            getter = self._new_getter()
            try:
                await getter
            finally:
                self._getter = None
        return self.get_nowait()

    def _new_getter(self) -> asyncio.Future[None]:
        """Return a future that is done once an item is put (the consumer awaits it).

        A worker's loop awaits it directly instead of :meth:`get`: an idle
        worker then keeps no suspended ``get`` coroutine (~220 bytes). If the
        consumer is cancelled, the future is cancelled, and putting skips it.

        Raises:
            RuntimeError: another task is already waiting for an item.
        """
        getter = self._getter
        if getter is not None and not getter.done():
            raise RuntimeError(f"the inbox of {self._name!r} has only one consumer")
        getter = self._getter = asyncio.get_running_loop().create_future()
        return getter

    # ------------------------------------------------------------ closing

    def close(self) -> None:
        """Refuse items from now on, and release the waiting senders.

        Their items and later ones are dropped and counted as ``closed``; what
        is queued stays (``get`` still returns it).
        """
        self._closed = True
        putters = self._putters
        while putters:
            _, done = putters.popleft()
            if not done.done():
                done.set_result(False)

    # ------------------------------------------------------------ internals

    def _overflow_nowait(self, item: T) -> bool:
        if self._closed:
            self._drop("closed", item)
            return True
        if self._over_bound is not None and self._over_bound(item):
            self.put_over_bound(item)
            return True
        policy = self._overflow
        if policy is OverflowPolicy.WAIT:
            return False
        if policy is OverflowPolicy.DROP_NEWEST:
            self._drop("drop_newest", item)
            return True
        if policy is OverflowPolicy.DROP_OLDEST:
            self._drop("drop_oldest", self._items.popleft())
            self._items.append(item)
            return True
        self._count_drop("error")
        raise QueueFull(self._name, policy.value, self._maxsize)

    def _fill(self) -> None:
        """Move waiting senders' items in, in order, while there is room."""
        items, putters = self._items, self._putters
        if putters is None:
            return
        moved = False
        while putters and len(items) < self._maxsize:
            item, done = putters.popleft()
            if done.done():  # cancelled or timed out: its sender drops or retries it
                continue
            items.append(item)
            done.set_result(True)
            moved = True
        if moved:
            if len(items) > self._high_water:
                self._high_water = len(items)
            getter = self._getter
            if getter is not None and not getter.done():
                getter.set_result(None)

    def _expire(self, entry: tuple[T, asyncio.Future[bool]]) -> None:
        if not entry[1].done():
            entry[1].set_result(False)
        self._forget(entry)

    def _forget(self, entry: tuple[T, asyncio.Future[bool]]) -> None:
        """Remove a sender that stopped waiting; let the next ones in if there is room."""
        putters = self._putters
        if putters is None:
            return
        for index, other in enumerate(putters):
            if other is entry:  # by identity: items may compare equal
                del putters[index]
                break
        if putters:
            self._fill()

    def _count_drop(self, reason: str) -> int:
        dropped = self._dropped
        if dropped is None:
            dropped = self._dropped = Counter()
        count = dropped[reason] = dropped[reason] + 1
        return count

    def _drop(self, reason: str, item: T) -> None:
        count = self._count_drop(reason)
        if self.on_drop is not None:
            self.on_drop(item)
        if reason in ("timeout", "full") and _is_power_of_ten(count):
            # Lost messages under ``wait`` deserve a warning, but a flood must
            # not flood the log: warn at the 1st, 10th, 100th... such drop.
            logger.warning(
                "the inbox of %r is full (%d, overflow=%s): dropped %s (%s; %d so far)",
                self._name,
                self._maxsize,
                self._overflow.value,
                type(item).__name__,
                reason,
                count,
            )
        elif logger.isEnabledFor(logging.DEBUG):
            logger.debug("the inbox of %r dropped %r (%s)", self._name, item, reason)


def _is_power_of_ten(n: int) -> bool:
    while n % 10 == 0:
        n //= 10
    return n == 1
