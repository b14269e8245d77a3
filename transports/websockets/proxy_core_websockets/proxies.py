"""``WebSocketProxyClient`` and ``WebSocketProxyServer``: the proxies bound to this backend."""

from __future__ import annotations

from typing import ClassVar

from proxy_core.proxy import BoundProxyClient, BoundProxyServer
from proxy_core.transport import Transport

from .transport import WebSocketsTransport

__all__ = ["WebSocketProxyClient", "WebSocketProxyServer"]


class WebSocketProxyClient(BoundProxyClient):
    """A :class:`~proxy_core.ProxyClient` over the ``websockets`` library.

    It connects when activated (``await worker.activate_worker(name)``), not
    before, and never twice. Events: ``on_connected``, ``on_disconnected``,
    ``on_connect_error``.

    Args:
        name: this worker's name.
        url: ``ws://`` or ``wss://`` URL of the server.
        local_worker_name: the worker on this bus that talks to the remote one.
        remote_worker_name: the worker on the server's bus.
        forward_messages: the message types allowed to cross, both ways.
        headers: HTTP headers sent with the WebSocket handshake.
        codec: codec name(s) or instance(s), in order of preference
            (default ``"msgpack"``, as for every client class).
        **options: more :class:`~proxy_core.ProxyClient` options.
    """

    transport_class: ClassVar[type[Transport]] = WebSocketsTransport


class WebSocketProxyServer(BoundProxyServer):
    """A :class:`~proxy_core.ProxyServer` on an accepted WebSocket.

    Args:
        name: this worker's name.
        websocket: an accepted ``websockets`` server connection, or an accepted
            Starlette/FastAPI ``WebSocket``.
        worker_name: the worker on this bus that talks to the client's.
        remote_worker_name: the client's worker.
        forward_messages: the message types allowed to cross, both ways.
        codecs: codec names or instances accepted from the client.
        max_message_bytes: the frame limit, enforced before decoding.
        **options: more :class:`~proxy_core.ProxyServer` options
            (``authenticate``, heartbeats...).
    """

    transport_class: ClassVar[type[Transport]] = WebSocketsTransport
