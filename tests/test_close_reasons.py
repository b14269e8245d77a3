"""One rule for every reason that travels: at most 123 bytes of UTF-8, cut on a character boundary.

``proxy_core.transport.truncate_reason`` is that rule, and everything that sends a
reason uses it: the close of every backend (WebSocket close frame, gRPC trailer),
the reason of a BYE and of a REJECT. Multi-byte characters are where a cut by
characters and a cut by bytes part ways, so every case below has some.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from _support import CLIENT_WORKER, hello, raw_client, run_server, wait
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy_core.codecs.base import Codec
from proxy_core.codecs.json import JsonCodec
from proxy_core.codecs.msgpack import MsgpackCodec
from proxy_core.errors import AuthenticationError, ConnectionClosed
from proxy_core.plugins import load_transport
from proxy_core.protocol import Bye, Reject, decode_handshake, encode_handshake
from proxy_core.session import Session, server_negotiate
from proxy_core.transport import MAX_REASON_BYTES, Connection, Transport, truncate_reason

E_ACUTE = "\u00e9"  # 2 bytes of UTF-8
ZHU = "\u52a9"  # 3 bytes
ROBOT = "\U0001f916"  # 4 bytes

CASES = [
    ("", ""),
    ("bye", "bye"),
    ("a" * 123, "a" * 123),
    ("a" * 200, "a" * 123),
    (E_ACUTE * 200, E_ACUTE * 61),  # 122 bytes: the 62nd would end at byte 124
    (ZHU * 100, ZHU * 41),  # 123 bytes exactly
    (ROBOT * 40, ROBOT * 30),  # 120 bytes
    ("a" * 122 + E_ACUTE, "a" * 122),  # the é would be cut in half: left out whole
    ("a" * 121 + E_ACUTE, "a" * 121 + E_ACUTE),  # 123 bytes: kept
    ("ab" + ROBOT * 31, "ab" + ROBOT * 30),
    ("x\ud800y", "x?y"),  # a lone surrogate, which UTF-8 cannot carry
]
IDS = ["empty", "short", "ascii-123", "ascii-200", "2-byte", "3-byte", "4-byte"]
IDS += ["cut-mid-character", "exactly-123", "mixed", "lone-surrogate"]


@pytest.mark.parametrize(("reason", "expected"), CASES, ids=IDS)
def test_truncate_reason(reason: str, expected: str) -> None:
    assert truncate_reason(reason) == expected
    assert len(expected.encode("utf-8")) <= MAX_REASON_BYTES == 123


@settings(max_examples=300, deadline=None)
@given(reason=st.text(st.characters(codec="utf-8"), max_size=200))
def test_truncate_reason_keeps_the_longest_prefix_that_fits(reason: str) -> None:
    cut = truncate_reason(reason)
    size = len(cut.encode("utf-8"))
    assert reason.startswith(cut)
    assert size <= MAX_REASON_BYTES
    if cut != reason:  # the next character would not have fitted
        assert size + len(reason[len(cut)].encode("utf-8")) > MAX_REASON_BYTES


# ================================================================ BYE and REJECT


@pytest.mark.parametrize("codec", [JsonCodec(), MsgpackCodec()], ids=["json", "msgpack"])
@pytest.mark.parametrize(("reason", "expected"), CASES, ids=IDS)
def test_bye_reason(codec: Codec, reason: str, expected: str) -> None:
    session = Session(codec, session_id="s", peer_max_message_bytes=1 << 20, now=0.0)
    assert codec.decode(session.bye_frame(1002, reason)) == Bye(1002, expected)


@pytest.mark.parametrize(("reason", "expected"), CASES, ids=IDS)
def test_reject_reason(reason: str, expected: str) -> None:
    data = encode_handshake(Reject(4004, reason))
    assert decode_handshake(data) == Reject(4004, expected)
    # A reader accepts a longer reason from a peer that does not cut it.
    longer = json.dumps({"protocol": "proxy-core", "type": "reject", "code": 1, "reason": reason})
    assert decode_handshake(longer.encode()) == Reject(1, reason)


def unknown_worker_refusal(client_worker: str) -> tuple[bytes, str]:
    """A HELLO from ``client_worker`` and the full reason of the REJECT 4004 it gets."""
    first = hello(client_worker=client_worker)
    result = server_negotiate(
        first, [MsgpackCodec()], worker_name="assistant", remote_worker_name=CLIENT_WORKER
    )
    assert isinstance(result, Reject) and result.code == 4004, result
    return first, result.reason


async def refused(first: bytes) -> tuple[str, int | None, str]:
    """Send ``first`` to a real server; return the REJECT's reason, the close code and reason."""
    async with run_server() as server, raw_client(server.url) as ws:
        await ws.send(first)
        answer = json.loads(await wait(ws.recv()))
        await wait(ws.wait_closed())
    assert answer["code"] == 4004, answer
    return answer["reason"], ws.close_code, ws.close_reason


