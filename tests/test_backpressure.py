"""Backpressure with real runners: bounded inboxes, each overflow policy, and a stalled peer.

A fast producer and a slow (or stalled) consumer share a bus: the consumer's
inbox never holds more than ``max_queue`` messages; under ``wait`` nothing is
lost, under the drop policies ``delivered + dropped == sent``, under ``error``
the sender gets ``QueueFull``; lifecycle messages still reach a flooded worker;
a worker that sends to itself never deadlocks. The last test stalls a worker
behind a real websockets link and shows that every queue on the path stays
within its bound while the producer waits, and that nothing is lost or
duplicated once the consumer resumes.

Every wait is on an event with a generous timeout; the one poll (to see that
the producer is blocked, which nothing signals) is bounded and commented.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from proxy_core import (
    BaseWorker,
    BusDataMessage,
    BusFrameMessage,
    BusMessage,
    ConfigurationError,
    OverflowPolicy,
    ProxyClient,
    QueueFull,
    TextFrame,
    WorkerReadyData,
    WorkerRunner,
    serve_proxy,
)
from proxy_core.inbox import Inbox

TIMEOUT = 30.0


async def within(awaitable: Any) -> Any:
    # Not asyncio.wait_for: on Python 3.11 it can swallow a cancellation that
    # races with completion, and a stalled worker must stop when it is cancelled.
    async with asyncio.timeout(TIMEOUT):
        return await awaitable


def data(n: int, target: str | None = "consumer", source: str = "producer") -> BusDataMessage:
    return BusDataMessage(source, target, {"n": n})


class Consumer(BaseWorker):
    """Records the numbers it gets; stalls on the first one until ``release`` is set."""

    def __init__(self, name: str = "consumer", *, stall: bool = True, **options: Any) -> None:
        super().__init__(name, **options)
        self.got: list[int] = []
        self.stalled = asyncio.Event()
        self.release = asyncio.Event()
        if not stall:
            self.release.set()
        self.expect = -1
        self.done = asyncio.Event()
        self.deepest = 0
        self.deactivated = asyncio.Event()
        self.ended = asyncio.Event()

    async def on_bus_message(self, message: BusMessage) -> None:
        if not isinstance(message, BusDataMessage):
            return
        self.deepest = max(self.deepest, self.queue_stats.depth)
        if not self.release.is_set():
            self.stalled.set()
            await within(self.release.wait())
        else:
            await asyncio.sleep(0)  # slower than the producer, which never yields with room
        self.got.append(message.data["n"])
        if len(self.got) == self.expect:
            self.done.set()

    async def on_deactivated(self) -> None:
        self.deactivated.set()

    async def on_end(self, reason: str | None) -> None:
        self.ended.set()


class Producer(BaseWorker):
    """Sends numbered messages; ``sent`` counts the sends that returned."""

    def __init__(self, name: str = "producer") -> None:
        super().__init__(name)
        self.sent = 0

    async def produce(self, numbers: range, target: str = "consumer") -> None:
        for n in numbers:
            await self.send_bus_message(data(n, target, self.name))
            self.sent += 1


@asynccontextmanager
async def running(*workers: BaseWorker) -> AsyncIterator[WorkerRunner]:
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(*workers)
    ready = [asyncio.Event() for _ in workers]
    for worker, event in zip(workers, ready, strict=True):

        async def mark(_: WorkerReadyData, event: asyncio.Event = event) -> None:
            event.set()

        runner.registry.watch(worker.name, mark)
    task = asyncio.create_task(runner.run())
    try:
        for event in ready:
            await within(event.wait())
        yield runner
    finally:
        await runner.end("test over")
        await within(task)


# ----------------------------------------------------------------- configuration


def test_worker_options_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="max_queue"):
        BaseWorker("w", max_queue=0)
    with pytest.raises(ConfigurationError) as info:
        BaseWorker("w", overflow="drop_everything")
    assert "'wait', 'drop_oldest', 'drop_newest', 'error'" in str(info.value)
    with pytest.raises(ConfigurationError, match="put_timeout"):
        BaseWorker("w", put_timeout=0)
    worker = BaseWorker("w", max_queue=8, overflow="drop_oldest")
    stats = worker.queue_stats
    assert (stats.maxsize, stats.overflow, stats.depth) == (8, OverflowPolicy.DROP_OLDEST, 0)
    assert BaseWorker("v").queue_stats.maxsize == 1024  # the default bound


# ----------------------------------------------------------------- wait


async def test_wait_a_slow_consumer_paces_the_producer_losing_nothing() -> None:
    consumer, producer = Consumer(stall=False, max_queue=16), Producer()
    consumer.expect = 2000
    async with running(consumer, producer):
        await within(producer.produce(range(2000)))
        await within(consumer.done.wait())
    assert consumer.got == list(range(2000))  # in order, each once
    stats = consumer.queue_stats
    assert stats.high_water == 16 and consumer.deepest <= 16  # the bound was reached, not passed
    assert stats.dropped == {} and stats.bypassed == 0


async def test_wait_a_stalled_consumer_blocks_the_producer_until_released() -> None:
    consumer, producer = Consumer(max_queue=8), Producer()
    consumer.expect = 100
    async with running(consumer, producer):
        task = asyncio.create_task(producer.produce(range(100)))
        await within(consumer.stalled.wait())
        # Nothing signals "the producer waits"; its send awaits the inbox's
        # waiting-sender future, which the stats report.
        for _ in range(300):  # bounded poll, 3 s at most
            if consumer.queue_stats.waiting:
                break
            await asyncio.sleep(0.01)
        assert consumer.queue_stats.waiting == 1 and not task.done()
        # The stalled message and a full inbox (it took the first one out
        # before the producer filled it, or after).
        assert producer.sent in (8, 1 + 8)
        assert consumer.queue_stats.depth in (7, 8)
        consumer.release.set()
        await within(task)
        await within(consumer.done.wait())
    assert consumer.got == list(range(100))
    assert consumer.queue_stats.high_water == 8


async def test_wait_gives_up_after_put_timeout_and_counts_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer, producer = Consumer(max_queue=1, put_timeout=0.05), Producer()
    async with running(consumer, producer):
        await producer.produce(range(1))
        await within(consumer.stalled.wait())
        await within(producer.produce(range(1, 3)))  # 1 is queued, 2 times out
        assert consumer.queue_stats.dropped == {"timeout": 1}
        assert "'consumer'" in caplog.text and "timeout" in caplog.text
        consumer.expect = 2
        consumer.release.set()
        await within(consumer.done.wait())
    assert consumer.got == [0, 1]


async def test_stopping_a_worker_releases_the_senders_waiting_for_it() -> None:
    consumer, producer = Consumer(max_queue=2), Producer()
    async with running(consumer, producer) as runner:
        await producer.produce(range(1))
        await within(consumer.stalled.wait())
        await producer.produce(range(1, 3))
        waiting = asyncio.create_task(runner.bus.send(data(3)))
        await asyncio.sleep(0)
        await runner.cancel("stop")  # the stalled worker is cancelled, its inbox closed
        await within(waiting)  # released at once, not after put_timeout
    assert consumer.queue_stats.dropped == {"closed": 1}


async def test_a_worker_sending_to_itself_never_waits_for_itself() -> None:
    class Echo(BaseWorker):
        def __init__(self) -> None:
            super().__init__("echo", max_queue=2, put_timeout=60)
            self.got: list[int] = []
            self.done = asyncio.Event()

        async def on_bus_message(self, message: BusMessage) -> None:
            if not isinstance(message, BusDataMessage):
                return
            n = message.data["n"]
            self.got.append(n)
            if n == 0:  # ten messages to itself from its own handler: more than it holds
                for i in range(1, 11):
                    await self.send_bus_message(data(i, "echo", "echo"))
            if n == 10:
                self.done.set()

    echo = Echo()
    async with running(echo) as runner:
        await runner.bus.send(data(0, "echo"))
        await within(echo.done.wait())  # a deadlock would hang here until put_timeout
    assert echo.got == list(range(11))
    assert echo.queue_stats.dropped == {} and echo.queue_stats.bypassed == 8


# ----------------------------------------------------------------- the other policies


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
async def test_drop_policies_never_wait_and_count_every_drop(policy: str) -> None:
    consumer, producer = Consumer(max_queue=16, overflow=policy), Producer()
    async with running(consumer, producer):
        await producer.produce(range(1))
        await within(consumer.stalled.wait())
        await within(producer.produce(range(1, 1000)))  # never waits
        dropped = consumer.queue_stats.dropped
        assert dropped == {policy: 1000 - 1 - 16}
        consumer.expect = 1000 - dropped[policy]
        consumer.release.set()
        await within(consumer.done.wait())
    assert len(consumer.got) + consumer.queue_stats.dropped_total == producer.sent == 1000
    kept = list(range(1, 17)) if policy == "drop_newest" else list(range(1000 - 16, 1000))
    assert consumer.got == [0, *kept]
    assert consumer.queue_stats.high_water == 16


async def test_error_policy_raises_queue_full_to_the_sender() -> None:
    consumer, producer = Consumer(max_queue=4, overflow="error"), Producer()
    async with running(consumer, producer):
        await producer.produce(range(1))
        await within(consumer.stalled.wait())
        with pytest.raises(QueueFull) as info:
            await producer.produce(range(1, 100))
        assert producer.sent == 1 + 4
        assert info.value.worker == "consumer" and info.value.policy == "error"
        assert "'consumer'" in str(info.value) and "'error'" in str(info.value)
        assert consumer.queue_stats.dropped == {"error": 1}
        consumer.expect = 5
        consumer.release.set()
        await within(consumer.done.wait())
    assert consumer.got == [0, 1, 2, 3, 4]


async def test_a_broadcast_reaches_the_others_when_one_inbox_refuses_it() -> None:
    full, other = Consumer("full", max_queue=2, overflow="error"), Consumer("other", stall=False)
    other.expect = 1
    async with running(full, other) as runner:
        await runner.bus.send(data(0, "full"))
        await within(full.stalled.wait())
        await runner.bus.send(data(1, "full"))
        await runner.bus.send(data(3, "full"))
        with pytest.raises(QueueFull):
            await runner.bus.send(data(2, target=None))
        await within(other.done.wait())
        full.release.set()
    assert other.got == [2]


async def test_deliver_to_never_waits_and_send_to_does() -> None:
    consumer = Consumer(max_queue=1)
    consumer.expect = 3
    async with running(consumer) as runner:
        runner.bus.deliver_to("consumer", data(0))
        await within(consumer.stalled.wait())
        runner.bus.deliver_to("consumer", data(1))
        runner.bus.deliver_to("consumer", data(2))  # full, and it cannot wait: dropped
        assert consumer.queue_stats.dropped == {"full": 1}
        waiting = asyncio.create_task(runner.bus.send_to("consumer", data(3)))
        await asyncio.sleep(0)
        assert not waiting.done()
        consumer.release.set()
        await within(waiting)
        await within(consumer.done.wait())
    assert consumer.got == [0, 1, 3]


# ----------------------------------------------------------------- lifecycle through a flood


@pytest.mark.parametrize("policy", list(OverflowPolicy))
async def test_lifecycle_messages_reach_a_flooded_worker(policy: OverflowPolicy) -> None:
    consumer, producer = Consumer(max_queue=4, overflow=policy), Producer()
    async with running(consumer, producer):
        await producer.produce(range(1))
        await within(consumer.stalled.wait())
        await producer.produce(range(1, 5))  # the inbox is full now
        flood = asyncio.create_task(producer.produce(range(5, 8)))
        await asyncio.sleep(0)
        # Neither waits nor is dropped nor refused, whatever the policy.
        await within(producer.deactivate_worker("consumer"))
        await within(producer.end_worker("consumer", "enough"))
        assert consumer.queue_stats.bypassed == 2
        consumer.release.set()
        await within(consumer.deactivated.wait())
        await within(consumer.ended.wait())
        if policy is OverflowPolicy.ERROR:
            with pytest.raises(QueueFull):
                await within(flood)
        else:
            await within(flood)
        if policy is OverflowPolicy.WAIT:
            # Nobody waits for a worker that ended: its inbox is closed, and
            # later messages are dropped at once.
            await within(producer.produce(range(100, 110)))
    # What was queued before them was handled first, in order.
    kept = [4, 5, 6, 7] if policy is OverflowPolicy.DROP_OLDEST else [1, 2, 3, 4]
    assert consumer.got[:5] == [0, *kept]


# ----------------------------------------------------------------- a stalled peer, end to end


N_MESSAGES = 20_000
PAYLOAD = "x" * 192  # with the 8-digit number: 200 bytes of text per message
MAX_QUEUE = 64
MAX_UNACKED = 128


class Assistant(BaseWorker):
    """The server's worker: stalls on the first message until released, then records."""

    def __init__(self) -> None:
        super().__init__("assistant", max_queue=MAX_QUEUE, put_timeout=120)
        self.got: list[int] = []
        self.stalled = asyncio.Event()
        self.release = asyncio.Event()
        self.done = asyncio.Event()

    async def on_bus_message(self, message: BusMessage) -> None:
        if not isinstance(message, BusFrameMessage) or not isinstance(message.frame, TextFrame):
            return
        if not self.release.is_set():
            self.stalled.set()
            async with asyncio.timeout(120):
                await self.release.wait()
        self.got.append(int(message.frame.text[:8]))
        if len(self.got) == N_MESSAGES:
            self.done.set()


