"""Find transports and codecs by name through Python entry points.

Entry-point groups: ``proxy_core.transports`` and ``proxy_core.codecs``. The
built-in codecs register through the same group as third-party ones, so
there is one way to find a plugin. Nothing is loaded at import time; a name
is resolved when asked for.

A third-party package adds a codec with one line in its ``pyproject.toml``::

    [project.entry-points."proxy_core.codecs"]
    cbor = "my_package.codec:CborCodec"
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any, TypeVar

from .codecs.base import Codec
from .errors import PluginError
from .transport import Transport

__all__ = [
    "CODEC_GROUP",
    "TRANSPORT_GROUP",
    "available_codecs",
    "available_transports",
    "load_codec",
    "load_transport",
    "resolve_codec",
    "resolve_transport",
]

TRANSPORT_GROUP = "proxy_core.transports"
CODEC_GROUP = "proxy_core.codecs"

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
