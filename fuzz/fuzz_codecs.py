"""A coverage-guided fuzzer (libFuzzer, through atheris) for the decoders and the session.

Optional: CI runs the hypothesis tests (``tests/test_fuzz_*.py``) and replays
this harness's seed corpus (``tests/test_fuzz_codecs.py``); this is for longer
campaigns. See ``docs/fuzzing.md``::

    .venv/bin/pip install atheris
    .venv/bin/python fuzz/fuzz_codecs.py --write-corpus fuzz/corpus   # seed frames, once
    .venv/bin/python fuzz/fuzz_codecs.py -runs=200000 fuzz/corpus     # bounded run
    .venv/bin/python fuzz/fuzz_codecs.py -max_total_time=600 fuzz/corpus

The first byte of an input picks the target, the rest is its data:

- ``decode/<codec>``: ``codec.decode`` may only raise ``CodecError``;
- ``handshake``: ``decode_handshake`` may only raise ``HandshakeError``;
- ``negotiate``: ``server_negotiate`` never raises (it answers REJECT);
- ``accept``: ``client_accept`` may only raise ``HandshakeError``;
- ``session/<codec>``: the data is frames, each behind a 2-byte big-endian
  length, fed to ``Session.receive`` after a real handshake; it may only raise
  ``ProtocolError``, and what it owes (``data_to_send``) stays at one PONG per
  PING plus one ACK per frame.

Any other exception is a crash that libFuzzer reports with the input that
caused it (``crash-<sha1>``); replay it with ``python fuzz/fuzz_codecs.py crash-...``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import atheris
except ImportError:  # replaying the corpus (tests) needs no atheris
    atheris = None

# Coverage feedback for our code only; the wire libraries are not instrumented.
_instrumented: Any = (
    atheris.instrument_imports(include=["proxy_core", "proxy_core_example_codec"])
    if atheris is not None
    else contextlib.nullcontext()
)
with _instrumented:
    from proxy_core.codecs.base import Codec
    from proxy_core.errors import CodecError, HandshakeError, PluginError, ProtocolError
    from proxy_core.messages import BusDataMessage, BusFrameMessage, TextFrame
    from proxy_core.plugins import available_codecs, load_codec
    from proxy_core.protocol import (
        Ack,
        Batch,
        Bye,
        Msg,
        Ping,
        Pong,
        Ready,
        Reject,
        Welcome,
        decode_handshake,
        encode_handshake,
    )
    from proxy_core.session import Session, client_accept, client_hello, server_negotiate

    def _codecs() -> dict[str, Codec]:
        found: dict[str, Codec] = {}
        for name in available_codecs():  # imported here, so instrumented too
            try:
                found[name] = load_codec(name)()
            except PluginError:
                continue
        return found

    CODECS = _codecs()
CLIENT, SERVER = "acme", "assistant"


def _decode(codec_name: str) -> Callable[[bytes], None]:
    codec = CODECS[codec_name]

    def target(data: bytes) -> None:
        try:
            codec.decode(data)
        except CodecError:
            pass

    return target


def _handshake(data: bytes) -> None:
    try:
        decode_handshake(data)
    except HandshakeError:
        pass


def _negotiate(data: bytes) -> None:
    server_negotiate(data, list(CODECS.values()), worker_name=SERVER, remote_worker_name=CLIENT)


def _accept(data: bytes) -> None:
    try:
        client_accept(data, list(CODECS.values()))
    except HandshakeError:
        pass


def _frames(data: bytes, limit: int = 64) -> list[bytes]:
    frames, pos = [], 0
    while pos + 2 <= len(data) and len(frames) < limit:
        size = int.from_bytes(data[pos : pos + 2], "big")
        frames.append(data[pos + 2 : pos + 2 + size])
        pos += 2 + size
    return frames


def _session(codec_name: str) -> Callable[[bytes], None]:
    codec = CODECS[codec_name]

    def target(data: bytes) -> None:
        hello = client_hello(
            [codec], client_worker=CLIENT, server_worker=SERVER, max_message_bytes=1 << 20
        )
        negotiated = server_negotiate(hello, [codec], worker_name=SERVER, remote_worker_name=CLIENT)
        assert not isinstance(negotiated, Reject)
        session = Session(negotiated[1], session_id="fuzz", peer_max_message_bytes=1 << 20, now=0.0)
        for i in range(3):
            session.send_message(BusDataMessage(SERVER, CLIENT, {"i": i}))
        session.ping_frame(0.0)
        for now, frame in enumerate(_frames(data), start=1):
            try:
                session.receive(frame, float(now))
            except ProtocolError:
                return
            try:
                decoded = codec.decode(frame)
                items = decoded.items if isinstance(decoded, Batch) else (decoded,)
            except CodecError:
                items = ()
            pings = sum(isinstance(i, Ping) for i in items)
            owed = session.data_to_send()
            assert len(owed) <= pings + 1, (len(owed), pings)
            assert session.unacked <= 3

    return target


TARGETS: list[tuple[str, Callable[[bytes], None]]] = [
    *((f"decode/{n}", _decode(n)) for n in sorted(CODECS)),
    ("handshake", _handshake),
    ("negotiate", _negotiate),
    ("accept", _accept),
    *((f"session/{n}", _session(n)) for n in sorted(CODECS)),
]


def check_one(data: bytes) -> None:
    """Run one input: the first byte picks the target."""
    if not data:
        return
    TARGETS[data[0] % len(TARGETS)][1](data[1:])


def seed_corpus() -> dict[str, bytes]:
    """Real frames for every target, named ``<target>-<n>`` (the first byte selects it)."""
    message = BusFrameMessage(CLIENT, SERVER, TextFrame("hello"))
    envelopes = [
        Msg(1, message),
        Msg(2, BusDataMessage(CLIENT, SERVER, {"k": [1, 2.5, None, (True,)], "$t": b"\x00"})),
        Ack(0),
        Ready(CLIENT),
        Ping(1),
        Pong(1),
        Bye(1000, "bye"),
    ]
    handshakes = [
        client_hello(
            list(CODECS.values()),
            client_worker=CLIENT,
            server_worker=SERVER,
            max_message_bytes=4096,
        ),
        encode_handshake(Welcome("json", "ab" * 16, (SERVER,), 1 << 20)),
        encode_handshake(Reject(4001, "unauthorized")),
    ]
    corpus: dict[str, bytes] = {}
    for index, (name, _) in enumerate(TARGETS):
        prefix = bytes([index])
        kind, _, codec_name = name.partition("/")
        if kind == "decode":
            codec = CODECS[codec_name]
            frames = [codec.encode(e) for e in envelopes]
            if getattr(codec, "supports_batch", False):
                frames.append(codec.encode_batch(frames[:3]))
            samples = frames
        elif kind == "session":
            codec = CODECS[codec_name]
            frames = [codec.encode(e) for e in envelopes]
            samples = [b"".join(len(f).to_bytes(2, "big") + f for f in frames)]
        else:
            samples = handshakes
        for n, sample in enumerate(samples):
            corpus[f"{name.replace('/', '-')}-{n}"] = prefix + sample
    return corpus


def main(argv: list[str]) -> None:
    if len(argv) >= 3 and argv[1] == "--write-corpus":
        folder = Path(argv[2])
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in seed_corpus().items():
            (folder / name).write_bytes(data)
        print(f"wrote {len(seed_corpus())} seed inputs to {folder}")
        return
    if atheris is None:
        sys.exit("atheris is not installed: pip install atheris")
    atheris.Setup(argv, check_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
