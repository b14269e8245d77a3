"""The fault-injecting TCP relay, against a plain asyncio echo server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from proxy_core import ConfigurationError
from proxy_core.testing import FaultRelay

TIMEOUT = 30.0


class Echo:
    """An echo server that also records what it received per connection."""

    def __init__(self) -> None:
        self.received: list[bytearray] = []
        self.ended: asyncio.Queue[bytes] = asyncio.Queue()
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = bytearray()
        self.received.append(got)
        try:
            while data := await reader.read(65536):
                got += data
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            self.ended.put_nowait(bytes(got))
            writer.close()


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    server = Echo()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield server
        listener.close()


async def open_via(relay: FaultRelay) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", relay.port), TIMEOUT)


async def read_exactly(reader: asyncio.StreamReader, size: int) -> bytes:
    return await asyncio.wait_for(reader.readexactly(size), TIMEOUT)


async def closing(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass


async def test_relays_both_ways_and_counts(echo: Echo) -> None:
    baseline = asyncio.all_tasks()
    async with FaultRelay("127.0.0.1", echo.port) as relay:
        assert relay.port > 0
        reader, writer = await open_via(relay)
        await relay.wait_connections(1)
        payload = bytes(range(256)) * 1000
        writer.write(payload)
        assert await read_exactly(reader, len(payload)) == payload
        assert relay.bytes_upstream == relay.bytes_downstream == len(payload)
        assert relay.connections_accepted == 1 and relay.connections_open == 1
        writer.write_eof()  # a half-close goes through as a half-close
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
        await closing(writer)
    assert asyncio.all_tasks() - baseline - {asyncio.current_task()} == set()


def test_url_for_rewrites_only_host_and_port() -> None:
    relay = FaultRelay("10.0.0.1", 8000)
    relay._port = 4242  # as if started
    assert relay.url_for("ws://10.0.0.1:8000/ws?x=1") == "ws://127.0.0.1:4242/ws?x=1"
    assert relay.url_for("grpc://user:pw@host:1/") == "grpc://user:pw@127.0.0.1:4242/"
    assert FaultRelay.for_url("wss://example.org/ws").upstream_port == 443
    assert FaultRelay.for_url("grpc://h:50051").upstream_host == "h"
    with pytest.raises(ConfigurationError):
        FaultRelay.for_url("memory://name/ws")
    with pytest.raises(ConfigurationError):
        _ = FaultRelay("h", 1).port  # not started


async def test_cut_resets_both_sides_and_new_clients_still_pass(echo: Echo) -> None:
    async with FaultRelay("127.0.0.1", echo.port) as relay:
        reader, writer = await open_via(relay)
        writer.write(b"ping")
        assert await read_exactly(reader, 4) == b"ping"
        relay.cut()
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await read_exactly(reader, 1)
        assert await asyncio.wait_for(echo.ended.get(), TIMEOUT) == b"ping"
        await closing(writer)
        reader, writer = await open_via(relay)
        writer.write(b"again")
        assert await read_exactly(reader, 5) == b"again"
        assert relay.connections_accepted == 2
        await closing(writer)


@pytest.mark.parametrize("direction", ["upstream", "downstream"])
async def test_truncate_next_forwards_a_prefix_then_cuts(echo: Echo, direction: str) -> None:
    async with FaultRelay("127.0.0.1", echo.port) as relay:
        reader, writer = await open_via(relay)
        relay.truncate_next(direction, 3)  # type: ignore[arg-type]
        writer.write(b"abcdefgh")
        if direction == "upstream":  # the server gets a prefix; the cut beats its echo
            assert await asyncio.wait_for(echo.ended.get(), TIMEOUT) == b"abc"
        else:  # the server got everything; its echo is cut short
            assert await asyncio.wait_for(echo.ended.get(), TIMEOUT) == b"abcdefgh"
        try:
            got = await asyncio.wait_for(reader.read(), TIMEOUT)
        except ConnectionError:
            got = b""
        assert got == (b"" if direction == "upstream" else b"abc")
        await closing(writer)
        with pytest.raises(ConfigurationError):
            relay.truncate_next("sideways", 1)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError):
            relay.truncate_next("upstream", -1)


async def test_stall_holds_everything_until_resume(echo: Echo) -> None:
    async with FaultRelay("127.0.0.1", echo.port) as relay:
        reader, writer = await open_via(relay)
        writer.write(b"first")
        assert await read_exactly(reader, 5) == b"first"
        relay.stall()
        writer.write(b"held")
        # A negative can only be shown with a bound: nothing comes back within it.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.2)
        assert relay.bytes_upstream == 5
        relay.resume()
        assert await read_exactly(reader, 4) == b"held"
        await closing(writer)


async def test_delay_holds_each_chunk(echo: Echo) -> None:
    async with FaultRelay("127.0.0.1", echo.port) as relay:
        relay.delay(0.05)
        reader, writer = await open_via(relay)
        loop = asyncio.get_running_loop()
        started = loop.time()
        writer.write(b"slow")
        assert await read_exactly(reader, 4) == b"slow"
        assert loop.time() - started >= 0.1  # once each way
        relay.delay(0)
        with pytest.raises(ConfigurationError):
            relay.delay(-1)
        await closing(writer)


async def test_closing_the_relay_resets_its_connections_and_leaks_nothing(echo: Echo) -> None:
    baseline = asyncio.all_tasks()
    relay = FaultRelay("127.0.0.1", echo.port)
    await relay.start()
    with pytest.raises(ConfigurationError):
        await relay.start()
    reader, writer = await open_via(relay)
    writer.write(b"x")
    assert await read_exactly(reader, 1) == b"x"
    relay.stall()  # a stalled pump must not keep the relay open
    writer.write(b"y")
    await relay.aclose()
    await relay.aclose()  # idempotent
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await read_exactly(reader, 1)
    await closing(writer)
    assert asyncio.all_tasks() - baseline - {asyncio.current_task()} == set()


async def test_unreachable_upstream_closes_the_client() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()  # nothing listens there now
    async with FaultRelay("127.0.0.1", port) as relay:
        reader, writer = await open_via(relay)
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await read_exactly(reader, 1)
        await closing(writer)
        assert relay.connections_open == 0


async def test_fault_relay_fixture(
    echo: Echo, fault_relay: Callable[[str], Awaitable[FaultRelay]]
) -> None:
    relay = await fault_relay(f"ws://127.0.0.1:{echo.port}/ws")
    assert relay.url_for(f"ws://127.0.0.1:{echo.port}/ws") == f"ws://127.0.0.1:{relay.port}/ws"
    reader, writer = await open_via(relay)
    writer.write(b"fixture")
    assert await read_exactly(reader, 7) == b"fixture"
    await closing(writer)
