"""What a run produces: a progress bar, a terminal table, JSON, a Markdown report, a PNG chart."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from .bus import BUS_TARGETS
from .orchestrate import BenchResult
from .spec import BUS_METRICS, METRICS, Record, is_bus_row, metric_of, order_records

__all__ = [
    "BUS_BEGIN",
    "BUS_END",
    "ProgressBar",
    "bus_section",
    "format_table",
    "loop_line",
    "markdown",
    "row_label",
    "write_chart",
    "write_json",
    "write_markdown",
]

_ARROW = {"higher": "higher is better", "lower": "lower is better"}

#: The markers around the bus rows' section of a report: a run of bus rows only
#: replaces what is between them and leaves the rest of the file alone.
BUS_BEGIN = (
    "<!-- proxy-core bench: bus rows begin (a run of bus rows only rewrites this section) -->"
)
BUS_END = "<!-- proxy-core bench: bus rows end -->"


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
        eta = f", ~{_duration(elapsed / fraction - elapsed)} left" if 0 < fraction < 1 else ""
        line = f"[{bar}] {fraction:4.0%} {_duration(elapsed)}{eta}  {label}"
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


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(record: Record) -> str:
    return "-" if record.ratio is None else f"{record.ratio:.2f}x"


def _spread(record: Record) -> str:
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


def _order(records: Iterable[Record]) -> list[Record]:
    return order_records(records)


def format_table(records: list[Record]) -> str:
    """Return the terminal table: one line per record, grouped by transport and codec."""
    header = ("row", "scenario", "unit", "proxy", "bare", "ratio", "better", "spread", "n")
    lines: list[tuple[str, ...]] = [header]
    previous = ""
    for r in _order(records):
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
                _number(r.proxy),
                _number(r.bare),
                _ratio(r),
                r.better,
                _spread(r),
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


# ---------------------------------------------------------------- markdown


def only_bus_rows(result: BenchResult) -> bool:
    """Whether ``result`` holds bus rows and nothing else."""
    return bool(result.records) and all(is_bus_row(r) for r in result.records)


def write_markdown(result: BenchResult, path: str | Path, chart: str | None) -> bool:
    """Write the Markdown report of ``result`` to ``path`` (``chart``: a PNG beside it, or None).

    A run of bus rows only, into a file that exists, rewrites the bus section
    of that file (between :data:`BUS_BEGIN` and :data:`BUS_END`, or appended
    at its end) and leaves the rest as it was. Returns whether it merged so.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if only_bus_rows(result) and path.exists():
        path.write_text(merge_bus_section(path.read_text(), result))
        return True
    path.write_text(markdown(result, chart))
    return False


def merge_bus_section(text: str, result: BenchResult) -> str:
    """Return ``text`` with its bus section replaced by that of ``result`` (or appended)."""
    section = "\n".join(bus_section(result))
    begin, end = text.find(BUS_BEGIN), text.find(BUS_END)
    if begin >= 0 and end > begin:
        return text[:begin] + section + text[end + len(BUS_END) :]
    return text.rstrip("\n") + "\n\n" + section + "\n"


