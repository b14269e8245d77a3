"""The ``calls`` pass of ``bench-costs``: function calls per message, by whose code runs.

A round trip runs cold (see ``docs/benchmarks.md``, *Floors, measured*): what
it costs follows how much code and how many objects it touches, so the number
of functions called per message, and whose they are, is the count to set
against the bare library's. :class:`CallCounter` turns cProfile on for a
window and sorts every function it saw called into one kind:

- ``calls_core``: proxy-core's own Python code (the ``proxy_core`` package and
  the ``proxy_core_*`` backends), the benchmark's harness aside;
- ``calls_harness``: the benchmark's workers and bare sides
  (``proxy_core/bench``), which both implementations run;
- ``calls_library``: other installed Python code (``websockets``, ``aiohttp``,
  ``grpc``, ``msgpack``'s fallback...);
- ``calls_stdlib``: the standard library, ``asyncio`` first;
- ``calls_c``: functions written in C called from Python (builtins such as
  ``len`` and ``isinstance``, methods of ``dict``, ``deque``, futures...);
- ``calls_generated``: code compiled at run time (``<string>``: a dataclass's
  ``__init__``, proxy-core's generated field checks).

Read the kinds as "where the call landed", not as totals of a library's
work: code compiled to C (msgpack's packer, gRPC's Cython layer, aiohttp's
frame reader, ``_asyncio``'s futures) counts under ``calls_c``; and cProfile
counts each resumption of a coroutine as a call, so a task's wake-up counts
once for every coroutine in its chain of awaits (``_receive_loop``, the
session's and the proxy's own loops, ``worker._run``). Both implementations
are counted the same way. Only the thread that starts the counter is seen
(gRPC's C core threads run no Python that matters here). Used in the
``bench-costs`` children only.
"""

from __future__ import annotations

import cProfile
import functools
import os
import sysconfig
from collections import Counter
from pathlib import PurePath
from typing import Final

__all__ = ["KINDS", "CallCounter", "kind_of"]

#: The kinds of call, in the order they are reported.
KINDS: Final = (
    "calls_core",
    "calls_harness",
    "calls_library",
    "calls_stdlib",
    "calls_c",
    "calls_generated",
)

_STDLIB: Final = PurePath(sysconfig.get_paths()["stdlib"])


@functools.lru_cache(maxsize=4096)
def kind_of(filename: str) -> str:
    """Return the kind of call (one of :data:`KINDS` but ``calls_c``) of code in ``filename``."""
    if filename.startswith("<"):
        return "calls_stdlib" if filename.startswith("<frozen ") else "calls_generated"
    parts = PurePath(filename).parts
    for index in range(len(parts) - 2, -1, -1):  # the innermost package folder decides
        part = parts[index]
        if part in ("site-packages", "dist-packages"):
            return "calls_library"
        if (part == "proxy_core" or part.startswith("proxy_core_")) and _is_package(
            parts[: index + 1]
        ):
            return "calls_harness" if parts[index + 1 : index + 2] == ("bench",) else "calls_core"
    path = PurePath(filename)
    return "calls_stdlib" if path.is_relative_to(_STDLIB) else "calls_library"


def _is_package(parts: tuple[str, ...]) -> bool:
    """Whether the folder ``parts`` is a Python package (a checkout's folder is not)."""
    return os.path.isfile(os.path.join(*parts, "__init__.py"))


class CallCounter:
    """Count the calls this thread makes between :meth:`start` and :meth:`stop`."""

    def __init__(self) -> None:
        self._profile: cProfile.Profile | None = None

    def start(self) -> None:
        """Begin counting (again, from zero)."""
        self._profile = cProfile.Profile()
        self._profile.enable()

    def stop(self) -> tuple[dict[str, int], dict[str, int]]:
        """Stop; return the calls by kind, and proxy-core's own by function.

        The functions are named ``path:function``, the path from the package
        folder on (``proxy_core/session.py:receive``).
        """
        profile, self._profile = self._profile, None
        if profile is None:
            return {}, {}
        profile.disable()
        kinds: Counter[str] = Counter()
        functions: Counter[str] = Counter()
        for entry in profile.getstats():
            code = entry.code
            if isinstance(code, str):  # a function written in C
                kinds["calls_c"] += entry.callcount
                continue
            kind = kind_of(code.co_filename)
            kinds[kind] += entry.callcount
            if kind == "calls_core":
                functions[f"{_short(code.co_filename)}:{code.co_name}"] += entry.callcount
        return dict(kinds), dict(functions)


def _short(filename: str) -> str:
    """The path of a proxy-core module from its package folder on."""
    parts = PurePath(filename).parts
    for index in range(len(parts) - 2, -1, -1):
        part = parts[index]
        if (part == "proxy_core" or part.startswith("proxy_core_")) and _is_package(
            parts[: index + 1]
        ):
            return "/".join(parts[index:])
    return filename
