"""Which event loop a program runs on: asyncio's own, or uvloop where it is installed.

uvloop is optional (``pip install 'proxy-core[uvloop]'``), never required:
nothing in proxy-core imports it unless asked for by name here. The standard
ways work as they are (``uvloop.run(main())``, or
``asyncio.Runner(loop_factory=uvloop.new_event_loop)``); :func:`run` is the
same with the loop chosen by a name, for a command-line option or a setting,
and an error that names the extra when uvloop is missing.
"""

from __future__ import annotations

import asyncio
import platform
from collections.abc import Callable, Coroutine
from importlib import metadata
from typing import Any, Final, TypeVar

from .errors import ConfigurationError

__all__ = ["LOOPS", "loop_factory", "loop_name", "loop_version", "run"]

#: The event loops a program can be asked to run on, by name.
LOOPS: Final = ("asyncio", "uvloop")

#: What to install for uvloop, as the errors say.
UVLOOP_HINT: Final = "pip install 'proxy-core[uvloop]'"

T = TypeVar("T")


def loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Return the factory of ``loop``'s event loops (``None``: asyncio's default).

    Args:
        loop: a name from :data:`LOOPS`.

    Raises:
        ConfigurationError: ``loop`` is not one of :data:`LOOPS`, or it is
            ``"uvloop"`` and uvloop cannot be imported (the message names the extra).
    """
    if loop == "asyncio":
        return None
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError as exc:
            raise ConfigurationError(f"uvloop is not installed ({UVLOOP_HINT})") from exc
        return uvloop.new_event_loop
    raise ConfigurationError(f"loop must be one of {', '.join(LOOPS)}, got {loop!r}")


def loop_version(loop: str) -> str | None:
    """Return the version of ``loop``'s library (Python's for asyncio), or None if missing."""
    if loop == "asyncio":
        return platform.python_version()
    if loop != "uvloop":
        return None
    try:
        return metadata.version("uvloop")
    except metadata.PackageNotFoundError:
        return None


def loop_name(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """Name the class of ``loop`` (default: the running loop), such as ``uvloop.Loop``."""
    kind = type(loop if loop is not None else asyncio.get_running_loop())
    return f"{kind.__module__}.{kind.__qualname__}"


def run(main: Coroutine[Any, Any, T], *, loop: str = "asyncio") -> T:
    """Run ``main`` to completion on a new event loop of kind ``loop``, as ``asyncio.run`` does.

    Args:
        main: the coroutine to run (a runner's ``main()``).
        loop: ``"asyncio"`` (the default) or ``"uvloop"``.

    Raises:
        ConfigurationError: see :func:`loop_factory`; ``main`` is closed unrun.
    """
    try:
        factory = loop_factory(loop)
    except ConfigurationError:
        main.close()  # never started: no "coroutine was never awaited" warning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
