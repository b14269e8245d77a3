"""``GrpcProxyClient`` and ``GrpcProxyServer``: the proxies bound to the gRPC backend."""

from __future__ import annotations

from typing import Any, ClassVar

from proxy_core import ProxyServer
from proxy_core.proxy import BoundProxyClient
from proxy_core.transport import Connection, Transport

from .connection import GrpcServerConnection
from .transport import GrpcTransport

__all__ = ["GrpcProxyClient", "GrpcProxyServer"]


class GrpcProxyClient(BoundProxyClient):
    """A :class:`~proxy_core.ProxyClient` over gRPC.

    It connects when activated (``await worker.activate_worker(name)``), not
    before, and never twice. Events: ``on_connected``, ``on_disconnected``,
    ``on_connect_error``.

    Args:
        name: this worker's name.
        url: ``grpc://host:port`` or ``grpcs://host:port`` of the server.
        local_worker_name: the worker on this bus that talks to the remote one.
        remote_worker_name: the worker on the server's bus.
        forward_messages: the message types allowed to cross, both ways.
        headers: sent as request metadata (names lower-cased), e.g. a token.
        codec: codec name(s) or instance(s), in order of preference
            (default ``"msgpack"``, as for every client class).
        channel_credentials: gRPC TLS credentials for ``grpcs://``, e.g.
            ``grpc.ssl_channel_credentials(root_certificates=ca_pem)``
            (default: the system's trusted roots). ``ssl=ClientTLS(...)``,
            as on every backend, does the same and takes precedence.
        **options: more :class:`~proxy_core.ProxyClient` options (``ssl`` takes
            a ``ClientTLS``, not an ``ssl.SSLContext``).
    """

    transport_class: ClassVar[type[Transport]] = GrpcTransport

    def _new_transport(self, options: dict[str, Any]) -> Transport:
        return GrpcTransport(channel_credentials=options.pop("channel_credentials", None))


class GrpcProxyServer(ProxyServer):
    """A :class:`~proxy_core.ProxyServer` on one accepted gRPC call.

    gRPC has no socket accepted outside the transport, so most servers use
    ``serve_proxy(url, transport="grpc", ...)``, which makes a proxy per call.
    This class is for a handler given to ``GrpcTransport().serve(url, handler)``
    that builds its runner itself: pass the connection the handler receives.

    Args:
        name: this worker's name.
        connection: the :class:`~proxy_core_grpc.GrpcServerConnection` handed
            to a ``GrpcTransport.serve`` handler.
        worker_name: the worker on this bus that talks to the client's.
        remote_worker_name: the client's worker.
        forward_messages: the message types allowed to cross, both ways.
        codecs: codec names or instances accepted from the client.
        max_message_bytes: the frame limit, enforced before decoding.
        **options: more :class:`~proxy_core.ProxyServer` options
            (``authenticate``, heartbeats...).

    Raises:
        ConfigurationError: ``connection`` is not a ``GrpcServerConnection``.
    """

    connection_type: ClassVar[type[Connection]] = GrpcServerConnection
    connection_refused: ClassVar[str] = (
        "connection must be the GrpcServerConnection given to a GrpcTransport.serve "
        "handler, got {got}"
    )
