"""The in-process runtime (bus, workers, runner, registry) and plugin lookup, no network.

Every wait is bounded by ``asyncio.wait_for(..., TIMEOUT)`` on an event or a queue; nothing
sleeps to synchronise. "Did not receive" is shown by ordering: a marker sent afterwards on
the same path arrives first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest

from proxy_core.bus import Bus
from proxy_core.codecs.json import JsonCodec
from proxy_core.codecs.msgpack import MsgpackCodec
from proxy_core.errors import ConfigurationError, PluginError
from proxy_core.messages import (
    BusActivateWorkerMessage,
    BusCancelMessage,
    BusDataMessage,
    BusEndMessage,
    BusMessage,
    BusWorkerReadyMessage,
)
from proxy_core.plugins import available_codecs, load_codec, resolve_codec
from proxy_core.registry import WorkerReadyData, WorkerRegistry
from proxy_core.runner import WorkerRunner
from proxy_core.worker import BaseWorker

TIMEOUT = 30.0
T = TypeVar("T")


async def within(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, TIMEOUT)


class Recorder(BaseWorker):
    """A worker that records what happens to it, and lets a test wait for each thing."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.inbox: asyncio.Queue[BusMessage] = asyncio.Queue()
        self.hooks: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.ends: list[str | None] = []
        self.started = asyncio.Event()
        self.ended = asyncio.Event()

    async def on_start(self) -> None:
        self.started.set()

    async def on_bus_message(self, message: BusMessage) -> None:
        if not isinstance(message, BusWorkerReadyMessage):
            self.inbox.put_nowait(message)

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        self.hooks.put_nowait(("activated", args))

    async def on_deactivated(self) -> None:
        self.hooks.put_nowait(("deactivated", None))

    async def on_end(self, reason: str | None) -> None:
        self.ends.append(reason)
        self.ended.set()

    async def next_message(self) -> BusMessage:
        return await within(self.inbox.get())

    async def next_hook(self) -> tuple[str, Any]:
        return await within(self.hooks.get())


def new_runner() -> WorkerRunner:
    return WorkerRunner(handle_sigint=False)


@asynccontextmanager
async def running(runner: WorkerRunner) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``runner`` in a task; on exit end it (if nobody did) and wait for ``run``."""
    task = asyncio.create_task(runner.run())
    try:
        yield task
    finally:
        await runner.end("test over")
        await within(task)


async def until(predicate: Callable[[], bool], via: Recorder) -> None:
    """Wait for a condition another task makes true, yielding through ``via``'s bus round trip.

    No sleeps: each turn sends ``via`` a message to itself and waits for it, which lets every
    task that was ready run first. Bound it with :func:`within`.
    """
    while not predicate():
        await via.send_bus_message(BusDataMessage(via.name, via.name, {"tick": True}))
        await via.inbox.get()


def data(source: str, target: str | None, **values: Any) -> BusDataMessage:
    return BusDataMessage(source, target, values)


# ================================================================ bus


class Endpoint:
    """A bare bus endpoint that records deliveries synchronously."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.got: list[BusMessage] = []

    def deliver(self, message: BusMessage) -> None:
        self.got.append(message)

    def offer(self, message: BusMessage) -> bool:
        self.got.append(message)
        return True

    async def put(self, message: BusMessage) -> None:  # offer never declines
        raise AssertionError("not reached")


async def test_bus_routes_by_target_not_fan_out() -> None:
    bus = Bus()
    a, b, c = Endpoint("a"), Endpoint("b"), Endpoint("c")
    for endpoint in (a, b, c):
        await bus.attach(endpoint, [endpoint.name])
    message = data("a", "b", n=1)
    await bus.send(message)
    assert b.got == [message]
    assert a.got == [] and c.got == []
    assert b.got[0] is message  # delivered as is, not copied


async def test_bus_routes_every_claimed_name_to_its_endpoint() -> None:
    bus = Bus()
    proxy, worker = Endpoint("proxy"), Endpoint("w")
    await bus.attach(proxy, ["proxy", "assistant"])  # a proxy also claims the remote worker
    await bus.attach(worker, ["w"])
    await bus.send(data("w", "assistant"))
    assert len(proxy.got) == 1 and worker.got == []
    assert bus.names() == ["assistant", "proxy", "w"]


