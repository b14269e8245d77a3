"""Fuzzing the sans-I/O session: random and mutated frame sequences into ``Session.receive``.

After a real handshake, a session is fed frames built from its own state (the
next MSG, duplicates, gaps, ACKs, PINGs, PONGs, READY, BYE, BATCHes of those) and
mutated or random bytes. Whatever arrives:

- ``receive`` returns one of the documented events (or ``None``) or raises
  :class:`~proxy_core.errors.ProtocolError`, after which the session is over;
- the numbering only moves by one per accepted MSG, and never backwards;
- receiving never grows the outbox (only ``send_message`` does);
- the control frames owed (``data_to_send``) are at most one PONG per PING
  received plus one ACK per ``receive``, so a drained session stays empty
  however many frames arrive, and the unanswered PINGs remembered stay at 16.

``server_negotiate`` and ``client_accept`` are fed random and mutated handshakes:
the server answers a REJECT or a codec, never raises; the client accepts a
WELCOME for a codec it offered or raises ``HandshakeError`` (``SessionRejected``,
``AuthenticationError``).
"""

from __future__ import annotations

import json
import random
from typing import Any, get_args

import pytest
from _fuzzing import (
    CLIENT_WORKER,
    CODEC_NAMES,
    CODECS,
    SEED,
    SEED_ENVELOPES,
    SERVER_WORKER,
    fuzz_settings,
    items_of,
    mutate,
    mutated_frames,
    rounds,
    seed_frames,
)
from hypothesis import given
from hypothesis import strategies as st

from proxy_core import session as session_module
from proxy_core.codecs.base import Codec
from proxy_core.errors import (
    AuthenticationError,
    CodecError,
    HandshakeError,
    ProtocolError,
    SessionRejected,
)
from proxy_core.messages import BusDataMessage, BusMessage
from proxy_core.protocol import (
    Ack,
    Bye,
    Envelope,
    Hello,
    Msg,
    Ping,
    Pong,
    Ready,
    Reject,
    RejectCode,
    Welcome,
    encode_handshake,
)
from proxy_core.rules import DropReason
from proxy_core.session import (
    ByeReceived,
    DuplicateDiscarded,
    MessageReceived,
    MessageUndecodable,
    PongReceived,
    RemoteReady,
    Session,
    client_accept,
    client_hello,
    server_negotiate,
)
from proxy_core.testing._raw import unknown_type_frame

pytestmark = pytest.mark.timeout(120)

#: The events of one frame; a BATCH (when the codec has them) wraps several.
FRAME_EVENTS: tuple[type[Any], ...] = get_args(
    getattr(session_module, "FrameEvent", session_module.Event)
)
_BATCH_EVENT: type[Any] | None = getattr(session_module, "BatchReceived", None)
#: What the session remembers of its unanswered PINGs (``Session.ping_frame``).
PINGS_KEPT = 16
#: Messages our side has sent, so that ACKs up to this number are legal.
SENT = 4
SEEDS = {name: seed_frames(codec) for name, codec in CODECS.items()}


def open_session(name: str, **options: Any) -> Session:
    """The server's session after a real handshake, with :data:`SENT` messages sent."""
    codec = CODECS[name]
    hello = client_hello(
        [codec], client_worker=CLIENT_WORKER, server_worker=SERVER_WORKER, max_message_bytes=1 << 20
    )
    negotiated = server_negotiate(
        hello, [codec], worker_name=SERVER_WORKER, remote_worker_name=CLIENT_WORKER
    )
    assert not isinstance(negotiated, Reject), negotiated
    accepted, chosen = negotiated
    session = Session(
        chosen,
        session_id="fuzz",
        peer_max_message_bytes=accepted.max_message_bytes,
        now=0.0,
        **options,
    )
    for i in range(SENT):
        session.send_message(BusDataMessage(SERVER_WORKER, CLIENT_WORKER, {"i": i}))
    return session


