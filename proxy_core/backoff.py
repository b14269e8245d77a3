"""When a client tries again: the reconnect policy of :class:`~proxy_core.ProxyClient`.

Pure: no asyncio, no clock of its own. The client asks :meth:`Backoff.next_delay`
after each failed attempt and sleeps that long, or gives up on ``None``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import ConfigurationError, SessionRejected, TLSError

__all__ = ["Backoff", "is_fatal"]


def is_fatal(error: BaseException) -> bool:
    """The default classifier: errors that trying again cannot fix.

    An authentication refusal, any other REJECT from the server (unknown
    worker, no common codec, wrong version), a certificate that does not
    verify, and a bad configuration. A refused or dropped connection, a
    timeout, a handshake cut short and a lost session are not fatal.
    """
    return isinstance(error, (SessionRejected, TLSError, ConfigurationError))


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter, bounded by attempts and elapsed time.

    The n-th retry (n = 0, 1, 2...) waits a random time in
    ``[0, min(max_delay, initial_delay * factor ** n)]`` ("full jitter"), so
    that many clients cut off at once do not come back at once.

    Args:
        initial_delay: the cap of the first wait, in seconds.
        factor: how much the cap grows per attempt.
        max_delay: the largest cap.
        max_attempts: give up after this many failed attempts in a row
            (``None``: no limit).
        max_elapsed: give up once this many seconds have passed since the
            first failure of a streak (``None``: no limit).
        reset_after: a connection that stayed up this long starts a new
            streak (attempts and elapsed time count from zero again).
        retry_first_connect: whether the first connection of the client is
            retried too (otherwise its failure is reported at once).
        fatal: the classifier of errors never retried (default :func:`is_fatal`).
        jitter: draw the wait at random (turn off for a fixed, testable schedule).
    """

    initial_delay: float = 0.1
    factor: float = 2.0
    max_delay: float = 10.0
    max_attempts: int | None = None
    max_elapsed: float | None = 300.0
    reset_after: float = 30.0
    retry_first_connect: bool = True
    fatal: Callable[[BaseException], bool] = field(default=is_fatal)
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.initial_delay < 0 or self.max_delay < self.initial_delay:
            raise ConfigurationError("need 0 <= initial_delay <= max_delay")
        if self.factor < 1:
            raise ConfigurationError("factor must be at least 1")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigurationError("max_attempts must be at least 1 (or None)")
        if self.max_elapsed is not None and self.max_elapsed <= 0:
            raise ConfigurationError("max_elapsed must be positive (or None)")
        if self.reset_after < 0:
            raise ConfigurationError("reset_after must not be negative")

    def describe(self) -> str:
        """Say in words how long this policy keeps trying (for logs and messages)."""
        limits = []
        if self.max_elapsed is not None:
            limits.append(f"{_duration(self.max_elapsed)}")
        if self.max_attempts is not None:
            limits.append(f"{self.max_attempts} attempt{'s' if self.max_attempts != 1 else ''}")
        if not limits:
            return "without limit"
        return "for up to " + " or ".join(limits)

    def cap(self, attempt: int) -> float:
        """The largest wait before retry number ``attempt`` (0-based)."""
        # Compare exponents, not powers, so that a long streak cannot overflow.
        if self.initial_delay == 0:
            return 0.0
        cap = self.initial_delay
        for _ in range(min(attempt, 64)):
            cap *= self.factor
            if cap >= self.max_delay:
                return self.max_delay
        return min(cap, self.max_delay)

    def next_delay(
        self,
        attempt: int,
        elapsed: float,
        error: BaseException,
        rng: Callable[[], float] = random.random,
    ) -> float | None:
        """How long to wait before retrying after failed attempt ``attempt`` (0-based).

        Args:
            attempt: failed attempts in this streak before this one.
            elapsed: seconds since the streak's first failure.
            error: why this attempt failed.
            rng: a uniform draw in [0, 1) (for tests).

        Returns:
            The delay in seconds, or ``None`` to give up (a fatal error, or a limit reached).
        """
        if self.fatal(error):
            return None
        if self.max_attempts is not None and attempt + 1 >= self.max_attempts:
            return None
        cap = self.cap(attempt)
        delay = cap * rng() if self.jitter else cap
        if self.max_elapsed is not None and elapsed + delay > self.max_elapsed:
            return None
        return delay


def _duration(seconds: float) -> str:
    """``300`` -> ``"5 min"``, ``90`` -> ``"90 s"``, ``7200`` -> ``"2 h"``."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"
