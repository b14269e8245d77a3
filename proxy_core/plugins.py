"""Find transports, codecs and buses by name through Python entry points.

Entry-point groups: ``proxy_core.transports``, ``proxy_core.codecs`` and
``proxy_core.buses``. The built-in codecs and the in-process bus register
through the same groups as third-party ones, so there is one way to find a
plugin. Nothing is loaded at import time; a name
is resolved when asked for.

A third-party package adds a codec with one line in its ``pyproject.toml``::

    [project.entry-points."proxy_core.codecs"]
    cbor = "my_package.codec:CborCodec"
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any, TypeVar

from .bus import BaseBus
from .codecs.base import Codec
from .errors import ConfigurationError, PluginError
from .transport import Transport

__all__ = [
    "BUS_GROUP",
    "CODEC_GROUP",
    "TRANSPORT_GROUP",
    "available_buses",
    "available_codecs",
    "available_transports",
    "bus_class",
    "load_bus",
    "load_codec",
    "load_transport",
    "resolve_codec",
    "resolve_transport",
]

TRANSPORT_GROUP = "proxy_core.transports"
CODEC_GROUP = "proxy_core.codecs"
BUS_GROUP = "proxy_core.buses"

_P = TypeVar("_P", Transport, Codec)
_Base = type[Any]


def _entry_points(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group)}


def available_transports() -> list[str]:
    """Return the names of the installed transports, sorted."""
    return sorted(_entry_points(TRANSPORT_GROUP))


def available_codecs() -> list[str]:
    """Return the names of the installed codecs, sorted."""
    return sorted(_entry_points(CODEC_GROUP))


def load_transport(name: str) -> type[Transport]:
    """Return the transport class registered as ``name``.

    Raises:
        PluginError: no such transport is installed (the message lists those
            that are), or it failed to load or is not a ``Transport``.
    """
    cls: type[Transport] = _load("transport", TRANSPORT_GROUP, name, Transport)
    return cls


def load_codec(name: str) -> type[Codec]:
    """Return the codec class registered as ``name``.

    Raises:
        PluginError: no such codec is installed (the message lists those that
            are), or it failed to load or is not a ``Codec``.
    """
    cls: type[Codec] = _load("codec", CODEC_GROUP, name, Codec)
    return cls


def available_buses() -> list[str]:
    """Return the names of the installed buses, sorted (``local`` is the in-process bus)."""
    return sorted(_entry_points(BUS_GROUP))


def bus_class(name: str) -> type[BaseBus]:
    """Return the bus class registered as ``name``.

    Raises:
        PluginError: no such bus is installed (the message lists those that
            are), or it failed to load or is not a ``BaseBus``.
    """
    cls: type[BaseBus] = _load("bus", BUS_GROUP, name, BaseBus)
    return cls


def load_bus(name: str, **options: Any) -> BaseBus:
    """Return a new bus of the kind registered as ``name``, built with ``options``.

    ``load_bus("redis", url="redis://127.0.0.1:6379/0", channel="bots")`` is
    ``RedisBus("redis://...", channel="bots")``. Each runner needs its own bus.

    Raises:
        PluginError: no such bus is installed (the message lists those that are).
        ConfigurationError: the options do not suit that bus.
    """
    cls = bus_class(name)
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigurationError(f"bus {name!r} does not take these options: {exc}") from exc


@cache
def _cached_instance(kind: str, name: str) -> Any:
    cls = load_transport(name) if kind == "transport" else load_codec(name)
    return cls()


def resolve_transport(transport: str | Transport) -> Transport:
    """Return ``transport`` if it is an instance, else a shared instance of the named one."""
    if isinstance(transport, Transport):
        return transport
    instance: Transport = _cached_instance("transport", transport)
    return instance


def resolve_codec(codec: str | Codec) -> Codec:
    """Return ``codec`` if it is an instance, else a shared instance of the named one."""
    if isinstance(codec, Codec):
        return codec
    instance: Codec = _cached_instance("codec", codec)
    return instance


def _load(kind: str, group: str, name: str, base: _Base) -> Any:
    found = _entry_points(group)
    ep = found.get(name)
    if ep is None:
        raise PluginError(kind, name, sorted(found))
    try:
        obj = ep.load()
    except Exception as exc:
        raise PluginError(kind, name, sorted(found), f"{type(exc).__name__}: {exc}") from exc
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise PluginError(
            kind, name, sorted(found), f"{ep.value} is not a subclass of {base.__qualname__}"
        )
    if getattr(obj, "name", None) != name:
        raise PluginError(
            kind, name, sorted(found), f"{ep.value}.name is {getattr(obj, 'name', None)!r}"
        )
    return obj
