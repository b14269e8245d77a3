from __future__ import annotations

import pathlib
import sys
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from proxy_core.testing._raw import Probe
    from proxy_core.transport import Listener, Transport
    from proxy_core_redis.server import RedisServer

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from _plugins import install_test_plugins  # noqa: E402 - needs the line above

# The test-only plug-ins (the third-party example codec ``zjson``) are visible to
# this test run alone, and to the processes it starts: never installed in .venv.
install_test_plugins()


@pytest.fixture
async def probe() -> Probe:
    """A server's connection handler that echoes and records what it saw."""
    from proxy_core.testing._raw import Probe

    return Probe()


@pytest.fixture
async def echo_server(transport: Transport, probe: Probe) -> AsyncIterator[Listener]:
    """The test module's ``transport`` serving ``probe.echo`` on 127.0.0.1 (port 0, ``/proxy``)."""
    url = f"{transport.schemes[0]}://127.0.0.1:0/proxy"
    async with transport.serve(url, probe.echo) as listener:
        yield listener


# The Redis fixtures import proxy_core_redis.server only when used, so the rest of
# the suite runs without it. Each server is private: 127.0.0.1 on a free port,
# never the machine's own Redis on 6379.


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server shared by the whole session, without persistence."""
    from proxy_core_redis.server import RedisServer

    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the session's redis-server (its data is shared between tests)."""
    return redis_server.url


@pytest.fixture
def fresh_redis_server() -> Iterator[RedisServer]:
    """A redis-server of the test's own, free to be killed or restarted."""
    from proxy_core_redis.server import RedisServer

    with RedisServer() as server:
        yield server


@pytest.fixture
def persistent_redis_server() -> Iterator[RedisServer]:
    """A redis-server of the test's own whose data survives a restart (even a SIGKILL)."""
    from proxy_core_redis.server import RedisServer

    with RedisServer(persistence=True) as server:
        yield server
