"""The handshake of a session: the HELLO a client sends, and each side's reading of the other's.

Sans-I/O like :mod:`proxy_core.session`, which re-exports these names: the
proxy hands in the bytes of the first frame and sends what comes back. See
``docs/protocol.md``, section 3.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from .codecs.base import Codec
from .errors import AuthenticationError, HandshakeError, SessionRejected
from .protocol import (
    FEATURES,
    PROTOCOL_VERSION,
    Hello,
    Reject,
    RejectCode,
    Welcome,
    decode_handshake,
    encode_handshake,
)

__all__ = [
    "MIN_MESSAGE_BYTES",
    "client_accept",
    "client_hello",
    "common_features",
    "new_session_id",
    "server_negotiate",
]

#: The smallest ``max_message_bytes`` either side may announce or configure: the
#: limit applies to the handshake frames too, and those take a few hundred bytes.
MIN_MESSAGE_BYTES = 1024


def client_hello(
    codecs: Sequence[Codec],
    *,
    client_worker: str,
    server_worker: str,
    max_message_bytes: int,
    features: Sequence[str] = FEATURES,
    resume: tuple[str, int] | None = None,
) -> bytes:
    """Return the HELLO frame a client sends first.

    ``resume``: the id of a session to resume and the last message number
    received in it.
    """
    return encode_handshake(
        Hello(
            codecs=tuple(c.name for c in codecs),
            client_worker=client_worker,
            server_worker=server_worker,
            max_message_bytes=max_message_bytes,
            features=tuple(features),
            resume_session_id=resume[0] if resume is not None else None,
            resume_received=resume[1] if resume is not None else 0,
        )
    )


def common_features(offered: Sequence[str], codec: Codec) -> tuple[str, ...]:
    """Return the features of ``offered`` that this side speaks with ``codec``, in order.

    The server puts them in WELCOME; both sides then use exactly those.
    """
    return tuple(f for f in offered if f in FEATURES and (f != "batch" or codec.supports_batch))


def client_accept(data: bytes, codecs: Sequence[Codec]) -> tuple[Welcome, Codec]:
    """Read the server's answer to HELLO; return the WELCOME and the chosen codec.

    Raises:
        AuthenticationError: REJECT with code UNAUTHORIZED.
        SessionRejected: any other REJECT.
        HandshakeError: a malformed answer, or a codec we did not offer.
    """
    frame = decode_handshake(data, expect=("welcome", "reject"))
    if isinstance(frame, Reject):
        if frame.code == RejectCode.UNAUTHORIZED:
            raise AuthenticationError(frame.reason, frame.code)
        raise SessionRejected(frame.code, frame.reason)
    assert isinstance(frame, Welcome)
    if frame.version != PROTOCOL_VERSION:
        raise HandshakeError(f"server answered with protocol version {frame.version}")
    for codec in codecs:
        if codec.name == frame.codec:
            return frame, codec
    raise HandshakeError(f"server chose codec {frame.codec!r}, which was not offered")


def server_negotiate(
    data: bytes,
    codecs: Sequence[Codec],
    *,
    worker_name: str,
    remote_worker_name: str,
) -> tuple[Hello, Codec] | Reject:
    """Check a client's HELLO; return it with the chosen codec, or the REJECT to send.

    The codec is the first one in the client's order of preference that the
    server also has.
    """
    try:
        hello = decode_handshake(data, expect=("hello",))
    except HandshakeError as exc:  # its message names the fault
        return Reject(RejectCode.BAD_HELLO, str(exc))
    assert isinstance(hello, Hello)
    if hello.version != PROTOCOL_VERSION:
        return Reject(
            RejectCode.UNSUPPORTED_VERSION,
            f"protocol version {hello.version} is not supported; this server speaks "
            f"{PROTOCOL_VERSION}",
        )
    if hello.server_worker != worker_name or hello.client_worker != remote_worker_name:
        return Reject(
            RejectCode.UNKNOWN_WORKER,
            f"this server connects worker {worker_name!r} with remote worker "
            f"{remote_worker_name!r}; the client asked for {hello.server_worker!r} "
            f"from {hello.client_worker!r}",
        )
    if hello.max_message_bytes < MIN_MESSAGE_BYTES:
        return Reject(
            RejectCode.BAD_HELLO, f"max_message_bytes must be at least {MIN_MESSAGE_BYTES}"
        )
    by_name = {c.name: c for c in codecs}
    for name in hello.codecs:
        if name in by_name:
            return hello, by_name[name]
    return Reject(
        RejectCode.NO_COMMON_CODEC,
        f"no common codec: client offered {list(hello.codecs)}, server has {sorted(by_name)}",
    )


def new_session_id() -> str:
    """Return a fresh, unguessable session id."""
    return secrets.token_hex(16)