class Probe:
    """Feeds one session and checks every invariant after every frame."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.codec: Codec = session.codec
        self.now = 0.0
        self.outstanding: set[int] = set()  # our PING nonces not answered yet
        self.frames = 0
        self.events: list[Any] = []
        self.over = False

    def ping(self) -> None:
        frame = self.session.ping_frame(self.now)
        envelope = self.codec.decode(frame)
        assert isinstance(envelope, Ping)
        self.outstanding.add(envelope.nonce)
        if len(self.outstanding) > PINGS_KEPT:  # the session forgets the oldest
            self.outstanding.discard(min(self.outstanding))

    def feed(self, data: bytes) -> bool:
        """Feed one frame; ``False`` once the session is over (a ProtocolError)."""
        assert not self.over
        session = self.session
        before_seq, before_unacked = session.last_received_seq, session.unacked
        self.now += 0.001
        self.frames += 1
        try:
            result = session.receive(data, self.now)
        except ProtocolError:
            self.over = True
            return False
        events = self._flatten(result)
        self.events += events
        accepted = 0
        for event in events:
            assert isinstance(event, FRAME_EVENTS), type(event)
            accepted += self._check(event)
        # Numbering: one step per accepted MSG (decodable or not), never back.
        assert session.last_received_seq == before_seq + accepted
        assert session.unacked <= before_unacked  # receiving never adds to the outbox
        self._check_owed(data)
        return True

    def _flatten(self, result: Any) -> list[Any]:
        if result is None:
            return []
        if _BATCH_EVENT is not None and isinstance(result, _BATCH_EVENT):
            return list(result.events)
        return [result]

    def _check(self, event: Any) -> int:
        """Check one event; return 1 if it accepted a sequence number."""
        session = self.session
        if isinstance(event, MessageReceived):
            assert isinstance(event.message, BusMessage)
            assert 1 <= event.seq <= session.last_received_seq
            return 1
        if isinstance(event, MessageUndecodable):
            assert event.reason in (DropReason.MALFORMED, DropReason.UNKNOWN_TYPE)
            assert type(event.error) is str
            if event.seq is None:
                return 0
            assert 1 <= event.seq <= session.last_received_seq
            return 1
        if isinstance(event, DuplicateDiscarded):
            assert event.seq <= session.last_received_seq
        elif isinstance(event, PongReceived):
            assert event.nonce in self.outstanding, "a PONG we did not ask for (or twice)"
            self.outstanding.discard(event.nonce)
            assert event.rtt >= 0
        elif isinstance(event, RemoteReady):
            assert type(event.worker) is str
        else:
            assert isinstance(event, ByeReceived)
            assert isinstance(event.code, int) and type(event.reason) is str
        return 0

    def _check_owed(self, data: bytes) -> None:
        """What the session owes now: a PONG per PING in ``data``, at most one ACK."""
        try:
            pings = sum(isinstance(i, Ping) for i in items_of(self.codec.decode(data)))
        except CodecError:
            pings = 0
        owed = [self.codec.decode(frame) for frame in self.session.data_to_send()]
        acks = [e for e in owed if isinstance(e, Ack)]
        pongs = [e for e in owed if isinstance(e, Pong)]
        assert len(acks) + len(pongs) == len(owed), owed
        assert len(acks) <= 1 and len(pongs) == pings
        for ack in acks:
            assert ack.seq == self.session.last_received_seq
        assert self.session.data_to_send() == []  # drained is drained

    def finish(self) -> None:
        """The ACK still owed, if any, covers exactly what was received."""
        frame = self.session.ack_frame()
        if frame is not None:
            assert self.codec.decode(frame) == Ack(self.session.last_received_seq)
        assert self.session.ack_frame() is None


# ---------------------------------------------------------------- frames from the state

RECIPES = [
    "next",
    "next",
    "next",
    "duplicate",
    "gap",
    "seq0",
    "ack",
    "ack_beyond",
    "ping",
    "pong_ours",
    "pong_random",
    "ready",
    "bye",
    "unknown_type",
    "mutant",
    "mutant",
    "random",
    "batch",
]


def _message(draw: st.DrawFn, name: str) -> BusMessage:
    messages = [e.message for e in SEED_ENVELOPES if isinstance(e, Msg)]
    return draw(st.sampled_from(messages))


def _encode(codec: Codec, envelope: Envelope) -> bytes | None:
    try:
        return codec.encode(envelope)
    except CodecError:  # e.g. a negative number where protobuf has uint64
        return None


@st.composite
def next_frame(draw: st.DrawFn, name: str, probe: Probe, *, in_batch: bool = False) -> bytes:
    """One frame chosen from the session's state (or garbage)."""
    codec, session = probe.codec, probe.session
    last = session.last_received_seq
    recipe = draw(st.sampled_from(RECIPES[:-1] if in_batch else RECIPES))
    envelope: Envelope | None = None
    if recipe == "next":
        envelope = Msg(last + 1, _message(draw, name))
    elif recipe == "duplicate":
        envelope = Msg(draw(st.integers(1, max(1, last))), _message(draw, name))
    elif recipe == "gap":
        envelope = Msg(last + draw(st.integers(2, 2**40)), _message(draw, name))
    elif recipe == "seq0":
        envelope = Msg(draw(st.integers(-5, 0)), _message(draw, name))
    elif recipe == "ack":
        envelope = Ack(draw(st.integers(0, session.last_sent_seq)))
    elif recipe == "ack_beyond":
        envelope = Ack(session.last_sent_seq + draw(st.integers(1, 2**40)))
    elif recipe == "ping":
        envelope = Ping(draw(st.integers(0, 2**53 - 1)))
    elif recipe == "pong_ours":
        envelope = Pong(draw(st.sampled_from(sorted(probe.outstanding) or [1])))
    elif recipe == "pong_random":
        envelope = Pong(draw(st.integers(0, 2**53 - 1)))
    elif recipe == "ready":
        envelope = Ready(draw(st.sampled_from([CLIENT_WORKER, SERVER_WORKER, "", "x" * 300])))
    elif recipe == "bye":
        envelope = Bye(draw(st.sampled_from([1000, 1001, 1002, 4008, 0])), draw(st.text()))
    elif recipe == "unknown_type":
        seq = last + draw(st.integers(0, 1))
        frame = unknown_type_frame(codec, max(seq, 1), CLIENT_WORKER, SERVER_WORKER)
        return frame if frame is not None else b""
    elif recipe == "mutant":
        return draw(mutated_frames(SEEDS[name]))
    elif recipe == "random":
        return draw(st.binary(max_size=64))
    else:  # a BATCH of a few of the above, when the codec has them
        if not getattr(codec, "supports_batch", False):
            return draw(st.binary(max_size=8))
        size = draw(st.integers(2, 6))
        return codec.encode_batch(
            [draw(next_frame(name, probe, in_batch=True)) for _ in range(size)]
        )
    return _encode(codec, envelope) or b""


