"""The Redis keys of one channel, and the stream entry IDs: pure functions of data.

Every key of a channel starts with ``pc:{<channel>}:``. The braces make the
channel a Redis Cluster *hash tag*: all the keys of a channel live in one hash
slot, so the bus's multi-key scripts work on a cluster as on one server.

=======================  ======  ==================================================
key                      type    what it holds
=======================  ======  ==================================================
``w:<name>``             stream  messages for worker ``name`` (group ``g``, one
                                 consumer: the runner that holds the name)
``n:<node>``             stream  broadcasts and registry news for one runner
``lease:<name>``         string  who holds ``name``: node, runner, backlog limit,
                                 overflow policy; expires unless renewed
``alive:<node>``         string  a runner's presence; expires unless renewed
``nodes``                hash    node -> runner name, codec (the live runners)
``ready``                hash    worker name -> node, runner, remote, via
``seq``                  hash    node -> its last write batch and the result
                                 (a retried batch is answered, not applied again)
``orphans``              hash    worker name -> since when its stream has waited
                                 for a holder (dropped after the orphan ttl)
=======================  ======  ==================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NewType

from proxy_core.errors import ConfigurationError

__all__ = ["GROUP", "EntryId", "Keys", "NodeId", "after", "parse_id"]

#: The consumer group of every stream.
GROUP = "g"

#: A runner's identity on a channel: its name and a random suffix, new each start.
NodeId = NewType("NodeId", str)

#: A stream entry ID as a pair ``(milliseconds, sequence)``, comparable.
EntryId = tuple[int, int]


@dataclass(frozen=True)
class Keys:
    """The key names of one channel.

    Raises:
        ConfigurationError: the channel name is empty or holds a brace or a
            character that would split the hash tag.
    """

    channel: str

    def __post_init__(self) -> None:
        channel = self.channel
        if not isinstance(channel, str) or not channel:
            raise ConfigurationError(f"channel must be a non-empty string, got {channel!r}")
        if any(c in channel for c in "{}\r\n\0"):
            raise ConfigurationError(
                f"channel {channel!r} may not contain braces, line breaks or NUL "
                "(it becomes the Redis Cluster hash tag of the channel's keys)"
            )

    @property
    def prefix(self) -> str:
        """What every key of the channel starts with."""
        return f"pc:{{{self.channel}}}:"

    def stream(self, name: str) -> str:
        """The stream of messages for worker ``name``."""
        return f"{self.prefix}w:{name}"

    def node_stream(self, node: str) -> str:
        """The stream of broadcasts and registry news for runner ``node``."""
        return f"{self.prefix}n:{node}"

    def lease(self, name: str) -> str:
        """The lease of worker name ``name``."""
        return f"{self.prefix}lease:{name}"

    def alive(self, node: str) -> str:
        """The presence key of runner ``node``."""
        return f"{self.prefix}alive:{node}"

    @property
    def nodes(self) -> str:
        """The hash of live runners."""
        return f"{self.prefix}nodes"

    @property
    def ready(self) -> str:
        """The hash of ready workers."""
        return f"{self.prefix}ready"

    @property
    def orphans(self) -> str:
        """The hash of streams that no runner holds, and since when."""
        return f"{self.prefix}orphans"

    @property
    def seq(self) -> str:
        """The hash of each runner's last write batch."""
        return f"{self.prefix}seq"

    def name_of_stream(self, key: str) -> str | None:
        """Return the worker name of a worker stream key, or ``None`` for another key."""
        head = f"{self.prefix}w:"
        return key[len(head) :] if key.startswith(head) else None


def parse_id(raw: bytes | str) -> EntryId:
    """Parse a stream entry ID (``b"1700000000000-3"``) into a comparable pair.

    Raises:
        ValueError: not an entry ID.
    """
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def after(entry: EntryId) -> str:
    """The smallest entry ID greater than ``entry``, as Redis writes it (for ``XTRIM MINID``)."""
    return f"{entry[0]}-{entry[1] + 1}"
