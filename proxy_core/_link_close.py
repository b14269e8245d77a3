"""A proxy worker's close handshake: BYE each way, then the close.

The side that closes says BYE after its last MSG; the other delivers and
acknowledges everything, sends what it still has and answers BYE; the first
delivers and acknowledges that, then closes the connection. Within
``close_timeout``: a peer that does not answer ends it sooner.
"""

from __future__ import annotations

import asyncio
import logging

from ._link_in import _Inbound
from .flag import Flag
from .protocol import CloseCode
from .session import ByeReceived, Session
from .transport import Connection

__all__: list[str] = []

# One logger for the proxies, whichever module: ``proxy_core.proxy``.
logger = logging.getLogger("proxy_core.proxy")


#: How long a closing session waits for its queued frames (its BYE) to be written.
_CLOSE_DRAIN_SECONDS = 2.0


class _Closing(_Inbound):
    """The close handshake of a proxy worker."""

    __slots__ = (
        "_close_with",
        "_closer",
        "_closing",
        "_link_closed",
        "_link_lost",
        "_opening",
        "_peer_bye",
    )

    def _init_closing(self) -> None:
        """Make the close handshake's state (the constructor calls it once)."""
        # No live connection: connecting, in the handshake, waiting to retry,
        # or holding a lost session for a resume. Closing then abandons the wait.
        self._opening = False
        self._closing = False  # we are closing on purpose: not a lost link
        self._link_lost = False  # the last connection ended without a BYE either way
        # The close handshake (see _close_session): our BYE's code and reason
        # once sent (no MSG follows it), whether the peer said BYE, the task
        # that answers or finishes it, the code and reason the session ends
        # with, and whether the connection is closed.
        self._bye_sent = None
        self._peer_bye = False
        self._closer: asyncio.Task[None] | None = None
        self._close_with: tuple[int, str] | None = None
        self._link_closed = Flag()

    async def _close_session(self, code: int, reason: str) -> None:
        """Close the session with the close handshake, and wait (bounded) for it to wind down.

        We say BYE after our last MSG; the peer delivers and acknowledges
        everything, sends what it still has and answers BYE; we deliver and
        acknowledge that, then close the connection with ``code`` and
        ``reason``. Within ``close_timeout``: a peer that does not answer (or
        one that closes without answering) ends it sooner.
        """
        session, conn, task = self._session, self._conn, self._session_task
        self._closing = True
        if session is not None and conn is not None:
            if self._bye_sent is None:
                self._bye_sent = (code, reason)
                self._enqueue(session.bye_frame(code, reason))
            running = task is not None and task is not asyncio.current_task() and not task.done()
            if running and task is not None:
                await asyncio.wait({task}, timeout=self.close_timeout)
            if self._conn is conn:  # no answer in time (or no session task to see one)
                if running:
                    logger.info(
                        "proxy %r: no answer to BYE within %.1fs; closing",
                        self.name,
                        self.close_timeout,
                    )
                await self._drain(_CLOSE_DRAIN_SECONDS)
                self._close_with = self._bye_sent
                await conn.aclose(*self._bye_sent)
        if task is not None and task is not asyncio.current_task() and not task.done():
            if self._opening:
                # No live session to close: abandon the attempt (or the wait
                # to retry, or for a resume) rather than wait for its timeout.
                task.cancel()
            await asyncio.wait({task}, timeout=self.heartbeat_timeout)

    def _on_peer_bye(self, conn: Connection, session: Session, event: ByeReceived) -> None:
        """The peer said BYE: answer it, or, if it answers ours, finish the close.

        The receive loop goes on reading (ACKs, and our peer's last MSGs when
        it answers ours) until the connection closes.
        """
        if self._peer_bye:
            return  # one BYE per side; a second one changes nothing
        self._peer_bye = True
        self._closing = True  # ended on purpose: not a lost link, never resumed
        logger.info("proxy %r: peer said bye (%d %s)", self.name, event.code, event.reason)
        work = (
            self._answer_bye(conn, session)
            if self._bye_sent is None
            else self._finish_close(conn, session)
        )
        self._closer = self.create_task(work, name=f"{self.name}-close")

    async def _answer_bye(self, conn: Connection, session: Session) -> None:
        """The peer closes: deliver and acknowledge what it sent, send what we have, say BYE.

        Within half of ``close_timeout``: every MSG that came before the BYE
        goes to the served worker and is acknowledged; what that worker sends
        while handling them goes out; then our BYE. The peer closes the
        connection once it has our BYE; if it does not within the other half,
        we close it.
        """
        half = self.close_timeout / 2
        try:
            async with asyncio.timeout(half):
                await self._until_delivered()
                self._flush_ack(session)  # the peer learns at once what arrived
                await self._until_local_idle()
        except TimeoutError:
            logger.info(
                "proxy %r: answering BYE after %.1fs with %d message(s) undelivered",
                self.name,
                half,
                len(self._inbound or ()),
            )
        if self._bye_sent is None:  # else we started closing too: our BYE is out
            self._flush_ack(session)
            self._bye_sent = (CloseCode.NORMAL, "bye")
            self._enqueue(session.bye_frame(*self._bye_sent))
        try:
            async with asyncio.timeout(half):
                await self._link_closed.wait()
        except TimeoutError:
            self._close_with = self._bye_sent
            await conn.aclose(*self._bye_sent)

    async def _finish_close(self, conn: Connection, session: Session) -> None:
        """The peer answered our BYE: deliver and acknowledge its last MSGs, then close."""
        try:
            async with asyncio.timeout(self.close_timeout / 2):
                await self._until_delivered()
        except TimeoutError:
            pass
        self._flush_ack(session)
        await self._drain(_CLOSE_DRAIN_SECONDS)
        assert self._bye_sent is not None
        self._close_with = self._bye_sent
        await conn.aclose(*self._bye_sent)
