"""``proxy_core.tune_gc``: only the full collections' threshold changes, and it can be undone."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator

import pytest

import proxy_core
from proxy_core.gc_tuning import DEFAULT_FULL_EVERY, INCREMENTAL


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    before = gc.get_threshold()
    yield before
    gc.set_threshold(*before)


@pytest.mark.skipif(INCREMENTAL, reason="Python 3.14's collector has no third threshold")
def test_only_the_full_threshold_changes(
    thresholds: tuple[int, int, int], caplog: pytest.LogCaptureFixture
) -> None:
    gc.set_threshold(700, 10, 10)
    with caplog.at_level(logging.INFO, logger="proxy_core.gc_tuning"):
        previous = proxy_core.tune_gc()
    assert previous == (700, 10, 10)
    assert gc.get_threshold() == (700, 10, DEFAULT_FULL_EVERY)
    assert "(700, 10, 10) -> (700, 10, 100)" in caplog.text
    proxy_core.tune_gc(25)
    assert gc.get_threshold() == (700, 10, 25)
    gc.set_threshold(*previous)
    assert gc.get_threshold() == (700, 10, 10)


@pytest.mark.skipif(not INCREMENTAL, reason="only Python 3.14+ has an incremental collector")
def test_incremental_collector_is_left_alone(thresholds: tuple[int, int, int]) -> None:
    assert proxy_core.tune_gc() == thresholds
    assert gc.get_threshold() == thresholds


@pytest.mark.parametrize("bad", [0, -1])
def test_full_every_below_one_is_refused(thresholds: tuple[int, int, int], bad: int) -> None:
    with pytest.raises(ValueError, match="full_every must be at least 1"):
        proxy_core.tune_gc(bad)
    assert gc.get_threshold() == thresholds
