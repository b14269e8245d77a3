"""proxy-core-redis: one bus shared by many processes and machines, on Redis Streams."""

from __future__ import annotations

from .bus import MIN_REDIS_VERSION, RedisBus, RedisBusError
from .server import RedisServer, RedisServerError, find_redis_server

__all__ = [
    "MIN_REDIS_VERSION",
    "RedisBus",
    "RedisBusError",
    "RedisServer",
    "RedisServerError",
    "find_redis_server",
]
