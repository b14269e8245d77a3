"""The pure parts of the Redis bus, without Redis: keys, entry IDs, acknowledgement bookkeeping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy_core import ConfigurationError
from proxy_core_redis.keys import Keys, after, parse_id
from proxy_core_redis.tracking import AckTracker, StreamState


def test_every_key_of_a_channel_shares_its_hash_tag() -> None:
    keys = Keys("support-bots")
    names = [
        keys.stream("assistant"),
        keys.node_stream("node-1-ab12"),
        keys.lease("assistant"),
        keys.alive("node-1-ab12"),
        keys.nodes,
        keys.ready,
        keys.seq,
        keys.orphans,
    ]
    assert all(k.startswith("pc:{support-bots}:") for k in names)
    assert len(set(names)) == len(names)
    assert keys.name_of_stream(keys.stream("a:b{c}")) == "a:b{c}"
    assert keys.name_of_stream(keys.lease("x")) is None


@pytest.mark.parametrize("bad", ["", "a{b", "a}b", "line\nbreak"])
def test_a_channel_that_would_split_the_hash_tag_is_refused(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        Keys(bad)


@given(st.integers(0, 2**48), st.integers(0, 2**32))
def test_entry_ids_parse_and_order_like_redis(ms: int, seq: int) -> None:
    assert parse_id(f"{ms}-{seq}".encode()) == (ms, seq)
    assert parse_id(after((ms, seq))) > (ms, seq)
    assert parse_id(after((ms, seq))) == (ms, seq + 1)


class Message:
    """Any object stands for a decoded message; the tracker compares identity."""


def test_an_entry_is_acknowledged_once_every_endpoint_it_went_to_is_finished() -> None:
    tracker, stream = AckTracker(), StreamState("s", None)
    first, second = object(), object()
    message = Message()
    tracker.delivered(stream, (1, 0), message)
    tracker.expect(first, message)
    tracker.expect(second, message)
    assert not tracker.settle(message)  # both still have it
    assert not tracker.finished(first, message)
    assert not tracker.finished(first, message)  # twice from one endpoint counts once
    assert stream.trim_below() == "1-0"  # never trimmed while unfinished
    assert tracker.finished(second, message)
    assert tracker.take_acks() == {stream: [(1, 0)]}
    assert stream.trim_below() == "1-1" and len(tracker) == 0


def test_a_message_nobody_took_is_finished_at_once_and_others_are_ignored() -> None:
    tracker, stream = AckTracker(), StreamState("s", "w")
    message, passed_on = Message(), Message()
    tracker.delivered(stream, (5, 2), message)
    assert tracker.settle(message)  # no endpoint waits for it (say, the runner)
    assert not tracker.finished(object(), passed_on)  # a local message: not ours
    assert tracker.take_acks() == {stream: [(5, 2)]}


def test_trimming_stops_below_the_oldest_unfinished_entry_in_delivery_order() -> None:
    tracker, stream = AckTracker(), StreamState("s", "w")
    worker = object()
    messages = [Message() for _ in range(3)]
    for i, message in enumerate(messages):
        tracker.delivered(stream, (10, i), message)
        tracker.expect(worker, message)
    tracker.finished(worker, messages[1])  # out of order (a drop_oldest, say)
    assert stream.trim_below() == "10-0"
    tracker.finished(worker, messages[0])
    assert stream.trim_below() == "10-2"
    tracker.finished(worker, messages[2])
    assert stream.trim_below() == "10-3"
    assert sorted(tracker.take_acks()[stream]) == [(10, 0), (10, 1), (10, 2)]


def test_acknowledgements_that_could_not_be_sent_go_first_next_time() -> None:
    tracker, stream = AckTracker(), StreamState("s", "w")
    tracker.finish_entry(stream, (1, 0))
    taken = tracker.take_acks()
    tracker.finish_entry(stream, (2, 0))
    tracker.requeue(taken)
    assert tracker.take_acks() == {stream: [(1, 0), (2, 0)]}
    assert not tracker.has_acks


def test_forgetting_a_stream_drops_its_deliveries() -> None:
    tracker, stream, other = AckTracker(), StreamState("s", "w"), StreamState("o", "v")
    mine, theirs = Message(), Message()
    tracker.delivered(stream, (1, 0), mine)
    tracker.expect(object(), mine)
    tracker.delivered(other, (1, 0), theirs)
    tracker.forget(stream)
    assert len(tracker) == 1 and not stream.outstanding
    assert not tracker.finished(object(), mine)
