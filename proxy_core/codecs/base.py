"""The codec interface: a wire name and a pure, synchronous encode/decode pair."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from ..protocol import Envelope

__all__ = ["Codec"]


class Codec(ABC):
    """Turns session envelopes into bytes and back.

    Subclass it, set :attr:`name`, implement both methods, and register the
    class in the ``proxy_core.codecs`` entry-point group. Codecs must be pure
    (no I/O) and must refuse, with
    :class:`~proxy_core.errors.UnknownMessageType`, any type tag that is not
    in the registry they were given; they never import names from the wire.

    Attributes:
        name: the name negotiated in the handshake (``"msgpack"``).
    """

    name: ClassVar[str]

    @abstractmethod
    def encode(self, envelope: Envelope) -> bytes:
        """Encode one envelope.

        Raises:
            CodecError: a value in the message cannot be encoded.
        """

    @abstractmethod
    def decode(self, data: bytes) -> Envelope:
        """Decode one envelope.

        Raises:
            UnknownMessageType: the message's type tag is not registered.
            CodecError: the bytes are not a valid envelope.
        """

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
