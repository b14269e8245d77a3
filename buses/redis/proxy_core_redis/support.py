"""What the parts of the Redis bus share: errors, retries, redaction, small conversions."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError as RedisAuthError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from proxy_core.errors import ConfigurationError, ConnectError, ProxyError

if TYPE_CHECKING:
    from .bus import RedisBus

__all__ = [
    "CONNECTION_ERRORS",
    "RedisBusError",
    "Retry",
    "cancel_all",
    "describe_client",
    "field",
    "is_power_of_ten",
    "make_client",
    "redact",
    "text",
]

logger = logging.getLogger("proxy_core_redis")

#: What a cut connection, a restarting server or a timeout raises (redis-py's are not OSErrors).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
)


class RedisBusError(ProxyError):
    """The Redis bus failed for good: Redis stayed out of reach past the retry policy."""


def redact(url: str) -> str:
    """Return ``url`` without its password or user (in the netloc or the query)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = urlencode(
        [
            (k, "***" if k.lower() in ("password", "username") else v)
            for k, v in parse_qsl(parts.query)
        ]
    )
    return parts._replace(netloc=netloc, query=query).geturl()


class Retry:
    """A streak of failures of one loop of a bus, paced by the bus's :class:`Backoff`."""

    def __init__(self, bus: RedisBus, what: str) -> None:
        self._bus, self._what = bus, what
        self._attempt = 0
        self._since: float | None = None

    def succeeded(self) -> None:
        """The loop's last call went through: a new streak starts with the next failure."""
        if self._attempt:
            logger.info("redis bus %r: %s again", self._bus.node, self._what)
            self._bus._stats["reconnects"] += 1
        self._attempt, self._since = 0, None

    async def failed(self, exc: BaseException) -> None:
        """Wait before the next attempt, or raise :class:`RedisBusError` to give up."""
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # redis-py may turn our cancellation into a ConnectionError: stop all the same.
            raise asyncio.CancelledError
        now = asyncio.get_running_loop().time()
        if self._since is None:
            self._since = now
            logger.warning(
                "redis bus %r: %s failed (%s: %s); retrying",
                self._bus.node,
                self._what,
                type(exc).__name__,
                exc,
            )
        delay = self._bus.reconnect.next_delay(self._attempt, now - self._since, exc)
        self._attempt += 1
        if delay is None:
            raise RedisBusError(
                f"gave up {self._what} on {self._bus.url} after {self._attempt} attempts: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        await asyncio.sleep(delay)


async def cancel_all(tasks: list[asyncio.Task[None]], timeout: float) -> None:
    """Cancel ``tasks`` and wait for them, bounded.

    Cancelled again until done: on Python 3.11, ``asyncio.wait_for`` (which
    redis-py uses) can swallow a cancellation that meets a result.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        pending = [t for t in tasks if not t.done()]
        if not pending:
            return
        if loop.time() >= deadline:
            logger.warning("redis bus: %d task(s) did not stop in %.1fs", len(pending), timeout)
            return
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.05)


def make_client(url: str) -> aioredis.Redis:
    """A client for ``url`` that does not retry by itself (the bus's loops do)."""
    # Our loops retry with the bus's Backoff; redis-py's own retries would hide cuts.
    client: aioredis.Redis = aioredis.Redis.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=5,
        socket_timeout=10,
        retry=RedisRetry(NoBackoff(), 0),
    )
    return client


def describe_client(client: Any) -> str:
    """A URL-like name for a client given by the user, without its credentials."""
    try:
        kwargs = client.connection_pool.connection_kwargs
        return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
    except AttributeError:
        return repr(type(client).__name__)


def field(text: str) -> str:
    """``text`` as one field of a tab-separated record (no tab, no line break)."""
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def text(value: Any) -> str:
    """A Redis reply as ``str``."""
    return value.decode() if isinstance(value, bytes) else str(value)


def is_power_of_ten(n: int) -> bool:
    """Whether ``n`` is 1, 10, 100...: when to log a repeated warning again."""
    while n and n % 10 == 0:
        n //= 10
    return n == 1


def check_options(
    url: str | None,
    redis: Any,
    *,
    lease_ttl: float,
    orphan_ttl: float,
    max_backlog: int,
    in_flight: int,
    max_buffer: int,
    put_timeout: float,
    close_timeout: float,
    claim_timeout: float,
) -> None:
    """Check a :class:`~proxy_core_redis.bus.RedisBus`'s options.

    Raises:
        ConfigurationError: an option is out of range (the message says which).
    """
    if (url is None) == (redis is None):
        raise ConfigurationError("give a Redis url or a redis.asyncio.Redis client (one)")
    if url is not None and urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(
            f"a Redis URL starts with redis://, rediss:// or unix://, got {redact(url)!r}"
        )
    for option, value in (("lease_ttl", lease_ttl), ("orphan_ttl", orphan_ttl)):
        if not 0.2 <= value <= 86_400:
            raise ConfigurationError(f"{option} must be in [0.2, 86400] seconds, got {value}")
    for option, number in (
        ("max_backlog", max_backlog),
        ("in_flight", in_flight),
        ("max_buffer", max_buffer),
    ):
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise ConfigurationError(f"{option} must be a positive integer, got {number!r}")
    for option, seconds, least in (
        ("put_timeout", put_timeout, 0.001),
        ("close_timeout", close_timeout, 0.001),
        ("claim_timeout", claim_timeout, 0.0),
    ):
        if not least <= seconds < math.inf:
            raise ConfigurationError(
                f"{option} must be a finite number of seconds >= {least:g}, got {seconds!r}"
            )


async def probe_server(redis: Any, url: str, least: tuple[int, int]) -> str:
    """Return the version of the Redis server at ``url``, checked to be at least ``least``.

    Raises:
        ConnectError: Redis cannot be reached, or refuses the credentials.
        ConfigurationError: the server is older than ``least``.
    """
    try:
        info = await redis.info("server")
    except RedisAuthError as exc:
        raise ConnectError(f"Redis at {url} refused the credentials: {exc}") from exc
    except CONNECTION_ERRORS as exc:
        raise ConnectError(
            f"could not connect to Redis at {url}: {type(exc).__name__}: {exc}"
        ) from exc
    version = str(info.get("redis_version", "0"))
    found = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if found < least:
        raise ConfigurationError(
            f"the Redis bus needs Redis {least[0]}.{least[1]} or later; {url} runs {version}"
        )
    return version
