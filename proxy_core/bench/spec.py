"""What the harness measures: scenarios, their metrics and units, counts, options, records."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = [
    "BUSES",
    "BUS_METRICS",
    "BUS_SCENARIOS",
    "CONTROL_MAX",
    "FULL_COUNTS",
    "METRICS",
    "QUICK_COUNTS",
    "SCENARIOS",
    "STREAMS",
    "BenchOptions",
    "Counts",
    "Metric",
    "Record",
    "Stream",
    "is_bus_row",
    "metric_of",
    "order_records",
]

#: The scenarios, in the order they run and are reported. ``*_b2b``: the same as
#: the scenario without the suffix, with a producer that sends back to back.
SCENARIOS: Final = (
    "stream_200b",
    "stream_200b_b2b",
    "stream_16k",
    "stream_16k_b2b",
    "rtt",
    "cpu",
    "cpu_b2b",
    "idle_memory",
    "codec",
)

#: The buses whose rows the harness can measure (``transport`` of their records: ``bus:<name>``).
BUSES: Final = ("local", "redis")

#: The scenarios a bus row runs (``cpu`` is measured during ``stream_200b``).
BUS_SCENARIOS: Final = ("stream_200b", "rtt", "cpu")

#: Frames this short are control frames of the bare protocol; payloads are longer.
CONTROL_MAX: Final = 64


@dataclass(frozen=True)
class Metric:
    """One reported figure of a scenario.

    Attributes:
        scenario: the scenario it belongs to.
        name: the metric within the scenario (``p50``, ``client``...).
        unit: the unit of the ``proxy`` and ``bare`` values.
        better: ``"higher"`` for rates, ``"lower"`` for latency, CPU and memory.
        label: a short human label.
    """

    scenario: str
    name: str
    unit: str
    better: Literal["higher", "lower"]
    label: str


METRICS: Final = (
    Metric("stream_200b", "rate", "msg/s", "higher", "200 B stream, messages/s"),
    Metric("stream_200b_b2b", "rate", "msg/s", "higher", "200 B stream, back to back, messages/s"),
    Metric("stream_16k", "throughput", "MB/s", "higher", "16 KiB stream, MB/s"),
    Metric("stream_16k_b2b", "throughput", "MB/s", "higher", "16 KiB stream, back to back, MB/s"),
    Metric("rtt", "p50", "us", "lower", "round trip p50, us"),
    Metric("rtt", "p99", "us", "lower", "round trip p99, us"),
    Metric("rtt", "cpu_client", "us", "lower", "CPU per round trip, client side, us"),
    Metric("rtt", "cpu_server", "us", "lower", "CPU per round trip, server side, us"),
    Metric("cpu", "client", "us/msg", "lower", "CPU per message, client side"),
    Metric("cpu", "server", "us/msg", "lower", "CPU per message, server side"),
    Metric("cpu_b2b", "client", "us/msg", "lower", "CPU per message, back to back, client side"),
    Metric("cpu_b2b", "server", "us/msg", "lower", "CPU per message, back to back, server side"),
    Metric("idle_memory", "per_session", "KiB", "lower", "memory per idle session"),
    Metric("codec", "encode_decode", "us", "lower", "envelope encode+decode"),
)

#: Figures only the bus rows have.
BUS_METRICS: Final = (Metric("cpu", "engine", "us/msg", "lower", "CPU per message, redis-server"),)


def metric_of(scenario: str, name: str) -> Metric:
    """Return the :class:`Metric` ``scenario.name`` (wire, codec or bus).

    Raises:
        KeyError: there is no such metric.
    """
    for m in (*METRICS, *BUS_METRICS):
        if m.scenario == scenario and m.name == name:
            return m
    raise KeyError(f"{scenario}.{name}")


@dataclass(frozen=True)
class Stream:
    """A one-way stream run: which scenario it is, what it sends, how, and its CPU scenario.

    Attributes:
        scenario: the scenario whose rate (or throughput) the run measures.
        size: payload bytes per message.
        back_to_back: the producer awaits each send and never yields to the
            event loop of its own accord (it still waits when a send blocks on
            backpressure); otherwise it yields after every
            :data:`~proxy_core.bench.links.YIELD_EVERY` sends.
        cpu: the scenario whose CPU per message is measured during this run, if any.
    """

    scenario: str
    size: int
    back_to_back: bool
    cpu: str | None = None


#: The stream runs, in the order they run.
STREAMS: Final = (
    Stream("stream_200b", 200, back_to_back=False, cpu="cpu"),
    Stream("stream_200b_b2b", 200, back_to_back=True, cpu="cpu_b2b"),
    Stream("stream_16k", 16384, back_to_back=False),
    Stream("stream_16k_b2b", 16384, back_to_back=True),
)


@dataclass(frozen=True)
class Counts:
    """How much work each scenario does (the same for the proxy and the bare library).

    Attributes:
        stream_200b: messages of 200 bytes in the one-way stream.
        stream_16k: messages of 16 KiB in the one-way stream.
        rtt: sequential request/replies of 200 bytes.
        idle_sessions: idle sessions held open at once.
        warmup: messages (or round trips) sent before each timed run.
        deadline: seconds any one step may take before it is failed.
        codec_seconds: the time each codec timing aims for.
        bus_stream: messages of 200 bytes in a Redis bus row's one-way stream
            (the in-process bus row uses ``stream_200b``).
        bus_rtt: round trips of a Redis bus row (the in-process bus row uses ``rtt``).
    """

    stream_200b: int = 100_000
    stream_16k: int = 10_000
    rtt: int = 5_000
    idle_sessions: int = 200
    warmup: int = 500
    deadline: float = 60.0
    codec_seconds: float = 0.2
    bus_stream: int = 20_000
    bus_rtt: int = 2_000

    def of(self, stream: Stream) -> int:
        """Return how many messages ``stream`` sends (a back-to-back run as many as the other)."""
        return self.stream_200b if stream.size <= 200 else self.stream_16k


FULL_COUNTS: Final = Counts()
QUICK_COUNTS: Final = Counts(
    stream_200b=5_000,
    stream_16k=500,
    rtt=500,
    idle_sessions=50,
    warmup=100,
    deadline=10.0,
    codec_seconds=0.02,
    bus_stream=2_000,
    bus_rtt=200,
)


@dataclass
class BenchOptions:
    """What a benchmark run does.

    Attributes:
        transports: transport names (default: every installed one that works across processes).
        codecs: codec names (default: every installed one).
        scenarios: scenario names from :data:`SCENARIOS` (default: all).
        repeats: runs of everything, each with its own processes.
        counts: the work per scenario.
        pin: pin servers to core 0 and clients to core 1 where the OS allows.
        pipecat: run the pipecat-ai peer row when pipecat is importable.
        pipecat_python: the interpreter to run the pipecat peer with (default: this one).
        profile_dir: write a cProfile of each proxy process during stream_200b here.
        quick: the run uses reduced counts (recorded in the output).
        buses: the bus rows to run, from :data:`BUSES`; ``None``: every available
            one, unless ``transports`` is given (then none).
        loop: the event loop every child process runs on: ``"asyncio"`` or
            ``"uvloop"`` (:data:`proxy_core.loops.LOOPS`).
        floor: also run each transport's ``bare+hop`` row: the bare library with
            the proxy's shape of tasks (each side receives in a task of its own
            and hands frames to the consumer through a queue), the floor of the
            design's round trip.
    """

    transports: list[str] | None = None
    codecs: list[str] | None = None
    scenarios: list[str] = field(default_factory=lambda: list(SCENARIOS))
    repeats: int = 3
    counts: Counts = FULL_COUNTS
    pin: bool = True
    pipecat: bool = True
    pipecat_python: str | None = None
    profile_dir: str | None = None
    quick: bool = False
    buses: list[str] | None = None
    loop: str = "asyncio"
    floor: bool = True

    def selected_buses(self) -> list[str]:
        """Return the bus rows this run asks for (before checking what is installed)."""
        if self.buses is not None:
            return list(self.buses)
        return list(BUSES) if self.transports is None else []


@dataclass
class Record:
    """One reported figure: the proxy (or peer) against the bare library, in the same run.

    ``ratio`` is the median over repeats of ``proxy / bare`` within each
    repeat (the two ran back to back, so machine drift mostly cancels);
    ``proxy`` and ``bare`` are the medians of each side alone; ``spread`` is
    ``(max - min) / median`` of the per-repeat ratios.
    """

    transport: str
    codec: str
    scenario: str
    metric: str
    unit: str
    better: str
    impl: str = "proxy-core"
    proxy: float | None = None
    bare: float | None = None
    ratio: float | None = None
    spread: float | None = None
    proxy_spread: float | None = None
    bare_spread: float | None = None
    repeats: int = 0
    proxy_samples: list[float] = field(default_factory=list)
    bare_samples: list[float] = field(default_factory=list)
    bare_label: str = ""
    status: str = "ok"
    error: str | None = None
    date: str = ""
    machine: dict[str, Any] = field(default_factory=dict)


def is_bus_row(record: Record) -> bool:
    """Whether ``record`` is a bus row (``transport`` ``bus:local``, ``bus:redis``...)."""
    return record.transport.startswith("bus:")


def order_records(records: Iterable[Record]) -> list[Record]:
    """Sort records for reading: wire rows by transport and codec, peers, buses, codecs last."""
    rank = {(m.scenario, m.name): i for i, m in enumerate((*METRICS, *BUS_METRICS))}
    return sorted(
        records,
        key=lambda r: (
            r.scenario == "codec",
            is_bus_row(r),
            r.impl != "proxy-core",
            r.transport,
            r.codec,
            rank.get((r.scenario, r.metric), len(rank)),
        ),
    )
