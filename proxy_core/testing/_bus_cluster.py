"""The cluster of runners the bus contract places its workers on, and its workers.

Used by :mod:`~proxy_core.testing.contracts_bus`; see its docstring.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..bus import BaseBus
from ..messages import (
    BusDataMessage,
    BusLocalMessage,
    BusMessage,
    register_type,
)
from ..registry import WorkerReadyData
from ..runner import WorkerRunner
from ._harness import TIMEOUT, Recorder, text_of, wait

if TYPE_CHECKING:
    from .contracts_bus import BusContract

__all__ = ["BusLocalNote", "Cluster", "Member", "Watcher"]

T = TypeVar("T")


@register_type("proxy_core.testing.bus_local_note")
@dataclass
class BusLocalNote(BusLocalMessage, BusMessage):
    """A registered local message: only the ``BusLocalMessage`` rule keeps it in its runner."""

    text: str = ""


class Member(Recorder):
    """A contract's worker: records what it gets, its activations, and its end.

    Args:
        name: the worker's name.
        active: whether it starts active.
        also: more names it claims on the bus, as a proxy claims its remote
            worker's (:meth:`~proxy_core.worker.BaseWorker.routed_names`).
    """

    def __init__(self, name: str, *, active: bool = True, also: Iterable[str] = ()) -> None:
        super().__init__(name, active=active)
        self.also = tuple(also)
        self.activations: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.deactivated = asyncio.Event()
        self.cluster: Cluster | None = None

    async def _wait(
        self, condition: Callable[[BusMessage], bool], timeout: float = TIMEOUT
    ) -> BusMessage:
        # Registered before any await, so no message slips between ``seen`` and the waiter.
        future: asyncio.Future[BusMessage] = asyncio.get_running_loop().create_future()
        entry = (condition, future)
        self._waiters.append(entry)
        try:
            if self.cluster is None:
                return await wait(future, timeout)
            # A runner that stops under the contract fails it at once, not after the bound.
            return await self.cluster.wait(future, timeout)
        finally:
            self._waiters.remove(entry)

    def routed_names(self) -> tuple[str, ...]:
        """Return its own name and the others it claims."""
        return (self.name, *self.also)

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        self.activations.put_nowait(args)

    async def on_deactivated(self) -> None:
        self.deactivated.set()

    def data(self) -> list[BusDataMessage]:
        """The ``BusDataMessage``\\ s seen so far, in order."""
        return [m for m in self.seen if isinstance(m, BusDataMessage)]

    def notes(self) -> list[BusLocalNote]:
        """The :class:`BusLocalNote`\\ s seen so far, in order."""
        return [m for m in self.seen if isinstance(m, BusLocalNote)]


class Watcher:
    """Collects the calls of registry watches (ready and gone) on one runner."""

    def __init__(self) -> None:
        self.ready: asyncio.Queue[WorkerReadyData] = asyncio.Queue()
        self.gone: asyncio.Queue[WorkerReadyData] = asyncio.Queue()

    async def on_ready(self, data: WorkerReadyData) -> None:
        self.ready.put_nowait(data)

    async def on_gone(self, data: WorkerReadyData) -> None:
        self.gone.put_nowait(data)


class Cluster:
    """The runners of one contract, made on demand, each on a bus of its own.

    On a bus that is not shared, runner ``k`` is runner 0 for every ``k``.
    """

    def __init__(self, contract: BusContract) -> None:
        self._contract = contract
        self.runners: list[WorkerRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._where: dict[str, int] = {}
        self._ending: set[int] = set()
        # Set when a runner stops without the contract asking (its bus failed...).
        self._stopped: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def index(self, k: int) -> int:
        """Return which runner "runner ``k``" is."""
        return k if self._contract.shared else 0

    async def runner(self, k: int) -> WorkerRunner:
        """Return runner ``k`` (running), making the runners up to it first."""
        k = self.index(k)
        while len(self.runners) <= k:
            bus = await wait(self._contract.make_bus())
            assert isinstance(bus, BaseBus), f"make_bus() must return a BaseBus, got {bus!r}"
            assert bus.runner is None, "make_bus() must return a new bus each time (one per runner)"
            index = len(self.runners)
            runner = WorkerRunner(f"bus-contract-{index}", bus=bus, handle_sigint=False)
            self.runners.append(runner)
            task = asyncio.create_task(runner.run(), name=f"run-{runner.name}")
            task.add_done_callback(functools.partial(self._on_stopped, index))
            self._tasks.append(task)
        return self.runners[k]

    def _on_stopped(self, index: int, task: asyncio.Task[None]) -> None:
        if index in self._ending or self._stopped.done():
            return
        error = None if task.cancelled() else task.exception()
        how = "returned" if error is None else f"raised {type(error).__name__}: {error}"
        self._stopped.set_result(f"runner {self.runners[index].name!r} stopped by itself: {how}")

    async def wait(self, awaitable: Awaitable[T], timeout: float = TIMEOUT) -> T:
        """Await ``awaitable`` within ``timeout``; fail at once if a runner stops meanwhile."""
        task = asyncio.ensure_future(awaitable)
        either: set[asyncio.Future[Any]] = {task, self._stopped}
        done, _ = await asyncio.wait(either, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if self._stopped.done():
            raise AssertionError(self._stopped.result())
        raise TimeoutError(f"nothing after {timeout:g} s")

    async def wait_all(self, *awaitables: Awaitable[Any]) -> list[Any]:
        """Await everything at once, as :meth:`wait` does."""
        return list(await self.wait(asyncio.gather(*awaitables)))

    def ending(self, k: int) -> None:
        """Tell the cluster that runner ``k`` is about to end at the contract's request."""
        self._ending.add(self.index(k))

    async def place(self, k: int, *workers: Member) -> WorkerRunner:
        """Add ``workers`` to runner ``k``; return that runner."""
        runner = await self.runner(k)
        await self.wait(runner.add_workers(*workers))
        for worker in workers:
            self._where[worker.name] = self.index(k)
            worker.cluster = self
        return runner

    def same_runner(self, a: str, b: str) -> bool:
        """Whether workers ``a`` and ``b`` were placed on the same runner."""
        return self._where[a] == self._where[b]

    async def end(self, k: int) -> None:
        """End runner ``k`` and wait for its ``run`` to return.

        Raises:
            AssertionError: its ``run`` raised (the error is its cause).
        """
        self.ending(k)
        k = self.index(k)
        await self.runners[k].end("contract: this runner ends")
        try:
            await wait(self._tasks[k])
        except Exception as exc:
            raise AssertionError(
                f"runner {self.runners[k].name!r} did not end cleanly: {type(exc).__name__}: {exc}"
            ) from exc

    async def aclose(self) -> None:
        """End every runner.

        Raises:
            AssertionError: a runner's ``run`` raised (the error is its cause).
        """
        self._ending.update(range(len(self.runners)))
        for runner in self.runners:
            await runner.end("contract over")
        results = await wait(asyncio.gather(*self._tasks, return_exceptions=True))
        for runner, result in zip(self.runners, results, strict=True):
            if isinstance(result, BaseException):
                raise AssertionError(
                    f"runner {runner.name!r} did not end cleanly: {type(result).__name__}: {result}"
                ) from result


def _data_from(source: str, data: dict[str, Any]) -> Callable[[BusMessage], bool]:
    """Match a ``BusDataMessage`` from ``source`` carrying ``data``."""
    return lambda m: m.source == source and isinstance(m, BusDataMessage) and m.data == data


def _text_from(source: str, body: str) -> Callable[[BusMessage], bool]:
    """Match a text message from ``source`` carrying ``body`` (to anyone)."""
    return lambda m: m.source == source and text_of(m) == body


def _note(source: str, target: str | None, body: str) -> Callable[[BusMessage], bool]:
    """Match a :class:`BusLocalNote`."""
    wanted = (source, target, body)
    return lambda m: isinstance(m, BusLocalNote) and (m.source, m.target, m.text) == wanted


def _addressed(source: str, target: str) -> Callable[[BusMessage], bool]:
    """Match any message from ``source`` to ``target``."""
    return lambda m: (m.source, m.target) == (source, target)