async def test_a_stalled_peer_bounds_every_queue_and_then_loses_nothing() -> None:
    assistants: list[Assistant] = []

    async def setup(runner: WorkerRunner) -> None:
        assistants.append(Assistant())
        await runner.add_workers(assistants[-1])

    # Heartbeats at their defaults would close a link whose receiver stalls for
    # 30 s; the stall here is short, but a busy machine must not turn it into a flake.
    link = {"max_unacked": MAX_UNACKED, "heartbeat_interval": 5.0, "heartbeat_timeout": 120.0}
    async with serve_proxy(
        "ws://127.0.0.1:0/ws",
        worker_name="assistant",
        remote_worker_name="acme",
        setup=setup,
        forward_messages=(BusFrameMessage,),
        **link,
    ) as service:
        runner = WorkerRunner(handle_sigint=False)
        proxy = ProxyClient(
            "proxy",
            url=service.url,
            local_worker_name="acme",
            remote_worker_name="assistant",
            forward_messages=(BusFrameMessage,),
            **link,
        )
        # The proxies take no max_queue option yet: give this one a small inbox.
        proxy._inbox = Inbox(MAX_QUEUE, put_timeout=120, name="proxy", over_bound=proxy._is_control)
        acme = Producer("acme")
        remote_ready = asyncio.Event()

        async def on_ready(_: WorkerReadyData) -> None:
            remote_ready.set()

        runner.registry.watch("assistant", on_ready)
        await runner.add_workers(acme, proxy)
        run = asyncio.create_task(runner.run())
        try:
            await acme.activate_worker("proxy")
            await proxy.wait_connected(TIMEOUT)
            await within(remote_ready.wait())

            async def produce() -> None:
                for n in range(N_MESSAGES):
                    text = TextFrame(f"{n:08d}{PAYLOAD}")
                    await acme.send_bus_message(BusFrameMessage("acme", "assistant", text))
                    acme.sent += 1

            producer = asyncio.create_task(produce())
            await within(assistants[0].stalled.wait())
            assistant, session = assistants[0], proxy._session
            assert session is not None

            def stalled() -> bool:
                # The producer waits for room in the proxy's inbox, the proxy
                # waits for acknowledgements, the server waits for room in
                # the assistant's inbox: every queue on the path is full.
                return (
                    proxy.queue_stats.waiting == 1
                    and session.unacked == MAX_UNACKED
                    and assistant.queue_stats.waiting == 1
                )

            # Nothing signals that the producer is blocked: poll, bounded (30 s).
            for _ in range(600):
                if stalled():
                    break
                depths = (
                    proxy.queue_stats.depth,
                    session.unacked,
                    assistant.queue_stats.depth,
                )
                assert depths <= (MAX_QUEUE, MAX_UNACKED, MAX_QUEUE), depths
                await asyncio.sleep(0.05)
            assert stalled(), (proxy.queue_stats, session.unacked, assistant.queue_stats)
            assert not producer.done()
            # A waiting sender is let in once the inbox is down to half.
            assert MAX_QUEUE // 2 < proxy.queue_stats.depth <= MAX_QUEUE
            # Full, less the first message if it took it out after the inbox filled.
            assert MAX_QUEUE - 1 <= assistant.queue_stats.depth <= MAX_QUEUE
            # What the producer got rid of is all on the path: the stalled
            # message, the three full queues, one message in each waiting
            # hand-over and at most one BATCH the server decoded (<= MAX_UNACKED).
            path = 1 + MAX_QUEUE + MAX_UNACKED + MAX_QUEUE + 2 + MAX_UNACKED
            assert acme.sent <= path < N_MESSAGES // 40

            assistant.release.set()
            await within(producer)
            await within(assistant.done.wait())
            assert assistant.got == list(range(N_MESSAGES))  # each once, in order
            for stats in (proxy.queue_stats, assistant.queue_stats):
                assert stats.high_water <= MAX_QUEUE and stats.dropped == {}
            assert proxy.stats.messages_out == N_MESSAGES and proxy.stats.duplicates == 0
            assert not proxy.stats.dropped_out.get("not_connected")
        finally:
            await runner.end("test over")
            await within(run)
