"""A proxy writes a message in the sender's task when it can, and order holds either way.

Over real WebSocket connections on 127.0.0.1. An idle proxy whose connection
declares ``cancel_safe_send`` checks, numbers and writes a message before the
sender's ``send_bus_message`` returns (no wake-up of the proxy's own task); a
busy one, or a connection that does not declare it, queues the message for
the proxy's task. Many tasks sending at once, through a small window that
forces both paths, still deliver every message once, each task's in order.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest
from _support import (
    CLIENT_WORKER,
    SERVER_WORKER,
    LocalNote,
    frame,
    no_leaked_tasks,  # noqa: F401 -- the fixture, used through pytestmark
    run_client,
    run_server,
    text_of,
    wait,
)

from proxy_core import BusFrameMessage
from proxy_core_websockets import WebSocketsConnection

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")


async def test_an_idle_proxy_writes_in_the_senders_task() -> None:
    async with run_server() as server, run_client(server.url) as client:
        await client.activate()
        side = await server.sessions.next()
        proxy = client.proxy
        assert proxy._conn is not None and proxy._conn.cancel_safe_send
        for n in range(5):
            before_out, before_bytes = proxy.stats.messages_out, proxy.stats.bytes_out
            await client.say(f"hello {n}")
            # No yield since the send returned: the proxy's task cannot have run.
            assert proxy.stats.messages_out == before_out + 1
            assert proxy.stats.bytes_out > before_bytes  # written, not only numbered
            assert proxy.queue_stats.depth == 0
            message = await side.assistant.wait_text(f"hello {n}")
            assert message.source == CLIENT_WORKER
            # A reply: once a frame has arrived, the next message is not part of
            # a burst (which would go to the writer, batched).
            await side.assistant.send_bus_message(frame(SERVER_WORKER, CLIENT_WORKER, f"ok {n}"))
            await client.acme.wait_text(f"ok {n}")
        # The rules run on this path too: a local message for the remote worker
        # is dropped and counted there and then.
        local = proxy.stats.dropped_out["local"]  # ready broadcasts, so far
        await client.acme.send_bus_message(LocalNote(CLIENT_WORKER, SERVER_WORKER))
        assert proxy.stats.dropped_out["local"] == local + 1


async def test_without_cancel_safe_send_the_proxys_task_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(WebSocketsConnection, "cancel_safe_send", False)
    async with run_server() as server, run_client(server.url) as client:
        await client.activate()
        side = await server.sessions.next()
        proxy = client.proxy
        before = proxy.stats.messages_out
        await client.say("queued")
        # Queued for the proxy's own task, which has not run yet.
        assert proxy.stats.messages_out == before
        assert proxy.queue_stats.depth == 1
        await side.assistant.wait_text("queued")
        assert proxy.stats.messages_out == before + 1


@pytest.mark.parametrize(
    ("max_unacked", "max_unacked_bytes"), [(4, 4 << 20), (4096, 4 << 20), (4096, 512)]
)
async def test_concurrent_senders_keep_order_and_lose_nothing(
    max_unacked: int, max_unacked_bytes: int
) -> None:
    """Tasks sending at once: inline writes, queued ones and backpressure interleave.

    The window is 4 messages, 4096, or 4096 but only 512 bytes of frames.
    """
    tasks_n, per_task = 4, 150
    async with (
        run_server() as server,
        run_client(
            server.url, max_unacked=max_unacked, max_unacked_bytes=max_unacked_bytes
        ) as client,
    ):
        await client.activate()
        side = await server.sessions.next()

        async def sender(k: int) -> None:
            for i in range(per_task):
                await client.acme.send_bus_message(frame(CLIENT_WORKER, SERVER_WORKER, f"{k}:{i}"))
                if i % 7 == k:  # now and then let the others in between
                    await asyncio.sleep(0)

        dropped = dict(client.proxy.stats.dropped_out)  # ready broadcasts, so far
        await wait(asyncio.gather(*(sender(k) for k in range(tasks_n))))
        total = tasks_n * per_task

        async def all_arrived() -> None:
            while sum(isinstance(m, BusFrameMessage) for m in side.assistant.seen) < total:
                await side.assistant.wait_for(lambda m: isinstance(m, BusFrameMessage))

        await wait(all_arrived())
        received: dict[int, list[int]] = defaultdict(list)
        for message in side.assistant.seen:
            text = text_of(message)
            if text is not None and ":" in text:
                k, i = text.split(":")
                received[int(k)].append(int(i))
        assert received == {k: list(range(per_task)) for k in range(tasks_n)}
        assert client.proxy.stats.messages_out == total
        assert dict(client.proxy.stats.dropped_out) == dropped


async def test_a_burst_after_an_inline_write_is_batched() -> None:
    """Sent back to back with no yield, the first message goes at once, the rest in BATCHes."""
    count = 50
    async with run_server() as server, run_client(server.url) as client:
        await client.activate()
        side = await server.sessions.next()
        proxy = client.proxy
        batches, out = proxy.stats.batches_out, proxy.stats.messages_out
        for i in range(count):
            await client.say(f"b{i}")
        assert proxy.stats.messages_out == out + count  # all numbered in the senders' task
        await side.assistant.wait_text(f"b{count - 1}")
        assert side.assistant.texts()[-count:] == [f"b{i}" for i in range(count)]
        assert proxy.stats.batches_out > batches
        assert proxy.stats.batches_out - batches < count - 1
