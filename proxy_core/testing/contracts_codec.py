"""The pure contracts of a codec: :class:`CodecContract`, no event loop, objects in, assertions out.

Each runs once per codec of the class's ``codecs``. The live contracts that
depend on the codec are in :class:`~proxy_core.testing.contracts.TransportContract`.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from ..codecs.base import Codec
from ..errors import CodecError, UnknownMessageType
from ..messages import (
    AudioRawFrame,
    BusActivateWorkerMessage,
    BusDataMessage,
    BusDeactivateWorkerMessage,
    BusEndWorkerMessage,
    BusFrameMessage,
    BusMessage,
)
from ..protocol import Ack, Bye, Envelope, Msg, Ping, Pong, Ready
from ._base import Parametrized, per_codec
from ._harness import CLIENT_WORKER, SERVER_WORKER, text
from ._raw import GARBAGE, TEXT_LIKE, classify, unknown_type_frame

__all__ = ["CodecContract", "awkward_data"]


def awkward_data() -> dict[str, Any]:
    """Return a dict of the values a codec finds hardest: keys that look like its tags,
    tuples, bytes, awkward text, extreme numbers, nesting."""
    return {
        "$type": "evil.module:Thing",  # a key, not a tag: escaped on the wire
        "$dict": [["a", 1]],
        "$bytes": "not base64!",
        "tuple": (1, "two", (3.5, None)),
        "bytes": b"\x00\xff" * 3,
        "text": "h\u00e9llo \U0001f916 \u202e \x00",
        "ints": [0, -1, 2**63 - 1, -(2**63)],
        "floats": [0.1, -0.0, 1e308],
        "flags": [True, False, None],
        "nested": {"list": [{"k": [b"v"]}], "empty": {}, "": ""},
    }


def _sample_envelopes() -> list[Envelope]:
    return [
        Msg(1, text(CLIENT_WORKER, SERVER_WORKER, "hello")),
        Msg(2, BusDataMessage(CLIENT_WORKER, SERVER_WORKER, awkward_data())),
        Msg(3, _audio_message()),
        Msg(4, BusActivateWorkerMessage(CLIENT_WORKER, SERVER_WORKER, {"voice": "calm", "n": 1})),
        Msg(5, BusDeactivateWorkerMessage(CLIENT_WORKER, SERVER_WORKER)),
        Msg(6, BusEndWorkerMessage(CLIENT_WORKER, SERVER_WORKER, "done")),
        Msg(2**31 + 7, BusMessage(CLIENT_WORKER, None)),
        Ack(7),
        Ready(SERVER_WORKER),
        Ping(2**40),
        Pong(1),
        Bye(1000, "bye"),
        Bye(4008, "heartbeat timeout \u2014 n\u00e9"),
    ]


def _audio_message() -> BusMessage:
    return BusFrameMessage(
        CLIENT_WORKER, SERVER_WORKER, AudioRawFrame(bytes(range(256)) * 4, 16000, 2)
    )


class CodecContract(Parametrized):
    """The pure contracts of a codec: no event loop, objects in, assertions out.

    Attributes:
        codecs: the codecs to check, by registered name or instance.
    """

    pytestmark = [pytest.mark.proxy_core_contract]

    @per_codec
    def test_codec_is_named_and_found(self, proxy_core_codec: Codec) -> None:
        """A codec is a ``Codec`` whose ``name`` is a class attribute (the negotiated name)."""
        assert isinstance(proxy_core_codec, Codec)
        assert isinstance(proxy_core_codec.name, str) and proxy_core_codec.name
        assert type(proxy_core_codec).name == proxy_core_codec.name

    @per_codec
    def test_every_envelope_round_trips(self, proxy_core_codec: Codec) -> None:
        """Each kind of frame, and every value of the value model, decodes equal to itself."""
        for envelope in _sample_envelopes():
            data = proxy_core_codec.encode(envelope)
            assert type(data) is bytes, f"encode returned {type(data).__qualname__}"
            assert proxy_core_codec.decode(data) == envelope, envelope

    @per_codec
    def test_unknown_tag_is_refused_with_its_sequence_number(self, proxy_core_codec: Codec) -> None:
        """An unregistered tag raises ``UnknownMessageType`` carrying the MSG's ``seq``."""
        frame = unknown_type_frame(proxy_core_codec, 7, CLIENT_WORKER, SERVER_WORKER)
        if frame is None:
            pytest.skip(f"{type(proxy_core_codec).__qualname__} takes no registry= argument")
        with pytest.raises(UnknownMessageType) as caught:
            proxy_core_codec.decode(frame)
        assert caught.value.seq == 7, "pass seq= so the session consumes the number (no gap)"

    @per_codec
    def test_bad_bytes_raise_codec_error_only(self, proxy_core_codec: Codec) -> None:
        """Garbage, truncations and random bytes decode or raise ``CodecError``: nothing else."""
        good = proxy_core_codec.encode(Msg(3, text(CLIENT_WORKER, SERVER_WORKER, "truncate me")))
        rng = random.Random(1234)
        samples = [b"", *GARBAGE, *TEXT_LIKE, *(good[:n] for n in range(len(good)))]
        samples += [rng.randbytes(rng.randrange(1, 64)) for _ in range(300)]
        for data in samples:
            try:
                proxy_core_codec.decode(data)
            except CodecError:
                pass
        assert any(classify(proxy_core_codec, g) for g in GARBAGE), "garbage decoded"

    @per_codec
    def test_unencodable_values_raise_codec_error(self, proxy_core_codec: Codec) -> None:
        """A value outside the value model is a ``CodecError`` (the proxy counts encode_failed)."""
        for data in ({"x": object()}, {1: "an int key"}, {"s": {1, 2}}):
            message = BusDataMessage(CLIENT_WORKER, SERVER_WORKER, data)  # type: ignore[arg-type]
            with pytest.raises(CodecError):
                proxy_core_codec.encode(Msg(1, message))
