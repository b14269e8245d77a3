"""What ``bench-costs`` counts with: a counting event loop, and frames counted below the proxy.

Used by :mod:`~proxy_core.bench.costs_side` in its child processes only.
"""

from __future__ import annotations

import asyncio
import contextvars
import selectors
import socket
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Generator, Mapping
from contextlib import AbstractAsyncContextManager
from ssl import SSLContext
from typing import Any, TypeVar, TypeVarTuple, cast

from ..codecs.base import Codec
from ..errors import CodecError
from ..protocol import Ack, Batch, Msg, Ping, Pong
from ..tls import ClientTLS, ServerTLS
from ..transport import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Authenticator,
    Connection,
    ConnectionHandler,
    Listener,
    Transport,
)
from .spec import CONTROL_MAX

__all__ = ["CountingLoop", "FrameLog", "classify_frames"]

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")


# ---------------------------------------------------------------- the counting loop


def _name_of(callback: object) -> str:
    name = getattr(callback, "__qualname__", None)
    return name if isinstance(name, str) else type(callback).__name__


def _task_label(task: asyncio.Task[Any]) -> str:
    label = "task " + _name_of(task.get_coro())
    name = task.get_name()
    # Names asyncio made up (Task-12) differ from run to run: only the coroutine then.
    return label if name.startswith("Task-") else f"{label} [{name}]"


class _CountingReady(deque[asyncio.Handle]):
    """The loop's ready queue: each callback taken to run is counted, by what it runs."""

    def __init__(self, counts: Counter[str], labels: Counter[str]) -> None:
        super().__init__()
        self.counts = counts
        self.labels = labels

    def popleft(self) -> asyncio.Handle:
        handle = super().popleft()
        if not handle.cancelled():
            callback = getattr(handle, "_callback", None)
            owner = getattr(callback, "__self__", None)
            if isinstance(owner, asyncio.Task):
                # A task step: its first one, or a wake-up (task_wakeup) after a future.
                self.counts["task_steps"] += 1
                self.labels[_task_label(owner)] += 1
            else:
                self.counts["other_callbacks"] += 1
                self.labels["call " + _name_of(callback)] += 1
        return handle


class _CountingSelector(selectors.DefaultSelector):
    """The loop's selector: one ``select`` (one ``epoll_wait``) per loop iteration."""

    def __init__(self, counts: Counter[str]) -> None:
        super().__init__()
        self.counts = counts

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        counts = self.counts
        counts["loop_iterations"] += 1
        if timeout is None or timeout > 0:
            counts["loop_sleeps"] += 1  # nothing was ready: the loop may sleep
        ready = super().select(timeout)
        counts["io_events"] += len(ready)
        return ready


class _CountingSocket:
    """A socket asyncio's transport uses: counts ``send``/``recv`` calls, the rest passes through.

    Each call is one system call (a ``BlockingIOError`` is one too), so these
    count the socket system calls the asyncio transports make. Libraries that
    do their own I/O (gRPC's C core) are not seen here; the strace pass sees them.
    """

    def __init__(self, sock: socket.socket, counts: Counter[str]) -> None:
        self._sock = sock
        self._counts = counts

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def __repr__(self) -> str:
        return f"<counting {self._sock!r}>"

    def recv(self, *args: Any) -> bytes:
        self._counts["sock_recv"] += 1
        return self._sock.recv(*args)

    def recv_into(self, *args: Any) -> int:
        self._counts["sock_recv"] += 1
        return self._sock.recv_into(*args)

    def send(self, *args: Any) -> int:
        self._counts["sock_send"] += 1
        return self._sock.send(*args)

    def sendmsg(self, *args: Any) -> int:
        self._counts["sock_send"] += 1
        return self._sock.sendmsg(*args)


