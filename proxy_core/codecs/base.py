"""The codec interface: a wire name and a pure, synchronous encode/decode pair."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Final

from ..errors import CodecError
from ..protocol import Batch, Envelope

__all__ = [
    "MAX_BATCH_FRAMES",
    "MAX_CLOSE_CODE",
    "MAX_SAFE_INTEGER",
    "MIN_CLOSE_CODE",
    "Codec",
    "batch_size_bound",
    "bye_code_error",
]

#: The most frames a decoder accepts in one BATCH (131072); a larger one is malformed
#: as a whole, before any of its frames is decoded. Without a bound, one 1 MiB BATCH
#: of 1-byte garbage frames costs the receiver a million CodecErrors (seconds of CPU
#: on the event loop, hundreds of MB). A sender that keeps its batches within
#: :func:`batch_size_bound` of 256 KiB never comes near it (8 bytes per frame).
MAX_BATCH_FRAMES: Final = 1 << 17

#: The largest sequence number, ACK number or PING/PONG nonce on the wire (2**53 - 1):
#: the largest integer a JavaScript peer holds exactly. Encoders refuse a larger
#: one; decoders make the frame malformed (a MSG with one has no readable seq).
MAX_SAFE_INTEGER: Final = (1 << 53) - 1

#: The close codes a BYE may carry (1000-4999, as in a WebSocket close); a BYE
#: with another code is malformed.
MIN_CLOSE_CODE: Final = 1000
MAX_CLOSE_CODE: Final = 4999


def bye_code_error(code: object) -> str | None:
    """Why ``code`` cannot be a BYE's code, or ``None`` if it can."""
    if not isinstance(code, int) or isinstance(code, bool):  # CloseCode is an int
        return f"code must be an integer, got {type(code).__qualname__}"
    if not MIN_CLOSE_CODE <= code <= MAX_CLOSE_CODE:
        return f"code must be a close code ({MIN_CLOSE_CODE}-{MAX_CLOSE_CODE}), got {code}"
    return None


def batch_size_bound(total: int, count: int) -> int:
    """The most bytes a BATCH of ``count`` frames totalling ``total`` bytes may take."""
    return total + 16 + 8 * count


class Codec(ABC):
    """Turns session envelopes into bytes and back.

    Subclass it, set :attr:`name`, implement both methods, and register the
    class in the ``proxy_core.codecs`` entry-point group. Codecs must be pure
    (no I/O) and must refuse, with
    :class:`~proxy_core.errors.UnknownMessageType`, any type tag that is not
    in the registry they were given; they never import names from the wire.

    A codec may also speak BATCH frames (several encoded frames in one
    transport message): set :attr:`supports_batch`, implement
    :meth:`encode_batch`, and have :meth:`decode` return a
    :class:`~proxy_core.protocol.Batch` for them. Sessions use batches only
    when both peers' codecs say so in the handshake.

    Attributes:
        name: the name negotiated in the handshake (``"msgpack"``).
        supports_batch: whether :meth:`encode_batch` is implemented.
    """

    name: ClassVar[str]
    supports_batch: ClassVar[bool] = False

    @abstractmethod
    def encode(self, envelope: Envelope) -> bytes:
        """Encode one envelope.

        Raises:
            CodecError: a value in the message cannot be encoded.
        """

    def encode_batch(self, frames: Sequence[bytes]) -> bytes:
        """Wrap frames this codec encoded (two or more) into one BATCH frame.

        The result must be at most :func:`batch_size_bound` bytes, so that the
        sender can fill a batch up to the peer's limit without encoding it twice.
        A batch never holds another batch.

        Raises:
            CodecError: this codec has no batches.
        """
        raise CodecError(f"codec {self.name!r} has no BATCH frames")

    @abstractmethod
    def decode(self, data: bytes) -> Envelope | Batch:
        """Decode one envelope (or, for a codec with batches, a BATCH).

        Raises:
            UnknownMessageType: the message's type tag is not registered.
            CodecError: the bytes are not a valid envelope.
        """

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
