"""The bus contract of the kit: :class:`BusContract`, for every bus, in process or shared.

A bus (the in-process one, ``proxy-core-redis``'s ``RedisBus``, or a third
party's on NATS or Postgres) routes messages between named workers. Subclass
the contract and give it a way to make buses::

    from proxy_core.testing import BusContract

    class TestMyBus(BusContract):
        shared = True                       # several runners share one bus

        async def make_bus(self) -> BaseBus:
            return MyBus(self.url, channel=self.channel)

Each contract places its workers on runners ("worker ``a`` on runner 0,
``b`` on runner 1"): on a shared bus each runner has a bus of its own from
:meth:`BusContract.make_bus`, all on the same shared bus, as if each were in
another process; on a bus that is not shared (``shared = False``) every worker
goes to one runner, and each contract still holds, with "on another runner"
read as "on the same runner".

Two known differences between buses are left out on purpose: what happens to
a message for a name that nobody holds (the in-process bus drops and counts it
at once; a shared bus may keep it for a next holder), and the order between a
broadcast and a targeted message from one source (a shared bus keeps order per
source and target among targeted messages, and per source among broadcasts,
not across the two). So every contract sends only to names already held, and
shows that something did *not* arrive by waiting for a marker of the same kind
sent after it, from the same source (to the same target).

Every wait is bounded (30 s); nothing sleeps to synchronise. Every runner is
ended at the end of each contract, and must end cleanly (its ``run`` returns
without an error); the kit's leak check fails a contract that leaves a task
behind. See ``docs/conformance.md``.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import ClassVar, TypeVar

import pytest

from ..bus import BaseBus
from ..errors import ConfigurationError
from ..messages import (
    AudioRawFrame,
    BusDataMessage,
    BusEndMessage,
    BusFrameMessage,
    BusLocalMessage,
    BusMessage,
    TextFrame,
)
from ..runner import WorkerRunner
from ._bus_cluster import (
    BusLocalNote,
    Cluster,
    Member,
    Watcher,
    _addressed,
    _data_from,
    _note,
    _text_from,
)
from ._harness import text
from .contracts_codec import awkward_data

__all__ = ["BusContract", "BusLocalNote", "Cluster", "Member", "Watcher"]

T = TypeVar("T")

#: Messages each way in the ordering contract.
ORDERING_COUNT = 500


class BusContract:
    """The contracts of a bus: routing, order, broadcasts, local messages, names, registry.

    Subclass it and override :meth:`make_bus`. What ``make_bus`` needs (a
    server's URL, a channel of the test's own) may come from an autouse
    fixture of your class that sets attributes on ``self``: pytest runs it on
    the same instance as the contract.

    Attributes:
        shared: whether several runners share one bus (each with a bus from
            :meth:`make_bus`); ``False`` puts every worker on one runner.
    """

    shared: ClassVar[bool] = True

    pytestmark = [
        pytest.mark.proxy_core_contract,
        pytest.mark.asyncio(loop_scope="function"),
        pytest.mark.usefixtures("proxy_core_no_leaked_tasks"),
    ]

    async def make_bus(self) -> BaseBus:
        """Return a new bus for a new runner: on a shared bus, on the same one as the others."""
        raise NotImplementedError(
            f"{type(self).__name__} must override `async def make_bus(self) -> BaseBus`"
        )

    @contextlib.asynccontextmanager
    async def _cluster(self) -> AsyncIterator[Cluster]:
        cluster = Cluster(self)
        try:
            yield cluster
        except BaseException:
            with contextlib.suppress(Exception):
                await cluster.aclose()
            raise
        await cluster.aclose()

    # ------------------------------------------------------------ targeted messages

    async def test_targeted_message_reaches_its_target_only_equal(self) -> None:
        """A targeted message reaches its target, equal to what was sent, and no one else."""
        a, b, c, d = Member("a"), Member("b"), Member("c"), Member("d")
        sent: list[BusMessage] = [
            BusDataMessage("a", "b", awkward_data()),
            BusFrameMessage("a", "b", TextFrame("h\u00e9llo \U0001f916")),
            BusFrameMessage("a", "b", AudioRawFrame(bytes(range(256)) * 4, 16000, 2)),
            BusMessage("a", "b"),
        ]
        async with self._cluster() as cluster:
            await cluster.place(0, a, d)
            await cluster.place(1, b, c)
            for message in sent:
                await a.send_bus_message(message)
            await b.wait_for(lambda m: type(m) is BusMessage)
            got = [m for m in b.seen if not isinstance(m, BusLocalMessage)]
            assert got == sent
            assert [type(m) for m in got] == [type(m) for m in sent]
            # The others: a marker from the same source, after, shows nothing came first.
            for other in (c, d):
                marker = text("a", other.name, "marker")
                await a.send_bus_message(marker)
                await other.wait_text("marker")
                assert [m for m in other.seen if not isinstance(m, BusLocalMessage)] == [marker]
            assert [m for m in a.seen if not isinstance(m, BusLocalMessage)] == []

    async def test_five_hundred_messages_each_way_arrive_in_order(self) -> None:
        """500 messages from one worker to another, both ways at once, arrive once, in order."""
        a, b = Member("a"), Member("b")
        expected = [f"m{i}" for i in range(ORDERING_COUNT)]

        async def send_all(sender: Member, target: str) -> None:
            for body in expected:
                await sender.send_bus_message(text(sender.name, target, body))

        async with self._cluster() as cluster:
            await cluster.place(0, a)
            await cluster.place(1, b)
            await cluster.wait_all(send_all(a, "b"), send_all(b, "a"))
            await cluster.wait_all(a.wait_count(ORDERING_COUNT), b.wait_count(ORDERING_COUNT))
            assert b.texts() == expected
            assert a.texts() == expected

    # ------------------------------------------------------------ broadcasts

    async def test_broadcast_reaches_every_worker_but_its_source_once(self) -> None:
        """A broadcast reaches every other worker, on every runner, exactly once."""
        workers = [Member("a0"), Member("a1"), Member("b0"), Member("c0")]
        async with self._cluster() as cluster:
            await cluster.place(0, *workers[:2])
            await cluster.place(1, workers[2])
            await cluster.place(2, workers[3])
            for round_ in (1, 2):
                for worker in workers:
                    await worker.send_bus_message(
                        BusDataMessage(worker.name, None, {"round": round_})
                    )
            # Round 2 from each source is the marker: broadcasts keep their order per source.
            for worker in workers:
                for other in workers:
                    if other is not worker:
                        await worker.wait_for(_data_from(other.name, {"round": 2}))
            for worker in workers:
                got = [(m.source, m.data["round"]) for m in worker.data()]
                others = [o.name for o in workers if o is not worker]
                assert Counter(got) == Counter((o, r) for o in others for r in (1, 2)), worker.name
                for name in others:
                    assert [r for s, r in got if s == name] == [1, 2], (worker.name, name)
                assert all(m.target is None for m in worker.data())

    # ------------------------------------------------------------ local messages

    async def test_local_messages_stay_on_their_runner(self) -> None:
        """A ``BusLocalMessage``, targeted or broadcast, reaches its own runner's workers only."""
        a, b, c, d = Member("a"), Member("b"), Member("c"), Member("d")
        workers = (a, b, c, d)
        async with self._cluster() as cluster:
            await cluster.place(0, a, b)
            await cluster.place(1, c, d)
            for sender in (a, c):
                await sender.send_bus_message(BusLocalNote(sender.name, None, "everyone"))
                for other in workers:
                    if other is not sender:
                        await sender.send_bus_message(BusLocalNote(sender.name, other.name, "you"))
                # Markers of both kinds, after: targeted for the targeted notes, a broadcast
                # for the broadcast note.
                for other in workers:
                    if other is not sender:
                        await sender.send_bus_message(text(sender.name, other.name, "marker"))
                await sender.send_bus_message(text(sender.name, None, "broadcast marker"))
            for worker in workers:
                expected: list[tuple[str, str | None, str]] = []
                for sender in (a, c):
                    if sender is worker:
                        continue
                    if cluster.same_runner(sender.name, worker.name):
                        expected += [(sender.name, None, "everyone")]
                        expected += [(sender.name, worker.name, "you")]
                    for body in ("marker", "broadcast marker"):
                        await worker.wait_for(_text_from(sender.name, body))
                for source, target, body in expected:
                    await worker.wait_for(_note(source, target, body))
                got = [(m.source, m.target, m.text) for m in worker.notes()]
                assert Counter(got) == Counter(expected), worker.name

    # ------------------------------------------------------------ names

    async def test_a_held_name_cannot_be_added_again_anywhere(self) -> None:
        """Adding a worker whose name is held, on any runner, raises ``ConfigurationError``.

        Also a worker that claims a held name besides its own, and nothing of
        what it claimed stays held; the holder goes on receiving.
        """
        a, gate, b = Member("a"), Member("gate", also=("beyond",)), Member("b")
        async with self._cluster() as cluster:
            await cluster.place(0, a, gate)
            await cluster.place(1, b)
            for k in (0, 1, 2):
                runner = await cluster.runner(k)
                for name in ("a", "gate", "beyond"):
                    with pytest.raises(ConfigurationError):
                        await cluster.wait(runner.add_workers(Member(name)))
                with pytest.raises(ConfigurationError):
                    await cluster.wait(runner.add_workers(Member(f"fresh{k}", also=("beyond",))))
            # All or nothing: the names of the refused workers are free.
            fresh = [Member(f"fresh{k}") for k in (0, 1, 2)]
            for k, worker in enumerate(fresh):
                await cluster.place(k, worker)
            for target in ("a", "gate", "beyond", "fresh0", "fresh1", "fresh2"):
                await b.send_bus_message(text("b", target, f"to {target}"))
            await a.wait_text("to a")
            await gate.wait_text("to gate")
            await gate.wait_text("to beyond")
            for k, worker in enumerate(fresh):
                await worker.wait_text(f"to fresh{k}")

    async def test_a_worker_claiming_two_names_receives_for_both(self) -> None:
        """A proxy-like worker that claims another name gets messages for both, broadcasts once."""
        a, gate, mate = Member("a"), Member("gate", also=("beyond",)), Member("mate")
        async with self._cluster() as cluster:
            await cluster.place(0, a)
            await cluster.place(1, gate, mate)
            for sender in (a, mate):
                for target in ("gate", "beyond"):
                    await sender.send_bus_message(text(sender.name, target, f"{sender.name}>"))
                    await gate.wait_for(_addressed(sender.name, target))
                await sender.send_bus_message(BusDataMessage(sender.name, None, {"n": 1}))
                await sender.send_bus_message(BusDataMessage(sender.name, None, {"n": 2}))
                await gate.wait_for(_data_from(sender.name, {"n": 2}))
            got = [(m.source, m.target) for m in gate.seen if isinstance(m, BusFrameMessage)]
            assert Counter(got) == Counter(
                [("a", "gate"), ("a", "beyond"), ("mate", "gate"), ("mate", "beyond")]
            )
            assert [(m.source, m.data["n"]) for m in gate.data()] == [
                ("a", 1),
                ("a", 2),
                ("mate", 1),
                ("mate", 2),
            ]

    # ------------------------------------------------------------ registry

    async def test_watch_fires_on_every_runner_and_watch_gone_when_it_ends(self) -> None:
        """``registry.watch`` fires on every runner when a worker becomes ready, before or after.

        ``watch_gone`` fires everywhere when it ends (``end_worker`` from
        another runner, then from its own); once its name is free, a new
        worker of that name (on another runner) fires the watches again.
        ``data.node`` is ``None`` on the holder's runner, else the holder
        runner's name.
        """
        observers = [Member(f"o{k}") for k in (0, 1, 2)]
        async with self._cluster() as cluster:
            runners = [await cluster.place(k, observers[k]) for k in (0, 1, 2)]
            runners = list(dict.fromkeys(runners))  # one per runner
            early = {r.name: Watcher() for r in runners}
            for runner in runners:
                runner.registry.watch("late", early[runner.name].on_ready)
                runner.registry.watch_gone("late", early[runner.name].on_gone)

            async def ready_everywhere(watchers: dict[str, Watcher], holder: WorkerRunner) -> None:
                for runner in runners:
                    data = await cluster.wait(watchers[runner.name].ready.get())
                    assert data.name == "late" and not data.remote
                    assert data.node == (None if runner is holder else holder.name), runner.name
                    assert runner.registry.is_ready("late"), runner.name

            holder = await cluster.place(1, Member("late"))
            await ready_everywhere(early, holder)
            # Registered once it is ready: fires at once; on a runner that joins later too.
            late_watchers = {r.name: Watcher() for r in runners}
            for runner in runners:
                runner.registry.watch("late", late_watchers[runner.name].on_ready)
            await ready_everywhere(late_watchers, holder)
            newcomer = await cluster.place(3, Member("o3"))
            if newcomer not in runners:
                joined = Watcher()
                newcomer.registry.watch("late", joined.on_ready)
                data = await cluster.wait(joined.ready.get())
                assert (data.name, data.node) == ("late", holder.name)

            await observers[0].end_worker("late", "contract: gone")
            for runner in runners:
                data = await cluster.wait(early[runner.name].gone.get())
                assert data.name == "late"
                assert not runner.registry.is_ready("late"), runner.name

            again = await cluster.place(2, Member("late"))
            await ready_everywhere(early, again)
            # Ended by a worker of its own runner, this time.
            await observers[2].end_worker("late", "contract: gone again")
            for runner in runners:
                data = await cluster.wait(early[runner.name].gone.get())
                assert data.name == "late"
                assert not runner.registry.is_ready("late"), runner.name
            for runner in runners:
                assert early[runner.name].ready.empty() and early[runner.name].gone.empty()

    async def test_activate_across_runners_calls_on_activated_with_the_args(self) -> None:
        """``activate_worker`` calls the target's ``on_activated`` with the args, anywhere."""
        a, b = Member("a"), Member("b", active=False)
        args = {"caller": "a", "voice": "calm", "n": [1, 2.5, None], "raw": b"\x00"}
        async with self._cluster() as cluster:
            await cluster.place(0, a)
            await cluster.place(1, b)
            assert not b.active
            await a.activate_worker("b", args=args)
            assert await cluster.wait(b.activations.get()) == args
            assert b.active
            await a.deactivate_worker("b")
            await cluster.wait(b.deactivated.wait())
            assert not b.active
            await a.activate_worker("b")
            assert await cluster.wait(b.activations.get()) is None

    # ------------------------------------------------------------ runners

    async def test_ending_one_runner_leaves_the_others_running(self) -> None:
        """``runner.end()`` (or a worker's ``BusEndMessage``) ends that runner only."""
        if not self.shared:
            pytest.skip(f"{type(self).__name__}: the bus is not shared (one runner)")
        a, b, c = Member("a"), Member("b"), Member("c")
        async with self._cluster() as cluster:
            first = await cluster.place(0, a)
            await cluster.place(1, b)
            await cluster.place(2, c)
            gone = Watcher()
            first.registry.watch_gone("b", gone.on_gone)
            first.registry.watch_gone("c", gone.on_gone)
            await cluster.end(1)
            assert b.ended.is_set()
            assert (await cluster.wait(gone.gone.get())).name == "b"
            await a.send_bus_message(text("a", "c", "still here?"))
            await c.wait_text("still here?")
            await c.send_bus_message(text("c", "a", "yes"))
            await a.wait_text("yes")
            # A BusEndMessage is local: it ends its own runner only.
            cluster.ending(2)
            await c.send_bus_message(BusEndMessage("c", None, "c's runner ends"))
            await cluster.wait(c.ended.wait())
            assert (await cluster.wait(gone.gone.get())).name == "c"
            assert not a.ended.is_set()
            d = Member("d")
            await cluster.place(0, d)
            await a.send_bus_message(text("a", "d", "on the runner that is left"))
            await d.wait_text("on the runner that is left")
