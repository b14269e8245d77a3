"""proxy-core: bridge two isolated asyncio message buses point-to-point over a pluggable wire.

The public API is re-exported here; ``tests/test_public_api.py`` locks it.
"""

from __future__ import annotations

from .bus import Bus
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
    SessionRejected,
    TransportError,
    UnknownMessageType,
)
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
from .proxy import ProxyClient, ProxyServer, ProxyStats
from .registry import WorkerReadyData, WorkerRegistry
from .rules import Drop, DropReason, FilterRules, Forward
from .runner import WorkerRunner
from .service import ProxyService, serve_proxy
from .transport import DEFAULT_MAX_MESSAGE_BYTES, Connection, Listener, Transport
from .worker import BaseWorker

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "LIFECYCLE_MESSAGES",
    "AudioRawFrame",
    "AuthenticationError",
    "BaseWorker",
    "Bus",
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
    "PluginError",
    "ProtocolError",
    "ProxyClient",
    "ProxyError",
    "ProxyServer",
    "ProxyService",
    "ProxyStats",
    "SessionRejected",
    "TextFrame",
    "Transport",
    "TransportError",
    "TypeRegistry",
    "UnknownMessageType",
    "WorkerReadyData",
    "WorkerRegistry",
    "WorkerRunner",
    "__version__",
    "register_type",
    "serve_proxy",
]
