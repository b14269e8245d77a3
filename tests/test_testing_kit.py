"""The conformance kit as a product: its imports, its public API, its pytest plugin.

The pytester runs are separate pytest sessions in a temporary directory, set up
the way a third party's would be (pytest-asyncio in *strict* mode, strict markers,
warnings as errors), so they show the kit works outside this repository's config.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

# The pytester runs are in-process, and pytester unloads after each run the
# modules first imported during it. cryptography (behind trustme, which the
# TLS contracts use) cannot be loaded twice in one process: imported here
# first, it stays, and a TLS test run after this file still works.
import trustme  # noqa: F401

import proxy_core.testing

pytest_plugins = ["pytester"]

STRICT_INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
addopts = --strict-markers -p no:cacheprovider
filterwarnings = error
"""


def test_importing_the_kit_does_not_import_pytest() -> None:
    code = (
        "import sys, proxy_core.testing as t; "
        "assert t.MemoryTransport and t.FaultRelay; "
        "assert 'pytest' not in sys.modules and '_pytest' not in sys.modules, 'pytest imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_public_api_is_locked() -> None:
    assert set(proxy_core.testing.__all__) == {
        "BusContract",
        "CodecContract",
        "Direction",
        "FaultRelay",
        "MemoryConnection",
        "MemoryListener",
        "MemoryTransport",
        "TransportContract",
        "per_codec",
        "served_names",
    }
    for name in proxy_core.testing.__all__:
        assert getattr(proxy_core.testing, name) is not None, name
    from proxy_core.testing.contracts import TransportContract

    assert proxy_core.testing.TransportContract is TransportContract
    from proxy_core.testing.contracts_bus import BusContract

    assert proxy_core.testing.BusContract is BusContract


def test_the_plugin_is_registered_and_adds_no_options(pytestconfig: pytest.Config) -> None:
    plugin = pytestconfig.pluginmanager.get_plugin("proxy_core")
    assert plugin is not None and plugin.__name__ == "proxy_core.testing.plugin"
    markers = "\n".join(pytestconfig.getini("markers"))
    assert "proxy_core(transport=None, codec=None)" in markers
    assert "proxy_core_contract" in markers
    options = [o for group in pytestconfig._parser._groups for o in group.options]
    assert not [o for o in options if "proxy" in " ".join(o.names())]


def test_a_third_party_suite_runs_the_kit_by_name(pytester: pytest.Pytester) -> None:
    pytester.makeini(STRICT_INI)
    pytester.makepyfile(
        test_backend="""
        from proxy_core.testing.contracts import CodecContract, TransportContract

        class TestMemoryBackend(TransportContract):
            transport = "memory"
            codecs = ("json", "msgpack")

        class TestJson(CodecContract):
            codecs = ("json",)
        """
    )
    result = pytester.runpytest(
        "-k", "handshake or frames_cross or outbound or round_trips or vanishing", "-rs"
    )
    result.assert_outcomes(passed=6, skipped=2)
    result.stdout.fnmatch_lines(["*is not TCP*"])


def test_a_third_party_suite_runs_the_bus_contract(pytester: pytest.Pytester) -> None:
    pytester.makeini(STRICT_INI)
    pytester.makepyfile(
        test_bus="""
        from proxy_core import BaseBus, InProcessBus
        from proxy_core.testing import BusContract

        class TestMyBus(BusContract):
            shared = False

            async def make_bus(self) -> BaseBus:
                return InProcessBus()

        class TestForgotTheFactory(BusContract):
            pass
        """
    )
    result = pytester.runpytest("-k", "TestMyBus or five_hundred", "-rs")
    result.assert_outcomes(passed=8, skipped=1, failed=1)
    result.stdout.fnmatch_lines(["*must override*make_bus*", "*is not shared*"])


def test_fixtures_resolve_from_markers_and_fail_clearly_without_a_transport(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(STRICT_INI)
    pytester.makepyfile(
        test_fixtures="""
        import pytest
        from proxy_core.testing import MemoryTransport

        @pytest.mark.proxy_core(transport="memory", codec="json")
        def test_marker(proxy_core_transport, proxy_core_codec, serve_url):
            assert isinstance(proxy_core_transport, MemoryTransport)
            assert proxy_core_codec.name == "json"
            assert serve_url == "memory://127.0.0.1:0/ws"

        def test_default_codec(proxy_core_codec):
            assert proxy_core_codec.name == "msgpack"

        def test_no_transport(proxy_core_transport):
            pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*no transport to test*"])


def test_the_leak_check_fails_a_test_that_leaves_a_task(pytester: pytest.Pytester) -> None:
    pytester.makeini(STRICT_INI)
    pytester.makepyfile(
        test_leak="""
        import asyncio
        import pytest

        @pytest.mark.asyncio
        @pytest.mark.usefixtures("proxy_core_no_leaked_tasks")
        async def test_leaks():
            asyncio.get_running_loop().create_task(asyncio.Event().wait(), name="the-leak")
        """
    )
    result = pytester.runpytest("-o", "filterwarnings=ignore")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*leaked tasks*the-leak*"])


def test_suites_that_do_not_use_the_plugin_see_no_difference(pytester: pytest.Pytester) -> None:
    pytester.makeini(STRICT_INI)
    pytester.makepyfile(
        test_plain="""
        def test_fixtures(request):
            print("FIXTURES", sorted(request.fixturenames))
        """
    )
    with_plugin = pytester.runpytest("-s")
    without = pytester.runpytest("-s", "-p", "no:proxy_core")
    with_plugin.assert_outcomes(passed=1)
    without.assert_outcomes(passed=1)

    def fixtures(result: pytest.RunResult) -> list[str]:
        return [s[s.index("FIXTURES") :] for s in result.outlines if "FIXTURES" in s]

    assert fixtures(with_plugin) == fixtures(without)
    assert len(fixtures(with_plugin)) == 1 and "proxy" not in fixtures(with_plugin)[0]


def test_a_third_party_suite_runs_the_tls_contracts(pytester: pytest.Pytester) -> None:
    """The TLS contracts come with ``TransportContract``, run once per transport (not per
    codec), and skip a transport that declares ``supports_tls = False``, saying so."""
    pytest.importorskip(
        "trustme",
        reason="trustme is not installed: the TLS tests make their certificates "
        "with it (python3 scripts/dev.py test installs it)",
    )
    pytest.importorskip(
        "proxy_core_websockets",
        reason="proxy-core-websockets is not installed here "
        "(python3 scripts/dev.py test installs it)",
    )
    pytester.makeini(STRICT_INI)
    pytester.makepyfile(
        test_backend="""
        from proxy_core.testing.contracts import TransportContract

        class TestWebSockets(TransportContract):
            transport = "websockets"
            codecs = ("json", "msgpack")

        class TestMemory(TransportContract):
            transport = "memory"
        """
    )
    result = pytester.runpytest("-k", "tls", "-rs")
    result.assert_outcomes(passed=5, skipped=5)
    result.stdout.fnmatch_lines(["*transport 'memory' declares supports_tls = False*"])
