"""The pub/sub subscription of each of this node's channels
(:class:`ChannelSubscriptions`), and the catch-up once it is back.

A channel is subscribed on pub/sub as it is made, and again whenever the
pub/sub connection comes back. Once Redis confirms, the channel is *checked*:
its position is read (and, after Redis came back, what its subscribers
missed meanwhile is delivered before the live messages held); then it is
*ready* and joins may go in. A check begun on a pub/sub connection lost
before it ended is begun again on the new one: what it read may predate
messages the old connection dropped.
"""

from __future__ import annotations

from typing import Any, Callable

import txredisapi
from twisted.logger import Logger
from twisted.python.failure import Failure

from chloed.backends.base import BackendUnavailable
from chloed.backends.redis.channel import RedisChannel, Retention, _Join, _Snapshot
from chloed.backends.redis.joins import Snapshotter
from chloed.backends.redis.keys import ZERO, format_key, parse_key
from chloed.backends.redis.link import RedisLink, ignore
from chloed.backends.redis.presence import RedisPresence

log = Logger(namespace="chloed.backends.redis")  # as before redis.py became a package


class ChannelSubscriptions:
    """Keeps this node's channels subscribed on pub/sub and read up to date.

    :param channels: this node's channels, by name (made here).
    :param link: the node's connections to Redis.
    :param pubsub: the prefix of the pub/sub channels.
    :param connected: whether the command connection is up now.
    :param snapshot: reads the channels from Redis.
    :param deliver: ``deliver(channel, id, data, exclude)``: one message of
        a channel to its subscribers.
    :param try_join: lets a join in if its channels are ready.
    :param presence: the node's presence, None while it has none.
    :param retention: what a channel's history keeps (its policy's).
    """

    def __init__(
        self,
        channels: dict[str, RedisChannel],
        *,
        link: RedisLink,
        pubsub: str,
        connected: Callable[[], bool],
        snapshot: Snapshotter,
        deliver: Callable[[RedisChannel, str, bytes, str | None], None],
        try_join: Callable[[_Join], None],
        presence: Callable[[], RedisPresence | None],
        retention: Callable[[str], Retention],
    ) -> None:
        self._channels = channels
        self._link = link
        self._prefix = pubsub + "c:"
        self._connected = connected
        self._snapshot = snapshot
        self._deliver = deliver
        self._try_join = try_join
        self._presence = presence
        self._retention = retention

    def channel(self, name: str) -> RedisChannel:
        """The channel ``name`` of this node, made and subscribed if new."""
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = RedisChannel(name, self._retention(name))
            self.subscribe(channel)
        return channel

    def subscribed_again(self) -> None:
        """The pub/sub connection is (back) up: subscribe every channel."""
        for channel in list(self._channels.values()):
            self.subscribe(channel)

    def lost(self) -> None:
        """The pub/sub connection went."""
        for channel in self._channels.values():
            # Read again, once subscribed again, after the last id delivered
            # live; joins still dropping repeats go on dropping them.
            channel.confirmed = channel.ready = channel.subscribing = False

    def subscribe(self, channel: RedisChannel) -> None:
        """Subscribe ``channel`` on pub/sub, unless it is or is on its way."""
        proto = self._link.subscriptions
        if proto is None or channel.subscribing or channel.confirmed:
            return
        if self._channels.get(channel.name) is not channel:
            return  # forgotten meanwhile
        channel.subscribing = True
        self._link.subscribe([self._prefix + channel.name]).addCallbacks(
            self._confirmed, self._subscribe_failed, callbackArgs=(channel, proto), errbackArgs=(channel,)
        )

    def unsubscribe(self, channel: RedisChannel) -> None:
        """``channel`` was forgotten: leave it on pub/sub if subscribed."""
        if channel.confirmed or channel.subscribing:
            self._link.unsubscribe([self._prefix + channel.name]).addErrback(ignore)

    def _confirmed(self, _: Any, channel: RedisChannel, proto: Any) -> None:
        if self._channels.get(channel.name) is not channel or self._link.subscriptions is not proto:
            return
        channel.subscribing = False
        channel.confirmed = True
        if channel.delivering():
            channel.buffer = []
        self.check(channel)

    def _subscribe_failed(self, failure: Failure, channel: RedisChannel) -> None:
        channel.subscribing = False
        if self._link.subscriptions is not None:
            self._link.later(self.subscribe, channel)
        if not failure.check(BackendUnavailable, txredisapi.ConnectionError):
            log.failure("redis: subscribing to {channel} failed", failure, channel=channel.name)

    def check(self, channel: RedisChannel) -> None:
        """Once subscribed: learn the channel's position (and, after Redis
        came back, deliver what its subscribers missed), then let joins in."""
        if not channel.confirmed or channel.ready or channel.checking or not self._connected():
            return
        if self._channels.get(channel.name) is not channel:
            return
        channel.checking = True
        position = channel.position()
        since = format_key(position) if position is not None and channel.delivering() else ""
        proto = self._link.subscriptions
        self._snapshot([channel.name], [since], None).addCallbacks(
            self._checked, self._check_failed, callbackArgs=(channel, since, proto), errbackArgs=(channel,)
        )

    def _checked(self, snapshot: _Snapshot, channel: RedisChannel, since: str, proto: Any) -> None:
        channel.checking = False
        if self._channels.get(channel.name) is not channel or not channel.confirmed:
            return
        if self._link.subscriptions is not proto:
            self.check(channel)  # subscribed again meanwhile: read again
            return
        floor = snapshot.head
        position = channel.position()
        buffered, channel.buffer = channel.buffer or [], None
        if since:
            after = parse_key(since) or ZERO
            if not snapshot.recovered(0, after, channel.retention):
                log.warn("redis: some messages of {channel} were lost while Redis was away", channel=channel.name)
            for key, id, data in snapshot.entries(0):
                self._deliver(channel, id, data, None)
            for key, id, data, exclude in buffered:
                if key > floor:
                    self._deliver(channel, id, data, exclude)
        channel.cursor = floor if position is None else max(floor, position)
        presence = self._presence()
        if presence is not None and presence.is_presence(channel.name):
            channel.checking = True
            presence.load(channel.name).addCallbacks(
                self._loaded, self._check_failed, callbackArgs=(channel, proto), errbackArgs=(channel,)
            )
            return
        self._now_ready(channel)

    def _loaded(self, _: Any, channel: RedisChannel, proto: Any) -> None:
        channel.checking = False
        if self._channels.get(channel.name) is not channel or not channel.confirmed:
            return
        if self._link.subscriptions is not proto:
            self.check(channel)  # subscribed again meanwhile: read again
            return
        self._now_ready(channel)

    def _now_ready(self, channel: RedisChannel) -> None:
        channel.ready = True
        for join in list(channel.joining):
            self._try_join(join)

    def _check_failed(self, failure: Failure, channel: RedisChannel) -> None:
        channel.checking = False
        if self._connected():
            self._link.later(self.check, channel)
        if not failure.check(BackendUnavailable):
            log.failure("redis: reading {channel} failed", failure, channel=channel.name)
