"""The filter rules (DESIGN.md, "The filter rules"), checked against an independent oracle.

The oracle below restates the contract as plain boolean conditions, one per rule, in the
order the reasons are reported: local, broadcast, wrong_target, wrong_source, then the
lifecycle exception, then not_allowed. It never calls ``proxy_core.rules`` to decide
anything, so a change to the module that breaks the contract shows up as a disagreement.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import proxy_core
from proxy_core.messages import (
    AudioRawFrame,
    BusActivateWorkerMessage,
    BusCancelMessage,
    BusDataMessage,
    BusDeactivateWorkerMessage,
    BusEndMessage,
    BusEndWorkerMessage,
    BusFrameMessage,
    BusLocalMessage,
    BusMessage,
    BusWorkerReadyMessage,
    TextFrame,
)
from proxy_core.rules import Drop, DropReason, FilterRules, Forward

LOCAL = "acme"
REMOTE = "assistant"
# A small pool that includes the configured names, so that matches are frequent.
NAMES = (LOCAL, REMOTE, "eve", "acme2", "")


@dataclass
class UserLocalMessage(BusLocalMessage, BusMessage):
    """A user-defined message type that must never cross."""

    note: str = ""


@dataclass
class UserMessage(BusMessage):
    """A user-defined message type that may cross when allow-listed."""

    payload: int = 0


ALL_TYPES: tuple[type[BusMessage], ...] = (
    BusMessage,
    BusFrameMessage,
    BusDataMessage,
    BusActivateWorkerMessage,
    BusDeactivateWorkerMessage,
    BusEndWorkerMessage,
    BusEndMessage,
    BusCancelMessage,
    BusWorkerReadyMessage,
    UserLocalMessage,
    UserMessage,
)


# ---------------------------------------------------------------- the oracle


def expected_decision(
    message: BusMessage,
    *,
    sender: str,
    receiver: str,
    allowed_types: tuple[type, ...],
    forward_broadcasts: bool,
) -> DropReason | None:
    """Return the reason the contract drops ``message`` for, or ``None`` if it crosses.

    ``sender`` is the worker a crossing message must come from and ``receiver`` the one
    it must be for: (local, remote) outbound, (remote, local) inbound.
    """
    is_local = isinstance(message, BusLocalMessage)
    is_broadcast = message.target is None
    is_allow_listed = any(isinstance(message, t) for t in allowed_types)
    is_lifecycle = isinstance(
        message, (BusActivateWorkerMessage, BusDeactivateWorkerMessage, BusEndWorkerMessage)
    )
    # Opt-in: an allow-listed broadcast may cross; other broadcasts stay local.
    broadcast_may_cross = forward_broadcasts and is_allow_listed

    if is_local:
        return DropReason.LOCAL
    if is_broadcast and not broadcast_may_cross:
        return DropReason.BROADCAST
    if not is_broadcast and message.target != receiver:
        return DropReason.WRONG_TARGET
    if message.source != sender:
        return DropReason.WRONG_SOURCE
    # Lifecycle messages addressed to the worker on the other side always cross.
    if is_lifecycle and not is_broadcast:
        return None
    if not is_allow_listed:
        return DropReason.NOT_ALLOWED
    return None


# ---------------------------------------------------------------- strategies

names = st.sampled_from(NAMES)
targets = st.one_of(st.none(), names)
frames = st.one_of(
    st.builds(TextFrame, st.text(max_size=10)),
    st.builds(AudioRawFrame, st.binary(max_size=16), st.integers(8000, 48000), st.integers(1, 2)),
)


def _message(cls: type[BusMessage], **extra: st.SearchStrategy[object]) -> st.SearchStrategy:
    return st.builds(cls, source=names, target=targets, **extra)


messages: st.SearchStrategy[BusMessage] = st.one_of(
    _message(BusMessage),
    _message(BusFrameMessage, frame=frames),
    _message(BusDataMessage, data=st.dictionaries(st.text(max_size=4), st.integers(), max_size=3)),
    _message(BusActivateWorkerMessage, args=st.none() | st.just({"k": 1})),
    _message(BusDeactivateWorkerMessage),
    _message(BusEndWorkerMessage, reason=st.none() | st.text(max_size=5)),
    _message(BusEndMessage, reason=st.none() | st.text(max_size=5)),
    _message(BusCancelMessage, reason=st.none() | st.text(max_size=5)),
    _message(BusWorkerReadyMessage, worker=names, remote=st.booleans()),
    _message(UserLocalMessage, note=st.text(max_size=5)),
    _message(UserMessage, payload=st.integers()),
)

allowlists = st.lists(st.sampled_from(ALL_TYPES), unique=True, max_size=len(ALL_TYPES)).map(tuple)


@st.composite
def rule_sets(draw: st.DrawFn) -> FilterRules:
    # Mostly the usual names, sometimes any pair from the pool (even equal ones).
    local, remote = draw(st.sampled_from([(LOCAL, REMOTE)]) | st.tuples(names, names))
    return FilterRules(
        local_worker=local,
        remote_worker=remote,
        forward_messages=draw(allowlists),
        forward_broadcasts=draw(st.booleans()),
    )


def _check(rules: FilterRules, message: BusMessage, direction: str) -> None:
    before = copy.deepcopy(message)
    decide = rules.outbound if direction == "outbound" else rules.inbound
    sender, receiver = (
        (rules.local_worker, rules.remote_worker)
        if direction == "outbound"
        else (rules.remote_worker, rules.local_worker)
    )
    expected = expected_decision(
        message,
        sender=sender,
        receiver=receiver,
        allowed_types=rules.forward_messages,
        forward_broadcasts=rules.forward_broadcasts,
    )
    decision = decide(message)
    if expected is None:
        assert isinstance(decision, Forward), (direction, message, rules, decision)
    else:
        assert isinstance(decision, Drop), (direction, message, rules, decision)
        assert decision.reason is expected, (direction, message, rules, decision)
    # Deciding never changes the message (neither its type nor any field).
    assert type(message) is type(before)
    assert message == before


# ---------------------------------------------------------------- properties


@settings(max_examples=600, deadline=None)
@given(rules=rule_sets(), message=messages)
def test_outbound_matches_the_contract(rules: FilterRules, message: BusMessage) -> None:
    _check(rules, message, "outbound")


@settings(max_examples=600, deadline=None)
@given(rules=rule_sets(), message=messages)
def test_inbound_matches_the_contract(rules: FilterRules, message: BusMessage) -> None:
    _check(rules, message, "inbound")


@settings(max_examples=300, deadline=None)
@given(rules=rule_sets(), message=messages)
def test_directions_are_mirror_images(rules: FilterRules, message: BusMessage) -> None:
    # Inbound with (local, remote) is outbound with the names swapped.
    swapped = FilterRules(
        local_worker=rules.remote_worker,
        remote_worker=rules.local_worker,
        forward_messages=rules.forward_messages,
        forward_broadcasts=rules.forward_broadcasts,
    )
    assert rules.inbound(message) == swapped.outbound(message)


@settings(max_examples=300, deadline=None)
@given(rules=rule_sets(), message=messages)
def test_local_messages_never_cross(rules: FilterRules, message: BusMessage) -> None:
    if isinstance(message, BusLocalMessage):
        assert rules.outbound(message) == Drop(DropReason.LOCAL)
        assert rules.inbound(message) == Drop(DropReason.LOCAL)


@settings(max_examples=300, deadline=None)
@given(rules=rule_sets(), message=messages)
def test_forward_decisions_leave_the_message_untouched(
    rules: FilterRules, message: BusMessage
) -> None:
    snapshot = copy.deepcopy(message)
    fields = dict(vars(message))
    for decide in (rules.outbound, rules.inbound):
        decide(message)
        assert message == snapshot
        # Same field objects, not copies: the rules neither rebind nor replace anything.
        assert all(vars(message)[k] is v for k, v in fields.items())


@settings(max_examples=200, deadline=None)
@given(rules=rule_sets(), message=messages)
def test_without_forward_broadcasts_no_broadcast_crosses(
    rules: FilterRules, message: BusMessage
) -> None:
    rules = FilterRules(rules.local_worker, rules.remote_worker, rules.forward_messages, False)
    if message.target is None:
        assert isinstance(rules.outbound(message), Drop)
        assert isinstance(rules.inbound(message), Drop)


# ---------------------------------------------------------------- one example per rule

RULES = FilterRules(local_worker=LOCAL, remote_worker=REMOTE, forward_messages=(BusFrameMessage,))


def _frame(source: str, target: str | None) -> BusFrameMessage:
    return BusFrameMessage(source, target, TextFrame("hi"))


def test_outbound_rule_1_local_messages_never_cross() -> None:
    everything = FilterRules(LOCAL, REMOTE, (BusMessage,), forward_broadcasts=True)
    assert everything.outbound(BusEndMessage(LOCAL, REMOTE)) == Drop(DropReason.LOCAL)
    assert everything.outbound(UserLocalMessage(LOCAL, REMOTE)) == Drop(DropReason.LOCAL)


def test_outbound_rule_2_broadcasts_stay_local() -> None:
    assert RULES.outbound(_frame(LOCAL, None)) == Drop(DropReason.BROADCAST)


def test_outbound_rule_3_target_must_be_the_remote_worker() -> None:
    assert RULES.outbound(_frame(LOCAL, "eve")) == Drop(DropReason.WRONG_TARGET)


def test_outbound_rule_4_source_must_be_the_local_worker() -> None:
    # Another local worker cannot leak messages through the proxy.
    assert RULES.outbound(_frame("eve", REMOTE)) == Drop(DropReason.WRONG_SOURCE)


def test_outbound_rule_5_type_must_be_allow_listed() -> None:
    assert RULES.outbound(BusDataMessage(LOCAL, REMOTE)) == Drop(DropReason.NOT_ALLOWED)
    assert isinstance(RULES.outbound(_frame(LOCAL, REMOTE)), Forward)


def test_outbound_rule_5_lifecycle_messages_always_cross() -> None:
    nothing_allowed = FilterRules(LOCAL, REMOTE)
    for message in (
        BusActivateWorkerMessage(LOCAL, REMOTE, {"x": 1}),
        BusDeactivateWorkerMessage(LOCAL, REMOTE),
        BusEndWorkerMessage(LOCAL, REMOTE, "done"),
    ):
        assert isinstance(nothing_allowed.outbound(message), Forward)


def test_allow_list_matches_subclasses() -> None:
    rules = FilterRules(LOCAL, REMOTE, (BusMessage,))
    assert isinstance(rules.outbound(UserMessage(LOCAL, REMOTE)), Forward)
    assert isinstance(rules.outbound(BusDataMessage(LOCAL, REMOTE)), Forward)


def test_inbound_rule_2_local_messages_are_not_injected() -> None:
    everything = FilterRules(LOCAL, REMOTE, (BusMessage,), forward_broadcasts=True)
    # A peer must not be able to end or cancel our runner.
    assert everything.inbound(BusEndMessage(REMOTE, LOCAL)) == Drop(DropReason.LOCAL)
    assert everything.inbound(BusCancelMessage(REMOTE, None)) == Drop(DropReason.LOCAL)


def test_inbound_rule_3_target_must_be_the_local_worker() -> None:
    assert RULES.inbound(_frame(REMOTE, "eve")) == Drop(DropReason.WRONG_TARGET)
    assert RULES.inbound(_frame(REMOTE, None)) == Drop(DropReason.BROADCAST)


def test_inbound_rule_3_source_must_be_the_remote_worker() -> None:
    # No spoofing: the peer cannot pretend to be another of its workers, or one of ours.
    assert RULES.inbound(_frame("eve", LOCAL)) == Drop(DropReason.WRONG_SOURCE)
    assert RULES.inbound(_frame(LOCAL, LOCAL)) == Drop(DropReason.WRONG_SOURCE)


def test_inbound_rule_4_type_must_be_allow_listed_or_lifecycle() -> None:
    assert RULES.inbound(BusDataMessage(REMOTE, LOCAL)) == Drop(DropReason.NOT_ALLOWED)
    assert isinstance(RULES.inbound(_frame(REMOTE, LOCAL)), Forward)
    assert isinstance(RULES.inbound(BusActivateWorkerMessage(REMOTE, LOCAL)), Forward)


def test_forward_broadcasts_relays_allow_listed_broadcasts_of_the_served_workers() -> None:
    rules = FilterRules(LOCAL, REMOTE, (BusFrameMessage,), forward_broadcasts=True)
    assert isinstance(rules.outbound(_frame(LOCAL, None)), Forward)
    assert isinstance(rules.inbound(_frame(REMOTE, None)), Forward)
    # Still only from the served worker, and only allow-listed types.
    assert rules.outbound(_frame("eve", None)) == Drop(DropReason.WRONG_SOURCE)
    assert rules.outbound(BusDataMessage(LOCAL, None)) == Drop(DropReason.BROADCAST)
    # Lifecycle broadcasts are not "for the remote worker": they stay local.
    assert rules.outbound(BusEndWorkerMessage(LOCAL, None)) == Drop(DropReason.BROADCAST)


def test_reasons_are_reported_in_order() -> None:
    # Breaks every rule: counted under the first one.
    assert RULES.outbound(BusEndMessage("eve", None)) == Drop(DropReason.LOCAL)
    # Broadcast from the wrong source with a type not allowed: broadcast comes first.
    assert RULES.outbound(BusDataMessage("eve", None)) == Drop(DropReason.BROADCAST)
    # Wrong target and wrong source: wrong_target comes first.
    assert RULES.outbound(BusDataMessage("eve", "eve")) == Drop(DropReason.WRONG_TARGET)
    # Wrong source and not allowed: wrong_source comes first.
    assert RULES.outbound(BusDataMessage("eve", REMOTE)) == Drop(DropReason.WRONG_SOURCE)


def test_decisions_are_frozen_values() -> None:
    decision = RULES.outbound(BusDataMessage(LOCAL, REMOTE))
    assert decision == Drop(DropReason.NOT_ALLOWED)
    with pytest.raises(AttributeError):
        decision.reason = DropReason.LOCAL  # type: ignore[union-attr]


# ---------------------------------------------------------------- purity


def test_rules_module_graph_does_not_import_asyncio() -> None:
    # The rules module and what it imports (messages, errors), loaded without running the
    # package's __init__ (which re-exports the asyncio runtime on purpose).
    package_dir = str(Path(proxy_core.__file__).parent)
    code = textwrap.dedent(
        f"""
        import sys, types
        pkg = types.ModuleType("proxy_core")
        pkg.__path__ = [{package_dir!r}]
        sys.modules["proxy_core"] = pkg
        import proxy_core.rules
        assert "asyncio" not in sys.modules, "proxy_core.rules pulled in asyncio"
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_importing_rules_does_not_import_asyncio() -> None:
    code = "import sys, proxy_core.rules; assert 'asyncio' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
