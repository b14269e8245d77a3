"""Bus messages, frames, and the registry of wire types.

Messages and frames are plain dataclasses. A type crosses the wire only if it
is registered under a stable *wire tag* (:func:`register_type`); decoding looks
the tag up in the registry and never imports a name read from the wire.

Field values of wire types are restricted to a small, language-neutral value
model: ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, ``list``,
``tuple``, ``dict`` with ``str`` keys, and instances of registered types.

A decoded message is checked against its class's field annotations before a
worker sees it (:func:`check_fields`): a field annotated ``Frame`` holds a
registered frame, an ``int`` field an integer (never a ``bool``), and so on.
``docs/protocol.md`` section 4.1 states the rules for peers in any language.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ._fieldtypes import _WIRE_NAMES, check_fields
from .errors import ConfigurationError

__all__ = [
    "DEFAULT_TYPES",
    "LIFECYCLE_MESSAGES",
    "AudioRawFrame",
    "BusActivateWorkerMessage",
    "BusCancelMessage",
    "BusDataMessage",
    "BusDeactivateWorkerMessage",
    "BusEndMessage",
    "BusEndWorkerMessage",
    "BusFrameMessage",
    "BusLocalMessage",
    "BusMessage",
    "BusWorkerReadyMessage",
    "Frame",
    "TextFrame",
    "TypeRegistry",
    "check_fields",
    "register_type",
]

T = TypeVar("T")


class TypeRegistry:
    """Maps wire tags to dataclass types and back.

    One process-wide instance, :data:`DEFAULT_TYPES`, is used unless a codec is
    given another; tests may build their own.
    """

    def __init__(self) -> None:
        self._by_tag: dict[str, type[Any]] = {}
        self._by_type: dict[type[Any], str] = {}
        self._fields: dict[type[Any], tuple[str, ...]] = {}

    def register(self, cls: type[T], tag: str) -> type[T]:
        """Register dataclass ``cls`` under ``tag``; re-registering the same pair is a no-op.

        Raises:
            ConfigurationError: ``cls`` is not a dataclass, or the tag or the
                class is already registered with something else.
        """
        if not isinstance(tag, str) or not tag:
            raise ConfigurationError(f"wire tag must be a non-empty string, got {tag!r}")
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise ConfigurationError(
                f"{cls!r} is not a dataclass; only dataclasses can be registered"
            )
        owner = self._by_tag.get(tag)
        if owner is not None and owner is not cls:
            raise ConfigurationError(
                f"wire tag {tag!r} is already registered to {owner.__module__}.{owner.__qualname__}"
            )
        known = self._by_type.get(cls)
        if known is not None and known != tag:
            raise ConfigurationError(f"{cls.__qualname__} is already registered as {known!r}")
        self._by_tag[tag] = cls
        self._by_type[cls] = tag
        _WIRE_NAMES.setdefault(cls, tag)
        self._fields[cls] = tuple(f.name for f in dataclasses.fields(cls) if f.init)
        return cls

    def tag_of(self, cls: type[Any]) -> str | None:
        """Return the wire tag of ``cls``, or ``None`` if it is not registered."""
        return self._by_type.get(cls)

    def type_of(self, tag: str) -> type[Any] | None:
        """Return the type registered under ``tag``, or ``None``."""
        return self._by_tag.get(tag)

    def fields_of(self, cls: type[Any]) -> tuple[str, ...]:
        """Return the names of the constructor fields of registered ``cls``."""
        return self._fields[cls]

    def tags(self) -> list[str]:
        """Return every registered tag, sorted."""
        return sorted(self._by_tag)

    def __contains__(self, cls: object) -> bool:
        return cls in self._by_type


#: The registry used by default by every codec.
DEFAULT_TYPES = TypeRegistry()


def register_type(
    tag: str, *, registry: TypeRegistry | None = None
) -> Callable[[type[T]], type[T]]:
    """Register a message or frame dataclass under a stable wire tag.

    Use as a decorator (``@register_type("myapp.weather")`` above ``@dataclass``)
    or as a call (``register_type("myapp.weather")(Weather)``). Pick tags that
    stay stable across versions; a namespaced prefix avoids clashes.

    Annotate every field with the type it holds: a receiver checks each decoded
    value against it (:func:`check_fields`) and drops a message that does not
    fit. A field whose annotation cannot be checked (a forward reference that
    does not resolve, a ``TypeVar`` without bound, a ``Protocol``) accepts any
    value of the value model; a warning names it once, the first time a value
    of the type is checked.

    Raises:
        ConfigurationError: see :meth:`TypeRegistry.register`.
    """
    target = registry if registry is not None else DEFAULT_TYPES

    def decorate(cls: type[T]) -> type[T]:
        return target.register(cls, tag)

    return decorate


# ---------------------------------------------------------------- frames


@dataclass
class Frame:
    """Base of the frames carried by :class:`BusFrameMessage`."""


@register_type("frame.text")
@dataclass
class TextFrame(Frame):
    """A chunk of text."""

    text: str


@register_type("frame.audio_raw")
@dataclass
class AudioRawFrame(Frame):
    """Raw PCM audio."""

    audio: bytes
    sample_rate: int
    num_channels: int = 1


# ---------------------------------------------------------------- messages


@dataclass
class BusMessage:
    """A message on a bus.

    Attributes:
        source: the name of the worker that sent it.
        target: the name of the worker it is for, or ``None`` for a broadcast.
    """

    source: str
    target: str | None = None


class BusLocalMessage:
    """Marker mixin: a message of this type never leaves its bus, whatever else is true."""


register_type("bus.message")(BusMessage)


@register_type("bus.frame")
@dataclass
class BusFrameMessage(BusMessage):
    """A frame sent from one worker to another: ``BusFrameMessage(source, target, frame)``."""

    # Redeclared without a default so that ``frame`` can be positional and required.
    target: str | None = dataclasses.field()
    frame: Frame = dataclasses.field()


@register_type("bus.data")
@dataclass
class BusDataMessage(BusMessage):
    """A small structured payload (plain values only) sent between workers."""

    data: dict[str, Any] = dataclasses.field(default_factory=dict)


@register_type("bus.activate")
@dataclass
class BusActivateWorkerMessage(BusMessage):
    """Ask the target worker to activate, with optional arguments."""

    args: dict[str, Any] | None = None


@register_type("bus.deactivate")
@dataclass
class BusDeactivateWorkerMessage(BusMessage):
    """Ask the target worker to deactivate."""


@register_type("bus.end_worker")
@dataclass
class BusEndWorkerMessage(BusMessage):
    """Ask the target worker to finish its work and stop."""

    reason: str | None = None


@register_type("bus.end")
@dataclass
class BusEndMessage(BusLocalMessage, BusMessage):
    """End the whole runner gracefully. Local: a peer can never end our runner."""

    reason: str | None = None


@register_type("bus.cancel")
@dataclass
class BusCancelMessage(BusLocalMessage, BusMessage):
    """Cancel the whole runner at once. Local: a peer can never cancel our runner."""

    reason: str | None = None


@register_type("bus.ready")
@dataclass
class BusWorkerReadyMessage(BusLocalMessage, BusMessage):
    """Broadcast by the runner when one of its local workers becomes ready.

    Remote readiness is reported through the registry only
    (``runner.registry.watch(name, callback)``).
    """

    worker: str = ""
    remote: bool = False


#: The lifecycle messages a proxy always carries for the worker on the other side.
LIFECYCLE_MESSAGES: tuple[type[BusMessage], ...] = (
    BusActivateWorkerMessage,
    BusDeactivateWorkerMessage,
    BusEndWorkerMessage,
)
