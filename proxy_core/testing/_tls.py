"""Certificates for the TLS contracts, generated in the test with ``trustme``, and URL helpers.

Private: :mod:`proxy_core.testing.contracts_tls` and the ``proxy_core`` pytest
plugin use it. It imports no test framework; ``trustme`` is imported only
when certificates are made.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from ..tls import ClientTLS, ServerTLS
from ..transport import Transport

__all__ = ["TLSMaterial", "make_tls_material", "plain_scheme", "tls_scheme"]

#: Why the TLS contracts skip when trustme is missing.
TRUSTME_MISSING = "the TLS contracts generate their certificates with trustme: pip install trustme"


@dataclass(frozen=True)
class TLSMaterial:
    """What the TLS contracts need, from one test CA (and a stranger's).

    Attributes:
        server: the server's certificate for ``127.0.0.1`` and ``localhost``.
        client: trusts the CA that issued ``server``'s certificate.
        stranger: trusts another CA only: the server's certificate does not verify.
    """

    server: ServerTLS
    client: ClientTLS
    stranger: ClientTLS


def make_tls_material() -> TLSMaterial:
    """Generate a CA, a server certificate it issues, and an unrelated CA.

    Raises:
        ImportError: trustme is not installed.
    """
    import trustme

    ca, other = trustme.CA(), trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    chain = b"".join(blob.bytes() for blob in issued.cert_chain_pems)
    return TLSMaterial(
        server=ServerTLS(chain, issued.private_key_pem.bytes()),
        client=ClientTLS(ca_pem=ca.cert_pem.bytes()),
        stranger=ClientTLS(ca_pem=other.cert_pem.bytes()),
    )


def tls_scheme(transport: Transport) -> str | None:
    """Return the transport's TLS scheme: the ``xs`` of an ``x``/``xs`` pair (``wss``).

    ``None`` when its schemes hold no such pair.
    """
    schemes = transport.schemes
    return next((s for s in schemes if s.endswith("s") and s[:-1] in schemes), None)


def plain_scheme(transport: Transport) -> str | None:
    """Return the plaintext twin of :func:`tls_scheme` (``ws``), or ``None``."""
    secure = tls_scheme(transport)
    return secure[:-1] if secure is not None else None


def with_scheme(url: str, scheme: str) -> str:
    """Return ``url`` with its scheme replaced."""
    return urlsplit(url)._replace(scheme=scheme).geturl()
