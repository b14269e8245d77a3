"""``proxy-core demo`` (the local bus) read as a newcomer reads it.

Every drop the closing table counts is narrated, every message shown has the
line that sent it, the table's columns line up, the transport and the codec are
printed first, and ``--help`` names the choices and the defaults.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest

from proxy_core.cli import main
from proxy_core.plugins import available_codecs, available_transports

# "[client] filter: proxy kept outbound _Note('private note') back: local"
FILTER = re.compile(r"^\[\s*(\w+)\] filter: \S+ kept (\w+) (.+) back: (\w+)")
# "[server] assistant <- acme: TextFrame('hi there')", "[client] acme -> everyone: ..."
ARRIVED = re.compile(r"^\[\s*\w+\] (\w+) <- (\w+): (.+)$")
SENT = re.compile(r"^\[\s*\w+\] (\w+) -> (\w+): (.+?)(?:  \(expect: .*\))?$")
TABLE_HEADER = re.compile(r"^\s+client proxy\s+server proxy$")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    assert main(["demo", *args]) == 0
    return capsys.readouterr().out.splitlines()


def table(lines: list[str]) -> list[str]:
    start = next(i for i, line in enumerate(lines) if TABLE_HEADER.match(line))
    return lines[start:]


def table_drops(lines: list[str]) -> Counter[tuple[str, str, str]]:
    """(side, direction, reason) -> count, as the table says."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for row in table(lines)[1:]:
        found = re.match(r"^dropped_(out|in)\[(\w+)\]\s+(\d+)\s+(\d+)$", row)
        if found:
            direction = "outbound" if found[1] == "out" else "inbound"
            counts["client", direction, found[2]] += int(found[3])
            counts["server", direction, found[2]] += int(found[4])
    return +counts  # drop the zeros


def narrated_drops(lines: list[str]) -> Counter[tuple[str, str, str]]:
    return Counter((m[1], m[2], m[4]) for line in lines if (m := FILTER.match(line)) is not None)


def installed(transport: str) -> str:
    if transport not in available_transports():
        pytest.skip(
            f"transport {transport!r} is not installed here "
            "(python3 scripts/dev.py test installs every transport of this repository)"
        )
    return transport


@pytest.mark.parametrize("transport", ["websockets", "aiohttp", "grpc", "memory"])
def test_every_drop_in_the_table_is_narrated(
    transport: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = run(capsys, "--transport", installed(transport))
    counted = table_drops(lines)
    assert counted[("client", "outbound", "local")] == 3  # the note and two readiness news
    assert narrated_drops(lines) == counted
    readiness = [line for line in lines if "BusWorkerReadyMessage(" in line]
    assert readiness and all("readiness news stays on its own bus" in x for x in readiness)


def test_every_message_shown_has_the_line_that_sent_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = run(capsys)
    sent = {(m[1], m[2], m[3]) for line in lines if (m := SENT.match(line)) is not None}
    arrived = [(m[2], m[1], m[3]) for line in lines if (m := ARRIVED.match(line)) is not None]
    assert len(arrived) == 5  # three to the assistant, two answers
    for source, target, what in arrived:
        assert (source, target, what) in sent, f"{source} -> {target}: {what} is never sent"
    shown = {what for _, _, what in sent}
    for line in lines:
        if (m := FILTER.match(line)) is not None and "BusWorkerReadyMessage(" not in m[3]:
            assert m[3] in shown, f"{m[3]} is filtered but never sent"
    assert "[client] intruder -> assistant: TextFrame('let me in')" in "\n".join(lines)
    assert "[client] acme -> assistant: TextFrame('that is all')" in "\n".join(lines)


def test_the_table_lines_up(capsys: pytest.CaptureFixture[str]) -> None:
    rows = table(run(capsys))
    assert len(rows) >= 8  # the header, four counters, the drops
    assert {len(row) for row in rows} == {len(rows[0])}
    # Each number ends where its column's title ends.
    ends = [m.end() for m in re.finditer(r"client proxy|server proxy", rows[0])]
    for row in rows[1:]:
        assert [m.end() for m in re.finditer(r"\d+(?= |$)", row)][-2:] == ends, row


@pytest.mark.parametrize(
    ("transport", "codec"),
    [("websockets", "msgpack"), ("websockets", "json"), ("aiohttp", "json"), ("grpc", "msgpack")],
)
def test_the_transport_and_the_codec_come_first(
    transport: str, codec: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = run(capsys, "--transport", installed(transport), "--codec", codec)
    assert lines[0].startswith(f"[  demo] transport: {transport}; codec: {codec} ")
    assert any(
        line.startswith("[client] proxy connected to ") and line.endswith(f"(codec {codec})")
        for line in lines
    )


def test_the_default_transport_and_codec_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    lines = run(capsys)
    assert lines[0].startswith("[  demo] transport: websockets; codec: msgpack ")


def test_help_lists_the_installed_choices_and_the_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--help"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    transports, codecs = available_transports(), available_codecs()
    assert f"the transport, one of the installed {', '.join(transports)} " in out
    assert "(default: websockets)" in out
    assert f"one of the installed {', '.join(codecs)} (default: msgpack)" in out
