"""``WebSocketProxyClient`` and ``WebSocketProxyServer``: the proxies bound to this backend."""

from __future__ import annotations

from typing import ClassVar

from proxy_core.proxy import BoundProxyClient, BoundProxyServer
from proxy_core.transport import Transport

from .transport import WebSocketsTransport

__all__ = ["WebSocketProxyClient", "WebSocketProxyServer"]


class WebSocketProxyClient(BoundProxyClient):
    """A :class:`~proxy_core.ProxyClient` over the ``websockets`` library.

    Its arguments are those of every backend's client class
    (:class:`~proxy_core.proxy.BoundProxyClient`); here:

    Args:
        url: ``ws://`` or ``wss://`` URL of the server.
        headers: HTTP headers sent with the WebSocket handshake.
    """

    transport_class: ClassVar[type[Transport]] = WebSocketsTransport


class WebSocketProxyServer(BoundProxyServer):
    """A :class:`~proxy_core.ProxyServer` on an accepted WebSocket.

    Args:
        name: this worker's name.
        websocket: an accepted ``websockets`` server connection, or an accepted
            Starlette/FastAPI ``WebSocket``.
        **options: the other arguments of every backend's server class
            (:class:`~proxy_core.proxy.BoundProxyServer`).
    """

    transport_class: ClassVar[type[Transport]] = WebSocketsTransport
