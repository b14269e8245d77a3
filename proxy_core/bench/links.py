"""What every implementation under test offers the driver: a link and a sink.

A *link* is the client end of one session (proxy-core bus to bus, a bare
library connection, or the pipecat peer); the driver in
:mod:`proxy_core.bench.worker` times its ``stream`` and ``round_trips``. Each
implementation writes its own hot loops, so the measured path is exactly the
library's (or the proxy's) public API and nothing of ours in between.

A *sink* is the server end: :class:`SinkState` is the small state machine all
of them share. Control commands are ``stream`` (count what arrives, from
zero), ``echo`` (send every payload back), ``end`` (report the count and the
CPU seconds spent since ``stream``) and ``hello`` (answer, nothing else).

Two kinds of producer stream: one that yields to the event loop after every
:data:`YIELD_EVERY` sends, as a producer that does other work would, and one
that sends back to back (each ``await send(...)`` in turn, never yielding of
its own accord), as much user code does. The back-to-back producer still
waits whenever a send blocks (a full inbox, a proxy's window of
unacknowledged messages, a socket's write buffer): that is the backpressure a
real user meets. Its loop is bounded by the count, and the child runs it
under the step's deadline, which the parent enforces too by killing the child.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

__all__ = ["YIELD_EVERY", "Link", "SinkState", "chunks", "close_all", "produce", "yield_to_loop"]

T = TypeVar("T")

#: The source yields to the event loop after this many sends, as a producer would.
YIELD_EVERY = 100


def chunks(count: int, size: int = YIELD_EVERY) -> Iterator[int]:
    """Yield the lengths of the runs of ``count`` sends between two yields to the loop."""
    whole, rest = divmod(count, size)
    for _ in range(whole):
        yield size
    if rest:
        yield rest


class SinkState:
    """The server-side bookkeeping every sink shares: count, echo mode, CPU since ``stream``."""

    __slots__ = ("count", "cpu_start", "echo")

    def __init__(self) -> None:
        self.count = 0
        self.echo = False
        self.cpu_start = time.process_time()

    def control(self, command: str) -> dict[str, Any]:
        """Apply a control ``command`` and return the reply to send."""
        if command in ("stream", "echo"):
            self.count = 0
            self.echo = command == "echo"
            self.cpu_start = time.process_time()
            return {"ok": True}
        if command == "end":
            return {"count": self.count, "cpu": time.process_time() - self.cpu_start}
        if command == "hello":
            return {"ok": True}
        return {"error": f"unknown command {command!r}"}


class Link(ABC):
    """The client end of one session of an implementation under test."""

    @abstractmethod
    async def control(self, command: str) -> dict[str, Any]:
        """Send a control command to the sink and return its reply."""

    @abstractmethod
    async def stream(self, size: int, count: int, *, back_to_back: bool = False) -> None:
        """Send ``count`` payloads of ``size`` bytes, one message per send.

        Args:
            size: payload bytes.
            count: messages.
            back_to_back: never yield to the loop between sends (see :func:`produce`).
        """

    @abstractmethod
    async def round_trips(self, size: int, count: int) -> list[float]:
        """Send ``count`` payloads, each once the last one's echo is back; return the seconds."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close the session."""


async def yield_to_loop() -> None:
    """Let the event loop run other tasks once."""
    await asyncio.sleep(0)


async def produce(
    send: Callable[[T], Awaitable[object]], item: T, count: int, *, back_to_back: bool
) -> None:
    """Await ``send(item)`` ``count`` times: back to back, or yielding every :data:`YIELD_EVERY`.

    Each implementation passes its library's (or the proxy's) own send, so
    the hot loop calls nothing of ours in between. Back to back, the loop
    suspends only where ``send`` itself waits (backpressure), as user code
    that awaits each send in turn does.
    """
    if back_to_back:
        for _ in range(count):
            await send(item)
        return
    for run in chunks(count):
        for _ in range(run):
            await send(item)
        await yield_to_loop()


async def close_all(links: list[Link], timeout: float) -> None:
    """Close ``links`` concurrently, waiting at most ``timeout`` seconds in all."""
    if links:
        await asyncio.wait(
            [asyncio.ensure_future(link.aclose()) for link in links], timeout=timeout
        )
