"""``proxy-core bench-load --sweep``: what a session costs as the number of sessions grows.

Each session count (and each transport, and each repeat) is one whole
``bench-load`` run in fresh processes (:func:`~proxy_core.bench.load.run_load`),
so that one count's leftovers never weigh on the next. From each run it keeps
the server's memory per open session, the server's and the client's CPU time
per message echoed (during the traffic, and how much of it the cyclic garbage
collector took) and the time and CPU to open a session; the median over the
repeats is what the table and the chart show. The cost is **flat** when the
largest value of a figure is within :data:`FLAT` times the smallest, over all
the counts.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .chart import GREY, color_of, pyplot, save
from .load import LoadOptions, LoadResult, run_load
from .machine import machine_info

__all__ = [
    "DEFAULT_COUNTS",
    "FIGURES",
    "Figure",
    "FLAT",
    "ScalePoint",
    "ScaleResult",
    "auto_deadline",
    "format_scale",
    "main",
    "run_scale",
    "scale_markdown",
    "write_scale_chart",
]

#: ``--sweep``: the session counts, 100 to 10,000 by about x3.
DEFAULT_COUNTS = (100, 300, 1000, 3000, 10000)
#: A figure is flat if its largest value is at most this times its smallest.
FLAT = 1.5


@dataclass
class ScalePoint:
    """One run's figures (seconds and bytes; ``None`` where the run did not get that far)."""

    transport: str
    sessions: int
    status: str
    server_bytes_per_session: float | None = None
    server_peak_bytes_per_session: float | None = None
    client_bytes_per_session: float | None = None
    server_cpu_per_message: float | None = None
    server_gc_per_message: float | None = None
    client_cpu_per_message: float | None = None
    client_gc_per_message: float | None = None
    open_seconds_per_session: float | None = None
    server_cpu_per_open: float | None = None
    server_gc_per_open: float | None = None
    client_cpu_per_open: float | None = None
    traffic_seconds: float | None = None
    server_lag: float | None = None
    others_cores: float | None = None
    reconnects: int | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def server_cpu_per_message_but_gc(self) -> float | None:
        """The server's CPU per message without the cyclic collector's share."""
        return _minus(self.server_cpu_per_message, self.server_gc_per_message)

    @property
    def client_cpu_per_message_but_gc(self) -> float | None:
        """The client's CPU per message without the cyclic collector's share."""
        return _minus(self.client_cpu_per_message, self.client_gc_per_message)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScalePoint:
        """Read back a point that :meth:`ScaleResult.to_dict` wrote."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def of(cls, result: LoadResult) -> ScalePoint:
        """Take the figures of one ``bench-load`` run."""
        o, r = result.options, result
        opened = r.sessions_opened or None
        return cls(
            transport=o.transport,
            sessions=o.sessions,
            status=r.status,
            server_bytes_per_session=r.server_bytes_per_session,
            server_peak_bytes_per_session=r.server_peak_bytes_per_session,
            client_bytes_per_session=r.client_bytes_per_session,
            server_cpu_per_message=r.server_cpu_per_message,
            server_gc_per_message=r.server_gc_per_message,
            client_cpu_per_message=r.client_cpu_per_message,
            client_gc_per_message=r.client_gc_per_message,
            open_seconds_per_session=(
                r.open_seconds / opened if r.open_seconds is not None and opened else None
            ),
            server_cpu_per_open=r.server_cpu_per_open,
            server_gc_per_open=_gc_per_open(r),
            client_cpu_per_open=r.client_cpu_per_open,
            traffic_seconds=r.traffic_seconds,
            server_lag=r.lag.get("server", {}).get("traffic"),
            others_cores=r.others.get("traffic"),
            reconnects=r.reconnects.get("client"),
            failures=list(r.failures),
        )


def _gc_per_open(result: LoadResult) -> float | None:
    """The server's GC seconds per session opened, first round."""
    if not result.rounds or "server_gc_open" not in result.rounds[0] or not result.sessions_opened:
        return None
    return float(sum(result.rounds[0]["server_gc_open"]["gc_seconds"])) / result.sessions_opened


def _minus(total: float | None, part: float | None) -> float | None:
    return None if total is None or part is None else total - part


@dataclass(frozen=True)
class Figure:
    """A figure the sweep shows: its attribute, its label, and its unit (scale, name)."""

    key: str
    label: str
    scale: float
    unit: str


