"""``AiohttpProxyClient`` and ``AiohttpProxyServer``: the proxies bound to the aiohttp backend."""

from __future__ import annotations

from typing import ClassVar

from proxy_core.proxy import BoundProxyClient, BoundProxyServer
from proxy_core.transport import Transport

from .transport import AiohttpTransport

__all__ = ["AiohttpProxyClient", "AiohttpProxyServer"]


class AiohttpProxyClient(BoundProxyClient):
    """A :class:`~proxy_core.ProxyClient` over aiohttp's WebSocket client.

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
        worker_name: the worker on this bus that talks to the client's.
        remote_worker_name: the client's worker.
        forward_messages: the message types allowed to cross, both ways.
        codecs: codec names or instances accepted from the client.
        max_message_bytes: the frame limit, enforced before decoding.
        **options: more :class:`~proxy_core.ProxyServer` options
            (``authenticate``, heartbeats...).

    Raises:
        ConfigurationError: ``websocket`` is not a prepared ``WebSocketResponse``.
    """

    transport_class: ClassVar[type[Transport]] = AiohttpTransport
