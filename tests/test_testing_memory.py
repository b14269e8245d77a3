"""The in-memory transport, on its own: the fake users' unit tests rely on.

The conformance kit runs it through every contract (``test_conformance.py``);
these tests pin what is specific to it: names instead of ports, one table per
event loop, bounded buffers, ``abort``.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import AsyncIterator, Mapping

import pytest

from proxy_core import (
    AuthenticationError,
    BaseWorker,
    ConfigurationError,
    ConnectError,
    ConnectionClosed,
    MessageTooLarge,
)
from proxy_core.codecs.json import JsonCodec
from proxy_core.plugins import load_transport
from proxy_core.testing import MemoryConnection, MemoryTransport, served_names
from proxy_core.testing._harness import (
    CLIENT_WORKER,
    SERVER_WORKER,
    running_client,
    running_server,
    text,
    wait_counts,
)
from proxy_core.transport import Connection

TIMEOUT = 30.0


async def wait(awaitable: object) -> object:
    return await asyncio.wait_for(awaitable, TIMEOUT)  # type: ignore[arg-type]


@pytest.fixture
async def accepted() -> AsyncIterator[asyncio.Queue[Connection]]:
    yield asyncio.Queue()


def holding(queue: asyncio.Queue[Connection]) -> object:
    """A handler that hands its connection to the test and holds it until it closes."""

    async def handler(conn: Connection) -> None:
        queue.put_nowait(conn)
        try:
            while True:
                await conn.receive()
        except ConnectionClosed:
            pass

    return handler


async def test_found_by_name() -> None:
    assert load_transport("memory") is MemoryTransport
    assert MemoryTransport.schemes == ("memory",)


async def test_round_trip_and_names() -> None:
    transport = MemoryTransport()

    async def echo(conn: Connection) -> None:
        async for frame in conn:
            await conn.send(frame[::-1])

    async with transport.serve("memory://echo/ws", echo) as listener:
        assert listener.url == "memory://echo/ws"
        assert served_names() == ["echo"]
        async with await transport.connect("memory://echo/ws") as conn:
            await conn.send(b"abc")
            assert await wait(conn.receive()) == b"cba"
            assert conn.remote_address == "echo"
    assert served_names() == []


async def test_port_zero_picks_a_fresh_name() -> None:
    transport = MemoryTransport()

    async def handler(conn: Connection) -> None:
        pass

    async with (
        transport.serve("memory://127.0.0.1:0/ws", handler) as first,
        transport.serve("memory://127.0.0.1:0/ws", handler) as second,
    ):
        assert first.url != second.url
        assert first.url.startswith("memory://127.0.0.1:") and first.url.endswith("/ws")
        assert ":0/" not in first.url
        assert sorted(served_names()) == sorted(
            u.removeprefix("memory://").removesuffix("/ws") for u in (first.url, second.url)
        )


async def test_bad_names_paths_and_options() -> None:
    transport = MemoryTransport()

    async def handler(conn: Connection) -> None:
        pass

    with pytest.raises(ConnectError, match="nothing serves"):
        await transport.connect("memory://nobody/ws")
    async with transport.serve("memory://taken/ws", handler):
        with pytest.raises(ConnectError, match="already served"):
            async with transport.serve("memory://taken/ws", handler):
                pass
        with pytest.raises(ConnectError, match="no endpoint"):
            await transport.connect("memory://taken/other")
    for url in ("ws://taken/ws", "memory:///ws", "memory://x:notaport/"):
        with pytest.raises(ConfigurationError):
            await transport.connect(url)
    with pytest.raises(ConfigurationError, match="TLS"):
        await transport.connect("memory://x/ws", ssl=ssl.create_default_context())
    with pytest.raises(ConfigurationError):
        transport.serve("memory://x/ws", handler, max_message_bytes=0)
    with pytest.raises(ConfigurationError):
        MemoryTransport(buffer_frames=0)


async def test_names_belong_to_their_event_loop() -> None:
    transport = MemoryTransport()
    outcome: list[BaseException | None] = []

    async def connect_from_another_loop() -> None:
        try:
            await MemoryTransport().connect("memory://mine/ws")
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    async def handler(conn: Connection) -> None:
        pass

    async with transport.serve("memory://mine/ws", handler):
        thread = threading.Thread(target=asyncio.run, args=(connect_from_another_loop(),))
        thread.start()
        await asyncio.get_running_loop().run_in_executor(None, thread.join, TIMEOUT)
    assert len(outcome) == 1 and isinstance(outcome[0], ConnectError)


async def test_authenticate_sees_lower_cased_headers(
    accepted: asyncio.Queue[Connection],
) -> None:
    seen: list[dict[str, str]] = []

    async def authenticate(headers: Mapping[str, str]) -> bool:
        seen.append(dict(headers))
        if headers.get("x-token") != "ok":
            raise AuthenticationError("no entry")
        return True

    transport = MemoryTransport()
    async with transport.serve(
        "memory://guarded/ws", holding(accepted), authenticate=authenticate
    ) as listener:
        with pytest.raises(AuthenticationError) as caught:
            await transport.connect(listener.url, headers={"X-Token": "bad"})
        assert caught.value.reason == "no entry"
        assert accepted.empty()
        async with await transport.connect(listener.url, headers={"X-Token": "ok"}) as conn:
            server = await wait(accepted.get())
            assert isinstance(server, MemoryConnection)
            assert server.request_headers == {"x-token": "ok"}
            assert conn.request_headers == {}
    assert seen == [{"x-token": "bad"}, {"x-token": "ok"}]


async def test_close_code_and_reason_reach_the_peer_after_its_frames(
    accepted: asyncio.Queue[Connection],
) -> None:
    transport = MemoryTransport()
    async with transport.serve("memory://c/ws", holding(accepted)) as listener:
        conn = await transport.connect(listener.url)
        server = await wait(accepted.get())
        await server.send(b"one")
        await server.send(b"two")
        await server.aclose(4100, "done here")
        assert [await conn.receive(), await conn.receive()] == [b"one", b"two"]
        with pytest.raises(ConnectionClosed) as caught:
            await conn.receive()
        assert (caught.value.code, caught.value.reason) == (4100, "done here")
        with pytest.raises(ConnectionClosed) as caught:
            await conn.send(b"x")
        assert caught.value.code == 4100
        await conn.aclose(1000)
        with pytest.raises(ConnectionClosed) as caught:  # our own close wins from now on
            await conn.receive()
        assert caught.value.code == 1000


async def test_abort_drops_what_is_buffered(accepted: asyncio.Queue[Connection]) -> None:
    transport = MemoryTransport()
    async with transport.serve("memory://a/ws", holding(accepted)) as listener:
        conn = await transport.connect(listener.url)
        server = await wait(accepted.get())
        assert isinstance(server, MemoryConnection)
        await server.send(b"lost")
        server.abort()
        assert server.closed
        with pytest.raises(ConnectionClosed) as caught:
            await conn.receive()
        assert (caught.value.code, caught.value.reason) == (1006, "")
        await conn.aclose()


async def test_frame_over_the_receivers_limit(accepted: asyncio.Queue[Connection]) -> None:
    transport = MemoryTransport()
    async with transport.serve(
        "memory://l/ws", holding(accepted), max_message_bytes=100
    ) as listener:
        conn = await transport.connect(listener.url, max_message_bytes=10)
        server = await wait(accepted.get())
        await server.send(b"x" * 10)
        await server.send(b"y" * 11)
        assert await conn.receive() == b"x" * 10
        with pytest.raises(MessageTooLarge) as caught:
            await conn.receive()
        assert (caught.value.size, caught.value.limit) == (11, 10)
        with pytest.raises(ConnectionClosed) as closed:
            await conn.receive()
        assert closed.value.code == 1009
        with pytest.raises(ConnectionClosed) as closed:
            await server.send(b"z")
        assert closed.value.code == 1009
        with pytest.raises(ConfigurationError):
            await conn.send("text")  # type: ignore[arg-type]


@pytest.fixture
async def small_pair() -> AsyncIterator[tuple[Connection, Connection]]:
    """A client end and a server end, with buffers of two frames each way."""
    transport = MemoryTransport(buffer_frames=2)
    queue: asyncio.Queue[Connection] = asyncio.Queue()
    release = asyncio.Event()

    async def handler(conn: Connection) -> None:
        queue.put_nowait(conn)
        await release.wait()

    async with transport.serve("memory://pair:0/", handler) as listener:
        client = await transport.connect(listener.url)
        try:
            yield client, await wait(queue.get())  # type: ignore[misc]
        finally:
            release.set()
            await client.aclose()
    assert served_names() == []


async def test_buffers_are_bounded(small_pair: tuple[Connection, Connection]) -> None:
    sender, receiver = small_pair
    await sender.send(b"1")
    await sender.send(b"2")
    third = asyncio.ensure_future(sender.send(b"3"))
    for _ in range(20):  # no I/O involved: loop turns are enough to prove it waits
        await asyncio.sleep(0)
    assert not third.done()
    assert await receiver.receive() == b"1"
    await wait(third)
    assert [await receiver.receive(), await receiver.receive()] == [b"2", b"3"]
    blocked = asyncio.ensure_future(_fill(sender))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not blocked.done()
    await receiver.aclose(1001, "bye")  # a close wakes a blocked sender
    with pytest.raises(ConnectionClosed) as caught:
        await wait(blocked)
    assert caught.value.code == 1001


async def _fill(conn: Connection) -> None:
    while True:
        await conn.send(b"more")


async def test_handler_outcomes_close_the_connection() -> None:
    transport = MemoryTransport()

    async def handler(conn: Connection) -> None:
        command = await conn.receive()
        if command == b"fail":
            raise RuntimeError("deliberate")

    async with transport.serve("memory://h/ws", handler) as listener:
        for command, code in ((b"ok", 1000), (b"fail", 1011)):
            async with await transport.connect(listener.url) as conn:
                await conn.send(command)
                with pytest.raises(ConnectionClosed) as caught:
                    await conn.receive()
                assert caught.value.code == code
        held = await transport.connect(listener.url)
    with pytest.raises(ConnectionClosed) as caught:  # the listener closed it: going away
        await held.receive()
    assert caught.value.code == 1001
    with pytest.raises(ConnectError):
        await transport.connect(listener.url)


async def test_saturated_link_both_ways_does_not_deadlock() -> None:
    """Both directions saturated through 4-frame buffers (2000 messages each way).

    A regression test: before 10331f9 the proxy's receive loop awaited its ACK
    writes behind a sender blocked on the full peer buffer, and this deadlocked
    reliably (8 runs out of 8 on an idle machine).
    """
    transport, codec = MemoryTransport(buffer_frames=4), JsonCodec()
    async with (
        running_server(transport, "memory://saturated:0/", codecs=[codec]) as server,
        running_client(transport, server.url, codec=codec) as client,
    ):
        await client.activate()
        side = await server.of(client)

        async def send(worker: BaseWorker, target: str) -> None:
            for n in range(2000):
                await worker.send_bus_message(text(worker.name, target, str(n)))

        await asyncio.gather(send(client.acme, SERVER_WORKER), send(side.worker, CLIENT_WORKER))
        await wait_counts([side.worker, client.acme], 2000, stall=10.0)
        assert side.worker.texts() == client.acme.texts() == [str(n) for n in range(2000)]
