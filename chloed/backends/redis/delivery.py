"""Pub/sub messages to this node's subscribers (:class:`Delivery`): by the
pub/sub channel they came on (everyone's, this node's, one of its channels)
and, on those, by their first two bytes (formats in the package's docstring).

It knows the node's channels and sessions, not the broker: fanning out and
counting are the broker's, and handed in as callables.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Mapping

from chloed import frames
from chloed.backends.base import PublishResult, Subscriber
from chloed.backends.redis.channel import RedisChannel, _Join
from chloed.backends.redis.keys import Key, parse_key
from chloed.backends.redis.presence import RedisPresence
from chloed.frames import Encoded

#: ``fan_out(subscribers, frame, exclude, result)``: delivers ``frame`` to
#: each subscriber but ``exclude``, adding to ``result``'s counts.
FanOut = Callable[[Iterable[Subscriber], Encoded, str | None, PublishResult], int]
#: ``count(published, result, started)``: counts one publish for ``/status``.
Count = Callable[[int, PublishResult, float], None]
#: ``offer(join, channel, key, frame, exclude)``: a live message for a join
#: on its way in (:meth:`.joins.Joins.offer`).
Offer = Callable[[_Join, RedisChannel, Key, Encoded, str | None], None]


class Delivery:
    """Takes the pub/sub messages of one node to its subscribers.

    :param channels: this node's channels, by name.
    :param sessions: this node's sessions, by id.
    :param pubsub: the prefix of the pub/sub channels.
    :param node: this node's name.
    :param node_kinds: what takes each kind of message on this node's own
        channel (by its first two bytes), but messages to one session.
    :param everyone_kinds: the same on everyone's channel, but messages to
        every session (whose first byte is a digit: they start with an id).
    :param offer: hands a live message to a join on its way in.
    :param fan_out: delivers a frame to subscribers.
    :param count: counts one delivered publish.
    :param presence: the node's presence, None while it has none.
    """

    def __init__(
        self,
        channels: Mapping[str, RedisChannel],
        sessions: Mapping[str, Subscriber],
        *,
        pubsub: str,
        node: str,
        node_kinds: Mapping[bytes, Callable[[bytes], None]],
        everyone_kinds: Mapping[bytes, Callable[[bytes], None]],
        offer: Offer,
        fan_out: FanOut,
        count: Count,
        presence: Callable[[], RedisPresence | None],
    ) -> None:
        self._channels = channels
        self._sessions = sessions
        self._channel_prefix = (pubsub + "c:").encode("ascii")
        self._node_kinds = node_kinds
        self._everyone_kinds = everyone_kinds
        self._offer = offer
        self._fan_out = fan_out
        self._count = count
        self._presence = presence
        # What takes a pub/sub message, by its pub/sub channel (else: one of
        # this node's channels) and, on those, by its first two bytes.
        self._routes: dict[bytes, Callable[[bytes], None]] = {
            (pubsub + "n:" + node).encode("ascii"): self._on_node,
            (pubsub + "all").encode("ascii"): self._on_everyone,
        }
        self._channel_kinds = {b"p ": self._presence_event}

    def on_message(self, channel_name: bytes, payload: bytes) -> None:
        """A pub/sub message: to every session, to this node, or on one of
        its channels."""
        route = self._routes.get(channel_name)
        if route is not None:
            route(payload)
        elif channel_name.startswith(self._channel_prefix):
            # UTF-8: a user's channel (#u:<user id>) may hold any character.
            self._on_channel(channel_name[len(self._channel_prefix):].decode("utf-8"), payload)

    def deliver_live(self, channel: RedisChannel, id: str, data: bytes, exclude: str | None) -> None:
        """One message of ``channel``: encoded once, to every subscriber,
        and to the joins on their way in."""
        started = time.perf_counter()
        frame = frames.message(channel.name, id, data)
        channel.last_id = id
        result = PublishResult()
        self._fan_out(channel.subscribers, frame, exclude, result)
        if channel.joining:
            key = parse_key(id)
            if key is not None:
                for join in tuple(channel.joining):
                    self._offer(join, channel, key, frame, exclude)
        self._count(1, result, started)

    def _on_channel(self, name: str, payload: bytes) -> None:
        channel = self._channels.get(name)
        if channel is not None:
            self._channel_kinds.get(payload[:2], self._live)(channel, payload)

    def _on_node(self, payload: bytes) -> None:
        self._node_kinds.get(payload[:2], self._to_one_session)(payload)

    def _on_everyone(self, payload: bytes) -> None:
        self._everyone_kinds.get(payload[:2], self._to_everyone)(payload)

    def _presence_event(self, channel: RedisChannel, payload: bytes) -> None:
        """``"p …"``: a presence announcement."""
        presence = self._presence()
        if presence is not None:
            presence.event(channel.name, payload)

    def _live(self, channel: RedisChannel, payload: bytes) -> None:
        """``"<id> <excluded session> <data>"``: a message of ``channel``,
        held while it is read again after Redis came back."""
        raw_id, raw_exclude, data = payload.split(b" ", 2)
        id = raw_id.decode("ascii")
        exclude = raw_exclude.decode("ascii") or None
        if channel.buffer is not None:
            key = parse_key(id)
            if key is not None:
                channel.buffer.append((key, id, data, exclude))
            return
        self.deliver_live(channel, id, data, exclude)

    def _to_one_session(self, payload: bytes) -> None:
        """``"<session> <id> <excluded session> <data>"`` on this node's
        channel: a message to one of its sessions."""
        session_id, rest = payload.split(b" ", 1)
        session = self._sessions.get(session_id.decode("ascii"))
        raw_id, _, data = rest.split(b" ", 2)
        if session is not None:
            self._deliver_direct((session,), raw_id, data, None)

    def _to_everyone(self, payload: bytes) -> None:
        """``"<id> <excluded session> <data>"`` on everyone's channel."""
        raw_id, raw_exclude, data = payload.split(b" ", 2)
        self._deliver_direct(self._sessions.values(), raw_id, data, raw_exclude.decode("ascii") or None)

    def _deliver_direct(
        self, sessions: Iterable[Subscriber], raw_id: bytes, data: bytes, exclude: str | None
    ) -> None:
        """A message to sessions rather than to a channel's subscribers."""
        started = time.perf_counter()
        result = PublishResult()
        self._fan_out(sessions, frames.message(None, raw_id.decode("ascii"), data), exclude, result)
        self._count(1, result, started)
