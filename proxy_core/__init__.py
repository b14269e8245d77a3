"""proxy-core: bridge two isolated asyncio message buses point-to-point over a pluggable wire.

The public API is re-exported here; ``tests/test_public_api.py`` locks it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .backoff import Backoff
from .bus import BaseBus, Bus, InProcessBus
from .codecs.base import Codec
from .errors import (
    AuthenticationError,
    CodecError,
    ConfigurationError,
    ConnectError,
    ConnectionClosed,
    HandshakeError,
    MessageTooLarge,
    PluginError,
    ProtocolError,
    ProxyError,
    QueueFull,
    SessionLost,
    SessionRejected,
    TLSError,
    TransportError,
    UnknownMessageType,
)
from .gc_tuning import tune_gc
from .messages import (
    LIFECYCLE_MESSAGES,
    AudioRawFrame,
    BusActivateWorkerMessage,
    BusCancelMessage,
    BusDataMessage,
    BusDeactivateWorkerMessage,
    BusEndMessage,
    BusEndWorkerMessage,
    BusFrameMessage,
    BusLocalMessage,
    BusMessage,
    BusWorkerReadyMessage,
    Frame,
    TextFrame,
    TypeRegistry,
    register_type,
)
from .observe import ProxySnapshot, live_proxies, observe
from .registry import WorkerReadyData, WorkerRegistry
from .rules import Drop, DropReason, FilterRules, Forward
from .tls import ClientTLS, ServerTLS
from .transport import DEFAULT_MAX_MESSAGE_BYTES, Connection, Listener, Transport

if TYPE_CHECKING:
    from .inbox import OverflowPolicy, QueueStats
    from .proxy import ProxyClient, ProxyServer, ProxyStats, SessionTable
    from .runner import WorkerRunner
    from .service import ProxyService, serve_proxy
    from .worker import BaseWorker, WorkerHost

# The parts that need asyncio load on first use, so that the pure modules
# (rules, messages, codecs, session) can be imported without an event loop library.
_LAZY = {
    "BaseWorker": "worker",
    "OverflowPolicy": "inbox",
    "QueueStats": "inbox",
    "ProxyClient": "proxy",
    "ProxyServer": "proxy",
    "ProxyService": "service",
    "ProxyStats": "proxy",
    "SessionTable": "proxy",
    "WorkerRunner": "runner",
    "WorkerHost": "worker",
    "serve_proxy": "service",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'proxy_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "LIFECYCLE_MESSAGES",
    "AudioRawFrame",
    "AuthenticationError",
    "Backoff",
    "BaseWorker",
    "WorkerHost",
    "BaseBus",
    "Bus",
    "InProcessBus",
    "BusActivateWorkerMessage",
    "BusCancelMessage",
    "BusDataMessage",
    "BusDeactivateWorkerMessage",
    "BusEndMessage",
    "BusEndWorkerMessage",
    "BusFrameMessage",
    "BusLocalMessage",
    "BusMessage",
    "BusWorkerReadyMessage",
    "ClientTLS",
    "Codec",
    "CodecError",
    "ConfigurationError",
    "ConnectError",
    "Connection",
    "ConnectionClosed",
    "Drop",
    "DropReason",
    "FilterRules",
    "Forward",
    "Frame",
    "HandshakeError",
    "Listener",
    "MessageTooLarge",
    "OverflowPolicy",
    "PluginError",
    "ProtocolError",
    "ProxyClient",
    "ProxyError",
    "ProxyServer",
    "ProxyService",
    "ProxySnapshot",
    "ProxyStats",
    "QueueFull",
    "QueueStats",
    "ServerTLS",
    "SessionLost",
    "SessionRejected",
    "SessionTable",
    "TLSError",
    "TextFrame",
    "Transport",
    "TransportError",
    "TypeRegistry",
    "UnknownMessageType",
    "WorkerReadyData",
    "WorkerRegistry",
    "WorkerRunner",
    "__version__",
    "live_proxies",
    "observe",
    "register_type",
    "tune_gc",
    "serve_proxy",
]