def markdown(result: BenchResult, chart: str | None) -> str:
    """Return the Markdown report of ``result``."""
    m, o, c = result.machine, result.options, result.options.counts
    libs = ", ".join(f"{k} {v}" for k, v in sorted(m.get("libraries", {}).items()))
    pinned = m.get("pinned")
    lines = [
        "# proxy-core benchmark results",
        "",
        f"Generated by `{result.command or 'proxy-core bench'}` on {result.date} (UTC) "
        f"in {_duration(result.elapsed)} (min:s). Raw records: the JSON written by `--json`.",
        "",
        "## Machine",
        "",
        f"- CPU: {m.get('cpu')}, {m.get('cores')} cores ({m.get('usable_cores')} usable)",
        f"- {m.get('python')} on {m.get('platform')}",
        f"- Code: commit {m.get('commit') or 'unknown (not a git checkout)'}",
        f"- Event loop of every server and client process: {loop_line(m)}",
        f"- Pinning: server core {pinned['server']}, client core {pinned['client']}"
        if pinned
        else "- Pinning: none",
        f"- Other load: {_busy(m.get('busy_cores_before'))} in use by other processes in the "
        f"second before the run, {_busy(m.get('busy_cores_after'))} in the second after; "
        f"load average (1, 5, 15 min) before {m.get('load_average')}, "
        f"after {m.get('load_average_after')}",
        f"- Libraries: {libs}",
        "",
        "## How to read this",
        "",
        "- Every figure is a **ratio against the bare library doing the same work in the same "
        "run**: `ratio = proxy / bare`, the median over repeats of the ratio within each repeat "
        "(the two ran back to back, seconds apart). Absolute numbers drift by tens of percent "
        "on a shared 2-core machine; ratios much less.",
        "- **Rates** (`stream_200b`, `stream_16k`): higher is better; 1.0 is as fast as the bare "
        "library, 0.25 a quarter as fast.",
        "- **Latency, CPU, memory, codec** (`rtt`, `cpu`, `idle_memory`, `codec`): lower is "
        "better; 1.0 costs no more than bare, 2.0 twice as much.",
        "- `spread` = (max - min) / median of the per-repeat ratios; `n` = repeats that "
        "succeeded. A spread above ~20% says the machine was noisy for that figure.",
        f"- Repeats: {o.repeats}{' (quick mode: reduced counts)' if o.quick else ''}. "
        f"Counts: stream_200b {c.stream_200b:,} messages, stream_16k {c.stream_16k:,} "
        "(the same for their `_b2b` runs), "
        f"rtt {c.rtt:,} round trips, idle_memory {c.idle_sessions} sessions; "
        f"{c.warmup} warm-up messages before each timed run; {c.deadline:.0f} s deadline per step.",
        '- Payload: proxy rows send `BusFrameMessage("acme", "assistant", '
        "AudioRawFrame(<N random bytes>, 16000))`, worker to worker through both proxies; the "
        "bare rows send the same N random bytes as one binary message per send. `cpu` is "
        "measured during `stream_200b` (process CPU time / messages, each side).",
        "- Two producers: `stream_200b`, `stream_16k` and `cpu` yield to the event loop after "
        "every 100 sends; `stream_200b_b2b`, `stream_16k_b2b` and `cpu_b2b` send back to back "
        "(each send awaited in turn, no yield of their own; they wait only when a send blocks "
        "on backpressure), in the proxy and the bare rows alike. `cpu_b2b` is measured during "
        "`stream_200b_b2b`.",
        "",
    ]
    ordered = [r for r in _order(result.records) if not is_bus_row(r)]
    lines += _glance(ordered)
    if chart:
        lines += [f"![ratios per scenario]({chart})", ""]
    lines += _details(ordered)
    if any(is_bus_row(r) for r in result.records):
        lines += [*bus_section(result), ""]
    if result.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in result.notes] + [""]
    return "\n".join(lines)


