"""How a bench record is written in every report: its row, its figures, the run's loop.

The terminal table, the Markdown report and the chart of
:mod:`proxy_core.bench.report` name rows and write numbers, ratios, spreads
and durations the same way; this module is where that is said once.
"""

from __future__ import annotations

from typing import Any

from .spec import Record, is_bus_row

__all__ = [
    "BETTER",
    "duration",
    "loop_line",
    "number",
    "ratio_text",
    "row_label",
    "spread_text",
]

#: What each direction of a metric means, in words.
BETTER = {"higher": "higher is better", "lower": "lower is better"}


def duration(seconds: float) -> str:
    """Write ``seconds`` as minutes and seconds: ``2:05``."""
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def number(value: float | None) -> str:
    """Write a figure with as many digits as it deserves (``-`` for none)."""
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio_text(record: Record) -> str:
    """Write the ratio of ``record``: ``0.42x`` (``-`` for none)."""
    return "-" if record.ratio is None else f"{record.ratio:.2f}x"


def spread_text(record: Record) -> str:
    """Write the spread of ``record`` as a percentage (``-`` for none)."""
    return "-" if record.spread is None else f"{record.spread:.0%}"


def row_label(record: Record) -> str:
    """Name the implementation row of ``record``: ``websockets/msgpack``, ``pipecat-ai (...)``."""
    if record.impl != "proxy-core":
        return f"{record.impl} ({record.transport}, {record.codec})"
    if record.scenario == "codec":
        return f"codec {record.codec}"
    if is_bus_row(record) and record.codec == "-":
        return record.transport
    return f"{record.transport}/{record.codec}"


def loop_line(machine: dict[str, Any]) -> str:
    """Describe the event loop the children ran on: ``uvloop 0.23.0; the children ran on ...``."""
    loop = machine.get("loop") or {"name": "asyncio"}
    name, version = loop.get("name", "asyncio"), loop.get("version")
    text = name
    if version:
        text += f" (Python {version})" if name == "asyncio" else f" {version}"
    classes = loop.get("classes")
    return f"{text}; the children ran on {', '.join(classes)}" if classes else text
