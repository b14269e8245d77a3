"""The ``protobuf`` codec: frames as ``proxy_core.v1.Envelope`` messages.

The schema, ``proto/proxy_core/v1/envelope.proto``, is the specification for
peers in other languages; the generated code lives in ``_generated/`` and is
rebuilt with ``python scripts/gen_proto.py``. The built-in messages and frames
have dedicated messages filled by direct field access (the fast path); every
other registered type travels in the generic ``Object`` form, named by its
wire tag and looked up in the registry, never imported. A built-in whose field
holds a value its dedicated message cannot carry (an ``int`` as a
``TextFrame.text``) also falls back to the generic form, so every value of the
value model round-trips exactly. Encoding is here; decoding, in
:mod:`._protobuf_decode`; the hand-read wire format, in :mod:`._protowire`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from ..errors import CodecError, ConfigurationError
from ..messages import (
    DEFAULT_TYPES,
    AudioRawFrame,
    BusActivateWorkerMessage,
    BusDataMessage,
    BusEndWorkerMessage,
    BusFrameMessage,
    BusMessage,
    TextFrame,
    TypeRegistry,
)
from ..protocol import Ack, Bye, Envelope, Msg, Ping, Pong, Ready
from ._protobuf_decode import BUILTINS, ProtobufDecoding
from ._protowire import (
    _INT64_MAX,
    _INT64_MIN,
    MAX_DEPTH,
    _checked,
    _fits_audio,
    _text,
    _too_deep,
    _varint_bytes,
)
from .base import MAX_CLOSE_CODE, MAX_SAFE_INTEGER, MIN_CLOSE_CODE, Codec

if TYPE_CHECKING:
    from ._generated import envelope_pb2 as pb

__all__ = ["MAX_DEPTH", "ProtobufCodec"]

_HEADER: Final = frozenset({"source", "target"})

# Levels of the fixed part of a MSG: Envelope 0, Msg 1, Message 2, its body 3.
_BODY_DEPTH: Final = 3


class ProtobufCodec(ProtobufDecoding, Codec):
    """Encode envelopes as ``proxy_core.v1.Envelope`` protobuf messages.

    Floats are carried bit-exactly (NaN, its payload, the infinities and -0.0
    survive); integers are limited to 64 bits; values nest at most about 47
    containers deep (:data:`MAX_DEPTH` protobuf levels).

    Args:
        registry: the wire types to accept (default: every registered type).

    Raises:
        ConfigurationError: the ``protobuf`` package is missing or too old for
            the generated code.
    """

    name = "protobuf"
    supports_batch = True

    def __init__(self, registry: TypeRegistry | None = None) -> None:
        try:
            from google.protobuf.message import DecodeError

            from ._generated import envelope_pb2
        except ImportError:
            raise ConfigurationError(
                "the protobuf codec needs the protobuf package: pip install protobuf"
            ) from None
        except Exception as exc:  # runtime_version.VersionError: protobuf too old
            raise ConfigurationError(
                f"the protobuf codec cannot load its generated code ({exc}); "
                "pip install --upgrade protobuf"
            ) from None
        self._pb = envelope_pb2
        self._decode_error = DecodeError
        self._registry = registry if registry is not None else DEFAULT_TYPES
        # The fast paths apply only where this registry maps the tag to the
        # built-in class; anything else goes through the registry each time.
        self._fast = frozenset(
            tag for tag, cls in BUILTINS.items() if self._registry.type_of(tag) is cls
        )
        self._encoders = {
            cls: getattr(self, f"_{tag.replace('.', '_')}_out")
            for tag, cls in BUILTINS.items()
            if tag in self._fast and issubclass(cls, BusMessage)
        }

    # ------------------------------------------------------------ encoding

    def encode(self, envelope: Envelope) -> bytes:
        env = self._pb.Envelope()
        try:
            if isinstance(envelope, Msg):
                out = env.msg
                out.seq = _checked(envelope.seq, 0, MAX_SAFE_INTEGER, "Msg.seq")
                self._message_out(envelope.message, out.message)
            elif isinstance(envelope, Ack):
                env.ack.seq = _checked(envelope.seq, 0, MAX_SAFE_INTEGER, "Ack.seq")
            elif isinstance(envelope, Ready):
                env.ready.worker = _text(envelope.worker, "Ready.worker")
            elif isinstance(envelope, Ping):
                env.ping.nonce = _checked(envelope.nonce, 0, MAX_SAFE_INTEGER, "Ping.nonce")
            elif isinstance(envelope, Pong):
                env.pong.nonce = _checked(envelope.nonce, 0, MAX_SAFE_INTEGER, "Pong.nonce")
            elif isinstance(envelope, Bye):
                bye = env.bye
                bye.code = _checked(envelope.code, MIN_CLOSE_CODE, MAX_CLOSE_CODE, "Bye.code")
                bye.reason = _text(envelope.reason, "Bye.reason")
            else:
                raise CodecError(f"not an envelope: {type(envelope).__qualname__}")
        except (ValueError, TypeError) as exc:  # from protobuf: e.g. a lone surrogate
            raise CodecError(f"cannot encode {type(envelope).__qualname__}: {exc}") from None
        except RecursionError:
            raise CodecError("message nests too deeply to encode") from None
        data: bytes = env.SerializeToString()
        return data

    def _message_out(self, message: BusMessage, out: pb.Message) -> None:
        cls = type(message)
        if not isinstance(message, BusMessage):
            raise CodecError(f"MSG must carry a bus message, not {cls.__qualname__}")
        source, target = message.source, message.target
        if type(source) is not str:
            raise CodecError(f"{cls.__qualname__}.source: must be str, got {type(source).__name__}")
        try:
            out.source = source
        except ValueError as exc:  # a lone surrogate
            raise CodecError(f"{cls.__qualname__}.source: {exc}") from None
        if target is not None:
            if type(target) is not str:
                raise CodecError(f"{cls.__qualname__}.target: must be str or None")
            try:
                out.target = target
            except ValueError as exc:
                raise CodecError(f"{cls.__qualname__}.target: {exc}") from None
        encoder = self._encoders.get(cls)
        if encoder is None or not encoder(message, out):
            self._object_out(message, out.object, _BODY_DEPTH, header=True)

    # Dedicated encoders: each returns False, having written nothing, when a
    # field holds a value its message cannot carry (the generic form then does).

    def _bus_message_out(self, message: BusMessage, out: pb.Message) -> bool:
        out.message.SetInParent()
        return True

    def _bus_deactivate_out(self, message: BusMessage, out: pb.Message) -> bool:
        out.deactivate.SetInParent()
        return True

    def _bus_frame_out(self, message: BusFrameMessage, out: pb.Message) -> bool:
        frame: Any = message.frame  # any value of the value model, not only a Frame
        body = out.frame
        kind = type(frame)
        if kind is TextFrame and type(frame.text) is str and "frame.text" in self._fast:
            try:
                body.text.text = frame.text
            except ValueError as exc:
                raise CodecError(f"TextFrame.text: {exc}") from None
        elif kind is AudioRawFrame and "frame.audio_raw" in self._fast and _fits_audio(frame):
            audio = body.audio_raw
            audio.audio = frame.audio
            audio.sample_rate = frame.sample_rate
            audio.num_channels = frame.num_channels
        elif kind in self._registry:
            self._object_out(frame, body.object, _BODY_DEPTH + 1)
        else:
            self._value_out(frame, body.value, _BODY_DEPTH + 1, BusFrameMessage, "frame")
        return True

    def _bus_data_out(self, message: BusDataMessage, out: pb.Message) -> bool:
        data = message.data
        if type(data) is not dict:
            return False
        body = out.data
        body.SetInParent()
        if data:
            self._map_out(data, body.data, _BODY_DEPTH + 1, BusDataMessage, "data")
        return True

    def _bus_activate_out(self, message: BusActivateWorkerMessage, out: pb.Message) -> bool:
        args = message.args
        if args is None:
            out.activate.SetInParent()
            return True
        if type(args) is not dict:
            return False
        body = out.activate.args
        body.SetInParent()
        self._map_out(args, body, _BODY_DEPTH + 1, BusActivateWorkerMessage, "args")
        return True

    def _bus_end_worker_out(self, message: BusEndWorkerMessage, out: pb.Message) -> bool:
        reason = message.reason
        if reason is None:
            out.end_worker.SetInParent()
        elif type(reason) is str:
            try:
                out.end_worker.reason = reason
            except ValueError as exc:
                raise CodecError(f"BusEndWorkerMessage.reason: {exc}") from None
        else:
            return False
        return True

    def _object_out(self, obj: Any, out: pb.Object, depth: int, *, header: bool = False) -> None:
        """Write registered ``obj`` in the generic form; ``out`` is at ``depth``."""
        cls = type(obj)
        tag = self._registry.tag_of(cls)
        if tag is None:
            raise CodecError(
                f"{cls.__module__}.{cls.__qualname__} is not a registered wire type; "
                "register it with proxy_core.register_type(tag)"
            )
        out.type = tag
        names, add = out.names, out.values.add
        for name in self._registry.fields_of(cls):
            if header and name in _HEADER:
                continue
            names.append(name)
            self._value_out(getattr(obj, name), add(), depth + 1, cls, name)

    def _value_out(self, value: Any, out: pb.Value, depth: int, owner: type, field: str) -> None:
        """Write ``value`` (a field of ``owner``) into ``out``, a Value at ``depth``."""
        kind = type(value)
        if depth > MAX_DEPTH:
            raise _too_deep(owner, field)
        try:
            if kind is str:
                out.str_value = value
            elif kind is int:
                if not _INT64_MIN <= value <= _INT64_MAX:
                    raise CodecError(
                        f"{owner.__qualname__}.{field}: integer {value} is outside the "
                        "64-bit signed range"
                    )
                out.int_value = value
            elif kind is float:
                out.float_value = value
            elif kind is bool:
                out.bool_value = value
            elif kind is bytes:
                out.bytes_value = value
            elif value is None:
                out.null_value = self._pb.NULL_VALUE
            elif kind is list or kind is tuple:
                if depth >= MAX_DEPTH:
                    raise _too_deep(owner, field)
                items = out.list_value if kind is list else out.tuple_value
                items.SetInParent()
                add = items.items.add
                for item in value:
                    self._value_out(item, add(), depth + 2, owner, field)
            elif kind is dict:
                if depth >= MAX_DEPTH:
                    raise _too_deep(owner, field)
                self._map_out(value, out.map_value, depth + 1, owner, field)
            elif kind in self._registry:
                if depth >= MAX_DEPTH:
                    raise _too_deep(owner, field)
                self._object_out(value, out.object_value, depth + 1)
            elif dataclasses.is_dataclass(kind):
                raise CodecError(
                    f"{owner.__qualname__}.{field}: {kind.__module__}.{kind.__qualname__} "
                    "is not a registered wire type; register it with proxy_core.register_type(tag)"
                )
            else:
                raise CodecError(
                    f"{owner.__qualname__}.{field}: cannot encode a value of type "
                    f"{kind.__qualname__}"
                )
        except (ValueError, TypeError) as exc:  # from protobuf: a lone surrogate...
            raise CodecError(f"{owner.__qualname__}.{field}: {exc}") from None

    def _map_out(
        self, value: dict[Any, Any], out: pb.Map, depth: int, owner: type, field: str
    ) -> None:
        """Write dict ``value`` into ``out``, a Map at ``depth``."""
        out.SetInParent()
        if not all(type(k) is str for k in value):
            raise CodecError(f"{owner.__qualname__}.{field}: map keys must be str")
        out.keys.extend(value)
        add = out.values.add
        for item in value.values():
            self._value_out(item, add(), depth + 1, owner, field)

    def encode_batch(self, frames: Sequence[bytes]) -> bytes:
        # Envelope.batch (field 7) holding Batch.frames (field 1), each frame as is.
        body = b"".join(b"".join((b"\x0a", _varint_bytes(len(f)), f)) for f in frames)
        return b"".join((b"\x3a", _varint_bytes(len(body)), body))