@pytest.mark.parametrize("name", CODEC_NAMES)
@fuzz_settings(100)
@given(data=st.data(), ack_every=st.integers(1, 40), pings=st.integers(0, 20))
def test_random_frame_sequences_keep_the_session_consistent(
    name: str, data: st.DataObject, ack_every: int, pings: int
) -> None:
    probe = Probe(open_session(name, ack_every=ack_every))
    for _ in range(pings):
        probe.ping()
    for _ in range(data.draw(st.integers(1, 60), label="frames")):
        if not probe.feed(data.draw(next_frame(name, probe))):
            break
    if not probe.over:
        probe.finish()


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_thousands_of_seeded_frames(name: str) -> None:
    """Volume: a seeded stream of mostly-valid and mutated frames, new session after each error."""
    rng = random.Random(f"{SEED}-session-{name}")
    codec = CODECS[name]
    total, sessions, delivered = rounds(3000), 0, 0
    probe = Probe(open_session(name, ack_every=rng.randint(1, 40)))
    for _ in range(total):
        frame = _seeded_frame(rng, name, probe)
        seen = len(probe.events)
        if not probe.feed(frame):
            sessions += 1
            probe = Probe(open_session(name, ack_every=rng.randint(1, 40)))
            continue
        delivered += sum(isinstance(e, MessageReceived) for e in probe.events[seen:])
        if rng.random() < 0.02:
            probe.ping()
    assert delivered > 0 and sessions > 0  # both paths ran
    assert codec is probe.session.codec


