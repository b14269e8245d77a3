"""The decoding half of the ``protobuf`` codec: ``proxy_core.v1.Envelope`` bytes to frames.

:class:`ProtobufDecoding` is a base of
:class:`~proxy_core.codecs.protobuf.ProtobufCodec`, which sets the attributes
it reads; it builds the built-in messages and frames straight from their
dedicated messages (the fast path) and every other type through the registry,
by its wire tag, never importing a name read from the wire.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from ..errors import CodecError, UnknownMessageType
from ..messages import (
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
from ._protowire import _bad_counter, _unparsed
from .base import MAX_BATCH_FRAMES, MAX_SAFE_INTEGER, bye_code_error

if TYPE_CHECKING:
    from ._generated import envelope_pb2 as pb

__all__ = ["BUILTINS", "ProtobufDecoding"]

#: The built-in types with a dedicated message, by the wire tag it implies.
BUILTINS: Final[dict[str, type[Any]]] = {
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
_SCALAR_KINDS: Final = frozenset(
    {"str_value", "int_value", "float_value", "bool_value", "bytes_value"}
)


class ProtobufDecoding:
    """Decode ``proxy_core.v1.Envelope`` bytes; the decoding methods of ``ProtobufCodec``.

    Attributes:
        _pb: the generated module ``envelope_pb2``.
        _decode_error: protobuf's ``DecodeError``.
        _registry: the wire types accepted.
        _fast: the wire tags this registry gives to their built-in class.
    """

    _pb: Any
    _decode_error: type[Exception]
    _registry: TypeRegistry
    _fast: frozenset[str]

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
        cls = BUILTINS[tag] if fast else self._lookup(tag)  # the tag before its fields
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