async def test_bus_broadcast_reaches_everyone_but_the_sender() -> None:
    bus = Bus()
    endpoints = [Endpoint(n) for n in ("a", "b", "c")]
    for endpoint in endpoints:
        await bus.attach(endpoint, [endpoint.name])
    listener = Endpoint("runner")
    bus.listen(listener)  # attached without routed names: still gets broadcasts
    message = data("a", None)
    await bus.send(message)
    assert [len(e.got) for e in endpoints] == [0, 1, 1]
    assert listener.got == [message]


async def test_bus_counts_undeliverable_messages() -> None:
    bus = Bus()
    await bus.attach(Endpoint("a"), ["a"])
    await bus.send(data("a", "nobody"))
    assert bus.undeliverable == 1


async def test_bus_name_clash_and_detach() -> None:
    bus = Bus()
    first, second = Endpoint("first"), Endpoint("second")
    await bus.attach(first, ["x"])
    await bus.attach(first, ["x"])  # the same endpoint again is fine
    with pytest.raises(ConfigurationError, match="'x'.*'first'"):
        await bus.attach(second, ["y", "x"])
    assert bus.names() == ["x"]  # nothing half-attached
    await bus.detach(first)
    await bus.attach(second, ["x"])
    await bus.send(data("z", "x"))
    await bus.send(data("z", None))
    assert len(second.got) == 2 and first.got == []


# ================================================================ runner and workers


async def test_runner_routes_by_target() -> None:
    runner = new_runner()
    a, b, c = Recorder("a"), Recorder("b"), Recorder("c")
    await runner.add_workers(a, b, c)
    async with running(runner):
        await a.send_bus_message(data("a", "b", n=1))
        await a.send_bus_message(data("a", "c", marker=True))
        assert await b.next_message() == data("a", "b", n=1)
        # c's first message is the marker: the message for b was not fanned out to c.
        assert await c.next_message() == data("a", "c", marker=True)
        await b.send_bus_message(data("b", "a", marker=True))
        assert await a.next_message() == data("b", "a", marker=True)


async def test_runner_broadcast_reaches_everyone_but_the_sender() -> None:
    runner = new_runner()
    a, b, c = Recorder("a"), Recorder("b"), Recorder("c")
    await runner.add_workers(a, b, c)
    async with running(runner):
        await a.send_bus_message(data("a", None, hello=1))
        assert await b.next_message() == data("a", None, hello=1)
        assert await c.next_message() == data("a", None, hello=1)
        await b.send_bus_message(data("b", "a", marker=True))
        assert await a.next_message() == data("b", "a", marker=True)


async def test_worker_name_clash_is_a_configuration_error() -> None:
    runner = new_runner()
    await runner.add_workers(Recorder("x"))
    with pytest.raises(ConfigurationError, match="'x'"):
        await runner.add_workers(Recorder("x"))

    class Claimer(Recorder):
        def routed_names(self) -> tuple[str, ...]:
            return (self.name, "x")

    with pytest.raises(ConfigurationError, match="'x'"):
        await runner.add_workers(Claimer("proxy"))


@pytest.mark.parametrize("name", ["", None, 3])
def test_worker_name_must_be_a_non_empty_string(name: Any) -> None:
    with pytest.raises(ConfigurationError):
        Recorder(name)


def test_worker_bus_before_add_workers_is_a_configuration_error() -> None:
    worker = Recorder("lonely")
    with pytest.raises(ConfigurationError, match="add_workers"):
        _ = worker.bus
    with pytest.raises(ConfigurationError):
        _ = worker.runner
    with pytest.raises(ConfigurationError):
        _ = worker.registry


async def test_worker_gets_the_runners_bus_and_registry() -> None:
    runner = new_runner()
    worker = Recorder("w")
    await runner.add_workers(worker)
    assert worker.bus is runner.bus
    assert worker.registry is runner.registry
    assert runner.workers == [worker]


async def test_a_worker_cannot_join_two_runners() -> None:
    worker = Recorder("w")
    await new_runner().add_workers(worker)
    with pytest.raises(ConfigurationError):
        await new_runner().add_workers(worker)


