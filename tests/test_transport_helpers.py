"""The helpers proxy_core.transport offers to backend authors."""

from __future__ import annotations

import pytest

from proxy_core import ConfigurationError
from proxy_core.transport import (
    check_max_message_bytes,
    describe_error,
    format_address,
    format_host,
    lower_headers,
    parse_url,
    redact_url,
)


def test_parse_url_checks_scheme_port_and_host_without_leaking_credentials() -> None:
    parts = parse_url("ws://127.0.0.1:8765/ws", transport="t", schemes=("ws", "wss"))
    assert (parts.hostname, parts.port, parts.path) == ("127.0.0.1", 8765, "/ws")
    with pytest.raises(ConfigurationError, match="one of ws, wss") as info:
        parse_url("http://user:secret@host/ws", transport="t", schemes=("ws", "wss"))
    assert "secret" not in str(info.value)
    with pytest.raises(ConfigurationError, match="invalid port"):
        parse_url("ws://host:99999/ws", transport="t", schemes=("ws",))
    with pytest.raises(ConfigurationError, match="no host"):
        parse_url("ws:///ws", transport="t", schemes=("ws",))


def test_small_helpers() -> None:
    assert redact_url("wss://a:b@example.test:1/x?y=1") == "wss://example.test:1/x?y=1"
    assert redact_url("ws://h/x") == "ws://h/x"
    check_max_message_bytes(1)
    with pytest.raises(ConfigurationError, match="positive"):
        check_max_message_bytes(0)
    assert describe_error(ValueError("bad")) == "ValueError: bad"
    assert describe_error(TimeoutError()) == "TimeoutError"
    assert format_host("::1") == "[::1]" and format_host("h") == "h" and format_host(None) == ""
    assert format_address(("::1", 80)) == "[::1]:80"
    assert format_address(None) is None and format_address("unix:/s") == "unix:/s"
    assert lower_headers([("X-A", "1"), ("x-a", "2"), ("B", "3")]) == {"x-a": "1, 2", "b": "3"}