class CountingLoop(asyncio.SelectorEventLoop):
    """An event loop that counts what it does; for a benchmark child process only.

    ``counts``: ``loop_iterations`` (selector calls), ``loop_sleeps`` (those
    that could block), ``io_events``, ``task_steps``, ``other_callbacks``,
    ``tasks_created``, ``timers_armed`` (``call_at``/``call_later``, which
    includes ``asyncio.timeout`` and ``sleep``), ``timers_cancelled`` (before
    they fired), ``sock_send``/``sock_recv``. ``labels``: callbacks run, by
    the coroutine (and name) of the task they step (``task ...``) or the
    function they call (``call ...``), and timers armed, by their callback
    (``timer ...``).
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.labels: Counter[str] = Counter()
        super().__init__(_CountingSelector(self.counts))
        self._ready = _CountingReady(self.counts, self.labels)

    def create_task(
        self,
        coro: Coroutine[Any, Any, _T] | Generator[Any, None, _T],
        *,
        name: object = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[_T]:
        self.counts["tasks_created"] += 1
        return super().create_task(coro, name=name, context=context)

    def call_at(
        self,
        when: float,
        callback: Callable[[*_Ts], object],
        *args: *_Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        self.counts["timers_armed"] += 1
        self.labels["timer " + _name_of(callback)] += 1
        return super().call_at(when, callback, *args, context=context)

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        self.counts["timers_cancelled"] += 1
        cast(Any, super())._timer_handle_cancelled(handle)

    def _make_socket_transport(
        self, sock: socket.socket, protocol: asyncio.BaseProtocol, waiter: Any = None, **kw: Any
    ) -> Any:
        counted = _CountingSocket(sock, self.counts)
        return cast(Any, super())._make_socket_transport(counted, protocol, waiter, **kw)


# ---------------------------------------------------------------- frames


class FrameLog:
    """Counts transport messages each way; keeps them, while asked to, to classify them."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.kept: list[tuple[str, bytes]] | None = None

    def sent(self, data: bytes) -> None:
        self.counts["frames_out"] += 1
        if self.kept is not None:
            self.kept.append(("out", data))

    def received(self, data: bytes) -> None:
        self.counts["frames_in"] += 1
        if self.kept is not None:
            self.kept.append(("in", data))


def _kind(envelope: object) -> str:
    if isinstance(envelope, Msg):
        return "msg"
    if isinstance(envelope, Ack):
        return "ack"
    if isinstance(envelope, Ping):
        return "ping"
    if isinstance(envelope, Pong):
        return "pong"
    return "other"  # READY, BYE, a frame that does not decode


def classify_frames(frames: list[tuple[str, bytes]], codec: Codec | None) -> Counter[str]:
    """Count frames by direction and kind: ``out_msg``, ``in_ack``, ``out_batch``...

    A BATCH counts as ``<direction>_batch`` and its frames as ``<direction>_batched_<kind>``.

    With no codec (the bare library), a frame is a ``msg`` if longer than
    :data:`~proxy_core.bench.spec.CONTROL_MAX` bytes, else ``other`` (a control frame).
    """
    counts: Counter[str] = Counter()
    for direction, data in frames:
        if codec is None:
            counts[f"{direction}_{'msg' if len(data) > CONTROL_MAX else 'other'}"] += 1
            continue
        try:
            envelope = codec.decode(data)
        except CodecError:
            counts[f"{direction}_other"] += 1
            continue
        if isinstance(envelope, Batch):
            counts[f"{direction}_batch"] += 1
            for item in envelope.items:
                counts[f"{direction}_batched_{_kind(item)}"] += 1
        else:
            counts[f"{direction}_{_kind(envelope)}"] += 1
    return counts


class _CountingConnection(Connection):
    """A backend's connection whose frames go through a :class:`FrameLog`."""

    def __init__(self, inner: Connection, log: FrameLog) -> None:
        self._inner = inner
        self._log = log
        self.cancel_safe_send = inner.cancel_safe_send  # as the backend's: a proxy may write inline

    async def send(self, data: bytes) -> None:
        self._log.sent(data)
        await self._inner.send(data)

    async def receive(self) -> bytes:
        data = await self._inner.receive()
        self._log.received(data)
        return data

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        await self._inner.aclose(code, reason)

    @property
    def request_headers(self) -> Mapping[str, str]:
        return self._inner.request_headers

    @property
    def remote_address(self) -> str | None:
        return self._inner.remote_address


class _CountingTransport(Transport):
    """Another transport whose connections, opened or accepted, count their frames."""

    name = "counting"
    schemes = ()

    def __init__(self, inner: Transport, log: FrameLog) -> None:
        self.inner = inner
        self._log = log

    def check_url(self, url: str) -> None:
        self.inner.check_url(url)

    async def connect(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        ssl: SSLContext | ClientTLS | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        open_timeout: float = 10.0,
    ) -> Connection:
        conn = await self.inner.connect(
            url,
            headers=headers,
            ssl=ssl,
            max_message_bytes=max_message_bytes,
            open_timeout=open_timeout,
        )
        return _CountingConnection(conn, self._log)

    def serve(
        self,
        url: str,
        handler: ConnectionHandler,
        *,
        authenticate: Authenticator | None = None,
        ssl: SSLContext | ServerTLS | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> AbstractAsyncContextManager[Listener]:
        log = self._log

        async def counted(conn: Connection) -> None:
            await handler(_CountingConnection(conn, log))

        return self.inner.serve(
            url, counted, authenticate=authenticate, ssl=ssl, max_message_bytes=max_message_bytes
        )
