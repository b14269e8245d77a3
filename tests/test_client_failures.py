"""What a program sees when its proxy client cannot connect: real servers on 127.0.0.1.

A client that gives up (the server refused it, or its retries ran out) ends its
runner: ``runner.run()`` raises the error, unless the program handles the
client's ``on_gave_up`` event. A URL the backend cannot use fails when the client
is built. Retrying against nothing says so once, in plain words. Every wait is
bounded by :data:`TIMEOUT`; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from proxy_core import (
    Backoff,
    BaseWorker,
    BusFrameMessage,
    ProxyClient,
    WorkerRunner,
    serve_proxy,
)
from proxy_core.errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectError,
    ProxyError,
    SessionRejected,
)
from proxy_core.proxy import DEFAULT_CODEC
from proxy_core_aiohttp import AiohttpProxyClient
from proxy_core_grpc import GrpcProxyClient
from proxy_core_websockets import WebSocketProxyClient

TIMEOUT = 60.0

# transport name -> (URL to serve on a free port, its scheme)
BACKENDS = {
    "websockets": "ws://127.0.0.1:0/ws",
    "aiohttp": "ws://127.0.0.1:0/ws",
    "grpc": "grpc://127.0.0.1:0",
}
CLIENT_CLASSES: list[type[ProxyClient]] = [
    ProxyClient,
    WebSocketProxyClient,
    AiohttpProxyClient,
    GrpcProxyClient,
]


class Idle(BaseWorker):
    """A worker that does nothing: the client side's ``acme``."""


async def _setup(runner: WorkerRunner) -> None:
    await runner.add_workers(Idle("assistant"))


def client(transport: str, url: str, **options: Any) -> ProxyClient:
    return ProxyClient(
        "proxy",
        url=url,
        transport=transport,
        local_worker_name="acme",
        remote_worker_name="assistant",
        forward_messages=(BusFrameMessage,),
        active=True,
        **options,
    )


