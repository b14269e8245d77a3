"""The gRPC backend of proxy-core, on ``grpc.aio``.

Registered as transport ``grpc`` (schemes ``grpc``, ``grpcs``) in the
``proxy_core.transports`` entry-point group. One proxy-core connection is one
bidirectional-streaming call of ``proxy_core.v1.ProxySession/Connect``
(``proto/proxy_core/v1/service.proto``).
"""

from __future__ import annotations

from .connection import GrpcClientConnection, GrpcConnection, GrpcServerConnection
from .proxies import GrpcProxyClient, GrpcProxyServer
from .transport import GrpcTransport

__all__ = [
    "GrpcClientConnection",
    "GrpcConnection",
    "GrpcProxyClient",
    "GrpcProxyServer",
    "GrpcServerConnection",
    "GrpcTransport",
]
