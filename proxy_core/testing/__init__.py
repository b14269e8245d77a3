"""Test support shipped with proxy-core: a fake transport, a faulty network, a conformance kit.

- :class:`MemoryTransport` (registered as transport ``memory``): an in-process
  transport with the whole ``Connection`` contract, for users' unit tests.
- :class:`FaultRelay`: a TCP relay on 127.0.0.1 that delays, stalls, truncates
  and cuts traffic, for any TCP-based transport.
- :class:`TransportContract` and :class:`CodecContract`: the conformance kit,
  pytest test classes that every backend and codec runs unchanged
  (``docs/conformance.md``); its fixtures come from the ``proxy_core`` pytest
  plugin (:mod:`proxy_core.testing.plugin`).
- :class:`BusContract`: the same for a bus (in process, or shared by several
  runners: Redis, NATS, Postgres...).

Importing this package does not import pytest: the contracts load (with pytest)
on first access to their names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .memory import MemoryConnection, MemoryListener, MemoryTransport, served_names
from .relay import Direction, FaultRelay

if TYPE_CHECKING:
    from .contracts import CodecContract, TransportContract, per_codec
    from .contracts_bus import BusContract

# The contracts import pytest: load them only when asked for.
_LAZY = {
    "BusContract": "contracts_bus",
    "CodecContract": "contracts",
    "TransportContract": "contracts",
    "per_codec": "contracts",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'proxy_core.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "BusContract",
    "CodecContract",
    "Direction",
    "FaultRelay",
    "MemoryConnection",
    "MemoryListener",
    "MemoryTransport",
    "TransportContract",
    "per_codec",
    "served_names",
]