@pytest.fixture
def free_port() -> Iterator[int]:
    """A port where nothing listens (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    yield port


def unused_url(transport: str, port: int) -> str:
    return f"grpc://127.0.0.1:{port}" if transport == "grpc" else f"ws://127.0.0.1:{port}/ws"


# ---------------------------------------------------------------- a refusal ends run()


@pytest.mark.parametrize("transport", sorted(BACKENDS))
async def test_a_wrong_token_ends_run_with_the_error(transport: str) -> None:
    async with serve_proxy(
        BACKENDS[transport],
        transport=transport,
        worker_name="assistant",
        remote_worker_name="acme",
        setup=_setup,
        authenticate=lambda headers: headers.get("authorization") == "Bearer right",
    ) as service:
        runner = WorkerRunner(handle_sigint=False)
        proxy = client(transport, service.url, headers={"authorization": "Bearer wrong"})
        await runner.add_workers(Idle("acme"), proxy)
        with pytest.raises(AuthenticationError) as caught:
            await asyncio.wait_for(runner.run(), TIMEOUT)
    # The error says which proxy gave up on which server, and the client stopped.
    assert any("proxy 'proxy' gave up on" in note for note in caught.value.__notes__)
    assert proxy.last_error is caught.value
    assert not proxy.connected


@pytest.mark.parametrize("transport", sorted(BACKENDS))
async def test_no_common_codec_ends_run_with_the_refusal(transport: str) -> None:
    async with serve_proxy(
        BACKENDS[transport],
        transport=transport,
        worker_name="assistant",
        remote_worker_name="acme",
        setup=_setup,
        codecs=("json",),
    ) as service:
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(Idle("acme"), client(transport, service.url, codec="msgpack"))
        with pytest.raises(SessionRejected, match="codec"):
            await asyncio.wait_for(runner.run(), TIMEOUT)


async def test_on_gave_up_replaces_the_default_and_the_runner_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with serve_proxy(
        BACKENDS["websockets"],
        worker_name="assistant",
        remote_worker_name="acme",
        setup=_setup,
        authenticate=lambda headers: False,
    ) as service:
        runner = WorkerRunner(handle_sigint=False)
        proxy = client("websockets", service.url)
        heard: asyncio.Future[ProxyError] = asyncio.get_running_loop().create_future()

        @proxy.event_handler("on_gave_up")
        def gave_up(worker: ProxyClient, error: ProxyError) -> None:
            heard.set_result(error)

        await runner.add_workers(Idle("acme"), proxy)
        run = asyncio.create_task(runner.run())
        try:
            error = await asyncio.wait_for(heard, TIMEOUT)
            assert isinstance(error, AuthenticationError)
            # wait_connected still reports it; the runner is still running.
            with pytest.raises(AuthenticationError):
                await proxy.wait_connected(TIMEOUT)
            assert not run.done()
        finally:
            await runner.end("test over")
            await asyncio.wait_for(run, TIMEOUT)  # returns: no error to raise
    # Nothing else will report it, so the log does, once, as a warning.
    gave_up = [r for r in caplog.records if "giving up" in r.getMessage()]
    assert [r.levelno for r in gave_up] == [logging.WARNING]
    assert "on_gave_up" in gave_up[0].getMessage()


# ---------------------------------------------------------------- retries against nothing


@pytest.mark.parametrize("transport", sorted(BACKENDS))
async def test_retries_say_so_once_then_the_last_error_ends_run(
    transport: str, free_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    runner = WorkerRunner(handle_sigint=False)
    policy = Backoff(initial_delay=0.0, max_delay=0.0, max_attempts=4, max_elapsed=None)
    proxy = client(transport, unused_url(transport, free_port), reconnect=policy, open_timeout=20)
    attempts: list[ProxyError] = []
    proxy.event_handler("on_connect_error")(lambda worker, error: attempts.append(error))
    await runner.add_workers(Idle("acme"), proxy)
    with caplog.at_level(logging.DEBUG, logger="proxy_core.proxy"):
        with pytest.raises(ConnectError, match="connection refused") as caught:
            await asyncio.wait_for(runner.run(), TIMEOUT)
    assert len(attempts) == 4
    # Once, in plain words: what failed, that it goes on trying, for how long, how to change it.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "connection refused" in warnings[0]
    assert "trying again in the background for up to 4 attempts" in warnings[0]
    assert "reconnect=Backoff(...)" in warnings[0] and "reconnect=None" in warnings[0]
    # The failure is reported once, by run(): the log says it gave up, not as an error.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    gave_up = [r.getMessage() for r in caplog.records if "giving up" in r.getMessage()]
    assert len(gave_up) == 1 and "after 4 attempts" in gave_up[0], gave_up
    assert "runner.run() raises" in gave_up[0]
    # The refused connection's message names the URL once, not twice.
    assert str(caught.value).count("could not connect to") == 1
    assert all(r.getMessage().count("could not connect to") <= 1 for r in caplog.records)


def test_the_default_policy_is_described_in_words() -> None:
    assert Backoff().describe() == "for up to 5 min"
    assert Backoff(max_elapsed=90).describe() == "for up to 90 s"
    assert Backoff(max_elapsed=7200, max_attempts=1).describe() == "for up to 2 h or 1 attempt"
    assert Backoff(max_elapsed=None).describe() == "without limit"


# ---------------------------------------------------------------- URLs checked up front


@pytest.mark.parametrize(
    ("cls", "url"),
    [
        (WebSocketProxyClient, "grpc://127.0.0.1:1"),
        (WebSocketProxyClient, "http://127.0.0.1:1/ws"),
        (AiohttpProxyClient, "grpc://127.0.0.1:1"),
        (GrpcProxyClient, "ws://127.0.0.1:1/ws"),
        (ProxyClient, "wss//127.0.0.1:1/ws"),
        (ProxyClient, "ws://127.0.0.1:99999/ws"),
        (ProxyClient, "ws:///ws"),
    ],
)
def test_a_url_the_transport_cannot_use_fails_when_the_client_is_built(
    cls: type[ProxyClient], url: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        cls(
            "proxy",
            url=url,
            local_worker_name="acme",
            remote_worker_name="assistant",
        )
    message = str(caught.value)
    assert "scheme must be one of" in message or "port" in message or "no host" in message


def test_a_memory_url_is_checked_by_the_memory_transport() -> None:
    with pytest.raises(ConfigurationError, match="memory"):
        client("memory", "ws://127.0.0.1:1/ws")
    client("memory", "memory://server/ws")  # accepted


# ---------------------------------------------------------------- one default codec


@pytest.mark.parametrize("cls", CLIENT_CLASSES, ids=lambda c: c.__name__)
def test_every_client_class_defaults_to_msgpack(cls: type[ProxyClient]) -> None:
    assert DEFAULT_CODEC == "msgpack"
    assert inspect.signature(cls).parameters["codec"].default == DEFAULT_CODEC
    url = "grpc://127.0.0.1:1" if cls is GrpcProxyClient else "ws://127.0.0.1:1/ws"
    proxy = cls("proxy", url=url, local_worker_name="acme", remote_worker_name="assistant")
    assert [codec.name for codec in proxy.codecs] == ["msgpack"]


# ---------------------------------------------------------------- a port in use, said plainly


@pytest.mark.parametrize("transport", sorted(BACKENDS))
async def test_a_port_in_use_is_said_plainly_on_every_backend(transport: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConnectError) as caught:
            async with serve_proxy(
                unused_url(transport, port),
                transport=transport,
                worker_name="assistant",
                remote_worker_name="acme",
                setup=_setup,
            ):
                pytest.fail("served on a port in use")
    assert "could not listen on" in str(caught.value)
    assert "address already in use" in str(caught.value)
