"""The proxy workers, in one place: :class:`ProxyClient`, :class:`ProxyServer` and friends.

They live in :mod:`proxy_core.client`, :mod:`proxy_core.server` and what both
share in :mod:`proxy_core._link` (and its layers); their log records go to the
``proxy_core.proxy`` logger. :class:`BoundProxyClient` and
:class:`BoundProxyServer` are what a backend's named classes
(``WebSocketProxyClient``, ``AiohttpProxyServer``...) share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from ._link_base import DEFAULT_CODEC, DEFAULT_SERVER_CODECS, CodecSpec, ProxyStats, _codec_list
from .client import ProxyClient
from .messages import BusMessage
from .server import ProxyServer, SessionTable, accept_hello
from .transport import DEFAULT_MAX_MESSAGE_BYTES, Transport

__all__ = [
    "DEFAULT_CODEC",
    "DEFAULT_SERVER_CODECS",
    "BoundProxyClient",
    "BoundProxyServer",
    "CodecSpec",
    "ProxyClient",
    "ProxyServer",
    "ProxyStats",
    "SessionTable",
    "_codec_list",
    "accept_hello",
]


class BoundProxyClient(ProxyClient):
    """A :class:`ProxyClient` bound to one backend: the base of each backend's client class.

    It connects when activated (``await worker.activate_worker(name)``), not
    before, and never twice. Events: ``on_connected``, ``on_disconnected``,
    ``on_connect_error``.

    A subclass sets :attr:`transport_class` (or overrides :meth:`_new_transport`,
    to take options of its own) and documents its URLs and headers; the
    constructor, the same for every backend, is this one.

    Args:
        name: this worker's name.
        url: the server's URL, in one of the backend's schemes.
        local_worker_name: the worker on this bus that talks to the remote one.
        remote_worker_name: the worker on the server's bus.
        forward_messages: the message types allowed to cross, both ways.
        headers: sent with the backend's handshake (credentials for the
            server's ``authenticate``).
        codec: codec name(s) or instance(s), in order of preference
            (default ``"msgpack"``, as for every client class).
        **options: more :class:`ProxyClient` options.
    """

    #: The backend's transport, made once per proxy.
    transport_class: ClassVar[type[Transport]]

    def __init__(
        self,
        name: str,
        *,
        url: str,
        local_worker_name: str,
        remote_worker_name: str,
        forward_messages: Sequence[type[BusMessage]] = (),
        headers: dict[str, str] | None = None,
        codec: CodecSpec = DEFAULT_CODEC,
        **options: Any,
    ) -> None:
        transport = self._new_transport(options)
        super().__init__(
            name,
            url=url,
            local_worker_name=local_worker_name,
            remote_worker_name=remote_worker_name,
            forward_messages=forward_messages,
            headers=headers,
            transport=transport,
            codec=codec,
            **options,
        )

    def _new_transport(self, options: dict[str, Any]) -> Transport:
        """Return this proxy's transport, taking (popping) any option meant for it."""
        return self.transport_class()


class BoundProxyServer(ProxyServer):
    """A :class:`ProxyServer` on a WebSocket its backend's library accepted.

    The base of the server class of each backend that adopts an application's
    own sockets (:meth:`Transport.adapt`): a subclass sets
    :attr:`transport_class` and documents what ``websocket`` may be. The
    socket is kept as ``websocket``.

    Args:
        name: this worker's name.
        websocket: the accepted socket, one the backend's ``adapt`` takes.
        worker_name: the worker on this bus that talks to the client's.
        remote_worker_name: the client's worker.
        forward_messages: the message types allowed to cross, both ways.
        codecs: codec names or instances accepted from the client.
        max_message_bytes: the frame limit, enforced before decoding.
        **options: more :class:`ProxyServer` options (``authenticate``, heartbeats...).

    Raises:
        ConfigurationError: the backend cannot adopt ``websocket``.
    """

    #: The backend's transport, whose ``adapt`` wraps the socket.
    transport_class: ClassVar[type[Transport]]

    def __init__(
        self,
        name: str,
        *,
        websocket: object,
        worker_name: str,
        remote_worker_name: str,
        forward_messages: Sequence[type[BusMessage]] = (),
        codecs: CodecSpec = DEFAULT_SERVER_CODECS,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        **options: Any,
    ) -> None:
        connection = self.transport_class().adapt(websocket, max_message_bytes=max_message_bytes)
        super().__init__(
            name,
            connection=connection,
            worker_name=worker_name,
            remote_worker_name=remote_worker_name,
            forward_messages=forward_messages,
            codecs=codecs,
            max_message_bytes=max_message_bytes,
            **options,
        )
        self.websocket = websocket
