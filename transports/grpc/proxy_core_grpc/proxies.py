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

    Its arguments are those of every backend's client class
    (:class:`~proxy_core.proxy.BoundProxyClient`); here:

    Args:
        url: ``grpc://host:port`` or ``grpcs://host:port`` of the server.
        headers: sent as request metadata (names lower-cased), e.g. a token.
        channel_credentials: gRPC TLS credentials for ``grpcs://``, e.g.
            ``grpc.ssl_channel_credentials(root_certificates=ca_pem)``
            (default: the system's trusted roots). ``ssl=ClientTLS(...)``,
            as on every backend, does the same and takes precedence.
        **options: ``ssl`` takes a ``ClientTLS``, not an ``ssl.SSLContext``.
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
        **options: the other :class:`~proxy_core.ProxyServer` arguments
            (``worker_name``, ``remote_worker_name``, ``forward_messages``...).

    Raises:
        ConfigurationError: ``connection`` is not a ``GrpcServerConnection``.
    """

    connection_type: ClassVar[type[Connection]] = GrpcServerConnection
    connection_refused: ClassVar[str] = (
        "connection must be the GrpcServerConnection given to a GrpcTransport.serve "
        "handler, got {got}"
    )