def bus_section(result: BenchResult) -> list[str]:
    """Return the report's bus section: how the bus rows were measured, the table, the targets."""
    m, o, c = result.machine, result.options, result.options.counts
    records = [r for r in _order(result.records) if is_bus_row(r)]
    libs = m.get("libraries", {})
    redis_lib = libs.get("redis")
    hiredis = libs.get("hiredis")
    pinned = m.get("pinned")
    redis = any(r.transport == "bus:redis" for r in records)
    local = any(r.transport == "bus:local" for r in records)
    lines = [
        BUS_BEGIN,
        "## Bus rows",
        "",
        f"Generated by `{result.command or 'proxy-core bench'}` on {result.date} (UTC) in "
        f"{_duration(result.elapsed)} (min:s); repeats: {o.repeats}"
        f"{' (quick mode: reduced counts)' if o.quick else ''}.",
        "",
        f"- Machine: {m.get('cpu')}, {m.get('cores')} cores ({m.get('usable_cores')} usable); "
        f"{m.get('python')} on {m.get('platform')}; commit "
        f"{m.get('commit') or 'unknown'}; event loop {loop_line(m)}",
        f"- Pinning: receiver core {pinned['server']}, sender core {pinned['client']}, "
        "redis-server not pinned"
        if pinned
        else "- Pinning: none",
        f"- Other load: {_busy(m.get('busy_cores_before'))} in use by other processes in the "
        f"second before the run, {_busy(m.get('busy_cores_after'))} in the second after",
    ]
    if redis:
        lines.append(
            f"- Redis: redis-server {m.get('redis_server', '?')}; redis-py "
            f"{redis_lib or '-'}{f' with hiredis {hiredis}' if hiredis else ' (no hiredis)'}; "
            f"proxy-core-redis {libs.get('proxy-core-redis', '-')}"
        )
    counts = [f"`bus:redis` {c.bus_stream:,} messages, {c.bus_rtt:,} round trips"] if redis else []
    if local:
        counts.append(f"`bus:local` {c.stream_200b:,} messages, {c.rtt:,} round trips")
    lines.append(
        f"- Counts: {'; '.join(counts)}; {c.warmup} warm-up messages (or round trips) before "
        "each timed run, in the same processes"
    )
    if redis:
        lines.append(
            "- `bus:redis`: worker `src` in one process sends "
            '`BusFrameMessage("src", "dst", AudioRawFrame(<200 random bytes>, 16000))` to worker '
            "`dst` in another, both runners on `RedisBus(url, channel=<fresh>)` on one throwaway "
            "redis-server; bare: redis-py asyncio between two processes, `XADD` one entry "
            "(the same 200 bytes) per message, `XREADGROUP COUNT 256 BLOCK` then `XACK` of what "
            "it read; round trips on two streams, one each way. `stream_200b.rate`: messages / "
            "(first send to the reply to an `end` sent after the last, which `dst` answers once "
            "it has handled them all); `cpu.client` / `cpu.server` / `cpu.engine`: CPU per "
            "message of the sender, the receiver and redis-server (`INFO cpu`) in that window."
        )
    if local:
        lines.append(
            "- `bus:local`: two workers on one `InProcessBus` in one process, against two "
            "asyncio tasks handing the bytes over an `asyncio.Queue` (bounded like an inbox)."
        )
    lines += [
        "",
        "| row | figure | ours | bare | unit | ratio | target | spread | n | bare is |",
        "|---|---|---:|---:|---|---:|---|---:|---:|---|",
    ]
    for r in records:
        figure = f"{r.scenario}.{r.metric}"
        if r.status == "failed":
            lines.append(f"| {row_label(r)} | {figure} | FAILED: {r.error} | | | | | | | |")
            continue
        lines.append(
            f"| {row_label(r)} | {figure} | {_number(r.proxy)} | {_number(r.bare)} | {r.unit} | "
            f"{_ratio(r)} | {_target(r)} | {_spread(r)} | {r.repeats} | {r.bare_label} |"
        )
    if only_bus_rows(result) and result.notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in result.notes]
    lines += ["", BUS_END]
    return lines


def _target(record: Record) -> str:
    goal = BUS_TARGETS.get((record.transport, record.scenario, record.metric))
    if goal is None or record.ratio is None:
        return ""
    higher = metric_of(record.scenario, record.metric).better == "higher"
    met = record.ratio >= goal if higher else record.ratio <= goal
    return f"{'>=' if higher else '<='} {goal:g}x: {'met' if met else '**missed**'}"


def _busy(cores: float | None) -> str:
    return "unknown" if cores is None else f"{cores:.2f} cores"


