"""Workers: named participants on a bus, run by a :class:`~proxy_core.runner.WorkerRunner`.

The dependency goes one way: the runner knows workers; a worker knows only the
:class:`WorkerHost` interface, which the runner implements.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from .bus import BaseBus
from .errors import ConfigurationError
from .inbox import DEFAULT_MAX_QUEUE, DEFAULT_PUT_TIMEOUT, Inbox, OverflowPolicy, QueueStats
from .messages import (
    BusActivateWorkerMessage,
    BusDeactivateWorkerMessage,
    BusEndWorkerMessage,
    BusMessage,
)

if TYPE_CHECKING:
    from .registry import WorkerRegistry

__all__ = ["BaseWorker", "WorkerHost"]

logger = logging.getLogger(__name__)

_CONTROL = (BusActivateWorkerMessage, BusDeactivateWorkerMessage, BusEndWorkerMessage)

_F = TypeVar("_F", bound=Callable[..., Any])
_T = TypeVar("_T")


class WorkerHost(Protocol):
    """What a worker may ask of the runner it was added to.

    :class:`~proxy_core.runner.WorkerRunner` implements it; a worker sees its
    runner through this interface only (``worker.runner``), so ``worker.py``
    does not depend on ``runner.py``.
    """

    @property
    def name(self) -> str:
        """The runner's name."""
        ...

    @property
    def bus(self) -> BaseBus:
        """The runner's bus."""
        ...

    @property
    def registry(self) -> WorkerRegistry:
        """The runner's registry of ready workers, local and remote."""
        ...

    async def end(self, reason: str | None = None) -> None:
        """Stop the runner gracefully: each worker's ``on_end`` runs, then ``run`` returns."""
        ...

    async def cancel(self, reason: str | None = None) -> None:
        """Stop the runner at once: worker tasks are cancelled without ``on_end``."""
        ...

    def fail(self, error: BaseException, reason: str | None = None) -> None:
        """End the runner gracefully because of ``error``; its ``run`` then raises it."""
        ...

    def _worker_ready(self, worker: BaseWorker) -> None: ...

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...

    async def _end_worker(self, worker: BaseWorker, reason: str | None) -> None: ...


