"""A Prometheus exporter for proxy-core, built on the observability hook.

Needs ``pip install 'proxy-core[prometheus]'`` (prometheus-client; proxy-core
itself never does): without it, the script says so in one line and exits 1.

Run ``python examples/prometheus_exporter.py --port 8765 --metrics-port 9100``:
it serves assistant sessions, as ``examples/assistant.py`` does, and the
proxies' metrics on ``http://127.0.0.1:9100/metrics``; point
``examples/main.py --remote-url ws://127.0.0.1:8765/ws`` at it and scrape.

In your own program, one line: ``install()`` (or
``REGISTRY.register(ProxyCollector())``). Two layers:

- :class:`ProxyMetrics` knows nothing of Prometheus: it follows the proxies
  with :func:`proxy_core.observe`, and :meth:`ProxyMetrics.collect` sums their
  :meth:`stats_snapshot` by label set (proxy name, side, and optionally the
  session id), keeping the final counts of proxies that stopped so that
  counters never go down. The OpenTelemetry sketch in
  ``docs/observability.md`` reuses it.
- :class:`ProxyCollector` is a ``prometheus_client`` custom collector that
  turns those families into ``CounterMetricFamily`` and ``GaugeMetricFamily``.

Nothing runs per message: the work is done when Prometheus scrapes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
import weakref
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from proxy_core import ProxySnapshot, live_proxies, observe
from proxy_core.errors import ProxyError
from proxy_core.observe import ObservedProxy, ObserveEvent

try:
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
except ImportError:  # the neutral layer (ProxyMetrics) works without it
    CounterMetricFamily = GaugeMetricFamily = None  # type: ignore[assignment,misc]

__all__ = ["Family", "ProxyCollector", "ProxyMetrics", "install"]

#: Counter families: name (Prometheus adds ``_total``), help, extra label names.
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "proxy_core_messages": ("Messages that crossed the link, by direction.", ("direction",)),
    "proxy_core_bytes": ("Frame bytes written and read, by direction.", ("direction",)),
    "proxy_core_dropped": ("Messages dropped, by direction and reason.", ("direction", "reason")),
    "proxy_core_inbox_dropped": ("Messages the proxy's inbox dropped, by reason.", ("reason",)),
    "proxy_core_duplicates": ("Received messages discarded as already delivered.", ()),
    "proxy_core_replayed": ("Frames sent again on a resumed session.", ()),
    "proxy_core_reconnects": ("Connections after the first.", ()),
    "proxy_core_resumes": ("Sessions resumed on a new connection.", ()),
    "proxy_core_sessions": ("Sessions opened (a resume counts again).", ()),
    "proxy_core_batches": ("BATCH frames written and read, by direction.", ("direction",)),
}

#: Gauge families: name, help. Summed over the proxies of a label set, except the RTT.
GAUGES: dict[str, str] = {
    "proxy_core_proxies": "Proxies running.",
    "proxy_core_connected": "Proxies with a session open on a live connection.",
    "proxy_core_inbox_depth": "Messages waiting in the proxies' inboxes.",
    "proxy_core_outbox_unacked": "Messages sent and not acknowledged yet.",
    "proxy_core_write_queue": "Frames queued for writing.",
    "proxy_core_heartbeat_rtt_seconds": "The last heartbeat round trip (the largest of the set).",
}

#: The gauges summed over a label set (the RTT is a maximum instead).
SUMMED = frozenset(GAUGES) - {"proxy_core_heartbeat_rtt_seconds"}

Labels = tuple[str, ...]


@dataclass
class Family:
    """One metric family, independent of any metrics library."""

    name: str
    kind: Literal["counter", "gauge"]
    help: str
    labels: Labels
    samples: list[tuple[Labels, float]] = field(default_factory=list)


def counter_samples(snap: ProxySnapshot) -> Iterator[tuple[str, Labels, float]]:
    """Yield ``(family, extra label values, value)`` for each counter of ``snap``."""
    for direction, messages, size, batches, dropped in (
        ("out", snap.messages_out, snap.bytes_out, snap.batches_out, snap.dropped_out),
        ("in", snap.messages_in, snap.bytes_in, snap.batches_in, snap.dropped_in),
    ):
        yield "proxy_core_messages", (direction,), messages
        yield "proxy_core_bytes", (direction,), size
        yield "proxy_core_batches", (direction,), batches
        for reason, count in dropped.items():
            yield "proxy_core_dropped", (direction, reason), count
    for reason, count in snap.inbox_dropped.items():
        yield "proxy_core_inbox_dropped", (reason,), count
    yield "proxy_core_duplicates", (), snap.duplicates
    yield "proxy_core_replayed", (), snap.replayed
    yield "proxy_core_reconnects", (), snap.reconnects
    yield "proxy_core_resumes", (), snap.resumes
    yield "proxy_core_sessions", (), snap.sessions


def gauge_samples(snap: ProxySnapshot) -> Iterator[tuple[str, float]]:
    """Yield ``(family, value)`` for each summed gauge of ``snap``."""
    yield "proxy_core_proxies", 1
    yield "proxy_core_connected", 1 if snap.connected else 0
    yield "proxy_core_inbox_depth", snap.inbox_depth
    yield "proxy_core_outbox_unacked", snap.outbox_unacked
    yield "proxy_core_write_queue", snap.write_queue


class ProxyMetrics:
    """The proxies' counters and gauges, summed by label set; thread-safe.

    Labels: ``proxy`` (the worker's name), ``side`` (``client``/``server``)
    and, with ``per_session``, ``session`` (the session id, ``""`` when there
    is none). Without ``per_session``, the many server proxies of one
    ``serve_proxy`` (one per connection, all of one name) add up into one
    series, and the final counts of stopped proxies are kept, so counters
    never go down. With it, a stopped proxy's series go away with it (and a
    client that opens a new session continues under the new id).

    Args:
        per_session: add the ``session`` label (one series per live proxy;
            mind the cardinality on a busy server).
    """

    def __init__(self, *, per_session: bool = False) -> None:
        self.per_session = per_session
        self.labels: Labels = ("proxy", "side", "session") if per_session else ("proxy", "side")
        self._lock = threading.Lock()  # scrapes come from another thread
        self._proxies: weakref.WeakSet[ObservedProxy] = weakref.WeakSet()
        self._retired: Counter[tuple[str, Labels]] = Counter()
        self._unsubscribe = observe(self._on_event)
        with self._lock:  # after subscribing: a proxy starting now is not missed
            self._proxies.update(live_proxies())

    def close(self) -> None:
        """Stop following the proxies."""
        self._unsubscribe()

    def _key(self, snap: ProxySnapshot) -> Labels:
        if self.per_session:
            return (snap.name, snap.side, snap.session_id or "")
        return (snap.name, snap.side)

    def _on_event(self, event: ObserveEvent, proxy: ObservedProxy) -> None:
        if event == "started":
            with self._lock:
                self._proxies.add(proxy)
        elif event == "stopped":
            snap = proxy.stats_snapshot()  # final: the proxy has stopped
            with self._lock:
                # Moved from live to retired in one step: a scrape counts it once.
                if proxy in self._proxies:
                    self._proxies.discard(proxy)
                    if not self.per_session:
                        key = self._key(snap)
                        for name, extra, value in counter_samples(snap):
                            self._retired[name, key + extra] += value

    def collect(self) -> list[Family]:
        """Return every family with its samples now (each family even when empty)."""
        with self._lock:
            proxies = list(self._proxies)
            counters = Counter(self._retired)
        gauges: Counter[tuple[str, Labels]] = Counter()
        for _name, values in counters:  # a set whose proxies all stopped reads 0, not nothing
            key = values[: len(self.labels)]
            gauges.update({(gauge, key): 0 for gauge in SUMMED})
        rtt: dict[Labels, float] = {}
        for proxy in proxies:
            snap = proxy.stats_snapshot()
            key = self._key(snap)
            for name, extra, value in counter_samples(snap):
                counters[name, key + extra] += value
            for name, value in gauge_samples(snap):
                gauges[name, key] += value
            if snap.heartbeat_rtt is not None:
                rtt[key] = max(rtt.get(key, 0.0), snap.heartbeat_rtt)
        families = {
            name: Family(name, "counter", text, self.labels + extra)
            for name, (text, extra) in COUNTERS.items()
        }
        families.update(
            (name, Family(name, "gauge", text, self.labels)) for name, text in GAUGES.items()
        )
        for (name, values), value in sorted(counters.items()):
            families[name].samples.append((values, float(value)))
        for (name, values), value in sorted(gauges.items()):
            families[name].samples.append((values, float(value)))
        for values, value in sorted(rtt.items()):
            families["proxy_core_heartbeat_rtt_seconds"].samples.append((values, value))
        return list(families.values())


class ProxyCollector:
    """A ``prometheus_client`` collector of the proxies' metrics.

    Register it once per process: ``REGISTRY.register(ProxyCollector())``.

    Args:
        metrics: the :class:`ProxyMetrics` to read (default: a new one).
        per_session: passed to a new :class:`ProxyMetrics`.

    Raises:
        RuntimeError: ``prometheus_client`` is not installed.
    """

    def __init__(self, metrics: ProxyMetrics | None = None, *, per_session: bool = False) -> None:
        if CounterMetricFamily is None:
            raise RuntimeError(
                "the Prometheus exporter needs `pip install 'proxy-core[prometheus]'` "
                "(or `pip install prometheus-client`)"
            )
        self.metrics = metrics if metrics is not None else ProxyMetrics(per_session=per_session)

    def collect(self) -> Iterator[Any]:
        """Yield one ``CounterMetricFamily`` or ``GaugeMetricFamily`` per family."""
        for family in self.metrics.collect():
            kind = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
            metric = kind(family.name, family.help, labels=family.labels)
            for values, value in family.samples:
                metric.add_metric(values, value)
            yield metric


def install(registry: CollectorRegistry | None = None, *, per_session: bool = False) -> Any:
    """Register a :class:`ProxyCollector` (in the default registry); return it."""
    collector = ProxyCollector(per_session=per_session)
    (registry if registry is not None else REGISTRY).register(collector)
    return collector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="proxy sessions; 0: a free port")
    parser.add_argument("--metrics-port", type=int, default=9100, help="0: a free port")
    parser.add_argument("--transport", default="websockets")
    parser.add_argument("--per-session", action="store_true", help="label series by session")
    args = parser.parse_args()
    if CounterMetricFamily is None:
        need = "pip install 'proxy-core[prometheus]'"
        sys.exit(f"prometheus_exporter.py needs prometheus-client: {need}")
    logging.basicConfig(level=logging.INFO)
    install(per_session=args.per_session)
    try:
        started = start_http_server(args.metrics_port, addr=args.host)
    except OSError as exc:  # a user's mistake: one line, not a traceback
        sys.exit(f"prometheus_exporter: could not serve metrics on port {args.metrics_port}: {exc}")
    port = started[0].server_port if started else args.metrics_port  # a tuple since 0.20
    print(f"metrics on http://{args.host}:{port}/metrics", flush=True)
    from assistant import serve  # examples/assistant.py, beside this script

    try:
        asyncio.run(serve(args.host, args.port, args.transport))
    except ProxyError as exc:  # a port in use, an unknown transport...: one line
        sys.exit(f"prometheus_exporter: {exc}")


if __name__ == "__main__":
    main()
