"""The ``proxy_core`` pytest plugin: fixtures and markers for the conformance kit.

Registered in the ``pytest11`` entry-point group, so pytest loads it wherever
proxy-core is installed (or name it: ``pytest_plugins = ["proxy_core.testing.plugin"]``
in a root ``conftest.py``, or ``-p proxy_core.testing.plugin``). It changes
nothing for suites that do not use it: no autouse fixtures, no command-line
options, and proxy-core itself is imported only when one of its fixtures runs.

Fixtures:
    proxy_core_transport: the :class:`~proxy_core.Transport` under test, from
        (in this order) an indirect parameter, ``@pytest.mark.proxy_core(transport=...)``,
        or the test class's ``transport`` attribute.
    proxy_core_codec: the :class:`~proxy_core.Codec` under test, from an indirect
        parameter, ``@pytest.mark.proxy_core(codec=...)``, the first of the test
        class's ``codecs``, or ``"msgpack"``.
    serve_url: ``"{scheme}://127.0.0.1:0/ws"`` for the transport's first scheme.
    tls_serve_url: ``"{scheme}://127.0.0.1:0/ws"`` for the transport's TLS scheme
        (``wss``, ``grpcs``: the ``xs`` of an ``x``/``xs`` pair in its ``schemes``);
        skips for a transport whose ``supports_tls`` is false.
    proxy_core_tls: certificates generated with trustme for the session (a
        server's, a client that trusts its CA, a client that trusts another CA);
        skips when trustme is not installed.
    fault_relay: ``await fault_relay(url)`` starts a :class:`~proxy_core.testing.FaultRelay`
        to ``url``'s host and port, closed after the test.
    proxy_core_no_leaked_tasks: fails a test that leaves asyncio tasks (or
        memory-transport names) behind.

Markers:
    proxy_core(transport=..., codec=...): what the fixtures above resolve.
    proxy_core_contract: set on every contract of the kit (``-m proxy_core_contract``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from proxy_core.codecs.base import Codec
    from proxy_core.testing._tls import TLSMaterial
    from proxy_core.testing.relay import FaultRelay
    from proxy_core.transport import Transport

__all__ = [
    "fault_relay",
    "proxy_core_codec",
    "proxy_core_no_leaked_tasks",
    "proxy_core_tls",
    "proxy_core_transport",
    "pytest_configure",
    "serve_url",
    "tls_serve_url",
]

# Assertions in the kit's modules get pytest's explanations, however they were imported.
pytest.register_assert_rewrite(
    "proxy_core.testing.contracts",
    "proxy_core.testing.contracts_bus",
    "proxy_core.testing.contracts_close",
    "proxy_core.testing.contracts_codec",
    "proxy_core.testing.contracts_connection",
    "proxy_core.testing.contracts_forgery",
    "proxy_core.testing.contracts_forgery_hello",
    "proxy_core.testing.contracts_resume",
    "proxy_core.testing.contracts_rules",
    "proxy_core.testing.contracts_session",
    "proxy_core.testing.contracts_session_ends",
    "proxy_core.testing.contracts_tls",
    "proxy_core.testing.contracts_websocket",
    "proxy_core.testing._base",
    "proxy_core.testing._bus_cluster",
    "proxy_core.testing._harness",
    "proxy_core.testing._raw",
    "proxy_core.testing._victim",
)

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - depends on the environment
    pytest_asyncio = None  # type: ignore[assignment]

_LEAK_GRACE = 5.0


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers (so that ``--strict-markers`` suites may use them)."""
    config.addinivalue_line(
        "markers",
        "proxy_core(transport=None, codec=None): the transport and codec that the "
        "proxy_core_transport and proxy_core_codec fixtures resolve",
    )
    config.addinivalue_line(
        "markers", "proxy_core_contract: a contract of the proxy-core conformance kit"
    )


def _spec(request: pytest.FixtureRequest, key: str) -> Any:
    if hasattr(request, "param"):
        return request.param
    marker = request.node.get_closest_marker("proxy_core")
    if marker is not None and marker.kwargs.get(key) is not None:
        return marker.kwargs[key]
    return None


