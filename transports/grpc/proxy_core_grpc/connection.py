"""The connections of the gRPC backend: one ``grpc.aio`` bidirectional call each.

:class:`GrpcClientConnection` is the client end (what
:meth:`~proxy_core_grpc.GrpcTransport.connect` returns),
:class:`GrpcServerConnection` the server end (what a ``GrpcTransport.serve``
handler receives). A server that closes puts the close code and reason in
trailing metadata (:mod:`proxy_core_grpc._wire`), so codes like 1009 or 4008
reach the client; gRPC gives a client no way to send a code, so the server's
handler sees ``ConnectionClosed(None, ...)``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

import grpc
import grpc.aio

from proxy_core.errors import ConfigurationError, ConnectionClosed, MessageTooLarge, ProxyError
from proxy_core.flag import Flag
from proxy_core.transport import DEFAULT_MAX_MESSAGE_BYTES, Connection, truncate_reason

from . import _wire

__all__ = ["GrpcClientConnection", "GrpcConnection", "GrpcServerConnection"]

logger = logging.getLogger(__name__)

# Client calls closing in the background (see GrpcClientConnection.aclose).
_closers: set[asyncio.Task[None]] = set()
_NORMAL = 1000
_GOING_AWAY = 1001
_ABNORMAL_CLOSURE = 1006
_MESSAGE_TOO_BIG = 1009
_INTERNAL_ERROR = 1011
_UNAUTHORIZED = 4001
# How long a closing client waits for the server to end the call after its
# half-close (the server answers once it has read up to it), and a closing
# server for its servicer to return.
_CLOSE_TIMEOUT = 10.0

# gRPC carries no close code from a client, and shows a server a cancelled
# call as the end of the request stream too: the handler sees code None.
_CLIENT_ENDED = "the client ended the call"
_CLIENT_GONE = "the client cancelled the call or went away"
_WRITE_FAILED = "the call ended during a send (the server ended it, or the connection broke)"
_PEER_TOO_BIG = "SERVER"  # the side gRPC names when the server refused our message


class GrpcConnection(Connection):
    """What both ends of a gRPC proxy-core connection share: the frame limit.

    See :class:`GrpcClientConnection` (from :meth:`GrpcTransport.connect`) and
    :class:`GrpcServerConnection` (what :meth:`GrpcTransport.serve` hands its
    handler).
    """

    __slots__ = ("_limit", "_read_idle", "_receiving", "_send_lock")

    def __init__(self, *, max_message_bytes: int) -> None:
        self._limit = max_message_bytes
        # gRPC fails a call that has two writes in flight (and a second read
        # returns nonsense): sends queue up, a second receive is misuse.
        self._send_lock = asyncio.Lock()
        self._receiving = False
        self._read_idle = Flag()
        self._read_idle.set()

    @property
    def max_message_bytes(self) -> int:
        """The limit on one frame, in either direction."""
        return self._limit

    def _start_receive(self) -> None:
        if self._receiving:
            raise ConfigurationError("receive() called while another receive() waits")
        self._receiving = True
        self._read_idle.clear()

    def _end_receive(self) -> None:
        self._receiving = False
        self._read_idle.set()

    def _check_outgoing(self, data: bytes) -> None:
        # gRPC would fail the whole call for a message over its send limit.
        if len(data) > self._limit:
            raise MessageTooLarge(len(data), self._limit)


def _cancel_core_call(call: Any) -> None:
    """Cancel a call that ``grpc.aio`` thinks is over but its core does not.

    A write that fails because the server ended the call marks the Python call
    done (status INTERNAL) without ending it in gRPC's core, whose status
    operation then waits for ever: a task of gRPC's own that never ends, and a
    call that is never freed. ``Call.cancel()`` does nothing for a done call;
    the core call's own ``cancel`` ends it. Private API, so guarded: if gRPC
    changes it, the task stays, as before.
    """
    core = getattr(call, "_cython_call", None)
    cancel = getattr(core, "cancel", None)
    if cancel is None:
        return
    try:
        cancel("proxy_core_grpc: the call ended during a write")
    except Exception:  # pragma: no cover - depends on gRPC's internals
        logger.debug("cancelling the gRPC core call failed", exc_info=True)


class GrpcClientConnection(GrpcConnection):
    """The client end: a ``grpc.aio`` stream-stream call on a channel it owns.

    ``aclose`` half-closes the request stream; the call ends and the channel
    closes in the background once the server answered (at most 10 seconds).
    """

    __slots__ = ("_call", "_channel", "_closing", "_ended", "_target", "_write_failed")

    def __init__(
        self,
        channel: Any,
        call: Any,
        *,
        target: str,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        super().__init__(max_message_bytes=max_message_bytes)
        self._channel = channel
        self._call = call
        self._target = target
        self._closing: tuple[int, str] | None = None  # set by aclose
        self._ended: ConnectionClosed | None = None  # how the call ended, once known
        self._write_failed = False  # a write found the call over (see _release)

    async def send(self, data: bytes) -> None:
        """Send one binary frame.

        Raises:
            ConnectionClosed: the connection is closed.
            MessageTooLarge: ``data`` is over this side's ``max_message_bytes``
                (nothing is sent; the connection stays usable).
        """
        if self._closing is not None:
            raise ConnectionClosed(*self._closing)
        if self._ended is not None:
            raise ConnectionClosed(self._ended.code, self._ended.reason)
        self._check_outgoing(data)
        try:
            async with self._send_lock:
                await self._call.write(data)
        except asyncio.CancelledError:
            if not self._call_cancelled():
                raise
            raise self._closed() from None
        except grpc.aio.AioRpcError as exc:
            self._write_failed = True
            raise self._end_by_write(exc) from exc
        except Exception as exc:  # InvalidStateError: the call is over, its status intact
            error = await self._end_from_call()
            raise ConnectionClosed(error.code, error.reason) from exc

    async def receive(self) -> bytes:
        """Receive the next binary frame.

        Raises:
            ConnectionClosed: the connection is over; ``code`` and ``reason``
                are the server's when it closed, else derived from the status.
            MessageTooLarge: the server sent a frame over the limit (gRPC
                refused it and the call is over); reported once.
            ProtocolError: the message is not a well-formed ``Frame``; the
                connection stays usable.
        """
        if self._closing is not None or self._ended is not None:
            raise self._closed()
        self._start_receive()
        try:
            message = await self._call.read()
        except asyncio.CancelledError:
            if not self._call_cancelled():
                raise
            raise self._closed() from None
        except grpc.aio.AioRpcError as exc:
            raise self._end(exc.code(), exc.details() or "", exc.trailing_metadata()) from exc
        finally:
            self._end_receive()
        if self._closing is not None:  # closed while this receive waited
            raise self._closed()
        if message is grpc.aio.EOF:
            trailing = await self._call.trailing_metadata()
            raise self._end(grpc.StatusCode.OK, "", trailing)
        try:
            return _wire.decode_frame(message, self._limit)
        except MessageTooLarge as exc:
            # gRPC enforces the limit; this is a Frame whose length field lies.
            self._call.cancel()
            self._ended = ConnectionClosed(_MESSAGE_TOO_BIG, "message too big")
            raise exc from None

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection; idempotent, never raises.

        Half-closes the request stream and returns. The frames sent before
        reach the server even if it reads them later: the call ends, and the
        channel closes, in the background once the server has read up to the
        half-close and answered (what it still sends is discarded), or after
        10 seconds. The server cannot be told ``code`` (gRPC has no client
        trailers).
        """
        if self._closing is not None:
            return
        self._closing = (code, reason)
        # A send in flight (stuck on flow control?) rules out a clean half-close.
        if not self._call.done() and not self._send_lock.locked():
            try:
                await self._call.done_writing()
            except Exception:
                logger.debug("half-closing the gRPC call failed", exc_info=True)
            else:
                task = asyncio.create_task(self._linger(), name="proxy_core_grpc-close")
                _closers.add(task)
                task.add_done_callback(_closers.discard)
                return
        await self._release()

    async def _linger(self) -> None:
        """Drain the call until the server ends it (bounded), then release it."""
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await self._read_idle.wait()  # a receive() in flight reads first
                while await self._call.read() is not grpc.aio.EOF:
                    pass
        except Exception:  # the call ended otherwise, or the server is silent
            logger.debug("the gRPC call did not end cleanly", exc_info=True)
        finally:
            await self._release()

    async def _release(self) -> None:
        if not self._call.cancel() and self._write_failed:
            _cancel_core_call(self._call)
        try:
            await self._channel.close()
        except Exception:
            logger.debug("closing the gRPC channel failed", exc_info=True)

    @property
    def remote_address(self) -> str | None:
        """The server's ``host:port`` as in the URL."""
        return self._target

    def _call_cancelled(self) -> bool:
        """Whether a ``CancelledError`` came from the cancelled call, not from our task."""
        task = asyncio.current_task()
        return bool(self._call.cancelled()) and (task is None or task.cancelling() == 0)

    def _closed(self) -> ConnectionClosed:
        if self._closing is not None:
            return ConnectionClosed(*self._closing)
        ended = self._ended or ConnectionClosed(_ABNORMAL_CLOSURE, "call cancelled")
        return ConnectionClosed(ended.code, ended.reason)

    def _end(self, status: Any, details: str, trailing: Any) -> ProxyError:
        """Record how the call ended and return what ``receive`` raises for it."""
        if self._closing is not None:
            self._ended = ConnectionClosed(*self._closing)
            return self._closed()
        error = _client_close(status, details, trailing or (), self._limit)
        if isinstance(error, MessageTooLarge):
            self._ended = ConnectionClosed(_MESSAGE_TOO_BIG, "message too big")
        else:
            self._ended = error
        return error

    def _end_by_write(self, exc: Any) -> ConnectionClosed:
        """Record how the call ended when a write failed, and return what ``send`` raises.

        A write that finds the call over (the server ended it with frames
        still unread here, or the connection broke) makes gRPC replace the
        call's status with INTERNAL and drop the unread frames: the server's
        close code is lost, so this is reported as an abnormal closure.
        """
        if self._ended is None:
            trailing = exc.trailing_metadata() or ()
            if (
                exc.code() == grpc.StatusCode.INTERNAL
                and _wire.parse_close_metadata(trailing) is None
            ):
                self._ended = ConnectionClosed(_ABNORMAL_CLOSURE, _WRITE_FAILED)
            else:
                self._end(exc.code(), exc.details() or "", trailing)
        return self._closed()

    async def _end_from_call(self) -> ConnectionClosed:
        if self._ended is None:
            try:
                status = await self._call.code()
                details = await self._call.details()
                trailing = await self._call.trailing_metadata()
            except Exception:  # pragma: no cover -- the call is over; be safe
                status, details, trailing = grpc.StatusCode.UNKNOWN, "", ()
            self._end(status, details or "", trailing)
        return self._closed()


