"""The handshake as a peer in another language writes and reads it.

- Optional fields: ``features`` is left out when empty, in HELLO and WELCOME alike,
  and a reader takes an absent ``features`` as none.
- A refused HELLO gets a reason that names the real fault: not UTF-8, not JSON,
  not an object, another ``protocol``, another ``type``, or the field that is
  missing or mistyped, with the type it should have.
- Text: we write non-ASCII characters as UTF-8 (as the json codec does); a reader
  accepts UTF-8 and ``\\u`` escapes alike.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from _support import (
    CLIENT_WORKER,
    SERVER_WORKER,
    Recorder,
    hello,
    raw_client,
    run_server,
    wait,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy_core import WorkerRunner, serve_proxy
from proxy_core.codecs.json import JsonCodec
from proxy_core.codecs.msgpack import MsgpackCodec
from proxy_core.errors import HandshakeError
from proxy_core.protocol import (
    FEATURES,
    Hello,
    Reject,
    RejectCode,
    Welcome,
    decode_handshake,
    encode_handshake,
)
from proxy_core.session import client_accept, client_hello, common_features, server_negotiate

WELCOME_BODY: dict[str, Any] = {
    "protocol": "proxy-core",
    "type": "welcome",
    "version": 1,
    "codec": "json",
    "session_id": "0" * 32,
    "ready": [],
    "max_message_bytes": 1 << 20,
}


def negotiate(data: bytes, *, worker: str = SERVER_WORKER, remote: str = CLIENT_WORKER) -> Any:
    return server_negotiate(
        data, [MsgpackCodec(), JsonCodec()], worker_name=worker, remote_worker_name=remote
    )


def refusal(data: bytes) -> str:
    """The reason of the REJECT 4000 that ``data`` as a first frame gets."""
    result = negotiate(data)
    assert isinstance(result, Reject), result
    assert result.code == RejectCode.BAD_HELLO, result
    return result.reason


# ================================================================ optional features


def test_empty_features_are_left_out() -> None:
    bare_hello = Hello(("json",), CLIENT_WORKER, SERVER_WORKER, 1 << 20)
    bare_welcome = Welcome("json", "0" * 32, (), 1 << 20)
    for frame in (bare_hello, bare_welcome):
        data = encode_handshake(frame)
        assert b"features" not in data
        assert decode_handshake(data) == frame
    hello_bytes = client_hello(
        [JsonCodec()],
        client_worker=CLIENT_WORKER,
        server_worker=SERVER_WORKER,
        max_message_bytes=1 << 20,
        features=(),
    )
    assert b"features" not in hello_bytes


def test_features_are_written_when_there_are_some() -> None:
    frame = Welcome("json", "0" * 32, (), 1 << 20, features=FEATURES)
    assert json.loads(encode_handshake(frame))["features"] == list(FEATURES)


def test_client_reads_an_absent_features_as_none() -> None:
    welcome, codec = client_accept(json.dumps(WELCOME_BODY).encode(), [JsonCodec()])
    assert welcome.features == ()
    assert common_features(welcome.features, codec) == ()  # so no BATCH, no resume
    # An empty list says the same.
    body = {**WELCOME_BODY, "features": []}
    assert client_accept(json.dumps(body).encode(), [JsonCodec()])[0] == welcome


def test_server_reads_an_absent_features_as_none() -> None:
    result = negotiate(hello(codecs=["json"]))
    assert not isinstance(result, Reject), result
    assert result[0].features == ()


# ================================================================ reasons that name the fault

HELLO_BODY: dict[str, Any] = json.loads(hello(codecs=["json"]))


def without(key: str) -> bytes:
    return json.dumps({k: v for k, v in HELLO_BODY.items() if k != key}).encode()


def with_(**fields: Any) -> bytes:
    return json.dumps({**HELLO_BODY, **fields}).encode()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xfe{}", "the handshake frame is not UTF-8: invalid start byte"),
        (b"caf\xe9", "the handshake frame is not UTF-8"),
        (b"not json", "the handshake frame is not JSON: Expecting value"),
        (b'{"protocol":', "the handshake frame is not JSON"),
        (b"NaN", "the handshake frame is not JSON: NaN is not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "the handshake frame is not JSON: it nests too deeply"),
        (b"[1,2]", "the handshake frame must be a JSON object, got an array"),
        (b'"hello"', 'the handshake frame must be a JSON object, got "hello"'),
        (b"null", "the handshake frame must be a JSON object, got null"),
        (without("protocol"), 'the handshake frame has no "protocol" (it must be "proxy-core")'),
        (with_(protocol="pipecat"), '"protocol" must be "proxy-core", got "pipecat"'),
        (with_(protocol=1), '"protocol" must be "proxy-core", got 1'),
        (with_(type="welcome"), 'expected a "hello", got "welcome"'),
        (with_(type="reject"), 'expected a "hello", got "reject"'),
        (with_(type="HELLO"), 'expected a "hello", got "HELLO"'),
        (without("type"), 'the handshake frame has no "type" (expected "hello")'),
        (with_(type=None), '"type" must be a string, got null'),
        (with_(type=["hello"]), '"type" must be a string, got an array'),
        (without("version"), 'HELLO has no "version" (it must be an integer)'),
        (with_(version="1"), 'HELLO "version" must be an integer, got "1"'),
        (with_(version=1.0), 'HELLO "version" must be an integer, got 1.0'),
        (with_(version=True), 'HELLO "version" must be an integer, got true'),
        (without("codecs"), 'HELLO has no "codecs" (it must be an array of strings)'),
        (with_(codecs="json"), 'HELLO "codecs" must be an array of strings, got "json"'),
        (
            with_(codecs=["json", 7]),
            'HELLO "codecs" must be an array of strings, got an array holding 7',
        ),
        (with_(client_worker=None), 'HELLO "client_worker" must be a string, got null'),
        (with_(server_worker={"a": 1}), 'HELLO "server_worker" must be a string, got an object'),
        (without("max_message_bytes"), 'HELLO has no "max_message_bytes" (it must be an integer)'),
        (with_(features="batch"), 'HELLO "features" must be an array of strings, got "batch"'),
        (with_(resume_session_id=5), 'HELLO "resume_session_id" must be a string, got 5'),
        (
            with_(resume_session_id="s", resume_received=-1),
            'HELLO "resume_received" must be an integer >= 0, got -1',
        ),
    ],
)
def test_a_refused_hello_names_its_fault(data: bytes, reason: str) -> None:
    assert refusal(data).startswith(reason)


def test_a_welcome_sent_as_hello_is_not_blamed_on_a_missing_field() -> None:
    # A WELCOME has no "codecs" or "client_worker": the fault is its type.
    welcome = encode_handshake(Welcome("json", "0" * 32, (), 1 << 20))
    assert refusal(welcome) == 'expected a "hello", got "welcome"'


def test_long_values_are_shown_cut() -> None:
    reason = refusal(with_(type="x" * 500))
    assert reason.startswith('expected a "hello", got "xxx') and reason.endswith('..."')
    assert len(reason) < 100


def test_the_client_names_the_fault_of_an_answer() -> None:
    with pytest.raises(HandshakeError, match='expected a "welcome" or "reject", got "hello"'):
        client_accept(hello(codecs=["json"]), [JsonCodec()])
    with pytest.raises(HandshakeError, match='WELCOME has no "session_id"'):
        body = {k: v for k, v in WELCOME_BODY.items() if k != "session_id"}
        client_accept(json.dumps(body).encode(), [JsonCodec()])


def test_other_refusals_are_unchanged() -> None:
    # Well-formed HELLOs refused for what they ask keep their own codes.
    assert negotiate(with_(version=2)).code == RejectCode.UNSUPPORTED_VERSION
    assert negotiate(with_(codecs=["cbor"])).code == RejectCode.NO_COMMON_CODEC
    assert negotiate(with_(server_worker="root")).code == RejectCode.UNKNOWN_WORKER
    assert negotiate(with_(max_message_bytes=10)).code == RejectCode.BAD_HELLO


async def test_the_server_sends_the_reason() -> None:
    # Over a real socket: the REJECT and the close carry the reason.
    async with run_server() as server, raw_client(server.url) as ws:
        await ws.send(with_(type="welcome"))
        answer = json.loads(await wait(ws.recv()))
        await wait(ws.wait_closed())
    assert answer == {
        "protocol": "proxy-core",
        "type": "reject",
        "code": 4000,
        "reason": 'expected a "hello", got "welcome"',
    }
    assert (ws.close_code, ws.close_reason) == (4000, 'expected a "hello", got "welcome"')


# ================================================================ non-ASCII text

CAFE = "caf\u00e9"  # café
HELPER = "\u52a9\u624b"  # 助手
ROBOT = "\U0001f916"


def test_we_write_utf8_not_escapes() -> None:
    data = encode_handshake(Hello(("json",), CAFE, HELPER, 1 << 20))
    assert '"client_worker":"café","server_worker":"助手"'.encode() in data
    assert b"\\u" not in data
    data.decode("utf-8")  # strict: valid UTF-8
    assert decode_handshake(data) == Hello(("json",), CAFE, HELPER, 1 << 20)


def test_a_reader_accepts_escapes_from_a_foreign_peer() -> None:
    # What json.dumps in Python, JSON.stringify with an ASCII-only policy, or
    # encoding/json with SetEscapeHTML write: \u escapes, astral characters as a
    # surrogate pair.
    foreign = hello(codecs=["json"], client_worker=CAFE, server_worker=HELPER + ROBOT)
    assert b'"client_worker": "caf\\u00e9"' in foreign
    assert b'"\\u52a9\\u624b\\ud83e\\udd16"' in foreign
    result = negotiate(foreign, worker=HELPER + ROBOT, remote=CAFE)
    assert not isinstance(result, Reject), result
    assert (result[0].client_worker, result[0].server_worker) == (CAFE, HELPER + ROBOT)
    # And both spellings in one frame.
    mixed = foreign.replace(b"caf\\u00e9", CAFE.encode())
    assert negotiate(mixed, worker=HELPER + ROBOT, remote=CAFE)[0] == result[0]


def test_a_lone_surrogate_stays_an_escape() -> None:
    # UTF-8 cannot carry one; JSON can, as an escape. We write it so and read it back.
    frame = Hello(("json",), "a\udfffb", "b", 1 << 20)
    data = encode_handshake(frame)
    data.decode("utf-8")  # still valid UTF-8
    assert b'"a\\udfffb"' in data
    assert decode_handshake(data) == frame
    # A reason follows the reason rule (section 1), which makes it a "?".
    reject = encode_handshake(Reject(4004, "worker \ud800"))
    assert decode_handshake(reject) == Reject(4004, "worker ?")


text = st.text(st.characters(codec="utf-8"), max_size=20)


@settings(max_examples=200, deadline=None)
@given(client=text, server=text, codecs=st.lists(text, max_size=3))
def test_non_ascii_round_trip(client: str, server: str, codecs: list[str]) -> None:
    frame = Hello(tuple(codecs), client, server, 1 << 20, features=("batch",))
    data = encode_handshake(frame)
    assert decode_handshake(data) == frame
    # The escaped spelling of the same object reads the same.
    escaped = json.dumps(json.loads(data), ensure_ascii=True).encode()
    assert decode_handshake(escaped) == frame


async def test_non_ascii_worker_names_end_to_end() -> None:
    # A foreign client (\u escapes) against our server, whose WELCOME is UTF-8.
    async def setup(runner: WorkerRunner) -> None:
        await runner.add_workers(Recorder(HELPER))

    async with (
        serve_proxy(
            "ws://127.0.0.1:0/ws",
            worker_name=HELPER,
            remote_worker_name=CAFE,
            codecs=["json"],
            setup=setup,
        ) as service,
        raw_client(service.url) as ws,
    ):
        await ws.send(hello(codecs=["json"], client_worker=CAFE, server_worker=HELPER))
        answer = await wait(ws.recv())
        assert isinstance(answer, bytes)
        welcome = decode_handshake(answer)
        assert isinstance(welcome, Welcome), welcome
        assert welcome.codec == "json"
        # Our server names its worker in "ready" (or a READY later): UTF-8 either way.
        if welcome.ready:
            assert HELPER.encode() in answer
        else:
            ready = await wait(ws.recv())
            assert ready == f'[3,"{HELPER}"]'.encode()
