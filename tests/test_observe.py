"""The observability hook: lifecycle events, live proxies, snapshots, and the example exporter.

The hook is exercised on real websockets sessions (``_support``), and on
proxies that never connect (the in-memory transport) where only the worker
lifecycle matters. The example exporter's library-neutral layer
(``ProxyMetrics``) is tested always; its Prometheus collector where
``prometheus_client`` is installed (the ``prometheus`` extra; the ``dev`` extra has it).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from _support import (
    CLIENT_WORKER,
    SERVER_WORKER,
    TIMEOUT,
    ClientSide,
    Note,
    ServerSide,
    frame,
    run_client,
    run_server,
    wait,
)

from proxy_core import (
    BaseWorker,
    ProxyClient,
    ProxySnapshot,
    WorkerRunner,
    live_proxies,
    observe,
)
from proxy_core.observe import ObservedProxy, ObserveEvent
from proxy_core.testing import MemoryTransport

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "prometheus_exporter.py"


class Events:
    """Records what an observer is told, for the proxies of one test only."""

    def __init__(self) -> None:
        self.seen: list[tuple[ObserveEvent, ObservedProxy]] = []

    def __call__(self, event: ObserveEvent, proxy: ObservedProxy) -> None:
        self.seen.append((event, proxy))

    def of(self, proxy: object) -> list[str]:
        return [event for event, p in self.seen if p is proxy]


@pytest.fixture
def events() -> Any:
    recorder = Events()
    unsubscribe = observe(recorder)
    yield recorder
    unsubscribe()


def idle_proxy(name: str) -> ProxyClient:
    """A client proxy that is never activated, so it never connects."""
    return ProxyClient(
        name,
        url="memory://nowhere/ws",
        transport=MemoryTransport(),
        local_worker_name="local",
        remote_worker_name="remote",
        reconnect=None,
    )


async def run_briefly(*workers: BaseWorker) -> WorkerRunner:
    """Start ``workers`` in a runner, wait until they are ready, then end it."""
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(*workers)
    task = asyncio.create_task(runner.run())
    ready = asyncio.Event()
    runner.registry.watch(workers[-1].name, lambda _: _set(ready))
    await wait(ready.wait())
    await runner.end("test over")
    await wait(task)
    return runner


async def _set(event: asyncio.Event) -> None:
    event.set()


@pytest.fixture
async def link() -> AsyncIterator[tuple[ClientSide, ServerSide]]:
    """A connected websockets session: the client side and the server side."""
    async with run_server() as server, run_client(server.url) as client:
        await client.activate()
        yield client, await server.sessions.next()


# --------------------------------------------------------------------------- the hook


async def test_hook_sees_client_and_server_over_websockets(events: Events) -> None:
    async with run_server() as server:
        async with run_client(server.url) as client:
            assert events.of(client.proxy) == ["started"]
            assert client.proxy in live_proxies()
            await client.activate()
            side = await server.sessions.next()
            gateway = side.server_proxy
            await client.say("hi")
            await side.assistant.wait_text("hi")
            assert events.of(client.proxy) == ["started", "connected"]
            assert events.of(gateway) == ["started", "connected"]
            assert {client.proxy, gateway} <= set(live_proxies())
            assert (client.proxy.side, gateway.side) == ("client", "server")
        # The client's runner ended: it said BYE, and the server's runner ends with it.
        await wait(side.ended.wait())
    for proxy in (client.proxy, gateway):
        assert events.of(proxy) == ["started", "connected", "disconnected", "stopped"]
        assert proxy not in live_proxies()


async def test_unsubscribe_stops_the_calls_and_is_idempotent() -> None:
    calls: list[str] = []
    unsubscribe = observe(lambda event, proxy: calls.append(event))
    unsubscribe()
    unsubscribe()
    await run_briefly(idle_proxy("quiet"))
    assert calls == []


async def test_two_subscriptions_of_one_callback_are_independent() -> None:
    calls: list[str] = []

    def callback(event: ObserveEvent, proxy: ObservedProxy) -> None:
        if proxy.name == "twice":
            calls.append(event)

    first, second = observe(callback), observe(callback)
    try:
        first()
        await run_briefly(idle_proxy("twice"))
    finally:
        second()
    assert calls == ["started", "stopped"]


async def test_a_raising_observer_is_logged_and_harmless(
    events: Events, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: ObserveEvent, proxy: ObservedProxy) -> None:
        raise RuntimeError("exporter bug")

    unsubscribe = observe(broken)
    later = Events()
    unsubscribe_later = observe(later)  # subscribed after the broken one: still called
    proxy = idle_proxy("sturdy")
    try:
        with caplog.at_level(logging.ERROR, logger="proxy_core.observe"):
            await run_briefly(proxy)
    finally:
        unsubscribe()
        unsubscribe_later()
    assert events.of(proxy) == later.of(proxy) == ["started", "stopped"]
    failures = [r for r in caplog.records if r.name == "proxy_core.observe"]
    assert len(failures) == 2, failures
    assert all(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in failures)
    assert proxy not in live_proxies()


async def test_a_proxy_that_never_started_is_never_live(events: Events) -> None:
    proxy = idle_proxy("unborn")
    assert proxy not in live_proxies()
    assert events.of(proxy) == []
    snap = proxy.stats_snapshot()  # readable before it runs
    assert (snap.name, snap.side, snap.connected, snap.session_id) == (
        "unborn",
        "client",
        False,
        None,
    )


def test_importing_observe_does_not_import_asyncio() -> None:
    code = (
        "import sys, importlib.util, pathlib, proxy_core\n"
        "assert 'asyncio' not in sys.modules, 'proxy_core pulled in asyncio'\n"
        "from proxy_core import observe, live_proxies, ProxySnapshot\n"
        "assert 'asyncio' not in sys.modules, 'proxy_core.observe pulled in asyncio'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=TIMEOUT)


# --------------------------------------------------------------------------- snapshots


async def until(predicate: Any) -> None:
    """Poll a condition the proxies reach by themselves (an ACK timer), bounded."""

    async def poll() -> None:
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)  # an ACK timer: nothing to wait on but time

    await wait(poll())


async def test_snapshot_counts_traffic_and_reads_the_gauges(
    link: tuple[ClientSide, ServerSide],
) -> None:
    client, side = link
    proxy, gateway = client.proxy, side.server_proxy
    for n in range(5):
        await client.say(f"up {n}")
    await side.assistant.wait_text("up 4")
    for n in range(3):
        await side.assistant.send_bus_message(frame(SERVER_WORKER, CLIENT_WORKER, f"down {n}"))
    await client.acme.wait_text("down 2")
    await client.acme.send_bus_message(Note(CLIENT_WORKER, SERVER_WORKER, "not allowed"))
    await client.say("marker")
    await side.assistant.wait_text("marker")

    mine, theirs = proxy.stats_snapshot(), gateway.stats_snapshot()
    assert isinstance(mine, ProxySnapshot)
    assert (mine.side, theirs.side) == ("client", "server")
    assert mine.connected and theirs.connected
    assert mine.session_id == theirs.session_id == proxy.session_id is not None
    assert mine.codec == theirs.codec == proxy.codec is not None
    assert (mine.messages_out, mine.messages_in) == (6, 3)
    assert (theirs.messages_out, theirs.messages_in) == (3, 6)
    assert mine.dropped_out["not_allowed"] == 1
    assert mine.bytes_out > 0 and mine.bytes_in > 0 and theirs.bytes_in > 0
    assert mine.sessions == theirs.sessions == 1
    assert mine.reconnects == mine.resumes == mine.replayed == mine.duplicates == 0
    assert mine.inbox_depth == 0 and mine.inbox_max == 1024 and mine.inbox_dropped == {}
    assert mine.outbox_max == 4096 and 0 <= mine.outbox_unacked <= 6
    assert mine.write_queue >= 0
    # The counters are those of proxy.stats; the gauges are read live.
    counters = proxy.stats.snapshot()
    assert {k: v for k, v in mine.as_dict().items() if k in counters} == counters
    # The peer acknowledges within its ACK delay: the outbox empties.
    await until(lambda: proxy.stats_snapshot().outbox_unacked == 0)
    await until(lambda: gateway.stats_snapshot().outbox_unacked == 0)

    await client.end()
    await wait(side.ended.wait())
    after = proxy.stats_snapshot()
    assert not after.connected and after.session_id is None and after.outbox_unacked == 0
    assert after.messages_out == 6  # counters outlive the session


# --------------------------------------------------------------------------- the example


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``examples/prometheus_exporter.py``, imported (it needs no prometheus_client to load)."""
    name = "prometheus_exporter_example"
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def samples(families: list[Any], name: str) -> dict[tuple[str, ...], float]:
    (family,) = [f for f in families if f.name == name]
    return dict(family.samples)


