"""proxy-core-redis: one bus shared by many processes and machines, on Redis Streams."""

from __future__ import annotations

__all__: list[str] = []
