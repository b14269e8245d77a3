"""The gRPC backend of proxy-core, on ``grpc.aio``: one bidirectional stream per connection.

:class:`GrpcTransport` (registered as ``grpc``, URL schemes ``grpc`` and
``grpcs``) opens and serves calls of ``proxy_core.v1.ProxySession/Connect``
(``proto/proxy_core/v1/service.proto``, which is the binding's specification):

- Each proxy-core frame is one ``Frame`` message, serialized by hand (see
  :mod:`proxy_core_grpc._wire`) so no protobuf object is built per frame.
- The client's headers travel as request metadata; ``authenticate`` refuses
  with status UNAUTHENTICATED before the handler ever runs, which the client
  reports as :class:`~proxy_core.errors.AuthenticationError`.
- A server that closes puts the close code and reason in trailing metadata,
  so codes like 1009 or 4008 reach the client. gRPC gives a client no way to
  send a code: the server's handler sees ``ConnectionClosed(None, ...)``.
- ``max_message_bytes`` applies to the payload. A client lets gRPC refuse
  larger messages before buffering them; a server lets gRPC buffer up to
  twice the limit so that it can answer with :class:`MessageTooLarge`
  (gRPC's own refusal on a server is indistinguishable from a client that
  vanished), and beyond that gRPC refuses (the handler sees the call end).

TLS (``grpcs://``) is configured as on every backend, with ``ssl=`` a
:class:`~proxy_core.tls.ClientTLS` or :class:`~proxy_core.tls.ServerTLS`,
turned into gRPC credentials from their PEM bytes; or with gRPC credentials on
the transport (``GrpcTransport(channel_credentials=..., server_credentials=...)``).
An ``ssl.SSLContext`` is refused: it cannot be turned into gRPC credentials.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import socket
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from ssl import SSLContext
from typing import Any, ClassVar, NoReturn
from urllib.parse import SplitResult, unquote

import grpc
import grpc.aio

from proxy_core.errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectError,
    ConnectionClosed,
    MessageTooLarge,
    ProxyError,
    TLSError,
)
from proxy_core.flag import Flag
from proxy_core.tls import ClientTLS, ServerTLS
from proxy_core.transport import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Authenticator,
    Connection,
    ConnectionHandler,
    Listener,
    Transport,
    check_authentication,
    parse_url,
    plain_errno,
    run_connection_handler,
    truncate_reason,
)
from proxy_core.transport import check_max_message_bytes as _check_limit
from proxy_core.transport import describe_error as _describe
from proxy_core.transport import format_host as _format_host
from proxy_core.transport import redact_url as _redact

from . import _wire
from ._generated import service_pb2

__all__ = [
    "METHOD_PATH",
    "GrpcClientConnection",
    "GrpcConnection",
    "GrpcServerConnection",
    "GrpcTransport",
]

logger = logging.getLogger(__name__)

_SERVICE = service_pb2.DESCRIPTOR.services_by_name["ProxySession"]
_METHOD = _SERVICE.methods_by_name["Connect"]
#: The full method name of the one RPC: ``/proxy_core.v1.ProxySession/Connect``.
METHOD_PATH = f"/{_SERVICE.full_name}/{_METHOD.name}"

_SCHEMES = ("grpc", "grpcs")
# Client calls closing in the background (see GrpcClientConnection.aclose).
_closers: set[asyncio.Task[None]] = set()
_DEFAULT_PORTS = {"grpc": 80, "grpcs": 443}
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
# How long ``server.stop`` waits for calls that are ending anyway.
_STOP_GRACE = 1.0
# After this long, a server shutting down cancels handlers that ignore the close.
_SHUTDOWN_GRACE = 10.0

# Metadata keys: lower-case letters, digits, "-", "_", "."; "grpc-" is reserved.
_METADATA_KEY = re.compile(r"[0-9a-z_.\-]+")
_RESERVED_KEYS = frozenset({"content-type", "te", "host", "user-agent"})

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


class _GrpcListener(Listener):
    """The bound server yielded by :meth:`GrpcTransport.serve`; it also serves the calls."""

    def __init__(
        self, handler: ConnectionHandler, authenticate: Authenticator | None, limit: int
    ) -> None:
        self._handler = handler
        self._authenticate = authenticate
        self._limit = limit
        self._server = grpc.aio.server(options=_server_options(limit))
        rpc_handler = grpc.stream_stream_rpc_method_handler(
            self._connect_rpc, request_deserializer=None, response_serializer=_wire.encode_frame
        )
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(_SERVICE.full_name, {_METHOD.name: rpc_handler}),)
        )
        self._url = ""
        self._connections: set[GrpcServerConnection] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def url(self) -> str:
        """The URL clients connect to, with the real port."""
        return self._url

    async def start(self, parts: SplitResult, credentials: Any) -> None:
        """Bind the URL's address and start serving.

        Raises:
            ConnectError: the address could not be bound.
        """
        host = _format_host(parts.hostname)
        # Try the address first: gRPC's C core writes its own error line to
        # stderr when it cannot bind, and says only "Failed to bind".
        if _port(parts) and (why := _bind_failure(parts.hostname, _port(parts))) is not None:
            await self._server.stop(None)
            raise ConnectError(f"could not listen on {_redact(parts.geturl())}: {why}")
        try:
            address = f"{host}:{_port(parts)}"
            if parts.scheme == "grpcs":
                bound = self._server.add_secure_port(address, credentials)
            else:
                bound = self._server.add_insecure_port(address)
            await self._server.start()
        except Exception as exc:
            await self._server.stop(None)
            # gRPC says only "Failed to bind": find out why, as the other backends say it.
            why = _bind_failure(parts.hostname, _port(parts)) or _describe(exc)
            raise ConnectError(f"could not listen on {_redact(parts.geturl())}: {why}") from exc
        self._url = f"{parts.scheme}://{host}:{bound}"

    async def aclose(self) -> None:
        """Stop accepting, end every call with 1001 and wait for the handlers."""
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            for conn in list(self._connections):
                conn._end_rpc(_GOING_AWAY, "server shutting down")
            await self._server.stop(_STOP_GRACE)
            handlers = set(self._handlers)
            if not handlers:
                return
            _, pending = await asyncio.wait(handlers, timeout=_SHUTDOWN_GRACE)
            # A handler that awaits something other than its connection would
            # keep the server open forever: cancel the stragglers.
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    async def _connect_rpc(self, request_iterator: object, context: Any) -> None:
        """The servicer of ``Connect``: authenticate, accept, run the handler in a task."""
        headers = _request_headers(context.invocation_metadata() or ())
        refusal = await check_authentication(self._authenticate, headers)
        if refusal is not None:
            # A status message must be valid UTF-8: a lone surrogate in the
            # hook's reason would fail the call instead of refusing it.
            message = refusal.encode("utf-8", "replace").decode("utf-8")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        if self._closed:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server shutting down")
        conn = GrpcServerConnection(context, headers, max_message_bytes=self._limit)
        try:
            await context.send_initial_metadata(())  # tells the client it is in
        except Exception:
            logger.debug("the client left before it was accepted", exc_info=True)
            return
        self._connections.add(conn)
        # The handler runs in a task of ours: gRPC cancels the servicer when
        # the client goes away, and the handler should see ConnectionClosed.
        task = asyncio.create_task(self._run_handler(conn), name="proxy_core_grpc-handler")
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        try:
            await conn._serve()
        finally:
            self._connections.discard(conn)

    async def _run_handler(self, conn: GrpcServerConnection) -> None:
        await run_connection_handler(self._handler, conn)


class GrpcTransport(Transport):
    """The ``grpc.aio`` backend: ``grpc://`` (plaintext) and ``grpcs://`` (TLS) URLs.

    TLS settings are best given per call, as on every backend:
    ``connect(url, ssl=ClientTLS(...))`` and ``serve(url, handler,
    ssl=ServerTLS(...))``. The credentials below are the alternative for
    what those cannot express; ``ssl=`` takes precedence over them.

    Args:
        channel_credentials: for ``grpcs://`` clients, e.g.
            ``grpc.ssl_channel_credentials(root_certificates=ca_pem)``; the
            default trusts the system's roots.
        server_credentials: to serve ``grpcs://`` without ``ssl=``, e.g.
            ``grpc.ssl_server_credentials([(key_pem, cert_pem)])``.
    """

    name: ClassVar[str] = "grpc"
    schemes: ClassVar[tuple[str, ...]] = _SCHEMES

    def __init__(self, *, channel_credentials: Any = None, server_credentials: Any = None) -> None:
        self.channel_credentials = channel_credentials
        self.server_credentials = server_credentials

    async def connect(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        ssl: SSLContext | ClientTLS | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        open_timeout: float = 10.0,
    ) -> Connection:
        """Open a ``Connect`` call to ``url``, ready once the server accepted it.

        Args:
            url: ``grpc://host:port`` or ``grpcs://host:port`` (default ports
                80 and 443; a path is ignored).
            headers: sent as request metadata, names lower-cased.
            ssl: the TLS settings for ``grpcs://``, a ``ClientTLS`` (default:
                the transport's ``channel_credentials``, else the system's
                roots). An ``ssl.SSLContext`` is refused.
            max_message_bytes: the limit on one frame, in either direction.
            open_timeout: seconds allowed to connect and be accepted.

        Raises:
            ConfigurationError: a bad URL, a header that cannot be metadata,
                an ``ssl.SSLContext``, or ``ssl`` with ``grpc://``.
            AuthenticationError: the server answered UNAUTHENTICATED or PERMISSION_DENIED.
            TLSError: the TLS handshake failed (e.g. certificate verification).
            ConnectError: anything else kept the call from opening.
        """
        parts = _parse_url(url)
        _check_limit(max_message_bytes)
        _check_tls(url, parts.scheme, ssl, ClientTLS)
        metadata = _client_metadata(headers)
        target = f"{_format_host(parts.hostname)}:{_port(parts)}"
        channel = self._channel(parts.scheme, target, max_message_bytes, ssl)
        call: Any = None
        try:
            multicallable = channel.stream_stream(
                METHOD_PATH, request_serializer=_wire.encode_frame, response_deserializer=None
            )
            call = multicallable(metadata=metadata)
            # The server sends its initial metadata once it accepted the call.
            async with asyncio.timeout(open_timeout):
                await call.initial_metadata()
                if call.done():
                    await _check_accepted(url, call, max_message_bytes)
        except BaseException as exc:
            if call is not None:
                call.cancel()
            await channel.close()
            if isinstance(exc, TimeoutError):
                raise ConnectError(
                    f"could not connect to {_redact(url)}: timed out after {open_timeout:g}s"
                ) from exc
            if isinstance(exc, ProxyError | asyncio.CancelledError) or not isinstance(
                exc, Exception
            ):
                raise
            raise ConnectError(f"could not connect to {_redact(url)}: {_describe(exc)}") from exc
        return GrpcClientConnection(
            channel, call, target=target, max_message_bytes=max_message_bytes
        )

    def _channel(self, scheme: str, target: str, limit: int, tls: Any) -> Any:
        size = _wire.wire_size(limit)
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", size),
            # A TCP connection of its own, as on the other backends: sessions to
            # one server do not share flow control, faults or connect backoff.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        if scheme != "grpcs":
            return grpc.aio.insecure_channel(target, options=options)
        if isinstance(tls, ClientTLS):
            credentials = _channel_credentials(tls)
            if tls.server_hostname is not None:
                options.append(("grpc.ssl_target_name_override", tls.server_hostname))
        else:
            credentials = self.channel_credentials or grpc.ssl_channel_credentials()
        return grpc.aio.secure_channel(target, credentials, options=options)

    def serve(
        self,
        url: str,
        handler: ConnectionHandler,
        *,
        authenticate: Authenticator | None = None,
        ssl: SSLContext | ServerTLS | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> AbstractAsyncContextManager[Listener]:
        """Serve ``url`` (port 0 picks a free port), calling ``handler`` per call.

        ``authenticate`` sees the request metadata first; a refused client
        gets status UNAUTHENTICATED with the reason as details and the
        handler is never called. The call ends when the handler returns
        (1000) or raises (1011, logged; a ``ConnectionClosed`` or
        ``MessageTooLarge`` escaping the handler is an ordinary end).
        Leaving the context ends every call with 1001 and waits for the
        handlers (cancelling those still running after 10 seconds).

        Args:
            url: ``grpc://host:port`` or ``grpcs://host:port``.
            handler: awaited with a :class:`GrpcServerConnection` per call.
            authenticate: the hook that sees the request metadata first.
            ssl: the TLS settings for ``grpcs://``, a ``ServerTLS`` (default:
                the transport's ``server_credentials``; one of the two is
                required for ``grpcs://``). An ``ssl.SSLContext`` is refused.
            max_message_bytes: the limit on one frame, in either direction.

        Raises:
            ConfigurationError: a bad URL, an ``ssl.SSLContext``, ``ssl`` with
                ``grpc://``, or ``grpcs://`` with neither ``ssl`` nor
                ``server_credentials``.
            ConnectError: the address could not be bound (raised on entering).
        """
        parts = _parse_url(url)
        _check_limit(max_message_bytes)
        _check_tls(url, parts.scheme, ssl, ServerTLS)
        credentials = self.server_credentials
        if isinstance(ssl, ServerTLS):
            credentials = _server_credentials(ssl)
        if parts.scheme == "grpcs" and credentials is None:
            raise ConfigurationError(
                f"serving {_redact(url)} needs TLS settings: ssl=ServerTLS(cert_chain_pem, "
                "key_pem), or GrpcTransport(server_credentials=grpc.ssl_server_credentials(...))"
            )
        return self._serve(parts, handler, authenticate, max_message_bytes, credentials)

    @asynccontextmanager
    async def _serve(
        self,
        parts: SplitResult,
        handler: ConnectionHandler,
        authenticate: Authenticator | None,
        limit: int,
        credentials: Any,
    ) -> AsyncIterator[Listener]:
        listener = _GrpcListener(handler, authenticate, limit)
        await listener.start(parts, credentials)
        try:
            yield listener
        finally:
            await listener.aclose()


_SSL_CONTEXT_REFUSED = (
    "the grpc transport cannot use an ssl.SSLContext (gRPC has its own TLS stack, which "
    "cannot read one): pass ssl={} with the PEM certificates instead (proxy_core.{}), or "
    "gRPC credentials to the transport, GrpcTransport({}=...)"
)


def _check_tls(url: str, scheme: str, tls: object, kind: type[ClientTLS | ServerTLS]) -> None:
    """Refuse TLS settings gRPC cannot use, or that do not fit the URL's scheme."""
    if tls is None:
        return
    if isinstance(tls, SSLContext):
        if kind is ClientTLS:
            example, option = "ClientTLS(ca_pem=...)", "channel_credentials"
        else:
            example, option = "ServerTLS(cert_chain_pem, key_pem)", "server_credentials"
        raise ConfigurationError(_SSL_CONTEXT_REFUSED.format(example, kind.__name__, option))
    if not isinstance(tls, kind):
        raise ConfigurationError(
            f"ssl= takes a {kind.__name__} here, not {type(tls).__module__}."
            f"{type(tls).__qualname__}"
        )
    if scheme != "grpcs":
        raise ConfigurationError(f"TLS settings need a grpcs:// URL, not {_redact(url)}")


