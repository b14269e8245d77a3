"""The bus contract of the kit (``proxy_core.testing.BusContract``), for every bus we ship.

The in-process bus has one runner (``shared = False``: every worker goes to it);
the Redis bus has one runner per "runner k" of a contract, each with its own
``RedisBus`` on one channel of a throwaway redis-server (never the machine's
6379), a channel per test.
"""

from __future__ import annotations

import itertools

import pytest

from proxy_core import BaseBus, InProcessBus
from proxy_core.testing import BusContract
from proxy_core.testing._harness import text
from proxy_core.testing.contracts_bus import Member, Watcher

_channels = itertools.count(1)


class TestInProcessBus(BusContract):
    shared = False

    async def make_bus(self) -> BaseBus:
        return InProcessBus()


class TestRedisBus(BusContract):
    shared = True

    @pytest.fixture(autouse=True)
    def _redis_channel(self, redis_url: str) -> None:
        # Runs on the contract's own instance, before it: one channel per test.
        self.url = redis_url
        self.channel = f"bus-contract-{next(_channels)}"

    async def make_bus(self) -> BaseBus:
        from proxy_core_redis import RedisBus

        return RedisBus(self.url, channel=self.channel, lease_ttl=2.0)

    async def test_ending_a_worker_leaves_its_runner_running(self) -> None:
        """Not a contract: a worker's name given up while the reader blocks on its stream.

        Redis 7 unblocks that read with an error ("UNBLOCKED the stream key no
        longer exists"), which used to fail the bus and stop the whole runner
        (fixed in 4966f2a).
        """
        a, b, late = Member("a"), Member("b"), Member("late")
        async with self._cluster() as cluster:
            first = await cluster.place(0, a)
            await cluster.place(1, b, late)
            gone = Watcher()
            first.registry.watch_gone("late", gone.on_gone)
            # A round trip through runner 1's reader: it is back to its blocking read after.
            await a.send_bus_message(text("a", "b", "before"))
            await b.wait_text("before")
            await b.end_worker("late", "done")
            await cluster.wait(late.ended.wait())
            await cluster.wait(gone.gone.get())
            # Its runner goes on: b still gets messages (the cluster fails at once if not).
            await a.send_bus_message(text("a", "b", "after"))
            await b.wait_text("after")

    async def test_a_local_message_reaches_a_runner_mate_whose_name_had_a_backlog(self) -> None:
        """Not a contract: it sends to a name nobody holds yet (kept only by a shared bus).

        A name taken with entries in its stream is read through Redis for that
        hold; a local message for it from its own runner used to be dropped as
        undeliverable (fixed in 4966f2a).
        """
        from proxy_core.testing.contracts_bus import BusLocalNote

        a, x, mate = Member("a"), Member("x"), Member("mate")
        async with self._cluster() as cluster:
            first = await cluster.place(0, a)
            for i in range(3):
                await a.send_bus_message(text("a", "x", f"early {i}"))
            assert await cluster.wait(first.bus._writer.drain(30))  # type: ignore[attr-defined]
            await cluster.place(1, x, mate)
            await x.wait_text("early 2")
            await mate.send_bus_message(BusLocalNote("mate", "x", "local, same runner"))
            await mate.send_bus_message(text("mate", "x", "marker"))
            await x.wait_text("marker")
            assert [n.text for n in x.notes()] == ["local, same runner"], (
                f"dropped as undeliverable: {x.runner.bus.undeliverable}"
            )
