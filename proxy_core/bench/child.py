"""A benchmark child process spoken to in JSON lines: shared by ``bench`` and ``bench-load``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import IO, Any

__all__ = ["ROOT", "Child", "ChildDied", "StepFailed"]

# The folder that holds the proxy_core package, for children run by another interpreter.
ROOT = str(Path(__file__).resolve().parents[2])


def _open_log(path: Path) -> IO[bytes]:
    return open(path, "wb")  # once per child, before it starts: not worth a thread


class ChildDied(Exception):
    """A child process missed its deadline or exited: its group cannot go on."""


class StepFailed(Exception):
    """A child reported that one step failed; the others may still run."""


class Child:
    """A ``python -m <module> <role> <spec>`` process: one JSON command in, one JSON line out."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log
        self.url = ""  # a server's address, from its ready event

    @classmethod
    async def spawn(
        cls,
        name: str,
        role: str,
        spec: dict[str, Any],
        log_dir: Path,
        *,
        module: str,
        python: str = sys.executable,
    ) -> Child:
        """Start the child; its stderr goes to ``log_dir/<name>.log``.

        Raises:
            ChildDied: the interpreter could not be started.
        """
        env = dict(os.environ)
        if python != sys.executable:
            # Another interpreter (the pipecat peer's venv) still needs this package.
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        log = log_dir / f"{name}.log"
        with _open_log(log) as stderr:
            try:
                proc = await asyncio.create_subprocess_exec(
                    python,
                    "-m",
                    module,
                    role,
                    json.dumps(spec),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=stderr,
                    env=env,
                    limit=1 << 20,
                )
            except OSError as exc:
                raise ChildDied(f"{name}: cannot start {python}: {exc}") from exc
        return cls(name, proc, log)

    def _tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-3:])[-400:]

    async def read(self, timeout: float) -> dict[str, Any]:
        """The child's next JSON line.

        Raises:
            ChildDied: nothing within ``timeout`` seconds (the child is killed), or it exited.
        """
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), max(timeout, 0.1))
        except TimeoutError:
            self.kill()
            raise ChildDied(f"{self.name}: no answer within {timeout:.0f} s") from None
        if not line:
            self.kill()
            raise ChildDied(f"{self.name} exited: {self._tail() or 'no output'}")
        message: dict[str, Any] = json.loads(line)
        return message

    async def ask(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send ``command`` and return the child's answer.

        Raises:
            ChildDied: see :meth:`read`, or the child is gone.
            StepFailed: the child answered that the command failed.
        """
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(command) + "\n").encode())
            await self.proc.stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            self.kill()
            raise ChildDied(f"{self.name} is gone: {self._tail() or exc}") from None
        reply = await self.read(timeout)
        if not reply.get("ok", False):
            raise StepFailed(f"{self.name}: {command['cmd']}: {reply.get('error', reply)}")
        return reply

    def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    async def stop(self, timeout: float = 15.0) -> None:
        """Ask the child to stop; kill it after ``timeout`` seconds."""
        if self.proc.returncode is None and self.proc.stdin is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                self.proc.stdin.write(b'{"cmd": "stop"}\n')
                await self.proc.stdin.drain()
                self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.kill()
            await self.proc.wait()