def _channel_credentials(tls: ClientTLS) -> Any:
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca_pem, private_key=tls.key_pem, certificate_chain=tls.cert_pem
    )


def _server_credentials(tls: ServerTLS) -> Any:
    return grpc.ssl_server_credentials(
        [(tls.key_pem, tls.cert_chain_pem)],
        root_certificates=tls.client_ca_pem,
        require_client_auth=tls.requires_client_certificate,
    )


def _tls_failure(details: str) -> str | None:
    """Describe a failed TLS handshake from a gRPC status message, else ``None``."""
    if "CERTIFICATE_VERIFY_FAILED" in details or _VERIFICATION_CHECK_FAILED.search(details):
        return f"certificate verification failed ({details})"
    if _TLS_HANDSHAKE_FAILED.search(details):
        return f"TLS handshake failed ({details})"
    return None


_TLS_HANDSHAKE_FAILED = re.compile(r"(tls|ssl) handshake failed", re.IGNORECASE)
# What gRPC says when the server's certificate does not name the host.
_VERIFICATION_CHECK_FAILED = re.compile(r"verification check failed", re.IGNORECASE)


def _server_options(limit: int) -> list[tuple[str, int]]:
    size = _wire.wire_size(limit)
    return [
        # Up to about twice the limit, a frame reaches receive(), which refuses
        # it as MessageTooLarge; gRPC's own refusal would look like a vanished client.
        ("grpc.max_receive_message_length", size + limit),
        ("grpc.max_send_message_length", size),
        # Fail on a busy port rather than share it with another server.
        ("grpc.so_reuseport", 0),
    ]


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


