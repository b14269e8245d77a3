"""The aiohttp WebSocket backend of proxy-core.

Registered as transport ``aiohttp`` (schemes ``ws``, ``wss``) in the
``proxy_core.transports`` entry-point group. It speaks plain WebSocket, so it
interoperates with the ``websockets`` backend in either direction.
"""

from __future__ import annotations

from .connection import AiohttpConnection
from .proxies import AiohttpProxyClient, AiohttpProxyServer
from .transport import AiohttpTransport

__all__ = [
    "AiohttpConnection",
    "AiohttpProxyClient",
    "AiohttpProxyServer",
    "AiohttpTransport",
]
