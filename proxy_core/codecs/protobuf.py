"""The ``protobuf`` codec: frames as ``proxy_core.v1.Envelope`` messages.

The schema, ``proto/proxy_core/v1/envelope.proto``, is the specification for
peers in other languages; the generated code lives in ``_generated/`` and is
rebuilt with ``python scripts/gen_proto.py``. The built-in messages and frames
have dedicated messages filled by direct field access (the fast path); every
other registered type travels in the generic ``Object`` form, named by its
wire tag and looked up in the registry, never imported. A built-in whose field
holds a value its dedicated message cannot carry (an ``int`` as a
``TextFrame.text``) also falls back to the generic form, so every value of the
value model round-trips exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from ..errors import CodecError, ConfigurationError, UnknownMessageType
from ..messages import (
    DEFAULT_TYPES,
    AudioRawFrame,
    BusActivateWorkerMessage,
    BusDataMessage,
    BusDeactivateWorkerMessage,
    BusEndWorkerMessage,
    BusFrameMessage,
    BusMessage,
    TextFrame,
    TypeRegistry,
)
from ..protocol import Ack, Batch, Bye, Envelope, Msg, Ping, Pong, Ready
from ._protowire import (
    _INT64_MAX,
    _INT64_MIN,
    MAX_DEPTH,
    _bad_counter,
    _checked,
    _fits_audio,
    _text,
    _too_deep,
    _unparsed,
    _varint_bytes,
)
from .base import (
    MAX_BATCH_FRAMES,
    MAX_CLOSE_CODE,
    MAX_SAFE_INTEGER,
    MIN_CLOSE_CODE,
    Codec,
    bye_code_error,
)

if TYPE_CHECKING:
    from ._generated import envelope_pb2 as pb

__all__ = ["MAX_DEPTH", "ProtobufCodec"]

_HEADER: Final = frozenset({"source", "target"})
_SCALAR_KINDS: Final = frozenset(
    {"str_value", "int_value", "float_value", "bool_value", "bytes_value"}
)

# Levels of the fixed part of a MSG: Envelope 0, Msg 1, Message 2, its body 3.
_BODY_DEPTH: Final = 3

# The built-in types with a dedicated message, by the wire tag it implies.
_BUILTINS: Final[dict[str, type[Any]]] = {
    "bus.message": BusMessage,
    "bus.frame": BusFrameMessage,
    "bus.data": BusDataMessage,
    "bus.activate": BusActivateWorkerMessage,
    "bus.deactivate": BusDeactivateWorkerMessage,
    "bus.end_worker": BusEndWorkerMessage,
    "frame.text": TextFrame,
    "frame.audio_raw": AudioRawFrame,
}
# Message.body case -> the wire tag of its dedicated message.
_BODY_TAGS: Final = {
    "message": "bus.message",
    "frame": "bus.frame",
    "data": "bus.data",
    "activate": "bus.activate",
    "deactivate": "bus.deactivate",
    "end_worker": "bus.end_worker",
}


class ProtobufCodec(Codec):
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
            tag for tag, cls in _BUILTINS.items() if self._registry.type_of(tag) is cls
        )
        self._encoders = {
            cls: getattr(self, f"_{tag.replace('.', '_')}_out")
            for tag, cls in _BUILTINS.items()
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

    # ------------------------------------------------------------ decoding

    def encode_batch(self, frames: Sequence[bytes]) -> bytes:
        # Envelope.batch (field 7) holding Batch.frames (field 1), each frame as is.
        body = b"".join(b"".join((b"\x0a", _varint_bytes(len(f)), f)) for f in frames)
        return b"".join((b"\x3a", _varint_bytes(len(body)), body))

    def decode(self, data: bytes) -> Envelope | Batch:
        try:
            env = self._pb.Envelope.FromString(data)
        except (self._decode_error, TypeError, ValueError, RecursionError) as exc:
            raise _unparsed(data, exc) from None
        if env.WhichOneof("kind") == "batch":
            frames = env.batch.frames
            if not frames:
                raise CodecError("an empty BATCH")
            if len(frames) > MAX_BATCH_FRAMES:
                raise CodecError(f"BATCH of {len(frames)} frames; at most {MAX_BATCH_FRAMES}")
            items: list[Envelope | CodecError] = []
            for frame in frames:
                try:
                    items.append(self._envelope_in(self._pb.Envelope.FromString(frame)))
                except (self._decode_error, TypeError, ValueError, RecursionError) as exc:
                    items.append(_unparsed(frame, exc))
                except CodecError as exc:
                    items.append(exc.with_traceback(None))  # kept: not its frames
            return Batch(tuple(items))
        return self._envelope_in(env)

    def _envelope_in(self, env: pb.Envelope) -> Envelope:
        kind = env.WhichOneof("kind")
        if kind == "msg":
            frame = env.msg
            seq = frame.seq
            if seq > MAX_SAFE_INTEGER:  # no readable seq
                raise _bad_counter(seq, "seq")
            # A MSG without a message reads as an empty Message: no body, refused below.
            try:
                message = self._message_in(frame.message)
            except CodecError as exc:
                exc.seq = seq
                raise
            except RecursionError:
                raise CodecError("message nests too deeply", seq=seq) from None
            return Msg(seq, message)
        if kind == "ack":
            seq = env.ack.seq
            if seq <= MAX_SAFE_INTEGER:
                return Ack(seq)
            raise _bad_counter(seq, "seq")
        if kind == "ready":
            return Ready(env.ready.worker)
        if kind == "ping":
            nonce = env.ping.nonce
            if nonce <= MAX_SAFE_INTEGER:
                return Ping(nonce)
            raise _bad_counter(nonce, "nonce")
        if kind == "pong":
            nonce = env.pong.nonce
            if nonce <= MAX_SAFE_INTEGER:
                return Pong(nonce)
            raise _bad_counter(nonce, "nonce")
        if kind == "bye":
            if (why := bye_code_error(env.bye.code)) is not None:
                raise CodecError(why)
            return Bye(env.bye.code, env.bye.reason)
        if kind == "batch":
            raise CodecError("a BATCH cannot hold another BATCH")
        raise CodecError("frame has no kind (empty, or a kind this version does not know)")

    def _message_in(self, pm: pb.Message) -> BusMessage:
        body = pm.WhichOneof("body")
        source = pm.source
        target = pm.target if pm.HasField("target") else None
        if body == "object":
            obj = pm.object
            cls = self._lookup(obj.type)
            named = self._fields_in(obj.names, obj.values)
            if "source" in named or "target" in named:
                raise CodecError("source and target belong in the message header, not in fields")
            named["source"] = source
            named["target"] = target
            return self._message_of(cls, obj.type, named)
        tag = _BODY_TAGS.get(body or "")
        if tag is None:
            raise CodecError("MSG without a message, or a message without a body")
        fast = tag in self._fast
        cls = _BUILTINS[tag] if fast else self._lookup(tag)  # the tag before its fields
        if body == "frame":
            frame = self._frame_in(pm.frame)
            if fast:
                return BusFrameMessage(source, target, frame)
            fields: dict[str, Any] = {"frame": frame}
        elif body == "data":
            data = self._map_in(pm.data.data)
            if fast:
                return BusDataMessage(source, target, data)
            fields = {"data": data}
        elif body == "activate":
            activate = pm.activate
            fields = {"args": self._map_in(activate.args) if activate.HasField("args") else None}
        elif body == "end_worker":
            end = pm.end_worker
            fields = {"reason": end.reason if end.HasField("reason") else None}
        else:  # "message", "deactivate": the header only
            fields = {}
        fields["source"] = source
        fields["target"] = target
        return self._message_of(cls, tag, fields)

    def _message_of(self, cls: type[Any], tag: str, fields: dict[str, Any]) -> BusMessage:
        if not issubclass(cls, BusMessage):
            raise CodecError(f"MSG carries a {cls.__qualname__}, not a bus message")
        message: BusMessage = self._construct(cls, tag, fields)
        return message

    def _lookup(self, tag: str) -> type[Any]:
        """Return the type registered as ``tag``; the wire never names anything else."""
        cls = self._registry.type_of(tag)
        if cls is None:
            raise UnknownMessageType(tag)
        return cls

    def _construct(self, cls: type[Any], tag: str, fields: dict[str, Any]) -> Any:
        try:
            return cls(**fields)
        except CodecError:
            raise
        except Exception as exc:  # TypeError, or whatever a __post_init__ raises
            raise CodecError(f"fields do not match {tag!r}: {exc}") from None

    def _frame_in(self, body: pb.BusFrameMessage) -> Any:
        case = body.WhichOneof("frame")
        if case == "text":
            text = body.text.text
            if "frame.text" in self._fast:
                return TextFrame(text)
            return self._tagged("frame.text", {"text": text})
        if case == "audio_raw":
            audio = body.audio_raw
            if "frame.audio_raw" in self._fast:
                return AudioRawFrame(audio.audio, audio.sample_rate, audio.num_channels)
            fields = {
                "audio": audio.audio,
                "sample_rate": audio.sample_rate,
                "num_channels": audio.num_channels,
            }
            return self._tagged("frame.audio_raw", fields)
        if case == "object":
            return self._object_in(body.object)
        if case == "value":
            return self._value_in(body.value)
        raise CodecError("bus.frame message has no frame")

    def _object_in(self, obj: pb.Object) -> Any:
        tag = obj.type
        cls = self._lookup(tag)
        return self._construct(cls, tag, self._fields_in(obj.names, obj.values))

    def _tagged(self, tag: str, fields: dict[str, Any]) -> Any:
        """Build a dedicated frame whose tag this registry gives to another type."""
        return self._construct(self._lookup(tag), tag, fields)

    def _fields_in(self, names: Any, values: Any) -> dict[str, Any]:
        if len(names) != len(values):
            raise CodecError(f"object has {len(names)} field names but {len(values)} values")
        fields = dict(zip(names, map(self._value_in, values), strict=True))
        if len(fields) != len(names):
            raise CodecError("object repeats a field name")
        return fields

    def _map_in(self, mapping: pb.Map) -> dict[str, Any]:
        keys, values = mapping.keys, mapping.values
        if len(keys) != len(values):
            raise CodecError(f"map has {len(keys)} keys but {len(values)} values")
        out = dict(zip(keys, map(self._value_in, values), strict=True))
        if len(out) != len(keys):
            raise CodecError("map repeats a key")
        return out

    def _value_in(self, value: pb.Value) -> Any:
        kind = value.WhichOneof("kind")
        if kind in _SCALAR_KINDS:
            return getattr(value, kind)
        if kind == "null_value":
            if value.null_value != 0:
                raise CodecError(f"null_value must be 0, got {value.null_value}")
            return None
        if kind == "list_value":
            return list(map(self._value_in, value.list_value.items))
        if kind == "map_value":
            return self._map_in(value.map_value)
        if kind == "tuple_value":
            return tuple(map(self._value_in, value.tuple_value.items))
        if kind == "object_value":
            return self._object_in(value.object_value)
        raise CodecError("value has no kind")