async def test_example_metrics_sum_by_label_and_keep_stopped_counts(
    exporter: ModuleType,
) -> None:
    metrics = exporter.ProxyMetrics()
    try:
        async with run_server() as server:
            async with run_client(server.url) as client:
                await client.activate()
                side = await server.sessions.next()
                for n in range(4):
                    await client.say(f"m {n}")
                await side.assistant.wait_text("m 3")
                live = metrics.collect()
                assert samples(live, "proxy_core_messages")[("proxy", "client", "out")] == 4
                assert samples(live, "proxy_core_messages")[("proxy", "server", "in")] == 4
                assert samples(live, "proxy_core_proxies")[("proxy", "client")] == 1
                assert samples(live, "proxy_core_connected")[("proxy", "server")] == 1
                assert ("proxy", "client") in samples(live, "proxy_core_inbox_depth")
                kinds = {f.name: f.kind for f in live}
                assert kinds["proxy_core_bytes"] == "counter"
                assert kinds["proxy_core_write_queue"] == "gauge"
            await wait(side.ended.wait())
        stopped = metrics.collect()
        # Counters never go down: the stopped proxies' final counts stay.
        assert samples(stopped, "proxy_core_messages")[("proxy", "client", "out")] == 4
        assert samples(stopped, "proxy_core_sessions")[("proxy", "server")] == 1
        # Gauges are about live proxies only: none left of either side.
        assert samples(stopped, "proxy_core_proxies") == {
            ("proxy", "client"): 0,
            ("proxy", "server"): 0,
        }
        assert samples(stopped, "proxy_core_connected")[("proxy", "client")] == 0
    finally:
        metrics.close()