async def test_activate_and_deactivate_call_hooks_and_event_handlers() -> None:
    runner = new_runner()
    boss, worker = Recorder("boss"), Recorder("worker", active=False)
    seen: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    @worker.event_handler("on_activated")
    async def activated(w: BaseWorker, args: dict[str, Any] | None) -> None:
        seen.put_nowait(("activated", (w.name, args)))

    @worker.event_handler("on_deactivated")
    def deactivated(w: BaseWorker) -> None:  # plain functions work too
        seen.put_nowait(("deactivated", w.name))

    await runner.add_workers(boss, worker)
    assert not worker.active
    async with running(runner):
        await boss.activate_worker("worker", args={"voice": "calm"})
        assert await worker.next_hook() == ("activated", {"voice": "calm"})
        assert await within(seen.get()) == ("activated", ("worker", {"voice": "calm"}))
        assert worker.active
        await boss.deactivate_worker("worker")
        assert await worker.next_hook() == ("deactivated", None)
        assert await within(seen.get()) == ("deactivated", "worker")
        assert not worker.active


async def test_lifecycle_messages_for_others_are_plain_messages() -> None:
    runner = new_runner()
    a, b = Recorder("a"), Recorder("b")
    await runner.add_workers(a, b)
    async with running(runner):
        # An activation addressed to nobody in particular is an ordinary message for b.
        await a.send_bus_message(BusActivateWorkerMessage("a", None, {"n": 1}))
        await a.activate_worker("b", {"n": 2})
        assert await b.next_message() == BusActivateWorkerMessage("a", None, {"n": 1})
        assert await b.next_hook() == ("activated", {"n": 2})  # the first hook call


def test_unknown_event_lists_the_available_ones() -> None:
    worker = Recorder("w")
    with pytest.raises(ConfigurationError) as info:
        worker.event_handler("on_explode")
    message = str(info.value)
    assert "on_explode" in message
    assert "on_activated" in message and "on_deactivated" in message


async def test_a_failing_handler_does_not_stop_the_worker() -> None:
    class Fragile(Recorder):
        async def on_bus_message(self, message: BusMessage) -> None:
            if isinstance(message, BusDataMessage) and message.data.get("explode"):
                raise RuntimeError("boom")
            await super().on_bus_message(message)

    runner = new_runner()
    sender, fragile = Recorder("sender"), Fragile("fragile")

    @fragile.event_handler("on_activated")
    def broken(w: BaseWorker, args: Any) -> None:
        raise RuntimeError("handler boom")

    await runner.add_workers(sender, fragile)
    async with running(runner):
        await sender.send_bus_message(data("sender", "fragile", explode=True))
        await sender.activate_worker("fragile")
        await sender.send_bus_message(data("sender", "fragile", fine=True))
        assert await fragile.next_hook() == ("activated", None)
        assert await fragile.next_message() == data("sender", "fragile", fine=True)


async def test_end_runs_on_end_and_run_returns() -> None:
    runner = new_runner()
    a, b = Recorder("a"), Recorder("b")
    await runner.add_workers(a, b)
    task = asyncio.create_task(runner.run())
    await within(b.started.wait())
    await runner.end("finished")
    await within(task)
    assert a.ends == ["finished"] and b.ends == ["finished"]


async def test_cancel_returns_without_on_end() -> None:
    runner = new_runner()
    a = Recorder("a")
    await runner.add_workers(a)
    task = asyncio.create_task(runner.run())
    await within(a.started.wait())
    await runner.cancel()
    await within(task)
    assert a.ends == []


@pytest.mark.parametrize(
    ("message", "ends"),
    [(BusEndMessage("a", None, "done"), ["done"]), (BusCancelMessage("a", None, "abort"), [])],
    ids=["end", "cancel"],
)
async def test_end_and_cancel_messages_on_the_bus_stop_the_runner(
    message: BusMessage, ends: list[str]
) -> None:
    runner = new_runner()
    a, b = Recorder("a"), Recorder("b")
    await runner.add_workers(a, b)
    task = asyncio.create_task(runner.run())
    await within(a.started.wait())
    await a.send_bus_message(message)
    await within(task)
    assert b.ends == ends and a.ends == ends


async def test_end_before_run_makes_run_return_at_once() -> None:
    runner = new_runner()
    a = Recorder("a")
    await runner.add_workers(a)
    await runner.end("early")
    await within(runner.run())


async def test_a_runner_runs_once() -> None:
    runner = new_runner()
    await runner.end()
    await within(runner.run())
    with pytest.raises(ConfigurationError):
        await runner.run()
    with pytest.raises(ConfigurationError):
        await runner.add_workers(Recorder("late"))


