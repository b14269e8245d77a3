"""TLS on the gRPC backend: settings checked, and turned into gRPC's own credentials.

gRPC has its own TLS stack: a :class:`~proxy_core.tls.ClientTLS` or
:class:`~proxy_core.tls.ServerTLS` becomes credentials from its PEM bytes, and
an ``ssl.SSLContext`` is refused. A failed handshake is read from the status
details.
"""

from __future__ import annotations

import re
from ssl import SSLContext
from typing import Any

import grpc

from proxy_core.errors import ConfigurationError
from proxy_core.tls import ClientTLS, ServerTLS
from proxy_core.transport import check_tls_scheme

__all__ = ["channel_credentials", "check_tls", "server_credentials", "tls_failure"]


_SSL_CONTEXT_REFUSED = (
    "the grpc transport cannot use an ssl.SSLContext (gRPC has its own TLS stack, which "
    "cannot read one): pass ssl={} with the PEM certificates instead (proxy_core.{}), or "
    "gRPC credentials to the transport, GrpcTransport({}=...)"
)


def check_tls(url: str, tls: object, kind: type[ClientTLS | ServerTLS]) -> None:
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
    check_tls_scheme(url, tls, secure="grpcs")


def channel_credentials(tls: ClientTLS) -> Any:
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca_pem, private_key=tls.key_pem, certificate_chain=tls.cert_pem
    )


def server_credentials(tls: ServerTLS) -> Any:
    return grpc.ssl_server_credentials(
        [(tls.key_pem, tls.cert_chain_pem)],
        root_certificates=tls.client_ca_pem,
        require_client_auth=tls.requires_client_certificate,
    )


def tls_failure(details: str) -> str | None:
    """Describe a failed TLS handshake from a gRPC status message, else ``None``."""
    if "CERTIFICATE_VERIFY_FAILED" in details or _VERIFICATION_CHECK_FAILED.search(details):
        return f"certificate verification failed ({details})"
    if _TLS_HANDSHAKE_FAILED.search(details):
        return f"TLS handshake failed ({details})"
    return None


_TLS_HANDSHAKE_FAILED = re.compile(r"(tls|ssl) handshake failed", re.IGNORECASE)
# What gRPC says when the server's certificate does not name the host.
_VERIFICATION_CHECK_FAILED = re.compile(r"verification check failed", re.IGNORECASE)