def _seeded_frame(rng: random.Random, name: str, probe: Probe) -> bytes:
    codec, session = probe.codec, probe.session
    roll = rng.random()
    last = session.last_received_seq
    message = rng.choice([e.message for e in SEED_ENVELOPES if isinstance(e, Msg)])
    if roll < 0.01:  # a gap: the session ends, the next one starts afresh
        return _encode(codec, Msg(last + 2, message)) or b""
    if roll < 0.45:
        return _encode(codec, Msg(last + 1, message)) or b""
    if roll < 0.55:
        return _encode(codec, Ping(rng.randrange(2**53))) or b""
    if roll < 0.6:
        return _encode(codec, Ack(rng.randint(0, session.last_sent_seq))) or b""
    if roll < 0.65:
        return _encode(codec, Msg(rng.randint(1, max(1, last)), message)) or b""
    if roll < 0.9:
        return mutate(rng.choice(SEEDS[name]), rng, rng.randint(1, 4))
    if roll < 0.95 and getattr(codec, "supports_batch", False):
        inner = [
            _encode(codec, Msg(last + 1 + i, message)) or b"" for i in range(rng.randint(2, 9))
        ]
        inner.insert(rng.randrange(len(inner)), mutate(rng.choice(SEEDS[name]), rng, 2))
        return codec.encode_batch(inner)
    return rng.randbytes(rng.randint(0, 32))


# ---------------------------------------------------------------- floods and bounds


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_a_ping_flood_owes_one_pong_each_and_nothing_once_drained(name: str) -> None:
    probe = Probe(open_session(name))
    frame = CODECS[name].encode(Ping(7))
    for _ in range(rounds(5000)):
        assert probe.feed(frame)  # each step: exactly one PONG, then drained
    assert probe.session.data_to_send() == []
    assert probe.events == []  # PINGs are answered, not reported


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_undrained_control_frames_are_one_per_frame_received(name: str) -> None:
    """Without draining (the proxy drains after every frame), one PONG per PING, no more."""
    session = open_session(name)
    frame = CODECS[name].encode(Ping(7))
    for _ in range(1000):
        session.receive(frame, 1.0)
    assert len(session.data_to_send()) == 1000
    assert session.data_to_send() == []


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_unanswered_pings_are_remembered_sixteen_at_most(name: str) -> None:
    """Thousands of PINGs left unanswered: only the newest 16 still match a PONG."""
    session = open_session(name)
    codec = CODECS[name]
    nonces = []
    for i in range(rounds(2000)):
        envelope = codec.decode(session.ping_frame(float(i)))
        assert isinstance(envelope, Ping)
        nonces.append(envelope.nonce)
    matched = [session.receive(codec.encode(Pong(n)), 5000.0) for n in nonces]
    answered = [e.nonce for e in matched if isinstance(e, PongReceived)]
    assert answered == nonces[-PINGS_KEPT:]
    # And each at most once.
    assert all(session.receive(codec.encode(Pong(n)), 5001.0) is None for n in nonces)


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_a_pong_flood_with_random_nonces_reports_nothing(name: str) -> None:
    probe = Probe(open_session(name))
    codec = CODECS[name]
    rng = random.Random(f"{SEED}-pong-{name}")
    probe.ping()
    for _ in range(rounds(3000)):
        assert probe.feed(codec.encode(Pong(rng.randrange(2, 2**53))))
    assert probe.events == []


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_thousands_of_messages_owe_one_ack_per_ack_every(name: str) -> None:
    probe = Probe(open_session(name, ack_every=32))
    codec = CODECS[name]
    message = BusDataMessage(CLIENT_WORKER, SERVER_WORKER, {})
    for seq in range(1, rounds(3000) + 1):
        assert probe.feed(codec.encode(Msg(seq, message)))
    assert probe.session.last_received_seq == rounds(3000)
    assert len(probe.events) == rounds(3000)
    probe.finish()


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_acks_never_grow_the_outbox_and_a_bad_one_ends_the_session(name: str) -> None:
    probe = Probe(open_session(name))
    codec = CODECS[name]
    for seq in [0, 1, 1, 0, 3, 2, 4, 4, 0]:
        assert probe.feed(codec.encode(Ack(seq)))
    assert probe.session.unacked == 0
    assert not probe.feed(codec.encode(Ack(SENT + 1)))


