"""``ClientTLS`` and ``ServerTLS``: validation, contexts, and what each backend does with them.

The conformance kit (``test_tls_*`` in ``tests/test_conformance.py``) covers
server-authenticated TLS on every backend; this module covers the options it
does not: mutual TLS, ``server_hostname``, files, bad input, error translation.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from proxy_core import ClientTLS, ConfigurationError, ConnectError, ServerTLS, TLSError
from proxy_core.tls import client_ssl_context, server_ssl_context, tls_failure
from proxy_core.transport import Connection, Transport

trustme = pytest.importorskip(
    "trustme",
    reason="trustme is not installed: the TLS tests make their certificates "
    "with it (python3 scripts/dev.py test installs it)",
)

T = TypeVar("T")


async def wait(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, 30)


@pytest.fixture(scope="module")
def ca() -> Any:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: Any) -> ServerTLS:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    return ServerTLS(cert.cert_chain_pems[0].bytes(), cert.private_key_pem.bytes())


def _transports() -> list[Any]:
    params = []
    for module, cls, scheme in (
        ("proxy_core_websockets", "WebSocketsTransport", "wss"),
        ("proxy_core_aiohttp", "AiohttpTransport", "wss"),
        ("proxy_core_grpc", "GrpcTransport", "grpcs"),
    ):
        params.append(pytest.param((module, cls, scheme), id=module.removeprefix("proxy_core_")))
    return params


@pytest.fixture(params=_transports())
def backend(request: pytest.FixtureRequest) -> tuple[Transport, str]:
    module_name, cls_name, scheme = request.param
    module = pytest.importorskip(
        module_name,
        reason=f"{module_name} is not installed here "
        "(python3 scripts/dev.py test installs every transport of this repository)",
    )
    transport: Transport = getattr(module, cls_name)()
    return transport, f"{scheme}://127.0.0.1:0/ws"


async def _echo(conn: Connection) -> None:
    async for frame in conn:
        await conn.send(frame)


async def _works(transport: Transport, url: str, tls: ClientTLS) -> None:
    async with await wait(transport.connect(url, ssl=tls, open_timeout=10)) as conn:
        await conn.send(b"ping")
        assert await wait(conn.receive()) == b"ping"


# --------------------------------------------------------------------------- the dataclasses


def test_fields_are_checked(ca: Any, server_tls: ServerTLS) -> None:
    pem = ca.cert_pem.bytes()
    with pytest.raises(ConfigurationError, match="not PEM"):
        ClientTLS(ca_pem=b"not a certificate")
    with pytest.raises(ConfigurationError, match="PEM bytes"):
        ClientTLS(ca_pem=pem.decode())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="both cert_pem and key_pem"):
        ClientTLS(cert_pem=server_tls.cert_chain_pem)
    with pytest.raises(ConfigurationError, match="server_hostname"):
        ClientTLS(server_hostname="")
    with pytest.raises(ConfigurationError, match="not PEM"):
        ServerTLS(b"", server_tls.key_pem)
    with pytest.raises(ConfigurationError, match="do not load"):
        ServerTLS(
            server_tls.cert_chain_pem, ca.issue_cert("x").private_key_pem.bytes()
        ).ssl_context()
    with pytest.raises(ConfigurationError, match="usable PEM"):
        ClientTLS(
            ca_pem=b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"
        ).ssl_context()
    assert ClientTLS() == ClientTLS(ca_pem=None)  # frozen, comparable
    with pytest.raises(AttributeError):
        ClientTLS().ca_pem = pem  # type: ignore[misc]


def test_contexts(ca: Any, server_tls: ServerTLS) -> None:
    client = ClientTLS(ca_pem=ca.cert_pem.bytes()).ssl_context()
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
    assert len(client.get_ca_certs()) == 1  # only the given CA, not the system store
    server = server_tls.ssl_context()
    assert server.verify_mode == ssl.CERT_NONE
    assert not server_tls.requires_client_certificate
    mutual = ServerTLS(
        server_tls.cert_chain_pem, server_tls.key_pem, client_ca_pem=ca.cert_pem.bytes()
    )
    assert mutual.requires_client_certificate
    assert mutual.ssl_context().verify_mode == ssl.CERT_REQUIRED
    assert client_ssl_context(None) is None and server_ssl_context(None) is None
    assert client_ssl_context(client) is client and server_ssl_context(server) is server
    with pytest.raises(ConfigurationError, match="ClientTLS"):
        client_ssl_context(server_tls)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="ServerTLS"):
        server_ssl_context(ClientTLS())  # type: ignore[arg-type]


def test_from_files(tmp_path: Path, ca: Any, server_tls: ServerTLS) -> None:
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    (tmp_path / "cert.pem").write_bytes(server_tls.cert_chain_pem)
    (tmp_path / "key.pem").write_bytes(server_tls.key_pem)
    client = ClientTLS.from_files(tmp_path / "ca.pem", server_hostname="localhost")
    assert client == ClientTLS(ca_pem=ca.cert_pem.bytes(), server_hostname="localhost")
    server = ServerTLS.from_files(
        tmp_path / "cert.pem", str(tmp_path / "key.pem"), client_ca=tmp_path / "ca.pem"
    )
    assert server == ServerTLS(
        server_tls.cert_chain_pem, server_tls.key_pem, client_ca_pem=ca.cert_pem.bytes()
    )
    assert ClientTLS.from_files() == ClientTLS()
    with pytest.raises(ConfigurationError, match="cannot read the CA file"):
        ClientTLS.from_files(tmp_path / "missing.pem")


def test_tls_failure_finds_the_ssl_error_in_the_chain() -> None:
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "unable to get local issuer certificate"
    try:
        try:
            raise verify
        except ssl.SSLError as exc:
            raise OSError("wrapped") from exc
    except OSError as outer:
        described = tls_failure(outer)
    assert described == "certificate verification failed: unable to get local issuer certificate"
    assert tls_failure(OSError("refused")) is None
    described = tls_failure(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"))
    assert described is not None and described.startswith("TLS handshake failed")


# --------------------------------------------------------------------------- on every backend


async def test_mutual_tls(backend: tuple[Transport, str], ca: Any, server_tls: ServerTLS) -> None:
    """A server with ``client_ca_pem`` admits a client presenting a certificate of that CA only."""
    transport, url = backend
    client_cert = ca.issue_cert("client@example.test")
    mutual = ServerTLS(
        server_tls.cert_chain_pem, server_tls.key_pem, client_ca_pem=ca.cert_pem.bytes()
    )
    async with transport.serve(url, _echo, ssl=mutual) as listener:
        await _works(
            transport,
            listener.url,
            ClientTLS(
                ca_pem=ca.cert_pem.bytes(),
                cert_pem=client_cert.cert_chain_pems[0].bytes(),
                key_pem=client_cert.private_key_pem.bytes(),
            ),
        )
        with pytest.raises(ConnectError):
            await _works(transport, listener.url, ClientTLS(ca_pem=ca.cert_pem.bytes()))


async def test_server_hostname_names_the_certificate(
    backend: tuple[Transport, str], ca: Any
) -> None:
    """``server_hostname`` checks the certificate against a name that is not the URL's host."""
    transport, url = backend
    cert = ca.issue_cert("gateway.proxy-core.test")
    named = ServerTLS(cert.cert_chain_pems[0].bytes(), cert.private_key_pem.bytes())
    trust = ca.cert_pem.bytes()
    async with transport.serve(url, _echo, ssl=named) as listener:
        await _works(
            transport,
            listener.url,
            ClientTLS(ca_pem=trust, server_hostname="gateway.proxy-core.test"),
        )
        with pytest.raises(TLSError, match="certificate verification failed"):
            await _works(transport, listener.url, ClientTLS(ca_pem=trust))


