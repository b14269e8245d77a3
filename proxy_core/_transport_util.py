"""Small pieces every backend needs in the same form, re-exported by :mod:`proxy_core.transport`.

One copy here, so that URLs, limits, addresses and errors read the same
whichever backend is in use. Import them from ``proxy_core.transport``.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import SplitResult, urlsplit

from .errors import AuthenticationError, ConfigurationError, ConnectError, ProxyError, TLSError
from .tls import tls_failure

__all__ = [
    "MAX_REASON_BYTES",
    "bound_url",
    "check_max_message_bytes",
    "check_tls_scheme",
    "connect_error",
    "describe_error",
    "format_address",
    "format_host",
    "listen_error",
    "lower_headers",
    "parse_url",
    "plain_errno",
    "redact_url",
    "refusal_error",
    "truncate_reason",
    "url_port",
]

#: The longest close reason, in bytes of UTF-8: what a WebSocket close frame
#: carries (125 bytes of payload, less the 2-byte code). One limit for every
#: reason that travels: close reasons on every backend, BYE and REJECT reasons.
MAX_REASON_BYTES = 123


def parse_url(url: str, *, transport: str, schemes: Sequence[str]) -> SplitResult:
    """Split ``url`` and check it has one of ``schemes``, a valid port and a host.

    Raises:
        ConfigurationError: the URL does not fit (the message names what would).
    """
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise ConfigurationError(
            f"transport {transport!r} cannot use {redact_url(url)}: "
            f"the URL scheme must be one of {', '.join(schemes)}"
        )
    try:
        parts.port  # noqa: B018 -- validates the port
    except ValueError as exc:
        raise ConfigurationError(f"invalid port in {redact_url(url)}") from exc
    if not parts.hostname:
        raise ConfigurationError(f"the URL {redact_url(url)} has no host")
    return parts


def url_port(parts: SplitResult, *, secure: str) -> int:
    """Return the port of a parsed URL: its own, else 443 for the ``secure`` scheme, else 80."""
    if parts.port is not None:
        return parts.port
    return 443 if parts.scheme == secure else 80


def bound_url(parts: SplitResult, port: int) -> str:
    """Return the URL a listener serves: ``parts`` with the port it really bound."""
    return f"{parts.scheme}://{format_host(parts.hostname)}:{port}{parts.path}"


def redact_url(url: str) -> str:
    """Return ``url`` without user credentials, for messages and logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def check_max_message_bytes(max_message_bytes: int) -> None:
    """Refuse a frame limit that is not positive.

    Raises:
        ConfigurationError: ``max_message_bytes`` < 1.
    """
    if max_message_bytes < 1:
        raise ConfigurationError(f"max_message_bytes must be positive, not {max_message_bytes}")


def truncate_reason(reason: str) -> str:
    """Return ``reason`` cut to at most 123 bytes of UTF-8, on a character boundary.

    The one rule for every reason that travels (``docs/protocol.md``, section
    1): a close reason on any backend, and the reason of a BYE or a REJECT.
    A character cut in the middle is left out whole. A lone surrogate, which
    UTF-8 cannot carry, becomes ``?``.
    """
    # Only the last character can be cut, so "ignore" drops just that one.
    return reason.encode("utf-8", "replace")[:MAX_REASON_BYTES].decode("utf-8", "ignore")


def check_tls_scheme(url: str, tls: object, *, secure: str, serving: bool = False) -> None:
    """Refuse TLS settings for a plaintext URL and, when serving, a secure URL without them.

    Args:
        url: the URL to connect to or serve.
        tls: the ``ssl=`` argument (``None``: none given).
        secure: the transport's secure scheme (``"wss"``, ``"grpcs"``).
        serving: whether ``url`` is served (a secure scheme then needs ``tls``).

    Raises:
        ConfigurationError: the settings do not fit the URL's scheme.
    """
    secure_url = urlsplit(url).scheme == secure
    if tls is not None and not secure_url:
        raise ConfigurationError(f"TLS settings need a {secure}:// URL, not {redact_url(url)}")
    if serving and tls is None and secure_url:
        raise ConfigurationError(
            f"serving {redact_url(url)}: {secure}:// needs TLS settings (ssl=ServerTLS(...))"
        )


