"""The runner: owns a bus and a registry, starts workers, and shuts them down cleanly."""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import threading
from collections.abc import Coroutine
from typing import Any

from .bus import BaseBus, InProcessBus
from .errors import ConfigurationError, QueueFull
from .messages import BusCancelMessage, BusEndMessage, BusMessage, BusWorkerReadyMessage
from .registry import WorkerRegistry
from .worker import BaseWorker

__all__ = ["WorkerRunner"]

logger = logging.getLogger(__name__)

_counter = itertools.count(1)


def _nothing() -> None:
    """What removing a SIGINT handler that was never installed does."""


class WorkerRunner:
    """Runs workers on a bus: by default its own in-process bus.

    ``await runner.add_workers(*workers)`` hands each worker the bus (before
    or during ``run``); ``await runner.run()`` starts them and returns once
    :meth:`end` or :meth:`cancel` is called (or a worker puts a
    :class:`~proxy_core.messages.BusEndMessage` or
    :class:`~proxy_core.messages.BusCancelMessage` on the bus: these are
    local messages, so on a bus shared by several processes they end this
    runner only).

    Args:
        name: a name for logs (and, on a shared bus, for the other processes);
            generated if omitted.
        bus: the bus; ``None`` for a new :class:`~proxy_core.bus.InProcessBus`.
            A bus serves one runner. A shared bus (``proxy_core_redis.RedisBus``)
            spreads one bus over several processes: the runner starts it in
            :meth:`run` (or in the first :meth:`add_workers`) and closes it
            when it stops.
        handle_sigint: on SIGINT, end gracefully (a second SIGINT cancels).
            Only takes effect in the main thread.

    Raises:
        ConfigurationError: ``bus`` is not a bus, or already serves another runner.
    """

    def __init__(
        self, name: str | None = None, *, bus: BaseBus | None = None, handle_sigint: bool = True
    ) -> None:
        self.name = name or f"runner-{next(_counter)}"
        self.handle_sigint = handle_sigint
        if bus is None:
            bus = InProcessBus()
        elif not isinstance(bus, BaseBus):
            raise ConfigurationError(
                f"bus must be a proxy_core.bus.BaseBus (for example InProcessBus() or "
                f"proxy_core_redis.RedisBus(...)), got {bus!r}"
            )
        self.bus: BaseBus = bus
        self.registry = WorkerRegistry(self._spawn)
        self._workers: dict[str, BaseWorker] = {}
        # The runner's short-lived tasks (readiness announcements, watch
        # callbacks); the set exists only while some are running.
        self._tasks: set[asyncio.Task[Any]] | None = None
        self._running = False
        self._live = False  # run() has started the workers: add_workers starts new ones
        self._finished = False
        # A bare future, not an asyncio.Event: run() is its only waiter, and an
        # Event carries a deque (~860 bytes against ~150) for each session.
        self._done: asyncio.Future[None] | None = None
        self._stop_reason: str | None = None
        self._graceful = True
        self._sigints = 0
        # Set when the bus fails for good: run() raises it once the workers stopped.
        self._error: BaseException | None = None
        bus.bind(self)
        # The runner listens on its own bus for runner-wide end and cancel.
        bus.listen(self)

    # ------------------------------------------------------------ public API

    @property
    def workers(self) -> list[BaseWorker]:
        """The workers added so far."""
        return list(self._workers.values())

    async def add_workers(self, *workers: BaseWorker) -> None:
        """Hand the bus to ``workers``; start them now if the runner is running.

        Raises:
            ConfigurationError: a worker name (or a name a proxy claims) is taken,
                or the runner has finished.
        """
        if self._finished:
            raise ConfigurationError(f"runner {self.name!r} has finished; create a new one")
        for worker in workers:
            if not isinstance(worker, BaseWorker):
                raise ConfigurationError(f"{worker!r} is not a BaseWorker")
            if worker.name in self._workers:
                raise ConfigurationError(
                    f"a worker named {worker.name!r} is already in {self.name!r}"
                )
            worker._attach(self)
            await self.bus.attach(worker, worker.routed_names())
            self._workers[worker.name] = worker
            if self._live:
                worker._start()

    async def run(self) -> None:
        """Start the bus and the workers, and wait until the runner ends or is cancelled.

        Raises:
            ConfigurationError: the runner is already running or has finished.
            ProxyError: what a worker or the bus reported through :meth:`fail`,
                after the workers were stopped: a proxy client that gave up
                (refused, or out of retries), or a shared bus that could not
                reach its engine within its retry policy.
        """
        if self._running or self._finished:
            raise ConfigurationError(f"runner {self.name!r} can only run once")
        self._running = True
        done = self._done = asyncio.get_running_loop().create_future()
        if self._stop_reason is not None:  # end() or cancel() came before run()
            done.set_result(None)
        remove_sigint = self._install_sigint()
        try:
            await self.bus.start()
            # Workers added while the bus started are in this list, started once.
            self._live = True
            for worker in list(self._workers.values()):
                worker._start()
            # Cancelling run() cancels the future too; _request_stop skips a done one.
            await done
        finally:
            remove_sigint()
            try:
                await self._shutdown()
            finally:
                await self.bus.aclose()
        if self._error is not None:
            raise self._error

    async def end(self, reason: str | None = None) -> None:
        """Stop gracefully: each worker's ``on_end`` runs, then ``run`` returns."""
        self._request_stop(reason, graceful=True)

    async def cancel(self, reason: str | None = None) -> None:
        """Stop at once: worker tasks are cancelled without ``on_end``."""
        self._request_stop(reason or "cancelled", graceful=False)

    # ------------------------------------------------------------ bus endpoint

    def deliver(self, message: BusMessage) -> None:
        """Receive broadcasts: runner-wide end and cancel (called by the bus)."""
        if isinstance(message, BusEndMessage):
            self._request_stop(message.reason, graceful=True)
        elif isinstance(message, BusCancelMessage):
            self._request_stop(message.reason, graceful=False)

    def offer(self, message: BusMessage) -> bool:
        """Receive a broadcast; the runner has no queue, so this never waits."""
        self.deliver(message)
        return True

    async def put(self, message: BusMessage) -> None:
        """Receive a broadcast (the bus only calls it if :meth:`offer` declined)."""
        self.deliver(message)

    def bus_failed(self, error: BaseException) -> None:
        """End the runner because its bus failed for good; :meth:`run` raises ``error``.

        Called by a shared bus (its engine stayed out of reach past its retry policy).
        """
        logger.error("runner %r: the bus failed: %s", self.name, error)
        self.fail(error, f"bus failed: {error}")

    def fail(self, error: BaseException, reason: str | None = None) -> None:
        """End the runner gracefully because of ``error``; :meth:`run` then raises it.

        For a failure the program must hear of: a proxy client that gave up
        (see ``ProxyClient``'s ``on_gave_up`` event), a shared bus that lost its
        engine. The first error wins; a runner already stopping still raises it.
        """
        if self._error is None:
            self._error = error
        self._request_stop(reason or str(error) or type(error).__name__, graceful=True)

    # ------------------------------------------------------------ internals

    def _request_stop(self, reason: str | None, *, graceful: bool) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason or "ended"
        self._graceful = self._graceful and graceful
        done = self._done
        if done is not None and not done.done():
            done.set_result(None)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._forget_task)
        return task

    def _forget_task(self, task: asyncio.Task[Any]) -> None:
        tasks = self._tasks
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                self._tasks = None

    def _worker_ready(self, worker: BaseWorker) -> None:
        self.registry.set_ready(worker.name)
        self._spawn(self._announce_ready(worker.name))

    async def _announce_ready(self, name: str) -> None:
        try:
            await self.bus.send(BusWorkerReadyMessage(name, None, name))
        except QueueFull as exc:  # counted by that worker; the others got it
            logger.debug("runner %r: readiness of %r not queued: %s", self.name, name, exc)

    async def _end_worker(self, worker: BaseWorker, reason: str | None) -> None:
        await worker._stop(reason, graceful=True)
        # Gone for good: off the bus (no queue filling up) and out of shutdown.
        await self.bus.detach(worker)
        self._workers.pop(worker.name, None)
        self.registry.set_gone(worker.name)

    async def _shutdown(self) -> None:
        logger.debug("runner %r stopping (%s)", self.name, self._stop_reason)
        self.bus.stopping()
        workers = list(self._workers.values())
        await asyncio.gather(
            *(w._stop(self._stop_reason, graceful=self._graceful) for w in workers),
            return_exceptions=True,
        )
        current = asyncio.current_task()
        pending = [t for t in (self._tasks or ()) if t is not current and not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        self._running = False
        self._live = False
        self._finished = True

    def _install_sigint(self) -> Any:
        if not self.handle_sigint or threading.current_thread() is not threading.main_thread():
            return _nothing
        loop = asyncio.get_running_loop()

        def on_sigint() -> None:
            self._sigints += 1
            self._request_stop("SIGINT", graceful=self._sigints == 1)

        try:
            loop.add_signal_handler(signal.SIGINT, on_sigint)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - e.g. Windows
            return _nothing
        return lambda: loop.remove_signal_handler(signal.SIGINT)