async def test_tls_settings_need_the_tls_scheme(
    backend: tuple[Transport, str], server_tls: ServerTLS
) -> None:
    transport, url = backend
    plain = url.replace("s://", "://", 1)
    with pytest.raises(ConfigurationError, match="TLS settings need"):
        await transport.connect(plain.replace(":0/", ":1/"), ssl=ClientTLS())
    with pytest.raises(ConfigurationError):
        transport.serve(plain, _echo, ssl=server_tls)
    with pytest.raises(ConfigurationError, match="ServerTLS"):
        transport.serve(url, _echo)


async def test_grpc_refuses_an_ssl_context_naming_the_way() -> None:
    grpc_module = pytest.importorskip(
        "proxy_core_grpc",
        reason="proxy-core-grpc is not installed here (python3 scripts/dev.py test installs it)",
    )
    transport = grpc_module.GrpcTransport()
    context = ssl.create_default_context()
    with pytest.raises(ConfigurationError, match=r"ssl=ClientTLS\(ca_pem=\.\.\.\)"):
        await transport.connect("grpcs://127.0.0.1:1", ssl=context)
    with pytest.raises(ConfigurationError, match=r"ssl=ServerTLS\(cert_chain_pem, key_pem\)"):
        transport.serve("grpcs://127.0.0.1:0", _echo, ssl=context)
