"""The worker registry: who is ready, local or remote, and who is waiting to know."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError

__all__ = ["Watch", "WorkerReadyData", "WorkerRegistry", "WatchCallback"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerReadyData:
    """What a watch callback learns about a worker that became ready.

    Attributes:
        name: the worker's name.
        remote: true when the worker lives on the other side of a proxy.
        via: for a remote worker, the name of the proxy that announced it.
        node: on a bus shared by several processes, the name of the runner
            in another process that holds the worker (or its proxy);
            ``None`` when it is in this process.
    """

    name: str
    remote: bool = False
    via: str | None = None
    node: str | None = None


#: A watch callback: a coroutine function or a plain function of the data.
WatchCallback = Callable[[WorkerReadyData], Awaitable[None] | None]


class Watch:
    """A registered watch; :meth:`cancel` stops it. Awaiting it is allowed and returns at once."""

    __slots__ = ("_registry", "callback", "gone", "name")

    def __init__(
        self, registry: WorkerRegistry, name: str, callback: WatchCallback, gone: bool = False
    ) -> None:
        self._registry = registry
        self.name = name
        self.callback = callback
        self.gone = gone

    def cancel(self) -> None:
        """Stop receiving notifications for this watch."""
        self._registry._unwatch(self)

    def __await__(self) -> Generator[Any, None, None]:
        # Lets both `registry.watch(...)` and `await registry.watch(...)` work.
        return
        yield  # pragma: no cover


class WorkerRegistry:
    """Tracks ready workers and notifies watchers.

    Args:
        spawn: starts a callback coroutine as a task the owner tracks and
            cancels on shutdown (the runner passes its own).
    """

    __slots__ = ("_publish", "_ready", "_spawn", "_watches")

    def __init__(self, spawn: Callable[[Coroutine[Any, Any, None]], object]) -> None:
        self._spawn = spawn
        self._ready: dict[str, WorkerReadyData] = {}
        self._watches: dict[str, list[Watch]] = {}
        # Set by a shared bus: told of each change in this process (data, or
        # None when gone) so that the other processes learn of it.
        self._publish: Callable[[str, WorkerReadyData | None], None] | None = None

    def watch(self, name: str, callback: WatchCallback) -> Watch:
        """Call ``callback(data)`` each time worker ``name`` becomes ready.

        ``callback`` is a coroutine function (awaited) or a plain function.
        Each call runs in a task of the runner's, so a slow callback holds
        nobody up; one that raises is logged and the watch stays. Fires at
        once (in a new task) if the worker is already ready, whether it is
        local or remote.

        Raises:
            ConfigurationError: ``callback`` is not callable.
        """
        handle = Watch(self, name, _check_callback(callback))
        self._watches.setdefault(name, []).append(handle)
        data = self._ready.get(name)
        if data is not None:
            self._spawn(self._notify(handle, data))
        return handle

    def watch_gone(self, name: str, callback: WatchCallback) -> Watch:
        """Call ``callback(data)`` each time worker ``name`` stops being ready.

        ``callback`` is a coroutine function or a plain function, as for :meth:`watch`.

        A local worker that ends, a remote worker whose link closed, or, on a
        shared bus, a worker whose runner left or whose process died (its
        lease expired). ``data`` is what was known of it while it was ready.
        """
        handle = Watch(self, name, _check_callback(callback), gone=True)
        self._watches.setdefault(name, []).append(handle)
        return handle

    def _unwatch(self, handle: Watch) -> None:
        watches = self._watches.get(handle.name)
        if watches and handle in watches:
            watches.remove(handle)

    def set_ready(
        self, name: str, *, remote: bool = False, via: str | None = None, node: str | None = None
    ) -> None:
        """Record that ``name`` is ready and notify its watchers (once per transition).

        ``node`` names the runner of another process that holds it, on a
        shared bus (which reports those); a change in this process
        (``node=None``) is told to the other processes by a shared bus. A
        worker ready under another holder than before (a takeover) counts as
        gone, then ready again.
        """
        known = self._ready.get(name)
        if known is not None and known.node == node:
            return
        data = WorkerReadyData(name, remote, via, node)
        self._ready[name] = data
        logger.debug("worker %r is ready (remote=%s, node=%s)", name, remote, node)
        if node is None and self._publish is not None:
            self._publish(name, data)
        # A worker now held elsewhere (a standby took over from a runner that
        # died) went and came back: both watches hear of it.
        watches = list(self._watches.get(name, ()))
        if known is not None:
            for handle in watches:
                if handle.gone:
                    self._spawn(self._notify(handle, known))
        for handle in watches:
            if not handle.gone:
                self._spawn(self._notify(handle, data))

    def set_gone(self, name: str, *, node: str | None = None) -> None:
        """Record that ``name`` is no longer available (a remote link closed, a worker ended).

        With ``node``, only if it was held by that runner of another process
        (a shared bus reports those).
        """
        known = self._ready.get(name)
        if known is None or known.node != node:
            return
        del self._ready[name]
        logger.debug("worker %r is gone", name)
        if node is None and self._publish is not None:
            self._publish(name, None)
        for handle in list(self._watches.get(name, ())):
            if handle.gone:
                self._spawn(self._notify(handle, known))

    def is_ready(self, name: str) -> bool:
        """Whether ``name`` is ready now."""
        return name in self._ready

    def get(self, name: str) -> WorkerReadyData | None:
        """Return what is known about ready worker ``name``, or ``None``."""
        return self._ready.get(name)

    def ready_workers(self) -> list[str]:
        """Return the names of the ready workers, sorted."""
        return sorted(self._ready)

    async def _notify(self, handle: Watch, data: WorkerReadyData) -> None:
        try:
            result = handle.callback(data)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("watch callback for worker %r failed", data.name)


def _check_callback(callback: object) -> WatchCallback:
    if not callable(callback):
        raise ConfigurationError(
            f"a watch callback must be a function (plain or async) of the worker's "
            f"WorkerReadyData, got {callback!r}"
        )
    return callback
