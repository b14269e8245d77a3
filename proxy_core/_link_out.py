"""A proxy worker's outbound path: from the bus to the wire.

A message the bus gives the proxy goes through the outbound filter rules, is
numbered by the session and written to the connection: in the sender's task
when nothing is queued before it (:meth:`_Outbound.put`), else by the
session's writer task, which coalesces what is queued into BATCH frames.
Every frame of a session (ACK, PING, READY, BYE too) leaves through here.
This is the hot path of every message: keep it free of extra calls and
lookups.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import ClassVar

from ._link_base import _LinkBase
from .codecs.base import batch_size_bound
from .errors import CodecError, MessageTooLarge, TransportError
from .flag import Flag
from .messages import BusMessage
from .protocol import CloseCode
from .rules import Drop, DropReason
from .session import Session
from .transport import Connection

__all__: list[str] = []

# One logger for the proxies, whichever module: ``proxy_core.proxy``.
logger = logging.getLogger("proxy_core.proxy")

#: The most bytes of frames the writer puts in one BATCH (within the peer's limit).
_BATCH_MAX_BYTES = 64 * 1024


class _Outbound(_LinkBase):
    """The outbound path of a proxy worker: rules, numbering, the writer."""

    __slots__ = (
        "_ack_timer",
        "_burst",
        "_inline_busy",
        "_out",
        "_out_drained",
        "_outbox_space",
        "_stall_mark",
        "_stall_since",
        "_write_pending",
        "_writer_task",
        "_writes_done",
        "_writing",
    )

    #: A sender awaits :meth:`put`, which writes the message in its task when
    #: it can (see :meth:`_can_inline`).
    inline_put: ClassVar[bool] = True

    def _init_outbound(self) -> None:
        """Make the outbound path's state (the constructor calls it once)."""
        # Every frame of a session goes through one writer task, so that the
        # receive loop never waits on a write: with both directions saturated,
        # a receive loop blocked writing an ACK would stop reading, and the two
        # peers would deadlock. The queue is bounded by max_unacked MSG frames
        # plus the few control frames the receive loop owes.
        self._out: deque[bytes] = deque()
        self._out_drained = Flag()
        self._writing = False  # a frame is being written (by the writer or inline)
        self._inline_busy = False  # a sender's task is handling a message for us (put)
        # A frame was written at once, and the loop may not have turned since:
        # what follows is a burst, queued and written together by the writer
        # (one BATCH) rather than one write each. Cleared where the loop has
        # surely turned, at no cost of its own: when a frame arrives, when the
        # writer has emptied the queue, at each heartbeat. A message sent while
        # it is set only takes the writer's way, never waits longer.
        self._burst = False
        # A write stuck on a peer that stopped reading is found by the heartbeat
        # (_write_stalled), not by a timer armed around every write: a write in
        # progress, the writes finished so far, and since when none has.
        self._write_pending = False
        self._writes_done = 0
        self._stall_mark = -1
        self._stall_since: float | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._outbox_space = Flag()  # set when the session's outbox has room: senders wait
        self._ack_timer: asyncio.TimerHandle | None = None  # a delayed ACK (the receive loop's)

    async def put(self, message: BusMessage) -> None:
        """Take ``message`` from a sender (called by the bus): in its task when possible.

        On the latency path, with nothing queued before it, the message is
        checked, numbered and written in the sender's task, sparing the wake-up
        of this proxy's own task; otherwise it is queued for that task, as for
        any worker. Either way messages leave in the order they were sent.
        """
        if self._can_inline(message):
            self._inline_busy = True
            try:
                await self.on_bus_message(message)
            except Exception:
                logger.exception("worker %r failed to handle %r", self.name, message)
            finally:
                self._inline_busy = False
            return
        await super().put(message)

    def _can_inline(self, message: BusMessage) -> bool:
        """Whether ``put`` may handle ``message`` in the sender's task, in order, with no wait.

        Only when this proxy's task is idle with nothing queued (nothing sent
        earlier is still to be numbered), no other sender is in the middle of
        it, the message is data for the remote worker (control messages for
        the proxy itself go through its task), no shared bus waits to be told
        that a message is finished, the session has room in its outbox (no
        wait for acknowledgements), and the connection's ``send`` is safe to
        await, and to cancel, in another task.
        """
        conn, session = self._conn, self._session
        return (
            self._waiting
            and not self._inline_busy
            and conn is not None
            and conn.cancel_safe_send
            and session is not None
            and not session.outbox_full
            and not self._inbox._items
            and self._finished is None
            and message.target == self.rules.remote_worker
        )

    async def on_bus_message(self, message: BusMessage) -> None:
        decision = self.rules.outbound(message)
        if isinstance(decision, Drop):
            self._count_drop(self.stats.dropped_out, decision.reason, message)
            return
        await self._send(message)

    async def _send(self, message: BusMessage) -> None:
        session = self._session
        while session is not None and session.outbox_full:
            # Backpressure: wait for the peer to acknowledge. A live peer acks
            # within ack_delay; one that does not for heartbeat_timeout is stuck.
            # While a lost session waits for its resume, the resume (or the end
            # of the grace period) sets the event.
            self._outbox_space.clear()
            try:
                async with asyncio.timeout(self.heartbeat_timeout):
                    await self._outbox_space.wait()
            except TimeoutError:
                conn = self._conn
                if conn is not None and self._session is session:
                    logger.warning(
                        "proxy %r: peer acknowledged nothing for %.1fs; closing the link",
                        self.name,
                        self.heartbeat_timeout,
                    )
                    await conn.aclose(CloseCode.HEARTBEAT_TIMEOUT, "no acknowledgements")
            session = self._session
        if session is None or self._bye_sent is not None:  # none open, or we said BYE
            self._count_drop(self.stats.dropped_out, DropReason.NOT_CONNECTED, message)
            return
        try:
            data = session.send_message(message)
        except MessageTooLarge as exc:
            logger.warning("proxy %r dropped %s: %s", self.name, type(message).__name__, exc)
            self._count_drop(self.stats.dropped_out, DropReason.TOO_LARGE, message)
            return
        except CodecError as exc:
            logger.warning("proxy %r cannot encode %s: %s", self.name, type(message).__name__, exc)
            self._count_drop(self.stats.dropped_out, DropReason.ENCODE_FAILED, message)
            return
        self.stats.messages_out += 1
        conn = self._conn
        if conn is None:
            return  # the link is lost: the frame waits in the outbox for the resume
        if self._out or self._writing or self._burst or self._inbox._items:
            self._enqueue(data)  # the writer sends it, coalesced with what is queued
            return
        # A lone message (nothing queued, nothing behind it in our inbox, none
        # written at once since the loop last turned): write it from this task,
        # sparing a wake-up of the writer's on the latency path. What follows
        # before the loop turns is a burst: it goes to the writer, which batches
        # it (see _burst).
        self._burst = True
        self._writing = True
        try:
            await self._write(conn, data)
        finally:
            self._writing = False
            if self._out:
                self._start_writer()  # what was queued meanwhile

    def _enqueue(self, data: bytes) -> None:
        """Queue a frame for the session's writer task; never blocks."""
        self._out.append(data)
        self._out_drained.clear()
        if not self._writing:  # else whoever is writing takes it next
            self._start_writer()

    def _start_writer(self, first: bytes | None = None) -> None:
        """Start the writer task unless it runs; it ends when the queue is empty."""
        conn, session, task = self._conn, self._session, self._writer_task
        if conn is None or session is None or (task is not None and not task.done()):
            return
        self._writer_task = self.create_task(
            self._writer(conn, session, first), name=f"{self.name}-writer"
        )

    async def _writer(self, conn: Connection, session: Session, first: bytes | None) -> None:
        """Write the queued frames in order, coalescing them; end when the queue is empty.

        Whatever is queued when the writer gets to run goes out together, in
        one BATCH (if the session has them) up to the peer's limit: a lone
        frame leaves at once, alone, and no timer ever holds one back. The task
        exists only while there is something to write, so an idle session has
        none.
        """
        out, stats = self._out, self.stats
        limit = min(session.peer_max_message_bytes, _BATCH_MAX_BYTES) if session.batch else 0
        try:
            if first is not None:
                try:  # _run_session set _writing: nothing may go out before WELCOME
                    if not await self._write(conn, first):
                        return
                finally:
                    self._writing = False
            while out:
                frames = [out.popleft()]
                total = len(frames[0])
                while out and batch_size_bound(total + len(out[0]), len(frames) + 1) <= limit:
                    frames.append(out.popleft())
                    total += len(frames[-1])
                if len(frames) == 1:
                    data = frames[0]
                else:
                    data = session.batch_frame(frames)
                    stats.batches_out += 1
                self._writing = True
                try:
                    if not await self._write(conn, data):
                        return
                finally:
                    self._writing = False
        finally:
            task = self._writer_task
            if task is not None and asyncio.current_task(task.get_loop()) is task:
                self._writer_task = None
            if not out:
                self._out_drained.set()
                self._burst = False

    async def _write(self, conn: Connection, data: bytes) -> bool:
        """Send one transport message; ``False`` when the connection is done for.

        A write that makes no progress for ``heartbeat_timeout`` (a peer that
        stopped reading) is found by the heartbeat, which closes the link with
        4008, like a silent peer; the write then fails here.
        """
        self._write_pending = True
        try:
            await conn.send(data)
        except MessageTooLarge as exc:  # refused locally; the connection is fine
            logger.warning("proxy %r: frame not sent: %s", self.name, exc)
            return True
        except TransportError:
            # The receive loop sees the same closed connection and ends the session.
            self._out.clear()
            self._out_drained.set()
            return False
        except Exception:
            logger.exception("proxy %r: writing a frame failed; closing", self.name)
            self._out.clear()
            self._out_drained.set()
            await conn.aclose(CloseCode.INTERNAL_ERROR, "write failed")
            return False
        finally:
            self._write_pending = False
            self._writes_done += 1
        self.stats.bytes_out += len(data)
        return True

    async def _drain(self, timeout: float) -> None:
        """Wait (bounded) until the writer has sent everything queued, e.g. a BYE."""
        if not self._out_drained.is_set():
            try:
                async with asyncio.timeout(timeout):
                    await self._out_drained.wait()
            except TimeoutError:
                logger.debug("proxy %r: %d frames unsent at close", self.name, len(self._out))

    def _flush_ack(self, session: Session) -> None:
        self._ack_timer = None
        if self._session is session:
            frame = session.ack_frame()
            if frame is not None:
                self._enqueue(frame)

    def _write_stalled(self, now: float) -> bool:
        """Whether a write has been in progress, with none finishing, for ``heartbeat_timeout``.

        Checked at each heartbeat, so a stall is found between
        ``heartbeat_timeout`` and ``heartbeat_timeout + 2 * heartbeat_interval``
        after it began.
        """
        if not self._write_pending:
            self._stall_mark, self._stall_since = -1, None
            return False
        if self._writes_done != self._stall_mark:  # progress since the last look
            self._stall_mark, self._stall_since = self._writes_done, now
            return False
        return self._stall_since is not None and now - self._stall_since > self.heartbeat_timeout
