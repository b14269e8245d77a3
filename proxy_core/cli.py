"""The ``proxy-core`` command: ``demo``, ``bench``, ``bench-load``, ``plugins``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from .errors import ProxyError
from .plugins import (
    BUS_GROUP,
    CODEC_GROUP,
    TRANSPORT_GROUP,
    available_buses,
    available_codecs,
    available_transports,
    bus_class,
    load_codec,
    load_transport,
)

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="proxy-core", description="Bridge two message buses over a pluggable wire."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="run both sides over loopback and show what crosses and what is filtered"
    )
    demo.add_argument("--transport", default="websockets", help="transport name")
    demo.add_argument("--codec", default="msgpack", help="codec name")
    commands.add_parser("plugins", help="list the installed transports, codecs and buses")
    from .bench.command import add_arguments as add_bench_arguments

    bench = commands.add_parser(
        "bench",
        help="measure each transport x codec against its bare library (ratios, same run)",
        description="Measure each transport x codec against its bare library, in the same run; "
        "see benchmarks/README.md.",
    )
    add_bench_arguments(bench)
    from .bench.load import add_arguments as add_load_arguments

    load = commands.add_parser(
        "bench-load",
        help="hold many concurrent sessions on one server process, with traffic on each",
        description="Open --sessions sessions to one server process, send --messages on each "
        "and check every echo; report sessions held, messages lost and memory per session. "
        "See docs/load.md.",
    )
    add_load_arguments(load)
    return parser


def _plugins() -> int:
    for title, group, names, load in (
        ("transports", TRANSPORT_GROUP, available_transports(), load_transport),
        ("codecs", CODEC_GROUP, available_codecs(), load_codec),
        ("buses", BUS_GROUP, available_buses(), bus_class),
    ):
        print(f"{title} (entry-point group {group}):")
        for name in names:
            try:
                cls = load(name)
                where = f"{cls.__module__}.{cls.__qualname__}"
            except ProxyError as exc:
                where = f"BROKEN: {exc}"
            print(f"  {name:12} {where}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``proxy-core`` command line; return the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "plugins":
            return _plugins()
        if args.command == "bench":
            from .bench.command import run_command

            return run_command(args, None if argv is None else list(argv)[1:])
        if args.command == "bench-load":
            from .bench.load import run_command as run_load_command

            return run_load_command(args, None if argv is None else list(argv)[1:])
        from .demo import run_demo

        return asyncio.run(run_demo(transport=args.transport, codec=args.codec))
    except ProxyError as exc:
        print(f"proxy-core: error: {exc}", file=sys.stderr)
        return 2
    except TimeoutError:
        print("proxy-core: error: the demo did not complete within 30 s", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