async def test_reject_and_close_carry_the_same_cut_reason() -> None:
    # The reason names the client's worker, here 600 bytes of UTF-8.
    first, reason = unknown_worker_refusal(ZHU * 200)
    assert len(reason.encode()) > 600
    assert await refused(first) == (truncate_reason(reason), 4004, truncate_reason(reason))


async def test_reject_and_close_carry_the_same_cut_ascii_reason() -> None:
    first, reason = unknown_worker_refusal("m" * 200)
    assert await refused(first) == (truncate_reason(reason), 4004, truncate_reason(reason))


# ================================================================ every backend

BACKENDS = ["websockets", "aiohttp", "grpc", "memory"]  # memory: the kit's reference


@pytest.fixture(params=BACKENDS)
def transport(request: pytest.FixtureRequest) -> Transport:
    return load_transport(request.param)()


async def close_with(transport: Transport, reason: str) -> ConnectionClosed:
    """Have a server close with 4000 and ``reason``; return what the client saw."""

    async def handler(conn: Connection) -> None:
        await conn.aclose(4000, reason)

    url = f"{transport.schemes[0]}://127.0.0.1:0/ws"
    async with transport.serve(url, handler) as listener:
        conn = await wait(transport.connect(listener.url))
        try:
            with pytest.raises(ConnectionClosed) as closed:
                await wait(conn.receive())
        finally:
            await conn.aclose()
    return closed.value


@pytest.mark.parametrize(
    ("reason", "expected"), [c for c in CASES if c[0]], ids=[i for i in IDS if i != "empty"]
)
async def test_server_close_reason(transport: Transport, reason: str, expected: str) -> None:
    closed = await close_with(transport, reason)
    assert (closed.code, closed.reason) == (4000, expected)


@pytest.fixture(params=["websockets", "aiohttp", "memory"])
async def ws_transport(request: pytest.FixtureRequest) -> AsyncIterator[Transport]:
    yield load_transport(request.param)()


@pytest.mark.parametrize(("reason", "expected"), CASES[3:], ids=IDS[3:])
async def test_client_close_reason(ws_transport: Transport, reason: str, expected: str) -> None:
    # gRPC carries no close from the client; WebSocket does, by the same rule.
    seen: asyncio.Future[ConnectionClosed] = asyncio.get_running_loop().create_future()

    async def handler(conn: Connection) -> None:
        try:
            await conn.receive()
        except ConnectionClosed as exc:
            seen.set_result(exc)

    url = f"{ws_transport.schemes[0]}://127.0.0.1:0/ws"
    async with ws_transport.serve(url, handler) as listener:
        conn = await wait(ws_transport.connect(listener.url))
        await conn.aclose(4000, reason)
        closed = await wait(seen)
    assert (closed.code, closed.reason) == (4000, expected)


async def test_a_grpc_refusal_whose_reason_utf8_cannot_carry_is_still_a_refusal() -> None:
    """An ``authenticate`` hook's reason with a lone surrogate: gRPC needs a UTF-8 status
    message, so the client gets UNAUTHENTICATED with ``?`` in its place, not a broken call."""
    transport = load_transport("grpc")()

    async def handler(conn: Connection) -> None:  # pragma: no cover - never accepted
        await conn.aclose()

    def authenticate(headers: object) -> bool:
        raise AuthenticationError("no \ud800 entry")

    async with transport.serve(
        "grpc://127.0.0.1:0", handler, authenticate=authenticate
    ) as listener:
        with pytest.raises(AuthenticationError) as refused:
            await wait(transport.connect(listener.url))
    assert "no ? entry" in str(refused.value)