def connect_error(
    url: str, exc: BaseException, hint: str = "", *, timeout: float | None = None
) -> ConnectError:
    """Return the error for a connection to ``url`` that ``exc`` kept from opening.

    A failed TLS handshake in the chain of ``exc`` is a
    :class:`~proxy_core.errors.TLSError`; a ``TimeoutError`` says it timed
    out after ``timeout`` seconds (when given); anything else is a
    ``ConnectError`` that says why in plain words, then ``hint`` (`` (if ...)``).
    """
    failure = tls_failure(exc)
    if failure is not None:
        return TLSError(f"TLS handshake with {redact_url(url)} failed: {failure}")
    if isinstance(exc, TimeoutError) and timeout is not None:
        return ConnectError(f"could not connect to {redact_url(url)}: timed out after {timeout:g}s")
    return ConnectError(f"could not connect to {redact_url(url)}: {describe_error(exc)}{hint}")


def refusal_error(url: str, status: int, reason: str, body: str = "") -> ProxyError:
    """Return the error for an HTTP answer other than the upgrade (``reason``: its phrase).

    401 and 403 are an :class:`~proxy_core.errors.AuthenticationError` whose
    reason is the body (an ``authenticate`` hook's reason), else the status;
    any other status is a ``ConnectError`` naming it, and the body if any.
    """
    status_line = f"HTTP {status} {reason}".rstrip()
    if status in (401, 403):
        return AuthenticationError(body or status_line)
    detail = f"{status_line}: {body}" if body else status_line
    return ConnectError(f"could not connect to {redact_url(url)}: the server answered {detail}")


def listen_error(url: str, why: BaseException | str) -> ConnectError:
    """Return the error for a ``serve`` that could not bind ``url``'s address."""
    text = why if isinstance(why, str) else describe_error(why)
    return ConnectError(f"could not listen on {redact_url(url)}: {text}")


#: Socket errors said in plain words, the same on every backend.
_PLAIN_ERRNO = {
    errno.ECONNREFUSED: "connection refused (is the server running, on that port?)",
    errno.EADDRINUSE: "address already in use (another process listens on that port)",
    errno.EADDRNOTAVAIL: "address not available on this machine",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
    errno.ENETUNREACH: "network unreachable",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ECONNRESET: "connection reset by the peer",
}


def describe_error(exc: BaseException) -> str:
    """Return a short description of ``exc`` for an error message.

    A socket error anywhere in its chain (``__cause__``, ``__context__``, or
    aiohttp's ``os_error``) is said in plain words (``connection refused
    (...)``, ``address already in use (...)``, an unknown host); anything
    else is ``"Type: message"`` (or just the type).
    """
    os_error = _os_error_in(exc)
    if isinstance(os_error, socket.gaierror):
        return f"cannot resolve the host name ({os_error.strerror or os_error})"
    if os_error is not None and os_error.errno in _PLAIN_ERRNO:
        return _PLAIN_ERRNO[os_error.errno]
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def plain_errno(code: int) -> str | None:
    """Return the plain words for socket error ``code`` (an ``errno``), if there are any."""
    return _PLAIN_ERRNO.get(code)


def _os_error_in(exc: BaseException) -> OSError | None:
    """Return the first socket error (one with an ``errno``) in the chain of ``exc``."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(seen) < 8 and current not in seen:
        seen.append(current)
        if isinstance(current, OSError) and current.errno is not None:
            return current
        inner = getattr(current, "os_error", None)  # aiohttp's ClientConnectorError
        if isinstance(inner, OSError) and inner.errno is not None:
            return inner
        current = current.__cause__ or current.__context__
    return None


def format_host(host: str | None) -> str:
    """Return ``host`` as it appears in a URL (IPv6 addresses in brackets)."""
    if host is None:
        return ""
    return f"[{host}]" if ":" in host else host


def format_address(address: Any) -> str | None:
    """Return a socket address tuple as ``host:port``, anything else as a string."""
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{format_host(str(address[0]))}:{address[1]}"
    return None if address is None else str(address)


def lower_headers(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Return headers as a dict with lower-cased names; repeated names are joined by ", "."""
    headers: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers
