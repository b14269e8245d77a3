"""The cyclic garbage collector on a server that holds thousands of sessions.

CPython (before 3.14) collects its oldest generation, a walk over every
container object alive in the process, after every ten collections of the
middle one, unless fewer than a quarter of the old objects are new since the
last such walk. On a server whose sessions are all busy, the messages in flight
live long enough to be promoted and that second condition nearly always holds:
full walks come at a rate set by the messages handled, and each walks every
open session's state. The cost per message then grows with the number of open
sessions (``proxy-core bench-load --sweep``; docs/load.md has the curve).

:func:`tune_gc` makes full walks rarer; nothing in proxy-core calls it on its
own, since the collector's settings belong to the whole process, not to a
library. Call it once at start-up in a program that serves many sessions::

    import proxy_core

    proxy_core.tune_gc()  # full collections 10x rarer; young ones unchanged

Python 3.14's collector is incremental (it walks the old objects a slice at a
time, in step with the young collections) and has no third threshold: there
:func:`tune_gc` leaves the settings as they are.
"""

from __future__ import annotations

import gc
import logging
import sys
from typing import Final

__all__ = ["DEFAULT_FULL_EVERY", "INCREMENTAL", "tune_gc"]

log = logging.getLogger(__name__)

#: The default of :func:`tune_gc`: a full collection at most every this many
#: collections of the middle generation (CPython's own default is 10).
DEFAULT_FULL_EVERY: Final = 100

#: True where the collector is incremental (CPython 3.14 and later) and has no
#: full collections for :func:`tune_gc` to make rarer.
INCREMENTAL: Final = sys.version_info >= (3, 14)


def tune_gc(full_every: int = DEFAULT_FULL_EVERY) -> tuple[int, int, int]:
    """Make the collector's full collections rarer; return the thresholds it had before.

    Only the third threshold changes (``gc.set_threshold``): the young
    generations are collected as often as before, so cyclic garbage made and
    dropped quickly is freed as soon as before; cycles that lived long enough
    to be promoted to the oldest generation wait longer. Pass the returned
    thresholds to ``gc.set_threshold(*previous)`` to undo it.

    Args:
        full_every: collect the oldest generation at most every this many
            collections of the middle one (at least 1).

    Raises:
        ValueError: ``full_every`` is below 1.
    """
    if full_every < 1:
        raise ValueError(f"full_every must be at least 1, got {full_every}")
    young, middle, full = gc.get_threshold()
    if INCREMENTAL:
        log.debug("the collector is incremental (Python 3.14+): tune_gc leaves it as it is")
        return young, middle, full
    gc.set_threshold(young, middle, full_every)
    log.info(
        "garbage collector thresholds (%d, %d, %d) -> (%d, %d, %d)",
        young,
        middle,
        full,
        young,
        middle,
        full_every,
    )
    return young, middle, full
