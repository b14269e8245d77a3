"""The gRPC backend of proxy-core, on ``grpc.aio``: one bidirectional stream per connection.

:class:`GrpcTransport` (registered as ``grpc``, URL schemes ``grpc`` and
``grpcs``) opens and serves calls of ``proxy_core.v1.ProxySession/Connect``
(``proto/proxy_core/v1/service.proto``, which is the binding's specification);
each call is a connection of :mod:`proxy_core_grpc.connection`, its frames
serialized by hand (:mod:`proxy_core_grpc._wire`).

- The client's headers travel as request metadata; ``authenticate`` refuses
  with status UNAUTHENTICATED before the handler ever runs, which the client
  reports as :class:`~proxy_core.errors.AuthenticationError`.
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
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from ssl import SSLContext
from typing import Any, ClassVar, NoReturn
from urllib.parse import SplitResult

import grpc
import grpc.aio

from proxy_core.errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectError,
    MessageTooLarge,
    ProxyError,
    TLSError,
)
from proxy_core.tls import ClientTLS, ServerTLS
from proxy_core.transport import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Authenticator,
    Connection,
    ConnectionHandler,
    Listener,
    ServedConnections,
    Transport,
    check_authentication,
    connect_error,
    listen_error,
    listening,
    lower_headers,
    parse_url,
    plain_errno,
    url_port,
)
from proxy_core.transport import check_max_message_bytes as _check_limit
from proxy_core.transport import describe_error as _describe
from proxy_core.transport import format_host as _format_host
from proxy_core.transport import redact_url as _redact

from . import _tls, _wire
from ._wire import METHOD_PATH
from .connection import GrpcClientConnection, GrpcConnection, GrpcServerConnection

__all__ = [
    "METHOD_PATH",
    "GrpcClientConnection",
    "GrpcConnection",
    "GrpcServerConnection",
    "GrpcTransport",
]

logger = logging.getLogger(__name__)

_SCHEMES = ("grpc", "grpcs")
_GOING_AWAY = 1001
# How long ``server.stop`` waits for calls that are ending anyway.
_STOP_GRACE = 1.0

# Metadata keys: lower-case letters, digits, "-", "_", "."; "grpc-" is reserved.
_METADATA_KEY = re.compile(r"[0-9a-z_.\-]+")
_RESERVED_KEYS = frozenset({"content-type", "te", "host", "user-agent"})


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
            (grpc.method_handlers_generic_handler(_wire.SERVICE, {_wire.METHOD: rpc_handler}),)
        )
        self._url = ""
        self._served: ServedConnections[GrpcServerConnection] = ServedConnections()
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
            raise listen_error(parts.geturl(), why)
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
            raise listen_error(parts.geturl(), why) from exc
        self._url = f"{parts.scheme}://{host}:{bound}"

    async def aclose(self) -> None:
        """Stop accepting, end every call with 1001 and wait for the handlers."""
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            for conn in self._served.connections:
                conn._end_rpc(_GOING_AWAY, "server shutting down")
            await self._server.stop(_STOP_GRACE)
            await self._served.finish()

    async def _connect_rpc(self, request_iterator: object, context: Any) -> None:
        """The servicer of ``Connect``: authenticate, accept, run the handler in a task."""
        # Text metadata only: binary (-bin) values are not headers.
        metadata = context.invocation_metadata() or ()
        headers = lower_headers((k, v) for k, v in metadata if isinstance(v, str))
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
        # The handler runs in a task of ours: gRPC cancels the servicer when
        # the client goes away, and the handler should see ConnectionClosed.
        self._served.start(self._handler, conn, name="proxy_core_grpc-handler")
        await conn._serve()


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
        _tls.check_tls(url, ssl, ClientTLS)
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
            if isinstance(exc, ProxyError) or not isinstance(exc, Exception):
                raise  # ours already, or a cancellation
            raise connect_error(url, exc, timeout=open_timeout) from exc
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
            credentials = _tls.channel_credentials(tls)
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
        _tls.check_tls(url, ssl, ServerTLS)
        credentials = self.server_credentials
        if isinstance(ssl, ServerTLS):
            credentials = _tls.server_credentials(ssl)
        if parts.scheme == "grpcs" and credentials is None:
            raise ConfigurationError(
                f"serving {_redact(url)} needs TLS settings: ssl=ServerTLS(cert_chain_pem, "
                "key_pem), or GrpcTransport(server_credentials=grpc.ssl_server_credentials(...))"
            )

        async def open_listener() -> Listener:
            listener = _GrpcListener(handler, authenticate, max_message_bytes)
            await listener.start(parts, credentials)
            return listener

        return listening(open_listener)


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
    elif (failure := _tls.tls_failure(details)) is not None:
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


def _parse_url(url: str) -> SplitResult:
    return parse_url(url, transport="grpc", schemes=_SCHEMES)


def _port(parts: SplitResult) -> int:
    return url_port(parts, secure="grpcs")