# ---------------------------------------------------------------- the handshake

_CODEC_LIST = [CODECS[n] for n in CODEC_NAMES]
_HELLO = client_hello(
    _CODEC_LIST, client_worker=CLIENT_WORKER, server_worker=SERVER_WORKER, max_message_bytes=4096
)
_WELCOME = encode_handshake(Welcome("json", "ab" * 16, (SERVER_WORKER,), 1 << 20))
_REJECTS = [encode_handshake(Reject(code, "no")) for code in (*RejectCode, 1000, -1)]
HANDSHAKES = [_HELLO, _WELCOME, *_REJECTS]


def mutated_frames_of(frame: bytes) -> st.SearchStrategy[bytes]:
    return mutated_frames([frame])


def negotiate(data: bytes) -> tuple[Hello, Codec] | Reject:
    """server_negotiate never raises: it answers with a REJECT, or a codec it has."""
    result = server_negotiate(
        data, _CODEC_LIST, worker_name=SERVER_WORKER, remote_worker_name=CLIENT_WORKER
    )
    if isinstance(result, Reject):
        assert result.code in set(RejectCode), result
        assert type(result.reason) is str
        # A REJECT is sent in the bootstrap encoding: it must encode.
        assert encode_handshake(result)
        return result
    hello, codec = result
    assert isinstance(hello, Hello) and codec in _CODEC_LIST
    assert codec.name in hello.codecs
    assert (hello.client_worker, hello.server_worker) == (CLIENT_WORKER, SERVER_WORKER)
    assert hello.max_message_bytes >= 1024
    return result


def accept(data: bytes) -> None:
    """client_accept answers a WELCOME for a codec we offered, or raises HandshakeError."""
    offered = _CODEC_LIST[:2]
    try:
        welcome, codec = client_accept(data, offered)
    except AuthenticationError as exc:
        assert exc.code == RejectCode.UNAUTHORIZED
        return
    except SessionRejected as exc:
        assert type(exc.code) is int and type(exc.reason) is str
        return
    except HandshakeError:
        return
    assert isinstance(welcome, Welcome) and codec in offered
    assert welcome.codec == codec.name and welcome.version == 1


@fuzz_settings(400)
@given(data=st.binary(max_size=300) | st.sampled_from(HANDSHAKES).flatmap(mutated_frames_of))
def test_server_negotiate_answers_anything_with_reject_or_codec(data: bytes) -> None:
    negotiate(data)


@fuzz_settings(400)
@given(data=st.binary(max_size=300) | st.sampled_from(HANDSHAKES).flatmap(mutated_frames_of))
def test_client_accept_raises_only_handshake_errors(data: bytes) -> None:
    accept(data)


field_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.sampled_from(CODEC_NAMES + [CLIENT_WORKER, SERVER_WORKER, "hello", "welcome"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children),
    max_leaves=6,
)


@fuzz_settings(250)
@given(
    base=st.sampled_from(HANDSHAKES),
    changes=st.dictionaries(
        st.sampled_from(
            ["type", "version", "codecs", "client_worker", "server_worker", "max_message_bytes"]
            + ["codec", "session_id", "ready", "code", "reason", "features", "protocol"]
            + ["resume_session_id", "resume_received", "resumed", "received"]
        ),
        field_values,
        max_size=3,
    ),
)
def test_handshakes_with_wrong_fields_are_refused_cleanly(
    base: bytes, changes: dict[str, Any]
) -> None:
    body = json.loads(base)
    body.update(changes)
    data = json.dumps(body).encode()
    negotiate(data)
    accept(data)


def test_a_valid_hello_gets_a_codec() -> None:
    """The property tests above can tell the two outcomes apart."""
    result = negotiate(_HELLO)
    assert not isinstance(result, Reject)
    assert result[1] is _CODEC_LIST[0]
