"""The bounded inbox on its own: order, the bound, each overflow policy, counters, cancellation.

Waiting senders are driven with tasks and ``asyncio.sleep(0)`` (one turn of
the loop, not a delay); nothing here waits on the clock except the tests of
``put_timeout``, which use a tiny one.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy_core import ConfigurationError, OverflowPolicy, QueueFull, QueueStats
from proxy_core.inbox import Inbox

TIMEOUT = 30.0


async def turn(n: int = 3) -> None:
    """Let the other tasks run ``n`` loop iterations (no clock involved)."""
    for _ in range(n):
        await asyncio.sleep(0)


def drain(inbox: Inbox[int]) -> list[int]:
    out = []
    while inbox:
        out.append(inbox.get_nowait())
    return out


# ----------------------------------------------------------------- configuration


@pytest.mark.parametrize("maxsize", [0, -1, True, 1.5, "8"])
def test_maxsize_must_be_a_positive_integer(maxsize: object) -> None:
    with pytest.raises(ConfigurationError, match="max_queue"):
        Inbox(maxsize)  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [0, -1.0, float("inf"), float("nan"), None, True])
def test_put_timeout_must_be_positive_and_finite(timeout: object) -> None:
    with pytest.raises(ConfigurationError, match="put_timeout"):
        Inbox(4, put_timeout=timeout)  # type: ignore[arg-type]


def test_unknown_policy_lists_the_allowed_ones() -> None:
    with pytest.raises(ConfigurationError) as info:
        Inbox(4, "drop_all")
    message = str(info.value)
    for policy in OverflowPolicy:
        assert repr(policy.value) in message
    assert "'drop_all'" in message


def test_policies_parse_from_their_values() -> None:
    assert [OverflowPolicy.parse(p.value) for p in OverflowPolicy] == list(OverflowPolicy)
    assert Inbox(4, "drop_oldest").overflow is OverflowPolicy.DROP_OLDEST
    assert Inbox(4).overflow is OverflowPolicy.WAIT
    assert OverflowPolicy.WAIT == "wait"  # a StrEnum: plain strings work too


# ----------------------------------------------------------------- order and the bound


async def test_fifo_and_counters() -> None:
    inbox: Inbox[int] = Inbox(4)
    for i in range(3):
        assert inbox.offer(i)
    assert len(inbox) == 3
    assert inbox.get_nowait() == 0
    assert await inbox.get() == 1
    assert inbox.offer(3)
    assert drain(inbox) == [2, 3]
    assert inbox.stats == QueueStats(depth=0, high_water=3, maxsize=4, overflow=OverflowPolicy.WAIT)
    with pytest.raises(IndexError):
        inbox.get_nowait()


async def test_wait_policy_declines_when_full_and_put_waits_for_room() -> None:
    inbox: Inbox[int] = Inbox(2)
    assert inbox.offer(0) and inbox.offer(1)
    assert not inbox.offer(2)  # the caller must wait: nothing was queued or dropped
    assert len(inbox) == 2 and inbox.stats.dropped == {}
    putter = asyncio.create_task(inbox.put(2))
    await turn()
    assert not putter.done() and inbox.stats.waiting == 1
    assert inbox.get_nowait() == 0  # taking one hands the waiting item over at once
    assert len(inbox) == 2 and inbox.stats.waiting == 0
    await asyncio.wait_for(putter, TIMEOUT)
    assert drain(inbox) == [1, 2]
    assert inbox.stats.high_water == 2


async def test_waiting_senders_go_in_in_arrival_order_and_newcomers_queue_behind() -> None:
    inbox: Inbox[int] = Inbox(1)
    inbox.offer(0)
    putters = [asyncio.create_task(inbox.put(i)) for i in (1, 2, 3)]
    await turn()
    assert inbox.stats.waiting == 3
    got = [inbox.get_nowait()]
    # Room appeared, but item 1 already took it: a newcomer must not overtake.
    assert not inbox.offer(99)
    while len(got) < 4:
        got.append(await asyncio.wait_for(inbox.get(), TIMEOUT))
    assert got == [0, 1, 2, 3]
    await asyncio.wait_for(asyncio.gather(*putters), TIMEOUT)


async def test_get_waits_for_an_item_and_wakes_on_offer() -> None:
    inbox: Inbox[int] = Inbox(2)
    getter = asyncio.create_task(inbox.get())
    await turn()
    assert not getter.done()
    inbox.offer(7)
    assert await asyncio.wait_for(getter, TIMEOUT) == 7


async def test_one_consumer_only() -> None:
    inbox: Inbox[int] = Inbox(2)
    first = asyncio.create_task(inbox.get())
    await turn()
    with pytest.raises(RuntimeError, match="one consumer"):
        await inbox.get()
    inbox.offer(1)
    assert await asyncio.wait_for(first, TIMEOUT) == 1


# ----------------------------------------------------------------- the other policies


async def test_drop_newest_keeps_the_first_and_counts_the_rest() -> None:
    inbox: Inbox[int] = Inbox(3, "drop_newest")
    for i in range(10):
        assert inbox.offer(i)  # never asks the sender to wait
    await inbox.put(10)  # nor does put
    inbox.put_nowait(11)
    assert drain(inbox) == [0, 1, 2]
    assert inbox.stats.dropped == {"drop_newest": 9}


async def test_drop_oldest_keeps_the_last_and_counts_the_rest() -> None:
    inbox: Inbox[int] = Inbox(3, OverflowPolicy.DROP_OLDEST)
    for i in range(10):
        assert inbox.offer(i)
    await inbox.put(10)
    assert drain(inbox) == [8, 9, 10]
    stats = inbox.stats
    assert stats.dropped == {"drop_oldest": 8} and stats.dropped_total == 8
    assert stats.high_water == 3


@pytest.mark.parametrize("how", ["offer", "put_nowait", "put"])
async def test_error_policy_raises_queue_full_naming_the_worker_and_policy(how: str) -> None:
    inbox: Inbox[int] = Inbox(2, "error", name="assistant")
    inbox.offer(0)
    inbox.offer(1)
    with pytest.raises(QueueFull) as info:
        if how == "put":
            await inbox.put(2)
        else:
            getattr(inbox, how)(2)
    error = info.value
    assert (error.worker, error.policy, error.maxsize) == ("assistant", "error", 2)
    assert "'assistant'" in str(error) and "'error'" in str(error)
    assert drain(inbox) == [0, 1]
    assert inbox.stats.dropped == {"error": 1}


async def test_put_nowait_under_wait_drops_when_full_and_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inbox: Inbox[int] = Inbox(1, name="slow")
    inbox.put_nowait(0)
    with caplog.at_level(logging.WARNING, logger="proxy_core.inbox"):
        for i in range(1, 12):
            inbox.put_nowait(i)
    assert drain(inbox) == [0]
    assert inbox.stats.dropped == {"full": 11}
    # Warned at the 1st and the 10th such drop, not at every one.
    assert [r.getMessage().count("'slow'") for r in caplog.records] == [1, 1]


async def test_put_over_bound_and_the_over_bound_hook() -> None:
    inbox: Inbox[int] = Inbox(2, "drop_newest", over_bound=lambda item: item < 0)
    for i in (0, 1, 2):
        inbox.offer(i)
    inbox.offer(-1)  # the hook lets it in over the bound, the policy does not apply
    inbox.put_over_bound(3)
    assert drain(inbox) == [0, 1, -1, 3]
    assert inbox.stats.bypassed == 2 and inbox.stats.dropped == {"drop_newest": 1}
    assert inbox.stats.high_water == 4


# ----------------------------------------------------------------- timeouts and cancellation


async def test_put_timeout_drops_counts_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    inbox: Inbox[int] = Inbox(1, put_timeout=0.01, name="stuck")
    inbox.offer(0)
    with caplog.at_level(logging.WARNING, logger="proxy_core.inbox"):
        await asyncio.wait_for(inbox.put(1), TIMEOUT)
    assert inbox.stats.dropped == {"timeout": 1} and inbox.stats.waiting == 0
    assert "'stuck'" in caplog.text and "timeout" in caplog.text
    assert drain(inbox) == [0]
    assert inbox.offer(2) and drain(inbox) == [2]  # nothing stale left behind


async def test_a_cancelled_waiting_put_queues_nothing_and_leaks_nothing() -> None:
    inbox: Inbox[int] = Inbox(1)
    inbox.offer(0)
    cancelled = asyncio.create_task(inbox.put(1))
    behind = asyncio.create_task(inbox.put(2))
    await turn()
    cancelled.cancel()
    await turn()
    assert cancelled.cancelled() and inbox.stats.waiting == 1
    assert inbox.get_nowait() == 0
    await asyncio.wait_for(behind, TIMEOUT)
    assert drain(inbox) == [2]
    assert inbox.stats.dropped == {} and inbox.stats.waiting == 0


async def test_a_put_cancelled_after_its_hand_over_is_queued_exactly_once() -> None:
    inbox: Inbox[int] = Inbox(1)
    inbox.offer(0)
    putter = asyncio.create_task(inbox.put(1))
    await turn()
    assert inbox.get_nowait() == 0  # hands 1 over; the putter has not resumed yet
    putter.cancel()
    await turn()
    assert putter.cancelled()
    assert drain(inbox) == [1]
    assert inbox.stats.waiting == 0


async def test_cancelling_a_put_frees_room_for_the_next_waiter() -> None:
    # The cancelled sender's slot must not stall the ones behind it.
    inbox: Inbox[int] = Inbox(1)
    inbox.offer(0)
    first = asyncio.create_task(inbox.put(1))
    second = asyncio.create_task(inbox.put(2))
    await turn()
    first.cancel()
    inbox.get_nowait()  # in the same turn: the cancelled future is skipped
    await asyncio.wait_for(second, TIMEOUT)
    assert drain(inbox) == [2]


async def test_a_cancelled_get_loses_nothing() -> None:
    inbox: Inbox[int] = Inbox(2)
    getter = asyncio.create_task(inbox.get())
    await turn()
    inbox.offer(5)  # wakes the getter...
    getter.cancel()  # ...which is cancelled before it takes the item
    await turn()
    assert getter.cancelled()
    assert await asyncio.wait_for(inbox.get(), TIMEOUT) == 5


async def test_close_releases_waiting_senders_and_refuses_newcomers() -> None:
    inbox: Inbox[int] = Inbox(1)
    inbox.offer(0)
    putters = [asyncio.create_task(inbox.put(i)) for i in (1, 2)]
    await turn()
    inbox.close()
    await asyncio.wait_for(asyncio.gather(*putters), TIMEOUT)
    assert inbox.offer(3)  # no waiting on a closed inbox: dropped
    assert inbox.stats.dropped == {"closed": 3} and inbox.stats.waiting == 0
    assert drain(inbox) == [0]  # what was queued stays


# ----------------------------------------------------------------- property


ops = st.lists(st.sampled_from(["put", "put", "put", "get", "turn"]), max_size=60)


@settings(max_examples=150, deadline=None)
@given(ops=ops, maxsize=st.integers(1, 5), policy=st.sampled_from(list(OverflowPolicy)))
def test_any_interleaving_stays_bounded_and_loses_nothing_under_wait(
    ops: list[str], maxsize: int, policy: OverflowPolicy
) -> None:
    async def scenario() -> None:
        inbox: Inbox[int] = Inbox(maxsize, policy)
        sent = 0
        got: list[int] = []
        refused = 0
        putters: list[asyncio.Task[None]] = []
        for op in ops:
            if op == "put":
                putters.append(asyncio.create_task(inbox.put(sent)))
                sent += 1
            elif op == "get" and inbox:
                got.append(inbox.get_nowait())
            else:
                await asyncio.sleep(0)
            assert len(inbox) <= maxsize
        while not all(p.done() for p in putters) or inbox:
            if inbox:
                got.append(inbox.get_nowait())
            await asyncio.sleep(0)
            assert len(inbox) <= maxsize
        for putter in putters:
            if isinstance(putter.exception(), QueueFull):
                refused += 1
        stats = inbox.stats
        assert stats.high_water <= maxsize and stats.waiting == 0
        assert got == sorted(got)  # order kept, whatever was dropped
        assert len(got) + stats.dropped_total == sent
        if policy is OverflowPolicy.WAIT:
            assert got == list(range(sent))  # nothing lost
        if policy is OverflowPolicy.ERROR:
            assert stats.dropped == ({"error": refused} if refused else {})

    asyncio.run(scenario())
