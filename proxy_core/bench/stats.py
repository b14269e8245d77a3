"""The arithmetic of the harness: medians, spreads, ratios, percentiles. Pure, no I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["median", "percentile", "ratio", "spread"]


def median(values: Sequence[float]) -> float:
    """Return the median of ``values`` (the mean of the middle two for an even count).

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("the median of no values is undefined")
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[middle])
    return (ordered[middle - 1] + ordered[middle]) / 2


def spread(values: Sequence[float]) -> float:
    """Return ``(max - min) / median``: 0.0 for one value, 0.1 when repeats differ by 10%.

    Raises:
        ValueError: ``values`` is empty, or their median is not positive.
    """
    middle = median(values)
    if middle <= 0:
        raise ValueError(f"a spread needs a positive median, got {middle}")
    return (max(values) - min(values)) / middle


def ratio(proxy: float, bare: float) -> float:
    """Return ``proxy / bare``, the figure every result is reported as.

    For rates, higher is better (1.0: as fast as the bare library); for
    latency, CPU and memory, lower is better (1.0: no more than bare).

    Raises:
        ValueError: ``bare`` is not a positive number.
    """
    if not bare > 0 or math.isinf(bare):
        raise ValueError(f"a ratio needs a positive, finite baseline, got {bare}")
    return proxy / bare


def percentile(values: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile (0-100) of ``values`` by the nearest-rank method.

    Nearest rank returns an observed value (the p99 of 5,000 round trips is
    the 4,950th fastest), never an interpolation between two.

    Raises:
        ValueError: ``values`` is empty or ``q`` is outside [0, 100].
    """
    if not values:
        raise ValueError("the percentile of no values is undefined")
    if not 0 <= q <= 100:
        raise ValueError(f"a percentile is between 0 and 100, got {q}")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])
