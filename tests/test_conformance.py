"""The conformance kit, run for every installed transport, times every installed codec.

Transports and codecs are found by name through their entry points, exactly as a
user's would be: a backend (``proxy-core-aiohttp``, ``proxy-core-grpc``...) or a
codec (``proxy-core-example-codec``) joins the matrix by being installed. One
class per transport is generated below (``TestTransport_websockets``...); select
one with ``-k websockets``, or one codec with ``-k "zjson"``.

An entry point that does not load (its package is gone or broken) is left out of
the matrix and reported as a skipped test, as is a transport of this repository
that is not installed.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from proxy_core import Codec, Transport
from proxy_core.errors import PluginError
from proxy_core.plugins import available_codecs, available_transports, load_codec, load_transport
from proxy_core.protocol import Msg
from proxy_core.testing.contracts import CodecContract, TransportContract

#: The transports and codecs this repository ships (the third-party example included).
SHIPPED_TRANSPORTS = ("aiohttp", "grpc", "memory", "websockets")
SHIPPED_CODECS = ("json", "msgpack", "protobuf", "zjson")
EXAMPLE_CODEC = "zjson"
EXAMPLE_INSTALL = "pip install -e tests/thirdparty_codec"


def _split(names: list[str], load: Callable[[str], type]) -> tuple[list[str], dict[str, str]]:
    """Return the names that load, and why each of the others does not."""
    loaded: list[str] = []
    broken: dict[str, str] = {}
    for name in names:
        try:
            load(name)
        except PluginError as exc:
            broken[name] = str(exc)
        else:
            loaded.append(name)
    return loaded, broken


TRANSPORTS, BROKEN_TRANSPORTS = _split(available_transports(), load_transport)
CODECS, BROKEN_CODECS = _split(available_codecs(), load_codec)

for _name in TRANSPORTS:
    _cls = type(
        f"TestTransport_{_name}",
        (TransportContract,),
        {
            "__module__": __name__,
            "__doc__": f"The conformance kit for transport {_name!r}, with {', '.join(CODECS)}.",
            "transport": _name,
            "codecs": tuple(CODECS),
        },
    )
    globals()[_cls.__name__] = _cls
del _name, _cls


class TestCodecs(CodecContract):
    """The pure codec contracts for every installed codec."""

    codecs = tuple(CODECS)


def _missing() -> list[tuple[str, str, str]]:
    """(kind, name, why) of each shipped plug-in that is not in the matrix."""
    missing = [("transport", n, why) for n, why in BROKEN_TRANSPORTS.items()]
    missing += [("codec", n, why) for n, why in BROKEN_CODECS.items()]
    for kind, shipped, found in (
        ("transport", SHIPPED_TRANSPORTS, available_transports()),
        ("codec", SHIPPED_CODECS, available_codecs()),
    ):
        missing += [(kind, n, "not installed") for n in shipped if n not in found]
    return missing


@pytest.mark.parametrize(
    ("kind", "name", "why"),
    _missing() or [pytest.param("-", "-", "-", marks=pytest.mark.skip(reason="none missing"))],
)
def test_left_out_of_the_matrix(kind: str, name: str, why: str) -> None:
    """Make every shipped plug-in that is not tested visible in the report."""
    hint = f"; {EXAMPLE_INSTALL}" if name == EXAMPLE_CODEC else ""
    pytest.skip(f"{kind} {name!r} is not in the conformance matrix: {why}{hint}")


def test_the_matrix_has_a_class_per_loadable_transport() -> None:
    for name in TRANSPORTS:
        cls = globals()[f"TestTransport_{name}"]
        assert issubclass(cls, TransportContract) and cls.transport == name
        assert tuple(cls.codecs) == tuple(CODECS)
    assert "memory" in TRANSPORTS, "proxy-core itself ships the memory transport"
    assert {"json", "msgpack"} <= set(CODECS)


def test_example_codec_is_found_by_name() -> None:
    """The third-party example codec is found through its own distribution's entry point."""
    if EXAMPLE_CODEC not in available_codecs():
        pytest.skip(f"the example codec is not installed: {EXAMPLE_INSTALL}")
    cls = load_codec(EXAMPLE_CODEC)
    assert issubclass(cls, Codec) and cls.name == EXAMPLE_CODEC
    assert cls.__module__ == "proxy_core_example_codec.codec"
    assert EXAMPLE_CODEC in CODECS  # so every transport runs the kit with it
    from proxy_core import BusFrameMessage, TextFrame

    codec = cls()
    envelope = Msg(1, BusFrameMessage("acme", "assistant", TextFrame("hello " * 50)))
    data = codec.encode(envelope)
    assert len(data) < len(load_codec("json")().encode(envelope))  # it does compress
    assert codec.decode(data) == envelope


def test_transports_in_the_matrix_are_transports() -> None:
    for name in TRANSPORTS:
        cls = load_transport(name)
        assert issubclass(cls, Transport) and cls.name == name and cls.schemes
