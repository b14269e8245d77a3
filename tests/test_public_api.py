"""Lock the public API: names users import must not disappear or move by accident."""

from __future__ import annotations

import proxy_core
import proxy_core_websockets

CORE = {
    "WorkerRunner", "BaseWorker", "WorkerHost", "BusMessage", "BusFrameMessage", "BusLocalMessage",
    "TextFrame", "AudioRawFrame", "Frame", "BusDataMessage", "BusActivateWorkerMessage",
    "BusDeactivateWorkerMessage", "BusEndWorkerMessage", "BusEndMessage", "BusCancelMessage",
    "BusWorkerReadyMessage", "LIFECYCLE_MESSAGES", "register_type", "TypeRegistry",
    "ProxyClient", "ProxyServer", "ProxyStats", "ProxyService", "serve_proxy",
    "FilterRules", "Drop", "DropReason", "Forward", "Connection", "Transport", "Listener",
    "Codec", "Bus", "BaseBus", "InProcessBus", "WorkerRegistry", "WorkerReadyData",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "ProxyError", "ConfigurationError", "PluginError", "CodecError", "UnknownMessageType",
    "MessageTooLarge", "ProtocolError", "HandshakeError", "SessionRejected",
    "AuthenticationError", "TransportError", "ConnectError", "ConnectionClosed",
    "TLSError", "ClientTLS", "ServerTLS", "__version__",
    "OverflowPolicy", "QueueFull", "QueueStats",
    "Backoff", "SessionLost", "SessionTable",
    "ProxySnapshot", "observe", "live_proxies", "tune_gc",
}  # fmt: skip


def test_core_exports_are_locked() -> None:
    assert set(proxy_core.__all__) == CORE
    for name in CORE:
        assert hasattr(proxy_core, name), name


def test_websockets_exports() -> None:
    assert set(proxy_core_websockets.__all__) == {
        "WebSocketProxyClient",
        "WebSocketProxyServer",
        "WebSocketsTransport",
        "WebSocketsConnection",
        "StarletteConnection",
    }


def test_every_error_derives_from_proxy_error() -> None:
    for name in CORE:
        obj = getattr(proxy_core, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, proxy_core.ProxyError), name


def test_plugins_module_api() -> None:
    from proxy_core import plugins

    for name in ("available_transports", "available_codecs", "load_transport", "load_codec"):
        assert callable(getattr(plugins, name))
    assert "websockets" in plugins.available_transports()
    assert {"json", "msgpack"} <= set(plugins.available_codecs())