#: What the table shows, in order; the two in ``_JUDGED`` are the ones judged for flatness.
FIGURES = (
    Figure("server_bytes_per_session", "server memory / session", 1 / 1024, "KiB"),
    Figure("server_peak_bytes_per_session", "server peak memory / session", 1 / 1024, "KiB"),
    Figure("server_cpu_per_message", "server CPU / message", 1e6, "µs"),
    Figure("server_gc_per_message", "server GC / message", 1e6, "µs"),
    Figure("server_cpu_per_message_but_gc", "server CPU but GC / message", 1e6, "µs"),
    Figure("client_cpu_per_message", "client CPU / message", 1e6, "µs"),
    Figure("client_gc_per_message", "client GC / message", 1e6, "µs"),
    Figure("client_cpu_per_message_but_gc", "client CPU but GC / message", 1e6, "µs"),
    Figure("server_cpu_per_open", "server CPU / session opened", 1e3, "ms"),
    Figure("server_gc_per_open", "server GC / session opened", 1e3, "ms"),
    Figure("client_cpu_per_open", "client CPU / session opened", 1e3, "ms"),
    Figure("open_seconds_per_session", "open time / session", 1e3, "ms"),
    Figure("server_lag", "server loop lag, worst (traffic)", 1.0, "s"),
    Figure("others_cores", "other processes' CPU (traffic)", 1.0, "cores"),
    Figure("reconnects", "client links re-opened", 1.0, ""),
)
_JUDGED = ("server_bytes_per_session", "server_cpu_per_message")