class BaseWorker:
    """A named worker on a bus.

    Subclass it and override :meth:`on_bus_message`; send with
    :meth:`send_bus_message`. The bus is handed over by the runner in
    ``add_workers``, never passed to the constructor. Lifecycle messages
    targeted at this worker (activate, deactivate, end) are handled here and
    call the hooks :meth:`on_activated`, :meth:`on_deactivated`, :meth:`on_end`.

    Messages wait for the worker in a bounded inbox (see ``docs/concepts.md``,
    "Queues and backpressure"): when it holds ``max_queue`` messages, the
    ``overflow`` policy decides what happens to the next one. Activate,
    deactivate and end messages for this worker are never refused: they go in
    over the bound.

    Args:
        name: the worker's name, unique on its bus.
        active: whether the worker starts active.
        max_queue: the most messages the inbox holds (at least 1).
        overflow: ``"wait"`` (the sender waits for room, the default),
            ``"drop_oldest"``, ``"drop_newest"`` or ``"error"`` (the sender gets
            :class:`~proxy_core.errors.QueueFull`); an :class:`OverflowPolicy`.
        put_timeout: under ``"wait"``, seconds a sender waits for room before
            the message is dropped (counted as ``timeout``, logged as a warning).

    Raises:
        ConfigurationError: an argument is out of range (the message says which
            values are allowed).
    """

    #: The events a subclass offers to ``event_handler``; extended by subclasses.
    EVENTS: tuple[str, ...] = ("on_activated", "on_deactivated")

    #: Whether the bus hands a sender's message straight to :meth:`put`,
    #: skipping :meth:`offer`: for an endpoint that may handle a message in the
    #: sender's task (a proxy writing to its connection). ``False`` for workers:
    #: their messages are queued and handled by their own task.
    inline_put: ClassVar[bool] = False

    def __init__(
        self,
        name: str,
        *,
        active: bool = True,
        max_queue: int = DEFAULT_MAX_QUEUE,
        overflow: OverflowPolicy | str = OverflowPolicy.WAIT,
        put_timeout: float = DEFAULT_PUT_TIMEOUT,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a worker name must be a non-empty string, got {name!r}")
        self._name = name
        self._active = active
        self._runner: WorkerHost | None = None
        self._inbox: Inbox[BusMessage] = Inbox(
            max_queue, overflow, put_timeout=put_timeout, name=name, over_bound=self._is_control
        )
        # Set by a bus that must know when a message is finished with (handled,
        # or dropped by the inbox): a shared bus acknowledges it to its engine
        # then, never before. ``None`` on the in-process bus.
        self._finished: Callable[[BaseWorker, BusMessage], None] | None = None
        self._task: asyncio.Task[None] | None = None
        # Both made on first use: most workers never register a handler, and
        # many never start a task (an idle session holds thousands of workers).
        self._tasks: set[asyncio.Task[Any]] | None = None
        self._handlers: dict[str, list[Callable[..., Any]]] | None = None
        # The message loop waits for a message (handles none); and who waits
        # for that (wait_idle), made on first use.
        self._waiting = False
        self._idle_waiters: list[asyncio.Future[None]] | None = None

    # ------------------------------------------------------------ properties

    @property
    def name(self) -> str:
        """The worker's name."""
        return self._name

    @property
    def active(self) -> bool:
        """Whether the worker is active."""
        return self._active

    @property
    def runner(self) -> WorkerHost:
        """The runner this worker was added to (a :class:`~proxy_core.runner.WorkerRunner`).

        Raises:
            ConfigurationError: the worker has not been added to a runner yet.
        """
        if self._runner is None:
            raise ConfigurationError(
                f"worker {self._name!r} has no runner yet: "
                "add it with `await runner.add_workers(...)`"
            )
        return self._runner

    @property
    def bus(self) -> BaseBus:
        """The bus of this worker's runner.

        Not an override point (nor is :attr:`runner`): :meth:`send_bus_message`
        reads the runner's bus directly. To intercept what a worker sends,
        override :meth:`send_bus_message`.

        Raises:
            ConfigurationError: the worker has not been added to a runner yet.
        """
        runner = self._runner  # read directly: this is on every message's path
        return runner.bus if runner is not None else self.runner.bus

    @property
    def registry(self) -> WorkerRegistry:
        """The registry of this worker's runner."""
        return self.runner.registry

    @property
    def max_queue(self) -> int:
        """The bound of the inbox, in messages."""
        return self._inbox.maxsize

    @property
    def accepting(self) -> bool:
        """Whether the inbox still takes messages (``False`` once the worker stopped)."""
        return not self._inbox.closed

    @property
    def queue_stats(self) -> QueueStats:
        """The inbox's counters now: depth, high-water mark, drops by reason."""
        return self._inbox.stats

    def routed_names(self) -> tuple[str, ...]:
        """Return the names whose messages the bus delivers to this worker."""
        return (self._name,)

    # ------------------------------------------------------------ events

    def event_handler(self, event: str) -> Callable[[_F], _F]:
        """Register the decorated function (plain or ``async``) as a handler of ``event``.

        Raises:
            ConfigurationError: this worker has no such event (the message lists them).
        """
        if event not in self.EVENTS:
            raise ConfigurationError(
                f"{type(self).__name__} has no event {event!r}; "
                f"available: {', '.join(sorted(set(self.EVENTS)))}"
            )

        def decorate(func: _F) -> _F:
            if self._handlers is None:
                self._handlers = {}
            self._handlers.setdefault(event, []).append(func)
            return func

        return decorate

    async def _call_event(self, event: str, *args: Any) -> None:
        if self._handlers is None:
            return
        for handler in list(self._handlers.get(event, ())):
            try:
                result = handler(self, *args)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("handler of %s on worker %r failed", event, self._name)

    # ------------------------------------------------------------ sending

    async def send_bus_message(self, message: BusMessage) -> None:
        """Put ``message`` on this worker's bus.

        Raises:
            ConfigurationError: the worker has not been added to a runner yet.
        """
        runner = self._runner  # as in ``bus``, without the property's call
        await (runner.bus if runner is not None else self.runner.bus).send(message)

    async def activate_worker(self, name: str, args: dict[str, Any] | None = None) -> None:
        """Ask worker ``name`` (local, or remote through a proxy) to activate."""
        await self.send_bus_message(BusActivateWorkerMessage(self._name, name, args))

    async def deactivate_worker(self, name: str) -> None:
        """Ask worker ``name`` to deactivate."""
        await self.send_bus_message(BusDeactivateWorkerMessage(self._name, name))

    async def end_worker(self, name: str, reason: str | None = None) -> None:
        """Ask worker ``name`` to finish and stop."""
        await self.send_bus_message(BusEndWorkerMessage(self._name, name, reason))

    # ------------------------------------------------------------ hooks

    async def on_bus_message(self, message: BusMessage) -> None:
        """Handle a message delivered to this worker (targeted at it, or a broadcast)."""

    async def on_start(self) -> None:
        """Run when the runner starts the worker, before it is announced as ready."""

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        """Run when the worker is activated."""

    async def on_deactivated(self) -> None:
        """Run when the worker is deactivated."""

    async def on_end(self, reason: str | None) -> None:
        """Run when the worker stops gracefully (its runner ends, or it was asked to end)."""

    # ------------------------------------------------------------ tasks

    def create_task(
        self, coro: Coroutine[Any, Any, _T], name: str | None = None
    ) -> asyncio.Task[_T]:
        """Start ``coro`` as a task owned by this worker, cancelled when the worker stops."""
        task = asyncio.get_running_loop().create_task(coro, name=name or f"{self._name}-task")
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------ runner interface

    def _on_finished(self, hook: Callable[[BaseWorker, BusMessage], None] | None) -> None:
        """Have ``hook(worker, message)`` called once each message is handled or dropped.

        For a bus that acknowledges messages to its engine (``None`` removes it).
        """
        self._finished = hook
        self._inbox.on_drop = None if hook is None else (lambda message: hook(self, message))

    def _attach(self, runner: WorkerHost) -> None:
        if self._runner is not None and self._runner is not runner:
            raise ConfigurationError(f"worker {self._name!r} already belongs to another runner")
        self._runner = runner

    def deliver(self, message: BusMessage) -> None:
        """Queue ``message`` without waiting (called by the bus).

        A full inbox applies its policy; under ``"wait"`` it drops the message
        (counted as ``full``), since this caller cannot wait: prefer :meth:`put`.

        Raises:
            QueueFull: the inbox is full and the policy is ``"error"``.
        """
        self._inbox.put_nowait(message)

    def offer(self, message: BusMessage) -> bool:
        """Queue ``message`` if it needs no wait (called by the bus).

        Returns ``False`` when the policy is ``"wait"`` and the inbox is full:
        then ``await`` :meth:`put`.

        Raises:
            QueueFull: the inbox is full and the policy is ``"error"``.
        """
        return self._inbox.offer(message)

    async def put(self, message: BusMessage) -> None:
        """Queue ``message``, waiting for room under ``"wait"`` (called by the bus).

        The worker's own message loop never waits for its own inbox, which
        only it empties: a message it sends itself goes in over the bound.

        Raises:
            QueueFull: the inbox is full and the policy is ``"error"``.
        """
        inbox = self._inbox
        task = self._task
        # current_task(loop) rather than current_task(): on CPython 3.11 the
        # latter asks get_running_loop(), a getpid() system call, on every message.
        if task is not None and asyncio.current_task(task.get_loop()) is task:
            if not inbox.offer(message):
                inbox.put_over_bound(message)
            return
        await inbox.put(message)

    def _is_control(self, message: BusMessage) -> bool:
        # Lifecycle messages for this worker pass a full inbox: they are rare,
        # and a flooded worker must still be deactivated or ended.
        return message.target == self._name and isinstance(message, _CONTROL)

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"worker-{self._name}"
        )

    async def _run(self) -> None:
        try:
            await self.on_start()
        except Exception:
            # A worker that cannot start never becomes ready and leaves the bus,
            # so nothing piles up in its queue.
            logger.exception("worker %r failed to start; it is removed from the bus", self._name)
            await self.runner.bus.detach(self)
            return
        self.runner._worker_ready(self)
        inbox = self._inbox
        items = inbox._items  # the deque itself: `not inbox` would call Inbox.__len__
        while True:
            if not items:
                self._waiting = True
                if self._idle_waiters is not None:
                    self._wake_idle_waiters()
                try:
                    await inbox._new_getter()
                finally:
                    self._waiting = False
                continue
            message = inbox.get_nowait()
            try:
                await self._dispatch(message)
            except Exception:
                logger.exception("worker %r failed to handle %r", self._name, message)
            finished = self._finished
            if finished is not None:
                finished(self, message)

    async def wait_idle(self) -> None:
        """Wait until this worker has handled every message in its inbox and waits for more.

        A message the worker sends while handling another is on its way when
        this returns. Returns at once for a worker that is not running (and
        when the worker waits for itself); wrap it in a timeout for a worker
        that may never be idle.
        """
        task = self._task
        if (
            task is None
            or task.done()
            or task is asyncio.current_task()
            or (self._waiting and not self._inbox)
        ):
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._idle_waiters is None:
            self._idle_waiters = []
        self._idle_waiters.append(waiter)
        await waiter

    def _wake_idle_waiters(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    async def _dispatch(self, message: BusMessage) -> None:
        if message.target == self._name:
            if isinstance(message, BusActivateWorkerMessage):
                await self._set_active(True, message.args)
                return
            if isinstance(message, BusDeactivateWorkerMessage):
                await self._set_active(False, None)
                return
            if isinstance(message, BusEndWorkerMessage):
                self.runner._spawn(self.runner._end_worker(self, message.reason))
                return
        await self.on_bus_message(message)

    async def _set_active(self, active: bool, args: dict[str, Any] | None) -> None:
        if active:
            self._active = True
            await self.on_activated(args)
            await self._call_event("on_activated", args)
        elif self._active:
            self._active = False
            await self.on_deactivated()
            await self._call_event("on_deactivated")

    async def _stop(self, reason: str | None, *, graceful: bool) -> None:
        if graceful:
            try:
                await self.on_end(reason)
            except Exception:
                logger.exception("on_end of worker %r failed", self._name)
        tasks = [t for t in (self._task, *(self._tasks or ())) if t is not None and not t.done()]
        current = asyncio.current_task()
        tasks = [t for t in tasks if t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        self._wake_idle_waiters()  # a stopped worker handles nothing
        # Nobody will empty the inbox again: release the senders waiting for room.
        self._inbox.close()
