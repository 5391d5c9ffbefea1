"""Subscribers on their way into channels (:class:`Joins`): in without
losing or repeating a message (the package's docstring tells how).

A join waits until each of its channels is *ready* (subscribed on pub/sub,
its position known); one script then writes this node's counts of them, the
subscriber included, and reads their history after ``since`` and the last
id given out, the *floor*. The subscriber gets the history, then what came
live after the floor, and joins the channels' subscribers once the live
messages pass the floor (those at or below it are in the history).
"""

from __future__ import annotations

import heapq
from typing import Callable, Mapping

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from chloed import frames
from chloed.backends.base import BackendUnavailable, Subscriber
from chloed.backends.redis.census import Census, polling
from chloed.backends.redis.channel import RedisChannel, _Join, _Snapshot
from chloed.backends.redis.keys import ZERO, Key, format_key, parse_key
from chloed.frames import Encoded
from chloed.redact import session_tag

log = Logger(namespace="chloed.backends.redis")  # as before redis.py became a package

#: ``snapshot(names, sinces, counts)``: reads the channels' position and
#: history after ``sinces`` (and writes this node's ``counts`` of them).
Snapshotter = Callable[[list[str], list[str], list[str] | None], Deferred[_Snapshot]]


class Joins:
    """Lets joins into this node's channels.

    :param channels: this node's channels, by name.
    :param census: counts the subscribers that join.
    :param snapshot: reads the channels from Redis.
    :param later: tries a step again a moment later.
    :param connected: whether the command connection is up now.
    :param forget: drops a channel nobody subscribes to or joins any more.
    """

    def __init__(
        self,
        channels: Mapping[str, RedisChannel],
        *,
        census: Census,
        snapshot: Snapshotter,
        later: Callable[..., None],
        connected: Callable[[], bool],
        forget: Callable[[RedisChannel], None],
    ) -> None:
        self._channels = channels
        self._census = census
        self._snapshot = snapshot
        self._later = later
        self._connected = connected
        self._forget = forget

    def try_join(self, join: _Join) -> None:
        """Once its channels are ready: one script writes this node's counts
        of them, the subscriber included (before it is answered, so every
        publish after counts it), and reads the history after ``since``."""
        if join.reading or join.deferred.called or join.floor is not None:
            return
        channels = [self._channels[name] for name in join.names]
        if not all(channel.ready for channel in channels):
            return
        join.reading = True
        names = list(join.names)
        for channel in channels:
            if join.subscriber not in channel.subscribers:
                channel.arriving[join.subscriber] = None
        # A node leaving the census (shutting down) counts nobody any more.
        census = self._census
        counts = [census.count(name) for name in names] if census.counting else None
        if join.since is None:
            self._snapshot(names, [""] * len(names), counts).addCallbacks(
                self._told, self._read_failed, callbackArgs=(join,), errbackArgs=(join,)
            )
            return
        after = parse_key(join.since)
        since = format_key(after) if after is not None else "0-0"
        self._snapshot(names, [since] * len(names), counts).addCallbacks(
            self._read, self._read_failed, callbackArgs=(join, names, after), errbackArgs=(join,)
        )

    def withdraw(self, channel: RedisChannel, subscriber: Subscriber) -> bool:
        """``subscriber`` left ``channel`` on its way in: drop its joins of
        it (a join of several channels goes on with the others); whether
        there was one."""
        found = False
        name = channel.name
        for join in list(channel.joining):
            if join.subscriber is subscriber:
                channel.joining.remove(join)
                join.catching.discard(name)
                if name in join.names and not join.deferred.called:
                    join.names.remove(name)
                    if not join.names:
                        join.deferred.callback(None)
                    else:
                        self.try_join(join)
                found = True
        return found

    def _told(self, snapshot: _Snapshot, join: _Join) -> None:
        """A join without ``since``: Redis counts it; it is in."""
        join.reading = False
        self._census.told(snapshot.fresh)
        if join.deferred.called:
            return
        if not all(self._channels.get(name) is not None and self._channels[name].ready for name in join.names):
            self.try_join(join)  # Redis went away meanwhile: again once it is back
            return
        self._finish(join, None, {})

    def _read(self, snapshot: _Snapshot, join: _Join, names: list[str], after: Key | None) -> None:
        join.reading = False
        self._census.told(snapshot.fresh)
        if join.deferred.called:
            return
        channels = [self._channels.get(name) for name in join.names]
        if not all(channel is not None and channel.ready for channel in channels):
            # Redis went away meanwhile: read again once it is back.
            self.try_join(join)
            return
        if after is not None and after > snapshot.head:
            after = None  # not an id of this cluster
        recovered: dict[str, bool] = {}
        streams = []
        for index, name in enumerate(names):
            if name not in join.names:
                continue  # unsubscribed meanwhile
            retention = self._channels[name].retention
            recovered[name] = after is not None and snapshot.recovered(index, after, retention)
            streams.append([(key, name, id, data) for key, id, data in snapshot.entries(index)])
        missed = [frames.message(name, id, data) for _, name, id, data in heapq.merge(*streams)]
        self._finish(join, snapshot.head, recovered, missed)

    def _read_failed(self, failure: Failure, join: _Join) -> None:
        join.reading = False
        if not failure.check(BackendUnavailable):
            log.failure("redis: reading history failed", failure)
            self._abandon(join, failure)
        elif self._connected():
            self._later(self.try_join, join)
        # else: tried again when the command connection is back

    def _abandon(self, join: _Join, failure: Failure) -> None:
        for name in join.names:
            channel = self._channels.get(name)
            if channel is not None and join in channel.joining:
                channel.joining.remove(join)
                if channel.arrived(join.subscriber):
                    self._census.changed(name)
                self._forget(channel)
        if not join.deferred.called:
            join.deferred.errback(failure)

    def _finish(
        self, join: _Join, floor: Key | None, recovered: dict[str, bool], missed: list[Encoded] | None = None
    ) -> None:
        """The join is in: hand over the history and what came live since,
        and move it to the channels' subscribers (or keep dropping repeats
        until the live messages pass the floor)."""
        out = list(missed or ())
        buffered, join.buffer = join.buffer, []
        for key, frame in buffered:
            if floor is None or key > floor:
                out.append(frame)
        join.floor = floor if floor is not None else ZERO
        for name in join.names:
            channel = self._channels[name]
            position = channel.position()
            caught_up = floor is None or (position is not None and position >= floor)
            if caught_up:
                self._promote(join, channel)
            else:
                join.catching.add(name)
        join.deferred.callback((recovered, out))

    def _promote(self, join: _Join, channel: RedisChannel) -> None:
        if join in channel.joining:
            channel.joining.remove(join)
        join.catching.discard(channel.name)
        counted = channel.arrived(join.subscriber)  # then Redis has it already
        if join.subscriber not in channel.subscribers:
            channel.subscribers[join.subscriber] = None
            if polling(join.subscriber):
                channel.polling += 1
            if not counted:
                self._census.changed(channel.name)

    def offer(self, join: _Join, channel: RedisChannel, key: Key, frame: Encoded, exclude: str | None) -> None:
        """A live message of ``channel`` (``key`` its id) for a join on its
        way in: kept until the history is read, dropped at or below the
        floor; the first one above lets the join into the channel."""
        if exclude is not None and join.subscriber.id == exclude:
            if join.floor is not None and key > join.floor:
                self._promote(join, channel)
            return
        if join.floor is None:
            join.buffer.append((key, frame))
            return
        if key > join.floor:
            self._promote(join, channel)
            try:
                join.subscriber.deliver(frame)
            except Exception:
                log.failure("delivery to {session} failed", session=session_tag(join.subscriber.id))