@pytest.mark.parametrize("stop", ["end", "cancel", "end-message"])
async def test_no_task_is_left_running_after_run_returns(stop: str) -> None:
    before = asyncio.all_tasks()
    runner = new_runner()
    never = asyncio.Event()
    blocked = asyncio.Event()

    class Busy(Recorder):
        async def on_start(self) -> None:
            self.create_task(never.wait(), name="worker-owned")
            await super().on_start()

        async def on_bus_message(self, message: BusMessage) -> None:
            if isinstance(message, BusDataMessage):
                blocked.set()
                await never.wait()  # stuck in a handler when the runner stops

    async def slow_watch(_: WorkerReadyData) -> None:
        await never.wait()

    a, busy = Recorder("a"), Busy("busy")
    runner.registry.watch("busy", slow_watch)
    await runner.add_workers(a, busy)
    task = asyncio.create_task(runner.run())
    await within(busy.started.wait())
    await a.send_bus_message(data("a", "busy"))
    await within(blocked.wait())
    if stop == "end":
        await runner.end()
    elif stop == "cancel":
        await runner.cancel()
    else:
        await a.send_bus_message(BusEndMessage("a", None))
    await within(task)
    assert asyncio.all_tasks() == before


async def test_workers_added_while_running_are_started() -> None:
    runner = new_runner()
    a = Recorder("a")
    await runner.add_workers(a)
    async with running(runner):
        late = Recorder("late")
        ready: asyncio.Queue[WorkerReadyData] = asyncio.Queue()

        async def on_ready(info: WorkerReadyData) -> None:
            ready.put_nowait(info)

        runner.registry.watch("late", on_ready)
        await runner.add_workers(late)
        assert await within(ready.get()) == WorkerReadyData("late")
        await a.send_bus_message(data("a", "late", n=1))
        assert await late.next_message() == data("a", "late", n=1)
    assert late.ends == ["test over"]


async def test_ready_workers_are_broadcast_to_the_others() -> None:
    class Watcher(Recorder):
        async def on_bus_message(self, message: BusMessage) -> None:
            self.inbox.put_nowait(message)

    runner = new_runner()
    watcher = Watcher("watcher")
    await runner.add_workers(watcher, Recorder("other"))
    async with running(runner):
        names = set()
        while names != {"other"}:
            message = await watcher.next_message()
            assert isinstance(message, BusWorkerReadyMessage)
            names.add(message.worker)


async def test_end_worker_ends_that_worker() -> None:
    runner = new_runner()
    a, b = Recorder("a"), Recorder("b")
    await runner.add_workers(a, b)
    async with running(runner):
        await within(b.started.wait())
        await a.end_worker("b", "not needed")
        await within(b.ended.wait())
        await within(until(lambda: not runner.registry.is_ready("b"), via=a))
        assert b.ends == ["not needed"]
        assert runner.registry.is_ready("a")


async def test_on_end_runs_once_for_a_worker_ended_early() -> None:
    runner = new_runner()
    a, b = Recorder("a"), Recorder("b")
    await runner.add_workers(a, b)
    async with running(runner):
        await within(b.started.wait())
        await a.end_worker("b", "not needed")
        await within(b.ended.wait())
    assert b.ends == ["not needed"]


# ================================================================ registry


