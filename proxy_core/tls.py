"""TLS settings that every backend understands: :class:`ClientTLS` and :class:`ServerTLS`.

An ``ssl.SSLContext`` serves the backends built on Python's ``ssl`` module
(``websockets``, ``aiohttp``), but gRPC has a TLS stack of its own and cannot
use one. These two frozen dataclasses hold the certificates as PEM bytes
instead, so each backend can build what its library needs: an
``SSLContext`` (:meth:`ClientTLS.ssl_context`, :meth:`ServerTLS.ssl_context`),
or gRPC credentials from the same bytes. Pass them wherever ``ssl=`` is
accepted::

    from proxy_core import ClientTLS, ProxyClient, ServerTLS, serve_proxy

    server_tls = ServerTLS.from_files("server.crt", "server.key")
    async with serve_proxy("grpcs://0.0.0.0:8443", transport="grpc", ssl=server_tls, ...):
        ...

    proxy = ProxyClient(..., url="grpcs://gateway:8443", transport="grpc",
                        ssl=ClientTLS.from_files(ca="ca.crt"))

Backend authors: see :func:`client_ssl_context`, :func:`server_ssl_context`
and :func:`tls_failure`, and ``docs/writing-plugins.md``.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigurationError

__all__ = [
    "ClientTLS",
    "ServerTLS",
    "client_ssl_context",
    "server_ssl_context",
    "tls_failure",
]

_PEM_MARKER = b"-----BEGIN "
# How far down ``__cause__``/``__context__`` to look for an ``ssl`` error.
_MAX_CHAIN = 16


def _check_pem(label: str, value: bytes | None, *, required: bool = False) -> None:
    if value is None:
        if required:
            raise ConfigurationError(f"{label} is required")
        return
    if not isinstance(value, bytes):
        raise ConfigurationError(
            f"{label} must be PEM bytes, not {type(value).__qualname__} "
            "(use from_files(...) to read files)"
        )
    if _PEM_MARKER not in value:
        raise ConfigurationError(f"{label} is not PEM (no '-----BEGIN ' line)")


def _read(path: str | os.PathLike[str] | None, label: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the {label} file {os.fspath(path)!r}: {exc}"
        ) from exc


def _load_cert_chain(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """Load a certificate chain and key given as bytes (``ssl`` only reads them from files).

    They are written to a private temporary directory (mode 0700), loaded and
    deleted at once.
    """
    with tempfile.TemporaryDirectory(prefix="proxy-core-tls-") as directory:
        cert_file = Path(directory, "cert.pem")
        key_file = Path(directory, "key.pem")
        cert_file.write_bytes(cert_pem)
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(key_pem)
        try:
            context.load_cert_chain(cert_file, key_file)
        except ssl.SSLError as exc:
            raise ConfigurationError(
                f"the certificate chain and key do not load (not PEM, encrypted, "
                f"or not a pair): {exc}"
            ) from exc


def _default_context(purpose: ssl.Purpose, label: str, ca_pem: bytes | None) -> ssl.SSLContext:
    """``ssl.create_default_context`` (its secure defaults), trusting ``ca_pem`` if given."""
    try:
        return ssl.create_default_context(
            purpose, cadata=ca_pem.decode("ascii") if ca_pem is not None else None
        )
    except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigurationError(f"{label} holds no usable PEM certificate: {exc}") from exc


@dataclass(frozen=True)
class ClientTLS:
    """How a client connects over TLS (``wss://``, ``grpcs://``): whom to trust, who it is.

    Attributes:
        ca_pem: the PEM certificates of the CAs to trust; ``None`` trusts the
            system's store. When given, only these are trusted.
        cert_pem: the client's PEM certificate chain, for servers that require
            client certificates (mutual TLS); with ``key_pem``.
        key_pem: the unencrypted PEM private key of ``cert_pem``.
        server_hostname: the name to check the server's certificate against,
            when it is not the host of the URL (e.g. connecting by IP address).

    Raises:
        ConfigurationError: a field is not PEM bytes, or only one of
            ``cert_pem`` and ``key_pem`` is given.
    """

    ca_pem: bytes | None = None
    cert_pem: bytes | None = None
    key_pem: bytes | None = None
    server_hostname: str | None = None

    def __post_init__(self) -> None:
        _check_pem("ClientTLS.ca_pem", self.ca_pem)
        _check_pem("ClientTLS.cert_pem", self.cert_pem)
        _check_pem("ClientTLS.key_pem", self.key_pem)
        if (self.cert_pem is None) != (self.key_pem is None):
            raise ConfigurationError("ClientTLS needs both cert_pem and key_pem, or neither")
        if self.server_hostname is not None and (
            not isinstance(self.server_hostname, str) or not self.server_hostname
        ):
            raise ConfigurationError("ClientTLS.server_hostname must be a non-empty string")

    @classmethod
    def from_files(
        cls,
        ca: str | os.PathLike[str] | None = None,
        *,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        server_hostname: str | None = None,
    ) -> ClientTLS:
        """Read the PEM files: ``ca`` (``None``: the system's store), ``cert`` and ``key``.

        Raises:
            ConfigurationError: a file cannot be read or is not PEM.
        """
        return cls(
            ca_pem=_read(ca, "CA"),
            cert_pem=_read(cert, "certificate"),
            key_pem=_read(key, "key"),
            server_hostname=server_hostname,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """Return a new client ``SSLContext``: verification on, host names checked.

        Raises:
            ConfigurationError: the PEM data does not load.
        """
        # With cadata, only the given CAs are trusted (the system store is not loaded).
        context = _default_context(ssl.Purpose.SERVER_AUTH, "ClientTLS.ca_pem", self.ca_pem)
        if self.cert_pem is not None and self.key_pem is not None:
            _load_cert_chain(context, self.cert_pem, self.key_pem)
        return context


@dataclass(frozen=True)
class ServerTLS:
    """How a server serves TLS (``wss://``, ``grpcs://``): its certificate, whom it asks.

    Attributes:
        cert_chain_pem: the server's PEM certificate, followed by any
            intermediate CA certificates.
        key_pem: the unencrypted PEM private key of the certificate.
        client_ca_pem: when given, clients must present a certificate issued
            by one of these PEM CAs (mutual TLS); ``None`` asks for none.

    Raises:
        ConfigurationError: a field is missing or is not PEM bytes.
    """

    cert_chain_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes | None = None

    def __post_init__(self) -> None:
        _check_pem("ServerTLS.cert_chain_pem", self.cert_chain_pem, required=True)
        _check_pem("ServerTLS.key_pem", self.key_pem, required=True)
        _check_pem("ServerTLS.client_ca_pem", self.client_ca_pem)

    @classmethod
    def from_files(
        cls,
        cert_chain: str | os.PathLike[str],
        key: str | os.PathLike[str],
        *,
        client_ca: str | os.PathLike[str] | None = None,
    ) -> ServerTLS:
        """Read the PEM files: the certificate chain, its key, and optionally the client CAs.

        Raises:
            ConfigurationError: a file cannot be read or is not PEM.
        """
        cert_pem = _read(cert_chain, "certificate chain")
        key_pem = _read(key, "key")
        assert cert_pem is not None and key_pem is not None
        return cls(cert_pem, key_pem, client_ca_pem=_read(client_ca, "client CA"))

    @property
    def requires_client_certificate(self) -> bool:
        """Whether clients must present a certificate (``client_ca_pem`` is set)."""
        return self.client_ca_pem is not None

    def ssl_context(self) -> ssl.SSLContext:
        """Return a new server ``SSLContext`` with the certificate (and client CAs) loaded.

        Raises:
            ConfigurationError: the PEM data does not load.
        """
        context = _default_context(
            ssl.Purpose.CLIENT_AUTH, "ServerTLS.client_ca_pem", self.client_ca_pem
        )
        _load_cert_chain(context, self.cert_chain_pem, self.key_pem)
        if self.client_ca_pem is not None:
            context.verify_mode = ssl.CERT_REQUIRED
        return context


def client_ssl_context(tls: ssl.SSLContext | ClientTLS | None) -> ssl.SSLContext | None:
    """Return the ``SSLContext`` for a client's ``ssl=`` option (a context is used as is).

    Raises:
        ConfigurationError: ``tls`` is something else, or its PEM data does not load.
    """
    if tls is None or isinstance(tls, ssl.SSLContext):
        return tls
    if isinstance(tls, ClientTLS):
        return tls.ssl_context()
    raise ConfigurationError(
        f"a client's ssl= takes a ClientTLS or an ssl.SSLContext, not {type(tls).__qualname__}"
    )


def server_ssl_context(tls: ssl.SSLContext | ServerTLS | None) -> ssl.SSLContext | None:
    """Return the ``SSLContext`` for a server's ``ssl=`` option (a context is used as is).

    Raises:
        ConfigurationError: ``tls`` is something else, or its PEM data does not load.
    """
    if tls is None or isinstance(tls, ssl.SSLContext):
        return tls
    if isinstance(tls, ServerTLS):
        return tls.ssl_context()
    raise ConfigurationError(
        f"a server's ssl= takes a ServerTLS or an ssl.SSLContext, not {type(tls).__qualname__}"
    )


def tls_failure(exc: BaseException) -> str | None:
    """Describe a failed TLS handshake found in ``exc`` or what caused it, else ``None``.

    For backends on Python's ``ssl`` module: raise
    :class:`~proxy_core.errors.TLSError` with this description instead of a
    plain ``ConnectError``. A certificate that did not verify is described as
    ``"certificate verification failed: ..."``.
    """
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < _MAX_CHAIN:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    # Libraries subclass the ssl errors without their attributes (aiohttp):
    # prefer the ssl module's own exception, deepest in the chain.
    for error in reversed(chain):
        if isinstance(error, ssl.SSLCertVerificationError):
            detail = getattr(error, "verify_message", None) or error
            return f"certificate verification failed: {detail}"
        if isinstance(error, ssl.SSLError):
            return f"TLS handshake failed: {getattr(error, 'reason', None) or error}"
    return None