def _glance(records: list[Record]) -> list[str]:
    wire = [m for m in METRICS if m.scenario != "codec"]
    present = [
        m for m in wire if any(r.metric == m.name and r.scenario == m.scenario for r in records)
    ]
    rows: dict[str, dict[str, Record]] = {}
    for r in records:
        if r.scenario != "codec":
            rows.setdefault(row_label(r), {})[f"{r.scenario}.{r.metric}"] = r
    if not rows:
        return []
    arrows = {"higher": "↑", "lower": "↓"}
    head = ["row"] + [f"{m.scenario}.{m.name} {arrows[m.better]}" for m in present]
    out = [
        "## Ratios at a glance (proxy / bare; ↑ higher is better, ↓ lower is better)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for label, cells in rows.items():
        values = []
        for m in present:
            rec = cells.get(f"{m.scenario}.{m.name}")
            values.append("" if rec is None else ("FAILED" if rec.ratio is None else _ratio(rec)))
        out.append("| " + " | ".join([label, *values]) + " |")
    return [*out, ""]


def _details(records: list[Record]) -> list[str]:
    out = ["## Details", ""]
    for m in METRICS:
        chosen = [r for r in records if r.scenario == m.scenario and r.metric == m.name]
        if not chosen:
            continue
        out += [
            f"### {m.scenario}.{m.name}: {m.label} ({_ARROW[m.better]})",
            "",
            "| row | proxy | bare | unit | ratio | spread | n | bare is |",
            "|---|---:|---:|---|---:|---:|---:|---|",
        ]
        for r in chosen:
            if r.status == "failed":
                out.append(f"| {row_label(r)} | FAILED: {r.error} | | | | | | |")
                continue
            out.append(
                f"| {row_label(r)} | {_number(r.proxy)} | {_number(r.bare)} | {r.unit} | "
                f"{_ratio(r)} | {_spread(r)} | {r.repeats} | {r.bare_label} |"
            )
        out.append("")
    return out


# ---------------------------------------------------------------- chart


def write_chart(records: list[Record], path: str | Path) -> str | None:
    """Draw the ratio of every metric per row into a PNG; return why not if it cannot.

    matplotlib is imported here, on first use (``pip install 'proxy-core[bench]'``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'proxy-core[bench]'): chart skipped"
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
    palette = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"]
    transports = sorted({r.transport for r in records if r.impl == "proxy-core"})
    for ax, m in zip(axes.flat, panels, strict=False):
        chosen = [r for r in _order(records) if _matches(r, m.scenario, m.name)]
        labels = [row_label(r) for r in chosen]
        values = [r.ratio or 0.0 for r in chosen]
        colors = [
            "#999999"
            if r.impl != "proxy-core"
            else palette[transports.index(r.transport) % len(palette)]
            if r.transport in transports
            else palette[0]
            for r in chosen
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
        ax.set_title(f"{m.scenario}.{m.name}\n({_ARROW[m.better]})", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        for y, v, (_, high) in zip(positions, values, ranges, strict=True):
            if v:  # right of the bar and of its whisker
                ax.text(max(v, high), y, f" {v:.2f}", va="center", fontsize=6)
        ax.set_xlim(0, max([1.0, *values, *(high for _, high in ranges)]) * 1.2)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    figure.suptitle(
        "proxy / bare library, same run (dashed line: 1.0 = bare; whiskers: range over repeats)",
        fontsize=11,
    )
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None


def _ratio_range(record: Record) -> tuple[float, float]:
    """Return the lowest and highest per-repeat ratio of ``record``."""
    ratios = [p / b for p, b in zip(record.proxy_samples, record.bare_samples, strict=False) if b]
    value = record.ratio or 0.0
    return (min(ratios), max(ratios)) if ratios else (value, value)


def _matches(record: Record, scenario: str, metric: str) -> bool:
    return record.scenario == scenario and record.metric == metric and record.ratio is not None
