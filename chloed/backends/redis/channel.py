"""The broker's state per channel (:class:`RedisChannel`) and per join on its
way in (:class:`_Join`), what a channel's history keeps (:class:`Retention`),
and :data:`SNAPSHOT_SCRIPT`'s reply (:class:`_Snapshot`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from chloed.backends.base import Policy, Subscriber
from chloed.backends.memory import Channel
from chloed.backends.redis.census import polling
from chloed.backends.redis.keys import ZERO, Key, parse_key
from chloed.frames import Encoded


@dataclass(frozen=True, slots=True)
class Retention:
    """What a channel's history keeps in Redis, as its policy says:
    ``size`` messages, each for ``ttl_ms``."""

    size: int
    ttl_ms: int

    @classmethod
    def of(cls, policy: Policy, name: str) -> "Retention":
        size, ttl = policy(name)
        return cls(int(size), int(ttl * 1000))

    @property
    def keeps(self) -> bool:
        """Whether the history keeps anything."""
        return self.size > 0 and self.ttl_ms > 0


#: A channel made without its policy (a test's): its history keeps nothing.
KEEPS_NOTHING = Retention(0, 0)


class _Snapshot:
    """What :data:`SNAPSHOT_SCRIPT` answered (``fresh``: whether the node
    was alive in the census when a join told Redis its counts)."""

    __slots__ = ("now_ms", "head", "fresh", "streams")

    def __init__(self, reply: list[Any]) -> None:
        self.now_ms = int(reply[0])
        self.head: Key = (int(reply[1]), int(reply[2]))
        self.fresh = bool(int(reply[3]))
        self.streams = reply[4:]

    def recovered(self, index: int, after: Key, retention: Retention) -> bool:
        """Whether stream ``index`` holds everything published after ``after``
        (the memory broker's rule, on what Redis says it trimmed), the
        stream keeping what ``retention`` says."""
        if after > self.head:
            return False
        unexpired = retention.keeps and after[0] >= self.now_ms - retention.ttl_ms
        stream = self.streams[index]
        if not stream[0]:
            return unexpired or after >= self.head
        deleted = parse_key(stream[1]) or ZERO
        first = parse_key(stream[2]) or ZERO
        ok = after >= deleted
        if after < first and deleted == ZERO:
            # Before the first message of this life of the stream: an older
            # life may have expired, unless too little time has passed.
            ok = ok and unexpired
        return ok

    def entries(self, index: int) -> list[tuple[Key, str, bytes]]:
        """``(key, id, data)`` of stream ``index``, in order."""
        stream = self.streams[index]
        if not stream[0]:
            return []
        out = []
        for raw_id, fields in stream[3]:
            key = parse_key(raw_id)
            if key is None:
                continue
            data = fields[1] if len(fields) >= 2 else b"null"
            out.append((key, raw_id.decode("ascii"), data))
        return out


class _Join:
    """A subscriber on its way into one or more channels.

    While the channels are not ready, or their history is being read, live
    messages are kept in ``buffer``; once read, ``floor`` is the last id given
    out when the history was read, and live messages at or below it (already
    in the history) are dropped until one above it comes.
    """

    __slots__ = ("subscriber", "names", "since", "buffer", "floor", "deferred", "reading", "catching")

    def __init__(self, subscriber: Subscriber, names: list[str], since: str | None) -> None:
        self.subscriber = subscriber
        self.names = names
        self.since = since
        self.buffer: list[tuple[Key, Encoded]] = []
        self.floor: Key | None = None
        self.deferred: Deferred[Any] = Deferred()
        self.reading = False
        # channels read, whose live messages are still at or below the floor
        self.catching: set[str] = set()


class RedisChannel(Channel):
    """A channel of this node: its subscribers, and its state towards Redis.

    :ivar confirmed: Redis confirmed the pub/sub subscription.
    :ivar ready: and this node knows the last id it has (``cursor``):
        subscribers may join.
    :ivar buffer: live messages held for the subscribers while the channel
        is read again after Redis came back.
    :ivar arriving: subscribers whose join has told Redis its counts but
        which are not among ``subscribers`` yet: counted already.
    :ivar retention: what its history keeps (its policy's, asked once).
    """

    __slots__ = (
        "joining", "confirmed", "ready", "subscribing", "checking", "cursor", "buffer", "polling", "arriving",
        "retention",
    )

    def __init__(self, name: str, retention: Retention = KEEPS_NOTHING) -> None:
        super().__init__(name, 0, retention.size, retention.ttl_ms / 1000)
        self.retention = retention
        self.joining: list[_Join] = []
        self.arriving: dict[Subscriber, None] = {}
        # how many of the subscribers poll (for receipts: queued, not delivered)
        self.polling = 0
        self.confirmed = False
        self.ready = False
        self.subscribing = False
        self.checking = False
        self.cursor: Key | None = None
        self.buffer: list[tuple[Key, str, bytes, str | None]] | None = None

    def counts(self) -> tuple[int, int]:
        """``(streaming, polling)`` subscribers here for the census: those
        in, and those arriving (a count written while one is on its way in
        must not drop it)."""
        streaming, pollers = len(self.subscribers) - self.polling, self.polling
        for subscriber in self.arriving:
            if subscriber not in self.subscribers:
                if polling(subscriber):
                    pollers += 1
                else:
                    streaming += 1
        return streaming, pollers

    def arrived(self, subscriber: Subscriber) -> bool:
        """``subscriber`` is no longer arriving (in, or gone); whether it was."""
        return self.arriving.pop(subscriber, False) is None

    def delivering(self) -> bool:
        """Whether someone here already gets the channel's live messages
        (a subscriber, or a join past its history)."""
        return bool(self.subscribers) or any(join.floor is not None for join in self.joining)

    def position(self) -> Key | None:
        """The last id this node has for the channel."""
        last = parse_key(self.last_id)
        if last is None:
            return self.cursor
        if self.cursor is None:
            return last
        return max(last, self.cursor)
