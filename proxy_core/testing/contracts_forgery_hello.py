"""The anti-forgery contracts at the handshake: :class:`HelloForgeryContract`.

Part of :class:`~proxy_core.testing.contracts_forgery.ForgeryContract` (and so
of ``TransportContract``). Before a session exists, a peer can only name workers
in its HELLO and show credentials: a HELLO naming workers the server was not
configured with, or credentials a refusing ``authenticate`` hook turns away, are
refused (REJECT 4004 or 4001) before any session state exists: no session id is
allocated, no runner or worker is started, nothing is marked ready, and a
refused client does not try again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from .. import server as server_module
from ..codecs.base import Codec
from ..protocol import Hello, Reject, RejectCode, decode_handshake, encode_handshake
from ..proxy import ProxyServer
from ..runner import WorkerRunner
from ..service import serve_proxy
from ..session import new_session_id
from ..transport import Connection, Transport
from ._base import LiveContract
from ._harness import CLIENT_WORKER, SERVER_WORKER, wait
from ._raw import RawPeer
from ._victim import MALLORY, Served, flag_end, refused_client

__all__ = ["HelloForgeryContract"]


def _count_session_ids(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every session id the server proxies allocate from now on."""
    allocated: list[str] = []

    def spy() -> str:
        session_id = new_session_id()
        allocated.append(session_id)
        return session_id

    # The proxy module calls the name it imported: replace that one.
    monkeypatch.setattr(server_module, "new_session_id", spy)
    return allocated