@dataclass
class ScaleResult:
    """Every run of a sweep, and the medians per transport and session count."""

    options: LoadOptions
    counts: list[int]
    transports: list[str]
    repeat: int
    runs: list[ScalePoint] = field(default_factory=list)
    #: Every run's whole ``bench-load`` record (phases, rounds, collector counts), in order.
    records: list[dict[str, Any]] = field(default_factory=list)
    date: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``ok`` if every run passed (every session held, no message lost)."""
        return "ok" if self.runs and all(p.status == "ok" for p in self.runs) else "failed"

    def median(self, transport: str, sessions: int, key: str) -> float | None:
        """The median of ``key`` over the repeats of one point (``None`` if none has it)."""
        values = [
            getattr(p, key)
            for p in self.runs
            if p.transport == transport and p.sessions == sessions and getattr(p, key) is not None
        ]
        return statistics.median(values) if values else None

    def curve(self, transport: str, key: str) -> list[tuple[int, float]]:
        """The medians of ``key`` for ``transport``, by session count (points with a value)."""
        points = [(n, self.median(transport, n, key)) for n in self.counts]
        return [(n, v) for n, v in points if v is not None]

    def spread(self, transport: str, key: str) -> float | None:
        """Largest over smallest median of ``key`` across the counts (1.0 is perfectly flat)."""
        values = [v for _, v in self.curve(transport, key)]
        if len(values) < 2 or min(values) <= 0:
            return None
        return max(values) / min(values)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScaleResult:
        """Read back a sweep that :meth:`to_dict` wrote (``--json``)."""
        known = {f.name for f in fields(LoadOptions)}
        options = LoadOptions(**{k: v for k, v in data["options"].items() if k in known})
        result = cls(options, list(data["counts"]), list(data["transports"]), data["repeat"])
        result.runs = [ScalePoint.from_dict(run) for run in data["runs"]]
        result.records = list(data.get("records", []))
        result.date, result.machine = data.get("date", ""), data.get("machine", {})
        result.command, result.notes = data.get("command", ""), list(data.get("notes", []))
        return result

    def relabel(self, name: str) -> None:
        """Call every curve of this sweep ``name`` instead of its transport (one sweep each)."""
        for point in self.runs:
            point.transport = name
        self.transports = [name]

    def merge(self, other: ScaleResult) -> None:
        """Add the runs of ``other`` (another transport, more counts or repeats)."""
        self.runs += other.runs
        self.records += other.records
        self.counts = sorted({*self.counts, *other.counts})
        self.transports += [t for t in other.transports if t not in self.transports]
        self.repeat = max(self.repeat, other.repeat)

    def to_dict(self) -> dict[str, Any]:
        """Return the sweep as plain JSON values, with the medians and spreads."""
        medians = {
            t: {str(n): {f.key: self.median(t, n, f.key) for f in FIGURES} for n in self.counts}
            for t in self.transports
        }
        spreads = {t: {f.key: self.spread(t, f.key) for f in FIGURES} for t in self.transports}
        return {**asdict(self), "status": self.status, "medians": medians, "spreads": spreads}


def auto_deadline(sessions: int, messages: int) -> float:
    """The deadline of one run if none is given: 300 s, more for large ones (10,000 x 100: 860)."""
    return max(300.0, 60.0 + sessions * (0.02 + 0.0006 * messages))


async def run_scale(
    base: LoadOptions,
    *,
    counts: Sequence[int],
    transports: Sequence[str],
    repeat: int = 1,
    deadline: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> ScaleResult:
    """Run ``bench-load`` once per transport, session count and repeat; never raises for a failure.

    Args:
        base: the options of every run (``sessions``, ``transport`` and
            ``deadline`` are set per run).
        counts: the session counts, smallest first.
        transports: the transports, each swept over every count.
        repeat: runs per point; the figures shown are their medians.
        deadline: seconds allowed per run (``None``: :func:`auto_deadline`).
        progress: called with one line after each run.
    """
    result = ScaleResult(base, sorted(set(counts)), list(transports), repeat)
    result.date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    result.machine = machine_info()
    for transport in result.transports:
        for sessions in result.counts:
            for _ in range(repeat):
                options = replace(
                    base,
                    transport=transport,
                    sessions=sessions,
                    deadline=deadline or auto_deadline(sessions, base.messages),
                )
                run = await run_load(options)
                point = ScalePoint.of(run)
                result.runs.append(point)
                result.records.append(run.to_dict())
                if progress is not None:
                    progress(_progress_line(point))
    return result


def _progress_line(p: ScalePoint) -> str:
    shown = ", ".join(
        f"{f.label} {_value(getattr(p, f.key), f)}"
        for f in FIGURES
        if f.key in (*_JUDGED, "client_cpu_per_message", "server_cpu_per_open")
    )
    failed = f" FAILED: {'; '.join(p.failures)}" if p.failures else ""
    return f"{p.transport} {p.sessions} sessions: {p.status}; {shown}{failed}"


def _value(value: float | None, figure: Figure) -> str:
    if value is None:
        return "-"
    scaled = value * figure.scale
    text = f"{scaled:.2f}" if scaled < 10 else f"{scaled:.1f}"
    if float(scaled).is_integer() and not figure.unit:
        text = f"{int(scaled)}"
    return f"{text} {figure.unit}".rstrip()


def _rows(result: ScaleResult, transport: str) -> list[list[str]]:
    passed = []
    for n in result.counts:
        runs = [p for p in result.runs if p.transport == transport and p.sessions == n]
        passed.append(f"{sum(p.status == 'ok' for p in runs)} / {len(runs)}")
    rows = [["runs passed", *passed, ""]]
    for f in FIGURES:
        cells = [_value(result.median(transport, n, f.key), f) for n in result.counts]
        spread = result.spread(transport, f.key)
        mark = (
            "" if spread is None or f.key not in _JUDGED else (" ok" if spread <= FLAT else " NO")
        )
        rows.append([f.label, *cells, "-" if spread is None else f"{spread:.2f}x{mark}"])
    return rows


def format_scale(result: ScaleResult) -> str:
    """Return the medians as one text table per transport, then failures and notes."""
    lines = []
    for transport in result.transports:
        header = [f"{transport}/{result.options.codec}", *map(str, result.counts), "max/min"]
        table = [header, *_rows(result, transport)]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for row in table:
            cells = [
                row[0].ljust(widths[0]),
                *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)),
            ]
            lines.append("  ".join(cells))
        lines.append("")
    lines.append(
        f"status: {result.status} (flat: max/min <= {FLAT}x for the figures marked ok / NO)"
    )
    for p in result.runs:
        lines += [f"FAILURE ({p.transport}, {p.sessions}): {f}" for f in p.failures]
    lines += [f"note: {note}" for note in result.notes]
    return "\n".join(lines)


def scale_markdown(result: ScaleResult) -> str:
    """Return the medians as Markdown tables, one per transport, for ``docs/load.md``."""
    out = []
    for transport in result.transports:
        counts = [f"{n:,}" for n in result.counts]
        out.append(f"| {transport} / {result.options.codec} | {' | '.join(counts)} | max / min |")
        out.append("| --- |" + " ---: |" * (len(counts) + 1))
        for label, *cells, spread in _rows(result, transport):
            out.append(f"| {label} | {' | '.join(cells)} | {spread} |")
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------- chart

#: The chart's panels: a title and the curves drawn in it (figure, line style, label).
_PANELS: tuple[tuple[str, tuple[tuple[str, str, str], ...]], ...] = (
    (
        "server memory per session (KiB)",
        (
            ("server_bytes_per_session", "-", "open"),
            ("server_peak_bytes_per_session", ":", "peak, during the traffic"),
        ),
    ),
    (
        "server CPU per message (µs)",
        (
            ("server_cpu_per_message", "-", "all"),
            ("server_cpu_per_message_but_gc", "--", "all but GC"),
            ("server_gc_per_message", ":", "of it GC"),
        ),
    ),
    (
        "client CPU per message (µs, the load tool)",
        (
            ("client_cpu_per_message", "-", "all"),
            ("client_cpu_per_message_but_gc", "--", "all but GC"),
            ("client_gc_per_message", ":", "of it GC"),
        ),
    ),
    (
        "opening a session (ms)",
        (
            ("server_cpu_per_open", "-", "server CPU"),
            ("client_cpu_per_open", "--", "client CPU"),
            ("open_seconds_per_session", ":", "wall time / sessions"),
        ),
    ),
)


def write_scale_chart(result: ScaleResult, path: str | Path) -> str | None:
    """Draw each figure against the session count into a PNG; return why not if it cannot.

    One panel per figure, one colour per transport (as in ``proxy-core
    bench``'s chart) or per labelled sweep, one line style per curve of a
    panel, the session count on a log scale, and a grey band from the first
    sweep's value at the smallest count to :data:`FLAT` times it: a flat curve
    stays in it.
    """
    plt, why = pyplot()
    if plt is None:
        return why
    figure, axes = plt.subplots(1, len(_PANELS), figsize=(4.2 * len(_PANELS), 4.3), squeeze=False)
    for ax, (title, curves) in zip(axes.flat, _PANELS, strict=True):
        _draw_panel(ax, result, curves)
        ax.set_xscale("log")
        ax.set_xticks(result.counts, [f"{n:,}" for n in result.counts])
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.set_xlabel("sessions held at once on one server", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
    if len(result.transports) > 1:
        handles = [
            plt.Line2D([], [], color=color_of(t, result.transports), marker="o", label=t)
            for t in result.transports
        ]
        figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    o = result.options
    save(
        plt,
        figure,
        path,
        f"bench-load: {o.messages} messages of {o.size} characters per session, codec "
        f"{o.codec}; medians of up to {result.repeat} run(s) per point; grey band: the smallest "
        f"count's value up to {FLAT}x it",
        bottom=0.07 if len(result.transports) > 1 else 0.0,
    )
    return None


def _draw_panel(ax: Any, result: ScaleResult, curves: tuple[tuple[str, str, str], ...]) -> None:
    """Draw one panel's curves for every sweep; the legend names the line styles."""
    figures = {f.key: f for f in FIGURES}
    for index, (key, style, label) in enumerate(curves):
        for transport in result.transports:
            curve = result.curve(transport, key)
            if not curve:
                continue
            ys = [v * figures[key].scale for _, v in curve]
            color = color_of(transport, result.transports)
            ax.plot([n for n, _ in curve], ys, style, color=color, marker="o", markersize=3)
            if index == 0 and transport == result.transports[0]:
                ax.axhspan(ys[0], ys[0] * FLAT, color=GREY, alpha=0.2, linewidth=0)
        ax.plot([], [], style, color="black", label=label)  # the style's legend entry
    ax.legend(fontsize=6)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m proxy_core.bench.load_scale SWEEP.json ... --chart PNG``: draw saved sweeps.

    Several files (one per transport, say) are drawn in one chart and one table.
    """
    parser = argparse.ArgumentParser(
        prog="python -m proxy_core.bench.load_scale",
        description="Draw the chart and the table of saved bench-load sweeps (--json files).",
    )
    parser.add_argument("sweeps", nargs="+", metavar="SWEEP.json")
    parser.add_argument("--chart", metavar="PATH", help="write the chart (PNG)")
    parser.add_argument("--markdown", metavar="PATH", help="write the table as Markdown")
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="NAME",
        help="name the curves of the n-th file NAME instead of its transport (once per file, "
        "in order): two sweeps of one transport with other options side by side",
    )
    args = parser.parse_args(argv)
    if args.label and len(args.label) != len(args.sweeps):
        parser.error("give one --label per file, or none")
    results = [ScaleResult.from_dict(json.loads(Path(p).read_text())) for p in args.sweeps]
    for result, label in zip(results, args.label, strict=False):
        result.relabel(label)
    result = results[0]
    for other in results[1:]:
        result.merge(other)
    if args.chart:
        print(write_scale_chart(result, args.chart) or f"wrote {args.chart}")
    if args.markdown:
        Path(args.markdown).write_text(scale_markdown(result))
        print(f"wrote {args.markdown}")
    print(format_scale(result))
    return 0 if result.status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
