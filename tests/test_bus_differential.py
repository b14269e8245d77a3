"""The Redis bus against the in-process bus: the same script, the same deliveries.

Hypothesis writes a script over 3 to 5 workers spread over 2 or 3 runners:
targeted messages, broadcasts, and ``BusLocalMessage``\\ s (targeted and
broadcast), each with a sequence number of its own. The script runs twice:

- on the in-process bus, every worker in one runner (so every local message
  reaches the workers it is for, as any other message would);
- on the Redis bus, each worker in its own runner (a ``RedisBus`` per runner,
  on a fresh channel of a throwaway redis-server, never the machine's 6379).

The in-process run is first checked against a model (who gets what); then the
Redis run must deliver the same: for non-local messages the same multiset of
(source, receiver, seq) and the same order per (source, receiver, kind), kind
being targeted or broadcast (the Redis bus does not order a broadcast against a
targeted message from the same source, and that is documented); local messages
reach exactly the receivers on the sender's own runner that the in-process run
delivered them to, in the same order.

Nothing sleeps: the script ends with a marker from every worker to every other
(targeted: it arrives after the targeted messages of that pair) and a broadcast
marker from every worker (after its broadcasts), and each run waits for them all.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from _support import wait
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy_core import (
    BaseBus,
    BaseWorker,
    BusLocalMessage,
    BusMessage,
    InProcessBus,
    WorkerRunner,
    register_type,
)

_channels = itertools.count(1)

KINDS = ("targeted", "broadcast", "local_targeted", "local_broadcast")


@register_type("tests.diff.note")
@dataclass
class DiffNote(BusMessage):
    """A message of the script, crossing runners like any other."""

    seq: int = 0


@register_type("tests.diff.local")
@dataclass
class DiffLocal(BusLocalMessage, BusMessage):
    """A local message of the script: it never leaves its runner."""

    seq: int = 0


@register_type("tests.diff.marker")
@dataclass
class DiffMarker(BusMessage):
    """The end of the script, from one source (to one target, or broadcast)."""


@dataclass(frozen=True)
class Op:
    kind: str  # one of KINDS
    source: int
    target: int | None  # None for a broadcast
    seq: int


@dataclass(frozen=True)
class Script:
    placement: tuple[int, ...]  # the runner of each worker, on the shared bus
    ops: tuple[Op, ...]

    @property
    def names(self) -> list[str]:
        return [f"w{i}" for i in range(len(self.placement))]


@st.composite
def scripts(draw: Callable[[st.SearchStrategy[Any]], Any]) -> Script:
    runners = draw(st.integers(2, 3), label="runners")
    workers = draw(st.integers(3, 5), label="workers")
    # Every runner gets a worker; the others go anywhere.
    rest = draw(
        st.lists(
            st.integers(0, runners - 1), min_size=workers - runners, max_size=workers - runners
        )
    )
    placement = tuple(range(runners)) + tuple(rest)
    steps = draw(
        st.lists(
            st.tuples(
                st.sampled_from(KINDS), st.integers(0, workers - 1), st.integers(0, workers - 2)
            ),
            max_size=40,
        )
    )
    ops = []
    for seq, (kind, source, offset) in enumerate(steps):
        target = None if kind.endswith("broadcast") else (source + 1 + offset) % workers
        ops.append(Op(kind, source, target, seq))
    return Script(placement, tuple(ops))


class Diff(BaseWorker):
    """Records (kind, source, seq) of what it gets, and sets ``done`` once every marker came."""

    def __init__(self, name: str, others: set[str]) -> None:
        super().__init__(name)
        self.got: list[tuple[str, str, int]] = []
        self._markers_due = {(o, k) for o in others for k in ("targeted", "broadcast")}
        self.done = asyncio.Event()
        if not self._markers_due:
            self.done.set()

    async def on_bus_message(self, message: BusMessage) -> None:
        kind = "targeted" if message.target is not None else "broadcast"
        if isinstance(message, DiffNote):
            self.got.append((kind, message.source, message.seq))
        elif isinstance(message, DiffLocal):
            self.got.append((f"local_{kind}", message.source, message.seq))
        elif isinstance(message, DiffMarker):
            self._markers_due.discard((message.source, kind))
            if not self._markers_due:
                self.done.set()


def _message(op: Op, names: list[str]) -> BusMessage:
    target = None if op.target is None else names[op.target]
    if op.kind.startswith("local"):
        return DiffLocal(names[op.source], target, op.seq)
    return DiffNote(names[op.source], target, op.seq)


Deliveries = dict[str, list[tuple[str, str, int]]]


async def run(script: Script, make_bus: Callable[[], BaseBus], shared: bool) -> Deliveries:
    """Run ``script`` (one runner, or one per placement on a shared bus); return deliveries."""
    baseline = asyncio.all_tasks()
    names = script.names
    workers = [Diff(n, set(names) - {n}) for n in names]
    count = max(script.placement) + 1 if shared else 1
    runners = [WorkerRunner(f"diff-{k}", bus=make_bus(), handle_sigint=False) for k in range(count)]
    tasks = [asyncio.create_task(r.run()) for r in runners]
    try:
        for worker, k in zip(workers, script.placement, strict=True):
            await wait(runners[k if shared else 0].add_workers(worker))
        for op in script.ops:
            await workers[op.source].send_bus_message(_message(op, names))
        for worker in workers:
            for other in names:
                if other != worker.name:
                    await worker.send_bus_message(DiffMarker(worker.name, other))
            await worker.send_bus_message(DiffMarker(worker.name, None))
        await wait(asyncio.gather(*(w.done.wait() for w in workers)))
    finally:
        for runner in runners:
            await runner.end("script over")
        await wait(asyncio.gather(*tasks))  # every runner ends cleanly
    extra = asyncio.all_tasks() - baseline - {asyncio.current_task()}
    if extra:
        _, pending = await asyncio.wait(extra, timeout=5)
        assert not pending, f"leaked tasks: {pending}"
    return {w.name: w.got for w in workers}


def model(script: Script) -> Deliveries:
    """What one runner must deliver: every message to the workers it is for."""
    names = script.names
    out: Deliveries = {n: [] for n in names}
    for op in script.ops:
        receivers = names if op.target is None else [names[op.target]]
        for receiver in receivers:
            if receiver != names[op.source]:
                out[receiver].append((op.kind, names[op.source], op.seq))
    return out


def by_pair(
    deliveries: Deliveries, kinds: tuple[str, ...]
) -> dict[tuple[str, str, str], list[int]]:
    """Seqs per (source, receiver, kind), in the order they arrived."""
    out: dict[tuple[str, str, str], list[int]] = {}
    for receiver, got in deliveries.items():
        for kind, source, seq in got:
            if kind in kinds:
                out.setdefault((source, receiver, kind), []).append(seq)
    return out


def triples(deliveries: Deliveries, kinds: tuple[str, ...]) -> Counter[tuple[str, str, int]]:
    return Counter(
        (source, receiver, seq)
        for receiver, got in deliveries.items()
        for kind, source, seq in got
        if kind in kinds
    )


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(script=scripts())
async def test_redis_bus_delivers_what_the_in_process_bus_does(
    redis_url: str, script: Script
) -> None:
    from proxy_core_redis import RedisBus

    local = await run(script, InProcessBus, shared=False)
    # The in-process bus, against the model: in one runner, every message is for everyone.
    for receiver, got in model(script).items():
        assert sorted(local[receiver]) == sorted(got), receiver
        for kind in KINDS:
            assert [d for d in local[receiver] if d[0] == kind] == [d for d in got if d[0] == kind]

    channel = f"diff-{next(_channels)}"
    shared = await run(
        script, lambda: RedisBus(redis_url, channel=channel, lease_ttl=2.0), shared=True
    )

    plain = ("targeted", "broadcast")
    assert triples(shared, plain) == triples(local, plain)
    assert by_pair(shared, plain) == by_pair(local, plain)

    names = script.names
    runner_of = dict(zip(names, script.placement, strict=True))
    locals_ = ("local_targeted", "local_broadcast")
    expected = {
        key: seqs
        for key, seqs in by_pair(local, locals_).items()
        if runner_of[key[0]] == runner_of[key[1]]
    }
    assert by_pair(shared, locals_) == expected
    assert triples(shared, locals_) == Counter(
        (s, r, seq) for (s, r, _), seqs in expected.items() for seq in seqs
    )
