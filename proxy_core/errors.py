"""The exceptions of proxy-core.

Every error the framework raises derives from :class:`ProxyError`, so one
``except ProxyError`` catches them all. Exceptions from the wire libraries
(websockets, aiohttp, grpc) are translated at the backend edge and never reach
a user untranslated::

    ProxyError
    ├── ConfigurationError        local misuse: bad arguments, name clashes
    ├── PluginError               a transport or codec name that is not installed
    ├── CodecError                bytes that do not decode, values that do not encode
    │   └── UnknownMessageType    a wire tag that no registered type owns
    ├── MessageTooLarge           a frame over ``max_message_bytes`` (either direction)
    ├── QueueFull                 a worker's inbox is full and its overflow policy is ``error``
    ├── ProtocolError             the peer broke the session protocol
    │   └── HandshakeError        a HELLO/WELCOME that is malformed or refused
    │       └── SessionRejected   the server answered REJECT (code, reason)
    │           └── AuthenticationError   the server refused our credentials
    └── TransportError            the connection failed
        ├── ConnectError          could not open a connection
        │   └── TLSError          the TLS handshake failed (a certificate did not verify...)
        └── ConnectionClosed      the connection is closed (``receive`` at the end)

Blame is split as in h11: :class:`ConfigurationError` is local misuse,
:class:`ProtocolError` means the remote broke the protocol.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "CodecError",
    "ConfigurationError",
    "ConnectError",
    "ConnectionClosed",
    "HandshakeError",
    "MessageTooLarge",
    "PluginError",
    "ProtocolError",
    "ProxyError",
    "QueueFull",
    "SessionLost",
    "SessionRejected",
    "TLSError",
    "TransportError",
    "UnknownMessageType",
]


class ProxyError(Exception):
    """Root of every proxy-core error."""


class ConfigurationError(ProxyError, ValueError):
    """The caller used the API wrongly (bad argument, duplicate worker name...)."""


class PluginError(ProxyError, LookupError):
    """A transport or codec could not be found or loaded.

    Attributes:
        kind: ``"transport"``, ``"codec"`` or ``"bus"``.
        name: the name that was asked for.
        available: the names that are installed.
    """

    def __init__(self, kind: str, name: str, available: list[str], detail: str = "") -> None:
        self.kind = kind
        self.name = name
        self.available = available
        names = ", ".join(available) if available else "none"
        kinds = "buses" if kind == "bus" else f"{kind}s"
        message = f"unknown {kind} {name!r}; installed {kinds}: {names}"
        if detail:
            message = f"{kind} {name!r} could not be loaded: {detail}; installed {kinds}: {names}"
        super().__init__(message)


class CodecError(ProxyError):
    """Bytes that do not decode, or a value that the codec cannot encode.

    Attributes:
        seq: the sequence number of the MSG frame that failed, when it is known,
            so the session can acknowledge the frame and count the drop.
    """

    def __init__(self, message: str, *, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq


class UnknownMessageType(CodecError):
    """A wire tag that no registered message or frame type owns."""

    def __init__(self, tag: object, *, seq: int | None = None) -> None:
        super().__init__(f"unknown message type tag {tag!r}", seq=seq)
        self.tag = tag


class MessageTooLarge(ProxyError):
    """A frame is larger than ``max_message_bytes``.

    Attributes:
        size: the size of the frame in bytes (``None`` when the backend only
            knows that the limit was exceeded).
        limit: the limit in bytes.
    """

    def __init__(self, size: int | None, limit: int) -> None:
        what = f"{size} bytes" if size is not None else "a frame"
        super().__init__(f"{what} exceeds max_message_bytes={limit}")
        self.size = size
        self.limit = limit


class QueueFull(ProxyError):
    """A worker's inbox is full and its overflow policy is ``error``.

    Raised to the sender (``send_bus_message``, ``Bus.send``); the message
    was not queued, and the drop is counted in the worker's ``queue_stats``.

    Attributes:
        worker: the name of the worker whose inbox is full.
        policy: the overflow policy (``"error"``).
        maxsize: the inbox's bound.
    """

    def __init__(self, worker: str, policy: str, maxsize: int) -> None:
        super().__init__(
            f"the inbox of worker {worker!r} is full ({maxsize} messages, overflow={policy!r})"
        )
        self.worker = worker
        self.policy = policy
        self.maxsize = maxsize


class ProtocolError(ProxyError):
    """The peer broke the session protocol."""


class HandshakeError(ProtocolError):
    """The session handshake failed (malformed HELLO/WELCOME, or a refusal)."""


class SessionRejected(HandshakeError):
    """The server refused the session with REJECT.

    Attributes:
        code: the reject code (see ``proxy_core.protocol.RejectCode``).
        reason: the server's human-readable reason.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"session rejected by server ({code}): {reason}")
        self.code = code
        self.reason = reason


class AuthenticationError(SessionRejected):
    """The server refused the client's credentials (headers or metadata).

    An ``authenticate`` hook may raise it to refuse with a reason of its own.
    """

    def __init__(self, reason: str = "unauthorized", code: int = 4001) -> None:
        super().__init__(code, reason)


class SessionLost(ProxyError):
    """The server no longer holds the session the client tried to resume.

    Its grace period ran out (or the server restarted): the messages that were
    not acknowledged before the link was lost are gone. A client configured
    with ``on_session_expired="new"`` (the default) reports this through its
    ``on_session_lost`` event and goes on with a new session; with ``"error"``
    it stops and raises this from ``wait_connected``.

    Attributes:
        session_id: the session that was lost.
        unacked: how many of our messages were not acknowledged, hence lost.
    """

    def __init__(self, session_id: str, unacked: int) -> None:
        super().__init__(
            f"the server no longer holds session {session_id}; "
            f"{unacked} unacknowledged message(s) were lost"
        )
        self.session_id = session_id
        self.unacked = unacked


class TransportError(ProxyError):
    """The connection failed."""


class ConnectError(TransportError):
    """A connection could not be opened."""


class TLSError(ConnectError):
    """The TLS handshake failed, so no connection was opened.

    Most often the peer's certificate did not verify (the client does not
    trust the CA that issued it, its name does not match the host, it
    expired): the message then says ``certificate verification failed``.
    Also raised when the server refused our certificate, or one peer does
    not speak TLS where the other does, when the backend can tell.
    """


class ConnectionClosed(TransportError):
    """The connection is closed; raised by ``Connection.receive`` at the end.

    Attributes:
        code: the close code when the backend knows it (WebSocket codes), else ``None``.
        reason: the close reason, possibly empty.
    """

    def __init__(self, code: int | None = None, reason: str = "") -> None:
        detail = f" ({code}{': ' + reason if reason else ''})" if code is not None else ""
        super().__init__(f"connection closed{detail}")
        self.code = code
        self.reason = reason
