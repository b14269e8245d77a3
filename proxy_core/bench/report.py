"""What a run produces: a progress bar, a terminal table, JSON, a Markdown report, a PNG chart.

The Markdown report is written by :mod:`proxy_core.bench._markdown` and
imported from here; every output names rows and writes figures with
:mod:`proxy_core.bench._cells`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import IO

from ._cells import BETTER, duration, loop_line, number, ratio_text, row_label, spread_text
from ._markdown import (
    BUS_BEGIN,
    BUS_END,
    bus_section,
    markdown,
    merge_bus_section,
    only_bus_rows,
    write_markdown,
)
from .chart import GREY, color_of, pyplot, save
from .spec import BUS_METRICS, METRICS, Record, is_bus_row, order_records

__all__ = [
    "BUS_BEGIN",
    "BUS_END",
    "ProgressBar",
    "bus_section",
    "format_table",
    "loop_line",
    "markdown",
    "merge_bus_section",
    "only_bus_rows",
    "row_label",
    "write_chart",
    "write_json",
    "write_markdown",
]


class ProgressBar:
    """A plain-text progress bar on stderr; one line per 5% when stderr is not a terminal."""

    def __init__(self, stream: IO[str] | None = None, width: int = 28) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.total = 0
        self.done = 0
        self.start = time.perf_counter()
        self.tty = self.stream.isatty()
        self._last_bucket = -1
        self._last_len = 0

    def set_total(self, total: int) -> None:
        """Set how many steps the run has."""
        self.total = max(total, 1)
        self.start = time.perf_counter()

    def __call__(self, label: str, steps: int) -> None:
        """Record ``steps`` more steps done, the last one described by ``label``."""
        self.done = min(self.done + steps, self.total)
        fraction = self.done / self.total if self.total else 1.0
        elapsed = time.perf_counter() - self.start
        filled = int(fraction * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        eta = f", ~{duration(elapsed / fraction - elapsed)} left" if 0 < fraction < 1 else ""
        line = f"[{bar}] {fraction:4.0%} {duration(elapsed)}{eta}  {label}"
        if self.tty:
            pad = max(self._last_len - len(line), 0)
            self.stream.write("\r" + line + " " * pad)
            self._last_len = len(line)
        else:
            bucket = int(fraction * 20)
            if bucket != self._last_bucket or "FAILED" in label:
                self._last_bucket = bucket
                self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        """End the bar's line."""
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def format_table(records: list[Record]) -> str:
    """Return the terminal table: one line per record, grouped by transport and codec."""
    header = ("row", "scenario", "unit", "proxy", "bare", "ratio", "better", "spread", "n")
    lines: list[tuple[str, ...]] = [header]
    previous = ""
    for r in order_records(records):
        label = row_label(r)
        shown = label if label != previous else ""
        previous = label
        if r.status == "failed":
            lines.append((shown, f"{r.scenario}.{r.metric}", r.unit, "FAILED", "", "", "", "", ""))
            continue
        lines.append(
            (
                shown,
                f"{r.scenario}.{r.metric}",
                r.unit,
                number(r.proxy),
                number(r.bare),
                ratio_text(r),
                r.better,
                spread_text(r),
                str(r.repeats),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = {3, 4, 5, 7, 8}
    out = []
    for n, line in enumerate(lines):
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(line)
        ]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    failures = [r for r in records if r.status != "ok" and r.error]
    for r in failures:
        out.append(f"! {row_label(r)} {r.scenario}.{r.metric}: {r.error}")
    return "\n".join(out)


def write_json(records: list[Record], path: str | Path) -> None:
    """Write ``records`` as a JSON list of objects."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = [dataclasses.asdict(r) for r in records]
    path.write_text(json.dumps(data, indent=1) + "\n")


# ---------------------------------------------------------------- chart


def write_chart(records: list[Record], path: str | Path) -> str | None:
    """Draw the ratio of every metric per row into a PNG; return why not if it cannot.

    matplotlib is imported here, on first use (``pip install 'proxy-core[bench]'``).
    """
    plt, why = pyplot()
    if plt is None:
        return why
    # The bus rows have their own section; they are charted only in a run of bus rows alone.
    records = [r for r in records if not is_bus_row(r)] or records
    panels = [
        m for m in (*METRICS, *BUS_METRICS) if any(_matches(r, m.scenario, m.name) for r in records)
    ]
    if not panels:
        return "nothing to chart"
    columns = min(4, len(panels))
    rows_n = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(
        rows_n, columns, figsize=(4.2 * columns, 0.5 + 3.6 * rows_n), squeeze=False
    )
    transports = sorted({r.transport for r in records if r.impl == "proxy-core"})
    for ax, m in zip(axes.flat, panels, strict=False):
        chosen = [r for r in order_records(records) if _matches(r, m.scenario, m.name)]
        labels = [row_label(r) for r in chosen]
        values = [r.ratio or 0.0 for r in chosen]
        colors = [
            GREY if r.impl != "proxy-core" else color_of(r.transport, transports) for r in chosen
        ]
        positions = list(range(len(chosen)))[::-1]
        ranges = [_ratio_range(r) for r in chosen]
        whiskers = [
            [v - low for v, (low, _) in zip(values, ranges, strict=True)],
            [high - v for v, (_, high) in zip(values, ranges, strict=True)],
        ]
        ax.barh(positions, values, color=colors, xerr=whiskers, error_kw={"linewidth": 0.8})
        ax.set_yticks(positions, labels, fontsize=7)
        ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
        ax.set_title(f"{m.scenario}.{m.name}\n({BETTER[m.better]})", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        for y, v, (_, high) in zip(positions, values, ranges, strict=True):
            if v:  # right of the bar and of its whisker
                ax.text(max(v, high), y, f" {v:.2f}", va="center", fontsize=6)
        ax.set_xlim(0, max([1.0, *values, *(high for _, high in ranges)]) * 1.2)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    save(
        plt,
        figure,
        path,
        "proxy / bare library, same run (dashed line: 1.0 = bare; whiskers: range over repeats)",
    )
    return None


def _ratio_range(record: Record) -> tuple[float, float]:
    """Return the lowest and highest per-repeat ratio of ``record``."""
    ratios = [p / b for p, b in zip(record.proxy_samples, record.bare_samples, strict=False) if b]
    value = record.ratio or 0.0
    return (min(ratios), max(ratios)) if ratios else (value, value)


def _matches(record: Record, scenario: str, metric: str) -> bool:
    return record.scenario == scenario and record.metric == metric and record.ratio is not None