class GrpcServerConnection(GrpcConnection):
    """The server end: the ``grpc.aio`` servicer context of one ``Connect`` call.

    The handler runs in a task of its own; the RPC ends when the connection is
    closed (by ``aclose``, by the client's half-close, by a refused frame), or
    when gRPC cancels it (the client went away, the server stopped). gRPC
    carries no close code from a client: when the client ends the call, the
    handler sees ``ConnectionClosed`` with ``code=None``.
    """

    __slots__ = ("_close", "_context", "_error", "_finish", "_finished", "_headers", "_status")

    def __init__(
        self,
        context: Any,
        headers: Mapping[str, str],
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        super().__init__(max_message_bytes=max_message_bytes)
        self._context = context
        self._headers = dict(headers)
        self._close: tuple[int, str] | None = None  # what the call ends with (trailers)
        self._error: ConnectionClosed | None = None  # what send/receive raise from then on
        self._status: Any = grpc.StatusCode.OK
        self._finish = Flag()  # asks the RPC to end: the servicer returns
        self._finished = Flag()  # the servicer returned or was cancelled

    async def send(self, data: bytes) -> None:
        """Send one binary frame.

        Raises:
            ConnectionClosed: the connection is closed.
            MessageTooLarge: ``data`` is over ``max_message_bytes`` (nothing is
                sent; the connection stays usable).
        """
        if self._error is not None:
            raise self._closed()
        self._check_outgoing(data)
        try:
            async with self._send_lock:
                await self._context.write(data)
        except Exception as exc:  # ExecuteBatchError, UsageError: the RPC is over
            raise self._peer_gone(half_closed=False) from exc

    async def receive(self) -> bytes:
        """Receive the next binary frame.

        Raises:
            ConnectionClosed: the connection is over: ``code=None`` when the
                client ended the call (half-closed, cancelled or vanished),
                else the code given to ``aclose``.
            MessageTooLarge: the client sent a frame over the limit; the call
                is ended with RESOURCE_EXHAUSTED (close code 1009).
            ProtocolError: the message is not a well-formed ``Frame``; the
                connection stays usable.
        """
        if self._error is not None:
            raise self._closed()
        self._start_receive()
        try:
            message = await self._context.read()
        except Exception as exc:  # UsageError once the RPC is over
            raise self._peer_gone(half_closed=False) from exc
        finally:
            self._end_receive()
        if message is grpc.aio.EOF:
            raise self._peer_gone(half_closed=True)
        try:
            return _wire.decode_frame(message, self._limit)
        except MessageTooLarge:
            self._end_rpc(_MESSAGE_TOO_BIG, "message too big", grpc.StatusCode.RESOURCE_EXHAUSTED)
            raise

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """End the call with ``code`` and ``reason`` in trailing metadata; idempotent, never raises.

        The status is OK for 1000 and 1001, RESOURCE_EXHAUSTED for 1009,
        INTERNAL for 1011, UNAUTHENTICATED for 4001, ABORTED otherwise.
        """
        self._end_rpc(code, reason)
        if not self._finished.is_set():
            try:
                await asyncio.wait_for(self._finished.wait(), _CLOSE_TIMEOUT)
            except TimeoutError:  # pragma: no cover -- the servicer returns at once
                logger.debug("the gRPC servicer did not return after close")

    @property
    def request_headers(self) -> Mapping[str, str]:
        """The request metadata, names lower-cased (binary ``-bin`` keys left out)."""
        return self._headers

    @property
    def remote_address(self) -> str | None:
        """The peer as ``host:port`` (from ``context.peer()``)."""
        return _format_peer(self._context.peer())

    def _closed(self) -> ConnectionClosed:
        assert self._error is not None
        return ConnectionClosed(self._error.code, self._error.reason)

    def _end_rpc(
        self, code: int, reason: str, status: Any = None, error: ConnectionClosed | None = None
    ) -> None:
        """End the call with ``code`` (unless it is over already)."""
        if self._close is not None:
            return
        self._close = (code, reason)
        self._error = error if error is not None else ConnectionClosed(code, reason)
        self._status = status if status is not None else _status_for_close(code)
        self._finish.set()

    def _peer_gone(self, *, half_closed: bool) -> ConnectionClosed:
        """Return the error for a request stream that ended or an RPC that broke."""
        if half_closed:
            # Answer the client's half-close by ending the call, as a
            # WebSocket echoes a close frame.
            self._end_rpc(_NORMAL, "", error=ConnectionClosed(None, _CLIENT_ENDED))
        else:
            self._end_rpc(_ABNORMAL_CLOSURE, "", error=ConnectionClosed(None, _CLIENT_GONE))
        return self._closed()

    async def _serve(self) -> None:
        """Keep the servicer alive until the connection ends; set the status."""
        try:
            await self._finish.wait()
        except asyncio.CancelledError:
            # The client went away (or the server stopped): no status is sent.
            self._end_rpc(_ABNORMAL_CLOSURE, "", error=ConnectionClosed(None, _CLIENT_GONE))
            raise
        finally:
            self._finished.set()
        assert self._close is not None
        code, reason = self._close
        reason = truncate_reason(reason)  # the trailer's and the status message's
        context = self._context
        context.set_trailing_metadata(_wire.close_metadata(code, reason))
        if self._status != grpc.StatusCode.OK:
            context.set_code(self._status)
            context.set_details(reason or f"closed with code {code}")


def _status_for_close(code: int) -> Any:
    if code in (_NORMAL, _GOING_AWAY):
        return grpc.StatusCode.OK
    if code == _MESSAGE_TOO_BIG:
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if code == _INTERNAL_ERROR:
        return grpc.StatusCode.INTERNAL
    if code == _UNAUTHORIZED:
        return grpc.StatusCode.UNAUTHENTICATED
    return grpc.StatusCode.ABORTED


def _client_close(
    status: Any, details: str, trailing: Iterable[tuple[str, str | bytes]], limit: int
) -> ConnectionClosed | MessageTooLarge:
    """Translate how a call ended, seen from the client."""
    close = _wire.parse_close_metadata(trailing)
    if close is not None:
        return ConnectionClosed(*close)
    if status == grpc.StatusCode.OK:
        return ConnectionClosed(_NORMAL, "")
    if status == grpc.StatusCode.RESOURCE_EXHAUSTED:
        refused = _wire.parse_refusal(details)
        if refused is not None and refused[0] != _PEER_TOO_BIG:
            return MessageTooLarge(_wire.payload_size(refused[1]), limit)
        return ConnectionClosed(_MESSAGE_TOO_BIG, details)
    if status in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE):
        return ConnectionClosed(_ABNORMAL_CLOSURE, details)
    if status in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return ConnectionClosed(_UNAUTHORIZED, details)
    return ConnectionClosed(_INTERNAL_ERROR, f"{getattr(status, 'name', status)}: {details}")


def _format_peer(peer: str | None) -> str | None:
    """Turn gRPC's ``ipv4:1.2.3.4:5`` or ``ipv6:[::1]:5`` into ``1.2.3.4:5`` or ``[::1]:5``."""
    if not peer:
        return None
    scheme, _, address = peer.partition(":")
    if scheme in ("ipv4", "ipv6") and address:
        return unquote(address)
    return unquote(peer)
