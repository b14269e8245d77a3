"""Per-message cost with warm caches and with cold ones: ``python -m proxy_core.bench.cold``.

A round trip runs each side's code once per wake-up, after the kernel, the
event loop and the other process have run: the caches no longer hold what the
last message used. A stream runs the same code thousands of times in a row.
This tool times one message's work both ways, in one process on one core:

- *hot*: one message after another, back to back;
- *cold*: before each message, unrelated work that walks 8 MiB of memory and
  runs other Python (JSON, a regular expression), as a round trip's wait does.

It times proxy-core's sans-I/O core for one 200-byte ``BusFrameMessage`` (the
outbound filter rules, ``Session.send_message`` with the msgpack codec, the
peer's ``Session.receive``, the inbound rules, the ACK back), and, for scale,
what the bare libraries do per message: msgpack's pack and unpack of the
payload, and a masked WebSocket frame serialized and parsed by ``websockets``.
Medians of ``--count`` messages, three rounds. No sockets, no event loop.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Generator, Sequence

from ..codecs.msgpack import MsgpackCodec
from ..messages import AudioRawFrame, BusFrameMessage
from ..rules import FilterRules
from ..session import MessageReceived, Session

__all__ = ["main", "measure"]

_SIZE = 200
_POLLUTE_BYTES = 8 << 20


def _proxy_core() -> Callable[[], None]:
    sender = Session(MsgpackCodec(), session_id="cold", peer_max_message_bytes=1 << 20, now=0.0)
    receiver = Session(MsgpackCodec(), session_id="cold", peer_max_message_bytes=1 << 20, now=0.0)
    outbound = FilterRules("acme", "assistant", (BusFrameMessage,), False)
    inbound = FilterRules("assistant", "acme", (BusFrameMessage,), False)
    message = BusFrameMessage("acme", "assistant", AudioRawFrame(os.urandom(_SIZE), 16000))
    clock = [0.0]

    def one() -> None:
        clock[0] += 0.0001
        outbound.outbound(message)
        event = receiver.receive(sender.send_message(message), clock[0])
        if not isinstance(event, MessageReceived):
            raise RuntimeError(f"expected a message, got {event!r}")
        inbound.inbound(event.message)
        for frame in receiver.data_to_send():
            sender.receive(frame, clock[0])

    return one


def _msgpack() -> Callable[[], None]:
    import msgpack

    payload = os.urandom(_SIZE)

    def one() -> None:
        msgpack.unpackb(msgpack.packb(payload))

    return one


def _websockets() -> Callable[[], None] | None:
    try:
        from websockets.frames import Frame, Opcode
    except ImportError:
        return None
    payload = os.urandom(_SIZE)

    def one() -> None:
        data = Frame(Opcode.BINARY, payload).serialize(mask=True)
        position = 0

        def read_exact(n: int) -> Generator[None, None, bytes]:
            nonlocal position
            chunk = data[position : position + n]
            position += n
            return chunk
            yield  # a generator, as websockets' reader is

        parser = Frame.parse(read_exact, mask=True)
        try:
            next(parser)
        except StopIteration as done:
            if done.value.data != payload:
                raise RuntimeError("the frame did not round-trip") from None
        else:
            raise RuntimeError("the parser asked for more data")

    return one


def _polluter() -> Callable[[], None]:
    junk = bytearray(os.urandom(_POLLUTE_BYTES))
    doc = {f"k{i}": [i, str(i) * 5, {"x": i}] for i in range(3000)}
    pattern = re.compile(r"(\w+)=(\d+)")
    text = " ".join(f"a{i}={i}" for i in range(3000))

    def pollute() -> None:
        bytes(junk).count(b"\x00")
        json.loads(json.dumps(doc))
        pattern.findall(text)

    return pollute


def measure(count: int = 3000, rounds: int = 3) -> dict[str, list[tuple[float, float]]]:
    """Return, per workload, ``(hot, cold)`` median microseconds per message for each round."""
    workloads = {"proxy-core sans-I/O core": _proxy_core(), "msgpack pack+unpack": _msgpack()}
    ws = _websockets()
    if ws is not None:
        workloads["websockets frame out+in"] = ws
    pollute = _polluter()
    clock = time.perf_counter
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in workloads}
    for _ in range(rounds):
        for name, one in workloads.items():
            medians = []
            for cold in (False, True):
                samples = []
                for _ in range(count):
                    if cold:
                        pollute()
                    start = clock()
                    one()
                    samples.append(clock() - start)
                medians.append(statistics.median(samples) * 1e6)
            out[name].append((medians[0], medians[1]))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Print hot and cold microseconds per message for each workload."""
    parser = argparse.ArgumentParser(
        prog="python -m proxy_core.bench.cold", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--count", type=int, default=3000, help="messages per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every measurement")
    args = parser.parse_args(argv)
    if args.count < 1 or args.rounds < 1:
        parser.error("--count and --rounds must be at least 1")
    results = measure(args.count, args.rounds)
    print(f"{'per message, median':<28} {'hot us':>8} {'cold us':>8} {'cold/hot':>9}")
    for name, rounds in results.items():
        hot = statistics.median(h for h, _ in rounds)
        cold = statistics.median(c for _, c in rounds)
        print(f"{name:<28} {hot:8.2f} {cold:8.2f} {cold / hot:8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
