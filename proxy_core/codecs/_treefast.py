"""The fast paths of the tree codecs: one writer and one reader per built-in shape.

:class:`~proxy_core.codecs._tree.TreeConverter` calls them for the built-in
messages and frames that cross (see its module's docstring); each handles
exactly the values the generic walk would pass through unchanged in the scalar
fields (and any value in the one body field, through the converter's
``_field_out`` / ``_field_in``), and otherwise returns ``None`` so that the
generic walk, the reference, takes over. ``tests/test_codec_fastpath.py``
checks that both give the same bytes and the same objects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from ..messages import (
    AudioRawFrame,
    BusActivateWorkerMessage,
    BusDataMessage,
    BusDeactivateWorkerMessage,
    BusEndWorkerMessage,
    BusFrameMessage,
    BusMessage,
    TextFrame,
)

if TYPE_CHECKING:
    from ._tree import TreeConverter

__all__: list[str] = []

_SCALARS: Final[frozenset[type[Any]]] = frozenset((str, int, float, bool, type(None)))
#: Values a decoded tree holds as they are (both codecs pass bytes through).
_LEAVES_IN: Final = _SCALARS | {bytes}

_MISSING: Final[Any] = object()  # a field absent from a map (not a leaf: fails every fast check)

#: Writes a registered object of one built-in class as its ``$type`` map, given its
#: tag; ``None`` when a value is not of the shape the fast path was written for.
FastOut = Callable[["TreeConverter", str, Any], "dict[str, Any] | None"]
#: Builds one built-in class from its ``$type`` map; ``None`` as above.
FastIn = Callable[["TreeConverter", type[Any], "dict[str, Any]"], Any]


def _header_out(conv: TreeConverter, tag: str, msg: Any) -> dict[str, Any] | None:
    """``bus.message``, ``bus.deactivate``: source and target only."""
    source, target = msg.source, msg.target
    if type(source) in conv._leaves_out and type(target) in conv._leaves_out:
        return {"$type": tag, "source": source, "target": target}
    return None


def _header_in(conv: TreeConverter, cls: type[Any], node: dict[str, Any]) -> Any:
    source = node.get("source", _MISSING)
    target = node.get("target", _MISSING)
    if len(node) == 3 and type(source) in _LEAVES_IN and type(target) in _LEAVES_IN:
        return cls(source, target)
    return None


def _with_body(body: str) -> tuple[FastOut, FastIn]:
    """``bus.frame``, ``bus.data``, ``bus.activate``, ``bus.end_worker``: a header and ``body``."""

    def write(conv: TreeConverter, tag: str, msg: Any) -> dict[str, Any] | None:
        source, target = msg.source, msg.target
        if type(source) in conv._leaves_out and type(target) in conv._leaves_out:
            value = getattr(msg, body)
            # A registered object (a frame) straight to its writer: _field_out's first case.
            if type(value) in conv._specs:
                value = conv._object_out(value)
            else:
                value = conv._field_out(value, type(msg), body)
            return {"$type": tag, "source": source, "target": target, body: value}
        return None

    def read(conv: TreeConverter, cls: type[Any], node: dict[str, Any]) -> Any:
        source = node.get("source", _MISSING)
        target = node.get("target", _MISSING)
        value = node.get(body, _MISSING)
        if (
            len(node) == 4
            and value is not _MISSING
            and type(source) in _LEAVES_IN
            and type(target) in _LEAVES_IN
        ):
            if type(value) is dict and "$type" in value:  # a frame: _field_in's first case
                return cls(source, target, conv._object_in(value))
            return cls(source, target, conv._field_in(value))
        return None

    return write, read


def _text_out(conv: TreeConverter, tag: str, frame: Any) -> dict[str, Any] | None:
    text = frame.text
    return {"$type": tag, "text": text} if type(text) in conv._leaves_out else None


def _text_in(conv: TreeConverter, cls: type[Any], node: dict[str, Any]) -> Any:
    text = node.get("text", _MISSING)
    return cls(text) if len(node) == 2 and type(text) in _LEAVES_IN else None


def _audio_out(conv: TreeConverter, tag: str, frame: Any) -> dict[str, Any] | None:
    rate, channels = frame.sample_rate, frame.num_channels
    if type(rate) in conv._leaves_out and type(channels) in conv._leaves_out:
        audio = frame.audio
        if type(audio) not in conv._leaves_out:  # bytes are a leaf but in JSON (base64)
            audio = conv._field_out(audio, AudioRawFrame, "audio")
        return {"$type": tag, "audio": audio, "sample_rate": rate, "num_channels": channels}
    return None


def _audio_in(conv: TreeConverter, cls: type[Any], node: dict[str, Any]) -> Any:
    audio = node.get("audio", _MISSING)
    rate = node.get("sample_rate", _MISSING)
    channels = node.get("num_channels", _MISSING)
    if len(node) == 4 and type(rate) in _LEAVES_IN and type(channels) in _LEAVES_IN:
        if type(audio) is bytes:
            return cls(audio, rate, channels)
        if audio is not _MISSING:
            return cls(conv._field_in(audio), rate, channels)  # a $bytes map (JSON)
    return None


#: (writer, reader, the constructor fields they were written for) per built-in
#: class; the readers construct positionally, in that order.
_FastPath = tuple[FastOut, FastIn, tuple[str, ...]]
_FAST_PATHS: Final[dict[type[Any], _FastPath]] = {
    BusMessage: (_header_out, _header_in, ("source", "target")),
    BusDeactivateWorkerMessage: (_header_out, _header_in, ("source", "target")),
    BusFrameMessage: (*_with_body("frame"), ("source", "target", "frame")),
    BusDataMessage: (*_with_body("data"), ("source", "target", "data")),
    BusActivateWorkerMessage: (*_with_body("args"), ("source", "target", "args")),
    BusEndWorkerMessage: (*_with_body("reason"), ("source", "target", "reason")),
    TextFrame: (_text_out, _text_in, ("text",)),
    AudioRawFrame: (_audio_out, _audio_in, ("audio", "sample_rate", "num_channels")),
}