class HelloForgeryContract(LiveContract):
    """A peer that names unconfigured workers, or is refused by ``authenticate``, gets nothing.

    Included in :class:`~proxy_core.testing.contracts_forgery.ForgeryContract`.
    Runs with the first codec of ``codecs``.

    Attributes:
        transport: the transport under test, by registered name or instance.
    """

    @pytest.mark.parametrize("names", [(MALLORY, SERVER_WORKER), (CLIENT_WORKER, MALLORY)])
    async def test_hello_naming_unconfigured_workers_opens_no_session(
        self,
        proxy_core_transport: Transport,
        proxy_core_codec: Codec,
        serve_url: str,
        names: tuple[str, str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A HELLO that names a client worker or a server worker the server was not configured
        with is refused with REJECT 4004: no session id, no session, nothing marked ready."""
        transport, codec = proxy_core_transport, proxy_core_codec
        allocated = _count_session_ids(monkeypatch)
        runners: list[tuple[WorkerRunner, asyncio.Event]] = []

        async def setup(runner: WorkerRunner) -> None:
            ended = asyncio.Event()
            flag_end(runner, ended)
            runners.append((runner, ended))
            await runner.add_workers(Served(SERVER_WORKER))

        async with serve_proxy(
            serve_url,
            transport=transport,
            codecs=[codec],
            worker_name=SERVER_WORKER,
            remote_worker_name=CLIENT_WORKER,
            setup=setup,
        ) as service:
            conn = await wait(transport.connect(service.url))
            async with conn:
                client_worker, server_worker = names
                hello = Hello((codec.name,), client_worker, server_worker, 1 << 20)
                await conn.send(encode_handshake(hello))
                answer = decode_handshake(await wait(conn.receive()))
            assert isinstance(answer, Reject) and answer.code == RejectCode.UNKNOWN_WORKER
            # Refused at HELLO, before setup: no runner, no worker, no session id.
            assert runners == [] and allocated == []
            assert service.sessions_served == 0 and not service.runners

    async def test_authenticate_refusal_before_serve_proxy_creates_anything(
        self,
        proxy_core_transport: Transport,
        proxy_core_codec: Codec,
        serve_url: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """With ``serve_proxy`` a refused client is turned away by the transport: ``setup`` never
        runs, no runner, proxy or session id exists, the hook ran once, and the client gets
        ``AuthenticationError`` without retrying."""
        transport, codec = proxy_core_transport, proxy_core_codec
        allocated = _count_session_ids(monkeypatch)
        calls: list[dict[str, str]] = []
        setups: list[WorkerRunner] = []

        def authenticate(headers: Mapping[str, str]) -> bool:
            calls.append(dict(headers))
            return headers.get("authorization") == "Bearer good"

        async def setup(runner: WorkerRunner) -> None:
            setups.append(runner)
            await runner.add_workers(Served(SERVER_WORKER))

        async with serve_proxy(
            serve_url,
            transport=transport,
            worker_name=SERVER_WORKER,
            remote_worker_name=CLIENT_WORKER,
            setup=setup,
            authenticate=authenticate,
        ) as service:
            async with refused_client(service.url, transport, codec):
                assert setups == [] and service.sessions_served == 0
                assert not service.runners and not service.proxies
            assert [c.get("authorization") for c in calls] == ["Bearer forged"]
            assert setups == [] and allocated == []

    async def test_authenticate_refusal_on_an_accepted_connection_opens_no_session(
        self,
        proxy_core_transport: Transport,
        proxy_core_codec: Codec,
        serve_url: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A ``ProxyServer`` given an accepted connection refuses with REJECT 4001 before any
        session state: no session id, no session counted, no connected event, the client's
        worker never ready, the served worker never activated; the hook ran once."""
        transport, codec = proxy_core_transport, proxy_core_codec
        allocated = _count_session_ids(monkeypatch)
        calls: list[dict[str, str]] = []
        done: asyncio.Queue[tuple[ProxyServer, WorkerRunner, Served, list[str]]] = asyncio.Queue()

        def authenticate(headers: Mapping[str, str]) -> bool:
            calls.append(dict(headers))
            return False

        async def handler(conn: Connection) -> None:
            runner = WorkerRunner(handle_sigint=False)
            proxy = ProxyServer(
                "gateway",
                connection=conn,
                worker_name=SERVER_WORKER,
                remote_worker_name=CLIENT_WORKER,
                codecs=[codec],
                authenticate=authenticate,
            )
            events: list[str] = []
            proxy.event_handler("on_client_connected")(lambda *_: events.append("connected"))
            proxy.event_handler("on_client_disconnected")(lambda *_: events.append("disconnected"))
            served = Served(SERVER_WORKER, active=False)
            await runner.add_workers(proxy, served)
            await runner.run()  # ended by the proxy once it has refused the client
            done.put_nowait((proxy, runner, served, events))

        async with transport.serve(serve_url, handler) as listener:
            async with refused_client(listener.url, transport, codec):
                proxy, runner, served, events = await wait(done.get())
            assert [c.get("authorization") for c in calls] == ["Bearer forged"]
            assert allocated == [] and proxy.session_id is None and proxy.stats.sessions == 0
            assert events == [] and proxy.stats.messages_in == 0
            assert not runner.registry.is_ready(CLIENT_WORKER)
            assert served.lifecycle == ["ended client disconnected"] and not served.active
            assert done.empty()

    async def test_refused_hello_is_a_reject_not_a_session(
        self,
        proxy_core_transport: Transport,
        proxy_core_codec: Codec,
        serve_url: str,
    ) -> None:
        """The raw view of the refusal above: the answer to HELLO is REJECT 4001, nothing else."""
        transport, codec = proxy_core_transport, proxy_core_codec
        finished = asyncio.Event()

        async def handler(conn: Connection) -> None:
            runner = WorkerRunner(handle_sigint=False)
            proxy = ProxyServer(
                "gateway",
                connection=conn,
                worker_name=SERVER_WORKER,
                remote_worker_name=CLIENT_WORKER,
                codecs=[codec],
                authenticate=lambda headers: False,
            )
            await runner.add_workers(proxy, Served(SERVER_WORKER))
            await runner.run()
            finished.set()

        async with transport.serve(serve_url, handler) as listener:
            conn = await wait(transport.connect(listener.url))
            async with conn:
                await conn.send(
                    encode_handshake(Hello((codec.name,), CLIENT_WORKER, SERVER_WORKER, 1 << 20))
                )
                answer = decode_handshake(await wait(conn.receive()))
                assert answer == Reject(RejectCode.UNAUTHORIZED, "unauthorized")
                peer = RawPeer(conn, codec)
                await peer.closed()
                assert peer.received == []  # the REJECT was the last word: no WELCOME, no READY
            await wait(finished.wait())
