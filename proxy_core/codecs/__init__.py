"""Codecs: the :class:`Codec` interface and the built-in ``json`` and ``msgpack`` codecs."""

from __future__ import annotations

from .base import Codec

__all__ = ["Codec"]
