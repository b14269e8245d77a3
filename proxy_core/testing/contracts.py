"""The conformance kit: contract tests that every transport and codec must pass, unchanged.

Subclass a contract in a test module of your package and name what to test::

    from proxy_core.testing.contracts import CodecContract, TransportContract

    class TestMyBackend(TransportContract):
        transport = "aiohttp"          # a registered name, or an instance
        codecs = ("json", "msgpack")   # codec-sensitive contracts run once per codec

    class TestMyCodec(CodecContract):
        codecs = ("zjson",)

Every contract runs over real connections (127.0.0.1, port 0, for TCP
backends; in-process for ``memory``), with real runners and proxies on both
sides or, where the peer must misbehave, a raw :class:`~proxy_core.Connection`
opened with the transport's own ``connect`` and speaking the protocol by hand.
The fixtures come from the ``proxy_core`` pytest plugin (installed with
proxy-core); the kit needs pytest-asyncio. See ``docs/conformance.md``.

Every wait is bounded (30 s); nothing sleeps to synchronise. To show that a
message did not cross, a contract sends a marker after it on the same path and
waits for the marker.
"""

from __future__ import annotations

try:
    import pytest_asyncio  # noqa: F401 -- the contracts are coroutines run by pytest-asyncio
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the proxy-core conformance kit needs pytest-asyncio: pip install pytest-asyncio"
    ) from exc

from ._base import Parametrized, per_codec
from .contracts_close import CloseContract
from .contracts_codec import CodecContract
from .contracts_connection import ConnectionContract
from .contracts_forgery import ForgeryContract
from .contracts_resume import ResumeContract
from .contracts_rules import RulesContract
from .contracts_session import SessionContract
from .contracts_tls import TLSContract
from .contracts_websocket import WebSocketContract

__all__ = [
    "CloseContract",
    "CodecContract",
    "ConnectionContract",
    "ForgeryContract",
    "ResumeContract",
    "RulesContract",
    "SessionContract",
    "TLSContract",
    "TransportContract",
    "WebSocketContract",
    "per_codec",
]


class TransportContract(
    ConnectionContract,
    SessionContract,
    RulesContract,
    ForgeryContract,
    TLSContract,
    ResumeContract,
    CloseContract,
    WebSocketContract,
    Parametrized,
):
    """The live contracts of a transport, with each codec of ``codecs``.

    One class of the kit per topic, each usable alone, all included here (see
    ``docs/conformance.md``): the raw connections
    (:class:`~proxy_core.testing.contracts_connection.ConnectionContract`),
    sessions bus to bus
    (:class:`~proxy_core.testing.contracts_session.SessionContract`), the
    filter rules (:class:`~proxy_core.testing.contracts_rules.RulesContract`),
    a hostile peer's forgeries
    (:class:`~proxy_core.testing.contracts_forgery.ForgeryContract`), TLS
    (:class:`~proxy_core.testing.contracts_tls.TLSContract`, ``test_tls_*``),
    lost links and resume
    (:class:`~proxy_core.testing.contracts_resume.ResumeContract`) and the
    close handshake (:class:`~proxy_core.testing.contracts_close.CloseContract`),
    and for a ``ws``/``wss`` transport what a bare WebSocket peer sees
    (:class:`~proxy_core.testing.contracts_websocket.WebSocketContract`, ``test_ws_*``).
    The contracts marked ``per_codec`` run once per codec of ``codecs``; the
    others with the first.

    Attributes:
        transport: the transport under test, by registered name or instance.
        codecs: the codecs the codec-sensitive contracts run with.
        tcp: whether the transport runs over TCP, so that :class:`FaultRelay`
            can sit in the middle; ``None`` guesses (everything but memory).
    """