async def test_example_metrics_per_session(
    exporter: ModuleType, link: tuple[ClientSide, ServerSide]
) -> None:
    client, side = link
    metrics = exporter.ProxyMetrics(per_session=True)  # after the proxies started
    try:
        await client.say("one")
        await side.assistant.wait_text("one")
        sid = client.proxy.session_id
        assert sid is not None
        families = metrics.collect()
        assert samples(families, "proxy_core_messages")[("proxy", "client", sid, "out")] == 1
        assert samples(families, "proxy_core_messages")[("proxy", "server", sid, "in")] == 1
        await client.end()
        await wait(side.ended.wait())
        assert samples(metrics.collect(), "proxy_core_messages") == {}  # gone with the proxies
    finally:
        metrics.close()


async def test_example_prometheus_collector(
    exporter: ModuleType, link: tuple[ClientSide, ServerSide]
) -> None:
    pytest.importorskip(
        "prometheus_client",
        reason="prometheus-client is not installed: pip install 'proxy-core[prometheus]' "
        "(python3 scripts/dev.py test installs it)",
    )
    from prometheus_client import CollectorRegistry, generate_latest

    client, side = link
    registry = CollectorRegistry()
    collector = exporter.install(registry)
    try:
        for n in range(2):
            await client.say(f"p {n}")
        await side.assistant.wait_text("p 1")
        value = registry.get_sample_value
        labels = {"proxy": "proxy", "side": "client"}
        assert value("proxy_core_messages_total", {**labels, "direction": "out"}) == 2
        assert value("proxy_core_connected", labels) == 1
        assert value("proxy_core_inbox_depth", labels) == 0
        assert value("proxy_core_outbox_max", labels) is None  # not a metric: a bound
        text = generate_latest(registry).decode()
        assert "proxy_core_messages_total{" in text
        assert "# TYPE proxy_core_write_queue gauge" in text
    finally:
        registry.unregister(collector)
        collector.metrics.close()


def test_example_collector_says_what_to_install(
    exporter: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exporter, "CounterMetricFamily", None)  # as without prometheus_client
    with pytest.raises(RuntimeError, match="pip install prometheus-client"):
        exporter.ProxyCollector()
