"""The proxy workers, in one place: :class:`ProxyClient`, :class:`ProxyServer` and friends.

They live in :mod:`proxy_core.client`, :mod:`proxy_core.server` and what both
share in :mod:`proxy_core._link` (and its layers); their log records go to the
``proxy_core.proxy`` logger.
"""

from __future__ import annotations

from ._link_base import DEFAULT_CODEC, DEFAULT_SERVER_CODECS, CodecSpec, ProxyStats, _codec_list
from .client import ProxyClient
from .server import ProxyServer, SessionTable, accept_hello

__all__ = [
    "DEFAULT_CODEC",
    "DEFAULT_SERVER_CODECS",
    "CodecSpec",
    "ProxyClient",
    "ProxyServer",
    "ProxyStats",
    "SessionTable",
    "_codec_list",
    "accept_hello",
]