@pytest.fixture
def proxy_core_transport(request: pytest.FixtureRequest) -> Transport:
    """Return the transport under test (see the module docstring for where it comes from)."""
    from proxy_core.plugins import resolve_transport
    from proxy_core.transport import Transport

    spec = _spec(request, "transport")
    if spec is None and request.cls is not None:
        spec = getattr(request.cls, "transport", None)
    if spec is None:
        pytest.fail(
            'no transport to test: set `transport = "name"` on the test class, use '
            "@pytest.mark.proxy_core(transport=...), or override the proxy_core_transport fixture",
            pytrace=False,
        )
    if isinstance(spec, type) and issubclass(spec, Transport):
        spec = spec()
    return resolve_transport(spec)


@pytest.fixture
def proxy_core_codec(request: pytest.FixtureRequest) -> Codec:
    """Return the codec under test (see the module docstring for where it comes from)."""
    from proxy_core.codecs.base import Codec
    from proxy_core.plugins import resolve_codec

    spec = _spec(request, "codec")
    if spec is None and request.cls is not None:
        codecs = getattr(request.cls, "codecs", None) or ()
        spec = next(iter(codecs), None)
    if spec is None:
        spec = "msgpack"
    if isinstance(spec, type) and issubclass(spec, Codec):
        spec = spec()
    return resolve_codec(spec)


@pytest.fixture
def serve_url(proxy_core_transport: Transport) -> str:
    """Return a URL to serve on: 127.0.0.1, port 0 (a free one), path ``/ws``."""
    return f"{proxy_core_transport.schemes[0]}://127.0.0.1:0/ws"


@pytest.fixture
def tls_serve_url(proxy_core_transport: Transport) -> str:
    """Return a URL to serve TLS on: the transport's TLS scheme, 127.0.0.1, port 0, ``/ws``."""
    from proxy_core.testing._tls import tls_scheme

    transport = proxy_core_transport
    if not transport.supports_tls:
        pytest.skip(f"transport {transport.name!r} declares supports_tls = False")
    scheme = tls_scheme(transport)
    if scheme is None:
        pytest.fail(
            f"cannot tell which of {transport.name!r}'s schemes {transport.schemes} is its TLS "
            "scheme (the kit looks for a pair like ws/wss): override the tls_serve_url fixture",
            pytrace=False,
        )
    return f"{scheme}://127.0.0.1:0/ws"


@pytest.fixture(scope="session")
def proxy_core_tls() -> TLSMaterial:
    """Return certificates generated for this test session with trustme (skip without it)."""
    from proxy_core.testing._tls import TRUSTME_MISSING, make_tls_material

    pytest.importorskip("trustme", reason=TRUSTME_MISSING)
    return make_tls_material()


if pytest_asyncio is not None:

    @pytest_asyncio.fixture(loop_scope="function")
    async def fault_relay() -> AsyncIterator[Callable[[str], Awaitable[FaultRelay]]]:
        """Yield ``await fault_relay(url)``: a started relay to ``url``, closed after the test."""
        from proxy_core.testing.relay import FaultRelay

        relays: list[FaultRelay] = []

        async def start(url: str) -> FaultRelay:
            relay = FaultRelay.for_url(url)
            await relay.start()
            relays.append(relay)
            return relay

        yield start
        for relay in reversed(relays):
            await relay.aclose()

    @pytest_asyncio.fixture(loop_scope="function")
    async def proxy_core_no_leaked_tasks() -> AsyncIterator[None]:
        """Fail the test if it leaves tasks or served memory names behind."""
        from proxy_core.testing.memory import served_names

        baseline = asyncio.all_tasks()
        yield
        extra = asyncio.all_tasks() - baseline - {asyncio.current_task()}
        if extra:
            # Sockets finish closing on I/O events, not loop turns: give them a bound.
            _, pending = await asyncio.wait(extra, timeout=_LEAK_GRACE)
            assert not pending, f"leaked tasks: {pending}"
        assert served_names() == [], f"memory names still served: {served_names()}"

else:  # pragma: no cover - depends on the environment

    @pytest.fixture
    def fault_relay() -> None:
        """Needs pytest-asyncio."""
        pytest.fail("the fault_relay fixture needs pytest-asyncio", pytrace=False)

    @pytest.fixture
    def proxy_core_no_leaked_tasks() -> None:
        """Needs pytest-asyncio."""
        pytest.fail("the proxy-core kit needs pytest-asyncio", pytrace=False)