def recording_registry() -> tuple[WorkerRegistry, list[asyncio.Task[Any]]]:
    tasks: list[asyncio.Task[Any]] = []

    def spawn(coro: Coroutine[Any, Any, None]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        tasks.append(task)
        return task

    return WorkerRegistry(spawn), tasks


def queue_callback() -> tuple[
    asyncio.Queue[WorkerReadyData], Callable[[WorkerReadyData], Awaitable[None]]
]:
    queue: asyncio.Queue[WorkerReadyData] = asyncio.Queue()

    async def callback(info: WorkerReadyData) -> None:
        queue.put_nowait(info)

    return queue, callback


async def test_watch_fires_at_once_when_already_ready() -> None:
    registry, tasks = recording_registry()
    registry.set_ready("assistant", remote=True, via="proxy")
    queue, callback = queue_callback()
    registry.watch("assistant", callback)
    assert await within(queue.get()) == WorkerReadyData("assistant", True, "proxy")


async def test_watch_fires_later_when_the_worker_becomes_ready() -> None:
    registry, tasks = recording_registry()
    queue, callback = queue_callback()
    registry.watch("assistant", callback)
    assert tasks == [] and queue.empty()
    registry.set_ready("assistant")
    assert await within(queue.get()) == WorkerReadyData("assistant")
    registry.set_ready("assistant")  # already ready: no second notification
    assert len(tasks) == 1
    registry.set_gone("assistant")
    assert not registry.is_ready("assistant")
    registry.set_ready("assistant")  # ready again: a new transition
    assert await within(queue.get()) == WorkerReadyData("assistant")


async def test_awaiting_watch_works_too() -> None:
    registry, _ = recording_registry()
    queue, callback = queue_callback()
    handle = await registry.watch("w", callback)  # type: ignore[func-returns-value]
    assert handle is None  # awaiting a Watch returns at once
    registry.set_ready("w")
    assert await within(queue.get()) == WorkerReadyData("w")
    registry.set_ready("x")
    await within(registry.watch("x", callback))
    assert await within(queue.get()) == WorkerReadyData("x")


async def test_cancelled_watch_is_not_notified() -> None:
    registry, tasks = recording_registry()
    _, callback = queue_callback()
    registry.watch("w", callback).cancel()
    registry.set_ready("w")
    assert tasks == []


async def test_a_failing_watch_callback_does_not_stop_the_others() -> None:
    registry, tasks = recording_registry()

    async def broken(_: WorkerReadyData) -> None:
        raise RuntimeError("boom")

    queue, callback = queue_callback()
    registry.watch("w", broken)
    registry.watch("w", callback)
    registry.set_ready("w")
    assert await within(queue.get()) == WorkerReadyData("w")
    await within(asyncio.gather(*tasks))
    assert registry.ready_workers() == ["w"] and registry.get("w") == WorkerReadyData("w")


async def test_runner_registry_watch_fires_for_local_workers() -> None:
    runner = new_runner()
    queue, callback = queue_callback()
    runner.registry.watch("b", callback)  # before run: fires once b is ready
    await runner.add_workers(Recorder("a"), Recorder("b"))
    async with running(runner):
        assert await within(queue.get()) == WorkerReadyData("b")
        await runner.registry.watch("a", callback)  # already ready: fires at once
        assert await within(queue.get()) == WorkerReadyData("a")


async def test_a_plain_function_is_a_watch_callback_too(caplog: pytest.LogCaptureFixture) -> None:
    # A lambda or plain function used to be accepted and then fail with a traceback
    # ("object NoneType can't be used in 'await' expression") each time the worker was ready.
    runner = new_runner()
    ready: asyncio.Queue[WorkerReadyData] = asyncio.Queue()
    gone: asyncio.Queue[WorkerReadyData] = asyncio.Queue()
    runner.registry.watch("b", lambda data: ready.put_nowait(data))
    runner.registry.watch_gone("b", gone.put_nowait)
    await runner.add_workers(Recorder("a"), Recorder("b"))
    with caplog.at_level("ERROR", logger="proxy_core"):
        async with running(runner):
            assert await within(ready.get()) == WorkerReadyData("b")
            await runner.registry.watch("a", ready.put_nowait)  # already ready: at once
            assert await within(ready.get()) == WorkerReadyData("a")
            runner.registry.set_gone("b")
            assert await within(gone.get()) == WorkerReadyData("b")
    assert not [r for r in caplog.records if "watch callback" in r.getMessage()]


@pytest.mark.parametrize("callback", [None, "assistant", 42])
def test_a_watch_callback_that_is_not_callable_is_refused_at_once(callback: Any) -> None:
    registry, _ = recording_registry()
    with pytest.raises(ConfigurationError, match="must be a function .plain or async."):
        registry.watch("w", callback)
    with pytest.raises(ConfigurationError, match="must be a function"):
        registry.watch_gone("w", callback)


# ================================================================ plugins


def test_builtin_codecs_are_available() -> None:
    names = available_codecs()
    assert {"json", "msgpack"} <= set(names)
    assert names == sorted(names)


def test_load_codec_by_name() -> None:
    assert load_codec("json") is JsonCodec
    assert load_codec("msgpack") is MsgpackCodec


def test_unknown_codec_lists_the_installed_ones() -> None:
    with pytest.raises(PluginError) as info:
        load_codec("nope")
    error = info.value
    assert error.kind == "codec" and error.name == "nope"
    assert {"json", "msgpack"} <= set(error.available)
    assert "'nope'" in str(error) and "json" in str(error) and "msgpack" in str(error)
    assert isinstance(error, LookupError)


def test_resolve_codec_accepts_an_instance_or_a_name() -> None:
    mine = JsonCodec()
    assert resolve_codec(mine) is mine
    shared = resolve_codec("msgpack")
    assert isinstance(shared, MsgpackCodec)
    assert resolve_codec("msgpack") is shared
    with pytest.raises(PluginError):
        resolve_codec("nope")