async def _check_accepted(url: str, call: Any, limit: int) -> None:
    """Raise unless a call that is over already was accepted (then closed) by the server."""
    status = await call.code()
    trailing = await call.trailing_metadata() or ()
    if status == grpc.StatusCode.OK or _wire.parse_close_metadata(trailing) is not None:
        return  # accepted, and closed at once: receive() reports the close
    _refuse(url, status, await call.details() or "", limit)


def _bind_failure(host: str | None, port: int) -> str | None:
    """Bind ``host:port`` as gRPC would, and say why that fails (``None`` if it does not).

    gRPC serves if it binds any of the addresses the host resolves to, so this
    fails only if every one fails, and then names the first one's OS error:
    gRPC's own error says only "Failed to bind".
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return _describe(exc)
    first: OSError | None = None
    for family, kind, proto, _, address in infos:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
        except OSError as exc:
            first = first or exc
        else:
            return None
    return None if first is None else _describe(first)


def _refuse(url: str, status: Any, details: str, limit: int) -> NoReturn:
    """Raise the error for a call the server ended instead of accepting it."""
    if status in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        raise AuthenticationError(details or "unauthorized")
    if status == grpc.StatusCode.RESOURCE_EXHAUSTED:
        refused = _wire.parse_refusal(details)
        raise MessageTooLarge(_wire.payload_size(refused[1]) if refused else None, limit)
    if status == grpc.StatusCode.UNIMPLEMENTED:
        details = f"the server does not serve {METHOD_PATH} ({details})"
    elif status not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        details = f"{getattr(status, 'name', status)}: {details}"
    elif (failure := _tls_failure(details)) is not None:
        raise TLSError(f"TLS handshake with {_redact(url)} failed: {failure}")
    elif url.startswith("grpc:") and "Socket closed" in details:
        # A TLS server drops a plaintext client without a word.
        details += " (if the server expects TLS, use a grpcs:// URL)"
    elif "Connection refused" in details:
        details = plain_errno(errno.ECONNREFUSED) or details  # as the other backends say it
    raise ConnectError(f"could not connect to {_redact(url)}: {details}")


def _client_metadata(headers: Mapping[str, str] | None) -> tuple[tuple[str, str], ...] | None:
    if not headers:
        return None
    metadata = []
    for name, value in headers.items():
        key = name.lower()
        if (
            not _METADATA_KEY.fullmatch(key)
            or key.startswith("grpc-")
            or key.endswith("-bin")
            or key in _RESERVED_KEYS
        ):
            raise ConfigurationError(
                f"header {name!r} cannot travel as gRPC metadata: names are lower-case "
                "letters, digits, '-', '_' and '.', not reserved (grpc-*, *-bin, "
                f"{', '.join(sorted(_RESERVED_KEYS))})"
            )
        if not isinstance(value, str) or not all(" " <= c <= "~" for c in value):
            raise ConfigurationError(
                f"the value of header {name!r} must be printable ASCII to travel as gRPC metadata"
            )
        metadata.append((key, value))
    return tuple(metadata)


def _request_headers(metadata: Iterable[tuple[str, str | bytes]]) -> dict[str, str]:
    """Return text metadata as headers with lower-cased names; repeats are joined by ", "."""
    headers: dict[str, str] = {}
    for name, value in metadata:
        if not isinstance(value, str):
            continue  # binary metadata (-bin keys) is not a header
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def _parse_url(url: str) -> SplitResult:
    return parse_url(url, transport="grpc", schemes=_SCHEMES)


def _port(parts: SplitResult) -> int:
    return parts.port if parts.port is not None else _DEFAULT_PORTS[parts.scheme]


def _format_peer(peer: str | None) -> str | None:
    """Turn gRPC's ``ipv4:1.2.3.4:5`` or ``ipv6:[::1]:5`` into ``1.2.3.4:5`` or ``[::1]:5``."""
    if not peer:
        return None
    scheme, _, address = peer.partition(":")
    if scheme in ("ipv4", "ipv6") and address:
        return unquote(address)
    return unquote(peer)
