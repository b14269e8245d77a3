"""What both ``bench-load`` processes share: the worker names, the heartbeat, a process's start.

The server role (:mod:`proxy_core.bench.load_side`) and the client role
(:mod:`proxy_core.bench._load_client`) serve and open sessions between the
same two workers, with the same heartbeat, and start alike.
"""

from __future__ import annotations

from typing import Any

from ..gc_tuning import tune_gc
from ..messages import BusFrameMessage
from .load_probes import GC_CLOCK, LAG, raise_fd_limit
from .worker import _Channel

__all__ = ["CLIENT", "FORWARD", "SERVER", "describe", "heartbeat", "start_child"]

CLIENT, SERVER = "acme", "assistant"
FORWARD = (BusFrameMessage,)


def heartbeat(spec: dict[str, Any]) -> tuple[float, float]:
    """The proxies' heartbeat interval and timeout: the library's (10 s, 30 s) if not given."""
    interval = float(spec.get("heartbeat_interval") or 10.0)
    return interval, 3 * interval


def describe(exc: BaseException) -> str:
    """Describe ``exc`` in one reply's error text (300 characters at most)."""
    return f"{type(exc).__name__}: {exc}"[:300]


async def start_child(spec: dict[str, Any]) -> tuple[_Channel, dict[str, int]]:
    """Set this process up for ``spec``; return its channel to the parent and its file limits.

    Raises the open-file limit, tunes the garbage collector if asked, and starts
    the clocks that every reply reads (collections, event-loop lag).
    """
    limits = raise_fd_limit()
    if spec.get("tune_gc"):
        tune_gc()
    GC_CLOCK.install()
    LAG.start()
    return await _Channel.open(), limits
