"""``AiohttpProxyClient`` and ``AiohttpProxyServer``: the proxies bound to the aiohttp backend."""

from __future__ import annotations

from typing import ClassVar

from proxy_core.proxy import BoundProxyClient, BoundProxyServer
from proxy_core.transport import Transport

from .transport import AiohttpTransport

__all__ = ["AiohttpProxyClient", "AiohttpProxyServer"]


class AiohttpProxyClient(BoundProxyClient):
    """A :class:`~proxy_core.ProxyClient` over aiohttp's WebSocket client.

    Its arguments are those of every backend's client class
    (:class:`~proxy_core.proxy.BoundProxyClient`); here:

    Args:
        url: ``ws://`` or ``wss://`` URL of the server.
        headers: HTTP headers sent with the WebSocket handshake.
    """

    transport_class: ClassVar[type[Transport]] = AiohttpTransport


class AiohttpProxyServer(BoundProxyServer):
    """A :class:`~proxy_core.ProxyServer` on a WebSocket an aiohttp application accepted.

    Create one per connection in your own handler, with its own runner::

        async def handler(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            runner = WorkerRunner(handle_sigint=False)
            proxy = AiohttpProxyServer("gateway", websocket=ws, worker_name="assistant",
                                       remote_worker_name="acme", forward_messages=...)
            await runner.add_workers(proxy, Assistant("assistant"))
            await runner.run()
            return ws

    Args:
        name: this worker's name.
        websocket: an ``aiohttp.web.WebSocketResponse`` on which ``prepare()`` was awaited.
        **options: the other arguments of every backend's server class
            (:class:`~proxy_core.proxy.BoundProxyServer`).

    Raises:
        ConfigurationError: ``websocket`` is not a prepared ``WebSocketResponse``.
    """

    transport_class: ClassVar[type[Transport]] = AiohttpTransport
