"""The reference WebSocket backend of proxy-core, on the ``websockets`` library.

Registered as transport ``websockets`` (schemes ``ws``, ``wss``) in the
``proxy_core.transports`` entry-point group.
"""

from __future__ import annotations

from .connection import StarletteConnection, WebSocketsConnection
from .proxies import WebSocketProxyClient, WebSocketProxyServer
from .transport import WebSocketsTransport

__all__ = [
    "StarletteConnection",
    "WebSocketProxyClient",
    "WebSocketProxyServer",
    "WebSocketsConnection",
    "WebSocketsTransport",
]
