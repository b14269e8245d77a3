"""The conformance kit, run for every installed transport, times every installed codec.

Transports and codecs are found by name through their entry points, exactly as a
user's would be: a backend (``proxy-core-aiohttp``, ``proxy-core-grpc``...) or a
codec (``proxy-core-example-codec``) joins the matrix by being installed. One
class per transport is generated below (``TestTransport_websockets``...); select
one with ``-k websockets``, or one codec with ``-k "zjson"``.

An entry point that does not load (its package is gone or broken) is left out of
the matrix, as is a plug-in of this repository that is not installed: in CI that
fails ``test_every_shipped_plugin_is_in_the_matrix``, elsewhere it skips, naming
what is left out. The example codec is never installed: the test run makes it
visible to itself alone (tests/_plugins.py).
"""

from __future__ import annotations

import os
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


def test_every_shipped_plugin_is_in_the_matrix() -> None:
    """Every transport and codec of this repository is tested here, or the report says why.

    The README's test command installs them all, so there (and in CI) a missing
    one fails. A partial install elsewhere skips this test, naming what is left out.
    """
    missing = [f"{kind} {name!r} ({why})" for kind, name, why in _missing()]
    if missing and not os.environ.get("CI"):
        pytest.skip(
            "left out of the conformance matrix because not installed or broken here: "
            + "; ".join(missing)
            + " (python3 scripts/dev.py test installs them all)"
        )
    assert not missing, f"left out of the conformance matrix: {'; '.join(missing)}"


def test_the_matrix_has_a_class_per_loadable_transport() -> None:
    for name in TRANSPORTS:
        cls = globals()[f"TestTransport_{name}"]
        assert issubclass(cls, TransportContract) and cls.transport == name
        assert tuple(cls.codecs) == tuple(CODECS)
    assert "memory" in TRANSPORTS, "proxy-core itself ships the memory transport"
    assert {"json", "msgpack"} <= set(CODECS)


def test_example_codec_is_found_by_name() -> None:
    """The third-party example codec is found through its own distribution's entry point.

    The test run makes it visible to itself (tests/_plugins.py); it is never installed.
    """
    assert EXAMPLE_CODEC in available_codecs()
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
