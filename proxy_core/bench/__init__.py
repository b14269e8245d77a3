"""The benchmark harness behind ``proxy-core bench``: what the proxy costs against the bare library.

Every figure is a ratio against the bare library doing the same work in the
same run. Scenarios (see ``benchmarks/README.md``): ``stream_200b``,
``stream_16k``, ``rtt``, ``cpu``, ``idle_memory`` bus to bus through both
proxies, for every installed transport x codec; ``stream_200b_b2b``,
``stream_16k_b2b`` and ``cpu_b2b``, the same streams with a producer that
sends back to back instead of yielding to the loop now and then; and
``codec``, the envelope encode+decode of each codec against its raw library.
Every child process runs on asyncio's loop or, with ``BenchOptions(loop="uvloop")``
(``--loop uvloop``), on uvloop. Bus rows
(:mod:`proxy_core.bench.bus`): worker to worker on ``RedisBus`` across two
processes against redis-py, and on ``InProcessBus`` against an
``asyncio.Queue``.

Programmatic use::

    import asyncio
    from proxy_core.bench import BenchOptions, QUICK_COUNTS, run_bench

    result = asyncio.run(run_bench(BenchOptions(counts=QUICK_COUNTS, repeats=1)))
    for record in result.records:
        print(record.transport, record.codec, record.scenario, record.metric, record.ratio)

Nothing here is imported by ``proxy_core`` itself; the child processes run
``python -m proxy_core.bench.worker``.
"""

from __future__ import annotations

from .orchestrate import BenchResult, run_bench
from .spec import (
    BUSES,
    FULL_COUNTS,
    METRICS,
    QUICK_COUNTS,
    SCENARIOS,
    BenchOptions,
    Counts,
    Record,
)
from .stats import median, percentile, ratio, spread

__all__ = [
    "BUSES",
    "FULL_COUNTS",
    "METRICS",
    "QUICK_COUNTS",
    "SCENARIOS",
    "BenchOptions",
    "BenchResult",
    "Counts",
    "Record",
    "median",
    "percentile",
    "ratio",
    "run_bench",
    "spread",
]
