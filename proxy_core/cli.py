"""The ``proxy-core`` command: ``demo``, ``bench``, ``bench-load``, ``bench-costs``, ``plugins``,
``schema``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from .errors import ProxyError
from .loops import LOOPS, run
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


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line: the mistake, without the usage."""

    def error(self, message: str) -> NoReturn:
        # The usage would bury the one line that matters; --help shows it on demand.
        self.exit(2, f"{self.prog}: error: {message}\n")


def _preferred(names: Sequence[str], name: str) -> str:
    """Return ``name`` if it is installed, else the first installed name."""
    return name if name in names or not names else names[0]


def _default_transport() -> str:
    return _preferred(available_transports(), "websockets")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="proxy-core", description="Bridge two message buses over a pluggable wire."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="show what crosses and what stays: a proxy over loopback, or (--bus redis) "
        "one Redis bus over two processes",
        description="Show what crosses and what stays. --bus local (the default): both sides "
        "of a proxy in this process, over loopback. --bus redis: the workers in two processes "
        "on one Redis bus, on a throwaway redis-server unless --redis-url is given.",
    )
    demo.add_argument(
        "--bus",
        choices=("local", "redis"),
        default="local",
        help="local: a proxy between two in-process buses; redis: one bus over two processes "
        "(needs proxy-core-redis) (default: %(default)s)",
    )
    transports, codecs = available_transports(), available_codecs()
    # None: not given, so that --bus redis can refuse an explicit --transport.
    demo.add_argument(
        "--transport",
        default=None,
        choices=transports,
        metavar="NAME",
        help=f"with --bus local: the transport, one of the installed {', '.join(transports)} "
        f"(default: {_default_transport()})",
    )
    demo.add_argument(
        "--codec",
        default=_preferred(codecs, "msgpack"),
        choices=codecs,
        metavar="NAME",
        help=f"the codec, on the wire or in Redis, one of the installed {', '.join(codecs)} "
        "(default: %(default)s)",
    )
    demo.add_argument(
        "--redis-url",
        default=None,
        metavar="URL",
        help="with --bus redis: a Redis to use, such as redis://127.0.0.1:6379/0 "
        "(default: start a throwaway redis-server on 127.0.0.1 and a free port)",
    )
    demo.add_argument(
        "--channel",
        default=None,
        metavar="NAME",
        help="with --bus redis: the bus channel; its keys start with pc:{NAME}: "
        "(default: proxy-core-demo)",
    )
    demo.add_argument(
        "--loop",
        default=None,
        choices=LOOPS,
        help="with --bus local: the event loop to run on (default: asyncio; uvloop needs "
        "pip install 'proxy-core[uvloop]')",
    )
    commands.add_parser("plugins", help="list the installed transports, codecs and buses")
    from .bench.command import add_arguments as add_bench_arguments

    bench = commands.add_parser(
        "bench",
        help="measure each transport x codec against its bare library (ratios, same run)",
        description="Measure each transport x codec against its bare library, in the same run; "
        "see benchmarks/README.md.",
    )
    add_bench_arguments(bench)
    from .bench.load_command import add_arguments as add_load_arguments

    load = commands.add_parser(
        "bench-load",
        help="hold many concurrent sessions on one server process, with traffic on each",
        description="Open --sessions sessions to one server process, send --messages on each "
        "and check every echo; report sessions held, messages lost and memory per session. "
        "See docs/load.md.",
    )
    add_load_arguments(load)
    from .bench.costs_command import add_arguments as add_costs_arguments

    costs = commands.add_parser(
        "bench-costs",
        help="count wake-ups, frames, system calls and copies per message, against the bare "
        "library",
        description="Count, per message and per side, event-loop iterations, task steps, "
        "timers, transport messages, system calls (strace) and large copies, through the "
        "proxy and through the bare library. See docs/benchmarks.md.",
    )
    add_costs_arguments(costs)
    from .schema.command import add_arguments as add_schema_arguments

    schema = commands.add_parser(
        "schema",
        help="write a machine-readable description of the wire: AsyncAPI 3.0 or JSON Schema",
        description="Write a description of what crosses the wire, generated from the code: "
        "an AsyncAPI 3.0.0 document of the session protocol, or a JSON Schema of every frame "
        "and registered message type, to generate a peer in another language. "
        "docs/asyncapi.yaml is `proxy-core schema --output docs/asyncapi.yaml`.",
    )
    add_schema_arguments(schema)
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
    """Run the ``proxy-core`` command line; return the exit code.

    A user's mistake ends in one line on stderr: a usage error exits 2 through
    ``SystemExit`` as argparse does, and a :class:`ProxyError` returns 2. Any
    other exception is a bug and keeps its traceback.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.bus == "local" and (args.redis_url is not None or args.channel is not None):
            parser.error("--redis-url and --channel go with --bus redis")
        if args.bus == "redis" and args.transport is not None:
            parser.error("--transport goes with --bus local (the Redis demo has no proxy)")
        if args.bus == "redis" and args.loop is not None:
            parser.error("--loop goes with --bus local (the Redis demo runs its own processes)")
    try:
        if args.command == "plugins":
            return _plugins()
        if args.command == "bench":
            from .bench.command import run_command

            return run_command(args, None if argv is None else list(argv)[1:])
        if args.command == "bench-load":
            from .bench.load_command import run_command as run_load_command

            return run_load_command(args, None if argv is None else list(argv)[1:])
        if args.command == "bench-costs":
            from .bench.costs_command import run_command as run_costs_command

            return run_costs_command(args, None if argv is None else list(argv)[1:])
        if args.command == "schema":
            from .schema.command import run_command as run_schema_command

            return run_schema_command(args)
        if args.bus == "redis":
            from .demo_bus import DEFAULT_CHANNEL, run_bus_demo

            channel = DEFAULT_CHANNEL if args.channel is None else args.channel
            return run_bus_demo(redis_url=args.redis_url, channel=channel, codec=args.codec)
        from .demo import run_demo

        transport = args.transport or _default_transport()
        try:
            return run(run_demo(transport=transport, codec=args.codec), loop=args.loop or "asyncio")
        except TimeoutError:
            print("proxy-core: error: the demo did not complete within 30 s", file=sys.stderr)
            return 1
    except ProxyError as exc:
        print(f"proxy-core: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
