"""Running on uvloop: a real exchange over websockets on it, and the error when it is missing.

uvloop is optional (``pip install 'proxy-core[uvloop]'``; the ``dev`` extra has it):
the exchange tests skip, plainly, where it cannot be imported. Each test runs its
own event loop, as a user's program does, rather than pytest's.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from proxy_core import (
    BaseWorker,
    BusFrameMessage,
    BusMessage,
    ConfigurationError,
    ProxyClient,
    TextFrame,
    WorkerReadyData,
    WorkerRunner,
    serve_proxy,
)
from proxy_core.cli import main
from proxy_core.loops import LOOPS, loop_factory, loop_name, loop_version, run

TIMEOUT = 30.0  # generous: a shared machine may be slow, and nothing here sleeps
COUNT = 20
MISSING = "uvloop is not installed (pip install 'proxy-core[uvloop]')"


class Assistant(BaseWorker):
    """Answers every text frame sent to it."""

    async def on_bus_message(self, message: BusMessage) -> None:
        if isinstance(message, BusFrameMessage) and isinstance(message.frame, TextFrame):
            reply = TextFrame(f"you said {message.frame.text!r}")
            await self.send_bus_message(BusFrameMessage(self.name, message.source, reply))


class Acme(BaseWorker):
    """Sends COUNT text frames once the remote assistant is ready; collects the answers."""

    def __init__(self) -> None:
        super().__init__("acme")
        self.answers: list[str] = []
        self.done = asyncio.Event()

    async def on_start(self) -> None:
        self.registry.watch("assistant", self.on_assistant_ready)
        await self.activate_worker("proxy")

    async def on_assistant_ready(self, data: WorkerReadyData) -> None:
        for n in range(COUNT):
            await self.send_bus_message(BusFrameMessage("acme", "assistant", TextFrame(str(n))))

    async def on_bus_message(self, message: BusMessage) -> None:
        if isinstance(message, BusFrameMessage) and isinstance(message.frame, TextFrame):
            self.answers.append(message.frame.text)
            if len(self.answers) == COUNT:
                self.done.set()


async def exchange() -> tuple[str, list[str]]:
    """Serve on 127.0.0.1 (port 0), connect a client, exchange; return the loop and the answers."""

    async def setup(runner: WorkerRunner) -> None:
        await runner.add_workers(Assistant("assistant"))

    async with (
        asyncio.timeout(TIMEOUT),
        serve_proxy(
            "ws://127.0.0.1:0/ws",
            transport="websockets",
            worker_name="assistant",
            remote_worker_name="acme",
            forward_messages=(BusFrameMessage,),
            setup=setup,
        ) as service,
    ):
        runner = WorkerRunner(handle_sigint=False)
        acme = Acme()
        proxy = ProxyClient(
            "proxy",
            url=service.url,
            transport="websockets",
            local_worker_name="acme",
            remote_worker_name="assistant",
            forward_messages=(BusFrameMessage,),
        )
        await runner.add_workers(acme, proxy)
        running = asyncio.create_task(runner.run())
        try:
            await acme.done.wait()
        finally:
            await runner.end("done")
            await running
        return loop_name(), acme.answers


def _uvloop() -> Any:
    return pytest.importorskip(
        "uvloop", reason="uvloop is not installed (pip install 'proxy-core[uvloop]')"
    )


def _standard_runner(main: Coroutine[Any, Any, Any]) -> Any:
    """The standard library's way on 3.11: asyncio.Runner with uvloop's loop factory."""
    with asyncio.Runner(loop_factory=_uvloop().new_event_loop) as runner:
        return runner.run(main)


WAYS: dict[str, Callable[[Coroutine[Any, Any, Any]], Any]] = {
    "asyncio.Runner(loop_factory=uvloop.new_event_loop)": _standard_runner,
    "uvloop.run": lambda main: _uvloop().run(main),
    "proxy_core.loops.run(loop='uvloop')": lambda main: run(main, loop="uvloop"),
}


@pytest.mark.parametrize("way", list(WAYS))
def test_a_real_exchange_over_websockets_on_uvloop(way: str) -> None:
    _uvloop()
    loop, answers = WAYS[way](exchange())
    assert loop == "uvloop.Loop"
    assert answers == [f"you said '{n}'" for n in range(COUNT)]  # all of them, in order


def test_the_default_loop_is_asyncio_s() -> None:
    loop, answers = run(exchange())
    assert loop.startswith("asyncio.") and len(answers) == COUNT
    assert loop_factory("asyncio") is None and loop_version("asyncio")


def test_missing_uvloop_is_an_error_that_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` fails, as if absent
    with pytest.raises(ConfigurationError) as raised:
        loop_factory("uvloop")
    assert str(raised.value) == MISSING
    main_coro = exchange()
    with pytest.raises(ConfigurationError, match=r"pip install 'proxy-core\[uvloop\]'"):
        run(main_coro, loop="uvloop")
    assert main_coro.cr_frame is None  # closed unrun: no "never awaited" warning


def test_an_unknown_loop_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError) as raised:
        run(exchange(), loop="trio")
    assert str(raised.value) == f"loop must be one of {', '.join(LOOPS)}, got 'trio'"


def test_demo_runs_on_uvloop(capsys: pytest.CaptureFixture[str]) -> None:
    _uvloop()
    assert main(["demo", "--loop", "uvloop"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("[  demo] transport: websockets; codec: msgpack; loop: uvloop ")


def test_demo_on_uvloop_without_it_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)
    assert main(["demo", "--loop", "uvloop"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [f"proxy-core: error: {MISSING}"]


def test_demo_loop_goes_with_the_local_bus(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--bus", "redis", "--loop", "uvloop"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "proxy-core: error: --loop goes with --bus local (the Redis demo runs its own processes)"
    ]
