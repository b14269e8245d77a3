"""What every contract class of the kit shares: markers, per-codec runs, a few checks.

Private: the contract modules (``contracts*.py``) build on it. A live contract
class derives from :class:`LiveContract` (the markers, the ``transport`` and
``tcp`` attributes, and the steps many contracts take); a class that runs some
contracts once per codec also derives from :class:`Parametrized`, and marks
those with :func:`per_codec`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import pytest

from ..codecs.base import Codec
from ..errors import ConnectionClosed
from ..messages import BusMessage
from ..transport import Transport
from ._harness import (
    CLIENT_WORKER,
    SERVER_WORKER,
    ClientSide,
    Recorder,
    Server,
    running_client,
    text,
    wait,
)
from .memory import MemoryTransport

__all__ = [
    "LIMIT",
    "LiveContract",
    "Parametrized",
    "assert_close_code",
    "delta",
    "drops",
    "per_codec",
]

_F = TypeVar("_F", bound=Callable[..., Any])

#: The frame limit of the size contracts: small enough to be quick, big enough for a HELLO.
LIMIT = 4096


def per_codec(func: _F) -> _F:
    """Mark a contract to run once per codec in the class's ``codecs``."""
    func._proxy_core_per_codec = True  # type: ignore[attr-defined]
    return func


def _codec_id(spec: str | Codec) -> str:
    return spec if isinstance(spec, str) else spec.name


class Parametrized:
    """Runs ``per_codec`` contracts once per codec of ``codecs``, through ``proxy_core_codec``."""

    #: The codecs, by registered name or instance; the first one serves the
    #: contracts that do not depend on the codec.
    codecs: ClassVar[Sequence[str | Codec]] = ("json", "msgpack")

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if not getattr(metafunc.function, "_proxy_core_per_codec", False):
            return
        if "proxy_core_codec" not in metafunc.fixturenames:
            return
        specs = list(self.codecs)
        metafunc.parametrize(
            "proxy_core_codec", specs, indirect=True, ids=[_codec_id(s) for s in specs]
        )


def delta(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    """What a drop counter gained since ``before``."""
    return {k: v for k, v in (Counter(after) - Counter(before)).items() if v}


def drops(*proxies: Any) -> list[dict[str, int]]:
    """Every drop counter of ``proxies``: runner chatter (ready broadcasts) is counted too."""
    return [dict(c) for p in proxies for c in (p.stats.dropped_out, p.stats.dropped_in)]


def assert_close_code(exc: ConnectionClosed, expected: int) -> None:
    """Check the close code, which the Connection contract reports "when the backend knows it"."""
    assert exc.code in (expected, None), (
        f"the connection closed with {exc.code} ({exc.reason!r}); expected {expected}"
    )


class LiveContract:
    """The base of the live contract classes: markers, what is tested, shared steps.

    Attributes:
        transport: the transport under test, by registered name or instance.
        tcp: whether the transport runs over TCP, so that a
            :class:`~proxy_core.testing.FaultRelay` can sit in the middle;
            ``None`` guesses (everything but memory).
    """

    transport: ClassVar[str | Transport | None] = None
    tcp: ClassVar[bool | None] = None

    pytestmark = [
        pytest.mark.proxy_core_contract,
        pytest.mark.asyncio(loop_scope="function"),
        pytest.mark.usefixtures("proxy_core_no_leaked_tasks"),
    ]

    def _is_tcp(self, transport: Transport) -> bool:
        """Whether ``transport`` runs over TCP (``tcp``, or a guess: all but memory)."""
        return self.tcp if self.tcp is not None else not isinstance(transport, MemoryTransport)

    def _require_tcp(
        self, transport: Transport, why: str = "no relay can sit in the middle"
    ) -> None:
        if not self._is_tcp(transport):
            pytest.skip(f"transport {transport.name!r} is not TCP: {why}")

    @staticmethod
    async def _connected(client: ClientSide, server: Server) -> Any:
        """Activate ``client``'s proxy; return the server side of its session, connected."""
        await client.activate()
        side = await server.of(client)
        await wait(side.connected.wait())
        return side

    @staticmethod
    async def _crosses(sender: Any, receiver: Recorder, message: BusMessage) -> None:
        """Send ``message`` and wait until ``receiver`` has it."""
        await sender.send_bus_message(message)
        assert await receiver.wait_for(lambda m: m == message) == message

    @staticmethod
    async def _send_numbered(sender: Any, target: str, count: int) -> None:
        """Send the texts ``"0"`` to ``str(count - 1)``, in order, from ``sender`` to ``target``."""
        for n in range(count):
            await sender.send_bus_message(text(sender.name, target, str(n)))

    async def _assert_still_serves(
        self, transport: Transport, server: Server, codec: Codec
    ) -> None:
        """A new client gets a session on ``server`` that carries a message each way."""
        async with running_client(transport, server.url, codec=codec) as client:
            side = await self._connected(client, server)
            await self._crosses(client.acme, side.worker, text(CLIENT_WORKER, SERVER_WORKER, "up"))
            await self._crosses(side.worker, client.acme, text(SERVER_WORKER, CLIENT_WORKER, "yes"))
