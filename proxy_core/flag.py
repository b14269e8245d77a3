"""``Flag``: a set/clear flag to wait on, for objects that exist once per connection.

Plug-in authors may use it too: a backend holds a few per open connection.
"""

from __future__ import annotations

import asyncio

__all__ = ["Flag"]


class Flag:
    """A set/clear flag to wait on: :class:`asyncio.Event` without its deque.

    An Event costs ~860 bytes, most of it an empty deque of waiters; every open
    session holds a few flags, and most are never waited on. Here each waiter's
    future goes in a list made on the first wait. Cancelling one waiter leaves
    the others waiting.
    """

    __slots__ = ("_is_set", "_waiters")

    def __init__(self) -> None:
        self._is_set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        """Whether the flag is set."""
        return self._is_set

    def set(self) -> None:
        """Set the flag and wake every waiter."""
        if self._is_set:
            return
        self._is_set = True
        for waiter in self._waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        """Clear the flag; later waits wait until it is set again."""
        self._is_set = False

    async def wait(self) -> None:
        """Return once the flag is set (at once if it is)."""
        if self._is_set:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        waiters = self._waiters
        waiters.append(waiter)
        try:
            await waiter
        finally:
            waiters.remove(waiter)
