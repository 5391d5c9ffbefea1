"""Channels spread over several independent Redis (:class:`ShardedBackend`,
``backend = ["redis://a:6379/0", "redis://b:6379/0", …]``).

One Redis carries every channel of every node until its CPU does not (a
Redis runs on one core). Past that the channels are spread over several,
each a *shard*: the node keeps one :class:`~.broker.RedisBroker` per shard,
all under the same node id, and the backend contract is answered by
routing each call to the broker of the shard it concerns.

Per channel, on the shard rendezvous hashing gives it (:mod:`.placement`):
its history, pub/sub, receipts (the census' counts of its subscribers),
occupancy and presence; so ``publish``, ``subscribe``, ``unsubscribe``,
``history``, ``read_history``, ``channel_info``, ``occupy``, ``announce``
and presence go there. A user's own channel (``#u:<user id>``) is a
channel like any other. A publish to channels on several shards runs one
script on each, at once, and merges the receipts; a join of several
channels joins each shard's at once and merges the replays.

Per node or per cluster, on the *home* shard (the first listed): the
session registry (``chloe:s:``, and the census' sessions that broadcast
receipts count), the roster (``GET /sessions``), the handover of sessions
between nodes, messages to one session and to everyone, the users'
registry, revocations and the app's commands. They are small and rare next
to channel traffic, and each is one lookup that would otherwise have to
ask every shard (a broadcast's receipt, a page of sessions) or know which
shard a session went to; the home shard being down stops them (and the
channels it holds), the other shards' channels go on.

Ids are per shard: each has its own ``chloe:ids``. A cursor is exact for
the channels of the shard that gave it, which is what chloe.js sends (one
cursor per channel, and the user cursor from the user channel's shard). One
cursor for channels of several shards (an ``EventSource``'s
``Last-Event-ID``, the ``since`` of an SSE or poll URL's channels) is read
by every other shard as one of its own ids, and ids compare by their time
first: when that shard has given out later ids, as "after that
millisecond" (a message of that same millisecond, or one a clock
difference between the shards' hosts puts on the wrong side, can be
missed or repeated, and ``recovered`` cannot tell); when it has given out
none, as an id past all of its own: ``recovered: false``, nothing replayed.
Such a join (the channels of an SSE or poll URL) is answered once every
shard has its channels in; a message published meanwhile to a channel of
a shard that was in first reaches the browser before that channel's
``subscribed`` (and before its replay). chloe.js subscribes each channel by
a frame of its own, and is not affected.

No node process is the only one to know where anything is: every node
listing the same shards computes the same placement. Every node must list
the same shards, the same first.
"""

from __future__ import annotations

import heapq
import itertools
import secrets
from collections.abc import ItemsView, Iterator, Mapping, ValuesView
from typing import Any, Callable, Iterable, Sequence

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from chloed import frames
from chloed.backends.base import (
    BackendUnavailable, ChannelInfo, ChannelListing, HistoryPage, Policy, PublishResult, Replay, ReplayMany, Reply,
    SessionInfo, SessionListing, Subscriber,
)
from chloed.backends.redis.broker import RedisBroker
from chloed.backends.redis.channel import RedisChannel
from chloed.backends.redis.keys import ZERO, parse_key
from chloed.backends.redis.link import RedisLink, ignore
from chloed.backends.redis.placement import Placement, merge_receipts, shard_name
from chloed.backends.redis.presence import RedisPresence
from chloed.backends.redis.roster import Roster
from chloed.frames import Encoded


class _Unlisted(Roster):
    """A channel shard's roster: the node's sessions are listed on the home
    shard only, so this one writes nothing (its broker holds no session,
    and is never told of one's channels)."""

    def changed(self, session: Subscriber) -> None:
        """Nothing to write here (the home shard's roster is told)."""


class ShardChannels(Mapping[str, RedisChannel]):
    """This node's channels of every shard, as one mapping (each name is in
    its shard's broker only)."""

    def __init__(self, shards: Sequence[RedisBroker], index: Callable[[str], int]) -> None:
        self._shards = shards
        self._index = index

    def __getitem__(self, name: str) -> RedisChannel:
        return self._shards[self._index(name)].channels[name]

    def __iter__(self) -> Iterator[str]:
        return itertools.chain.from_iterable(shard.channels for shard in self._shards)

    def __len__(self) -> int:
        return sum(len(shard.channels) for shard in self._shards)

    def values(self) -> ValuesView[RedisChannel]:
        """Every channel, read from the shards as they are (not by name)."""
        return _Values(self, self._shards)

    def items(self) -> ItemsView[str, RedisChannel]:
        return _Items(self, self._shards)


class _Values(ValuesView[RedisChannel]):
    def __init__(self, mapping: ShardChannels, shards: Sequence[RedisBroker]) -> None:
        super().__init__(mapping)
        self._shards = shards

    def __iter__(self) -> Iterator[RedisChannel]:
        return itertools.chain.from_iterable(shard.channels.values() for shard in self._shards)


class _Items(ItemsView[str, RedisChannel]):
    def __init__(self, mapping: ShardChannels, shards: Sequence[RedisBroker]) -> None:
        super().__init__(mapping)
        self._shards = shards

    def __iter__(self) -> Iterator[tuple[str, RedisChannel]]:
        return itertools.chain.from_iterable(shard.channels.items() for shard in self._shards)


class ShardedPresence:
    """The hub's presence over every shard's: a channel's members are on
    its shard (:class:`~.presence.RedisPresence` there); what the hub sets
    (``idle``, ``changed``, ``is_presence``) goes to each."""

    def __init__(self, shards: Sequence[RedisPresence], index: Callable[[str], int]) -> None:
        self._shards = shards
        self._index = index

    def _of(self, channel: str) -> RedisPresence:
        return self._shards[self._index(channel)]

    @property
    def idle(self) -> Callable[[str], bool]:
        return self._shards[0].idle

    @idle.setter
    def idle(self, idle: Callable[[str], bool]) -> None:
        for shard in self._shards:
            shard.idle = idle

    @property
    def changed(self) -> Callable[[str, bool, str], None] | None:
        return self._shards[0].changed

    @changed.setter
    def changed(self, changed: Callable[[str, bool, str], None] | None) -> None:
        for shard in self._shards:
            shard.changed = changed

    @property
    def is_presence(self) -> Callable[[str], bool]:
        return self._shards[0].is_presence

    @is_presence.setter
    def is_presence(self, is_presence: Callable[[str], bool]) -> None:
        for shard in self._shards:
            shard.is_presence = is_presence

    def members(self, channel: str) -> list[dict[str, Any]]:
        return self._of(channel).members(channel)

    def fetch(self, channel: str) -> Deferred[list[dict[str, Any]]]:
        return self._of(channel).fetch(channel)

    def join(self, channel: str, session: str, user: dict[str, Any]) -> None:
        self._of(channel).join(channel, session, user)

    def part(self, channel: str, session: str, user: dict[str, Any], away: bool = False) -> None:
        self._of(channel).part(channel, session, user, away)


def _first_error(failure: Failure) -> Failure:
    """A failed call of several: its own failure, not gatherResults' wrapper."""
    error = failure.value
    if isinstance(error, FirstError):
        return error.subFailure
    return failure


def _order(frame: Encoded) -> tuple[int, int]:
    """Where a replayed message goes among several shards': by its id's
    time, then its seq (exact within a shard, by time across shards)."""
    return parse_key(frame.id) or ZERO


def _merge_joins(answers: list[ReplayMany | None]) -> ReplayMany | None:
    """The joins of each shard's channels as one: None when the subscriber
    left every one before it was in."""
    joined = [answer for answer in answers if answer is not None]
    if not joined:
        return None
    recovered: dict[str, bool] = {}
    for answer in joined:
        recovered.update(answer[0])
    return recovered, list(heapq.merge(*(answer[1] for answer in joined), key=_order))


class ShardedBackend:
    """The backend contract (:class:`chloed.backends.base.Backend`) over one
    :class:`~.broker.RedisBroker` per shard (see the module's docstring).

    :param urls: the shards, ``redis://host:port/db`` each, the home one
        first; two or more.
    :param reactor: connects to Redis; the clock unless given.
    :param node: this node's id on every shard (random unless given).
    :param policy: ``(history_size, history_ttl)`` per channel.
    """

    backend = "redis"

    def __init__(
        self,
        clock: IReactorTime,
        history_size: int,
        history_ttl: float,
        urls: Sequence[str],
        reactor: Any = None,
        node: str | None = None,
        policy: Policy | None = None,
    ) -> None:
        if len(urls) < 2:
            raise ValueError("shards are two Redis or more; one is a RedisBroker")
        node = node or secrets.token_hex(8)
        shards = [
            RedisBroker(clock, history_size, history_ttl, url, reactor=reactor, node=node, policy=policy)
            for url in urls
        ]
        # The other shards' brokers hold no session (every message to a
        # session, and the handover, goes through the home shard), so
        # nothing registers one there; their rosters list nothing.
        for shard in shards[1:]:
            shard.roster = _Unlisted(
                clock, call=shard.link.call, ignore=ignore, node=node, sessions={}, connected=lambda: False,
                ttl_ms=lambda: 0,
            )
            shard.census.on_beat = None
        self._use(urls, shards)

    @classmethod
    def over(cls, urls: Sequence[str], shards: Sequence[RedisBroker]) -> "ShardedBackend":
        """The contract over brokers made elsewhere, one per URL (tests
        give fakes)."""
        backend = cls.__new__(cls)
        backend._use(urls, shards)
        return backend

    def _use(self, urls: Sequence[str], shards: Sequence[RedisBroker]) -> None:
        self.urls = list(urls)
        self.placement = Placement([shard_name(url) for url in self.urls])
        self.shards = list(shards)
        self.home = self.shards[0]
        self.node = self.home.node
        # What /health and errors name a shard by: its URL without a password.
        self._labels = {id(shard): "redis://" + name for shard, name in zip(self.shards, self.placement.names)}
        self.sessions: dict[str, Subscriber] = self.home.sessions
        self._channels = ShardChannels(self.shards, self.placement.index)

    def shard(self, name: str) -> RedisBroker:
        """The broker of the shard channel ``name`` lives on."""
        return self.shards[self.placement.index(name)]

    def _groups(self, names: Iterable[str]) -> list[tuple[RedisBroker, list[str]]]:
        """``names`` by shard, each group in the order given (shards in the
        order their first channel came)."""
        groups: dict[int, list[str]] = {}
        for name in names:
            groups.setdefault(self.placement.index(name), []).append(name)
        return [(self.shards[index], group) for index, group in groups.items()]

    def _named(self, d: Deferred[Any], shard: RedisBroker) -> Deferred[Any]:
        """``d``, its :class:`BackendUnavailable` naming the shard (what
        ``/send``'s 503 says)."""

        def name(failure: Failure) -> Failure:
            if failure.check(BackendUnavailable):
                return Failure(BackendUnavailable(f"{self._labels[id(shard)]}: {failure.getErrorMessage()}"))
            return failure

        return d.addErrback(name)

    def _listed(self, shard: RedisBroker, subscriber: Subscriber) -> None:
        """The home shard's roster lists every session's channels: tell it
        of a change on another shard."""
        if shard is not self.home:
            self.home.roster.changed(subscriber)

    # -- what the contract reads ------------------------------------------

    @property
    def channels(self) -> ShardChannels:
        """This node's channels, of every shard."""
        return self._channels

    @property
    def published(self) -> int:
        return sum(shard.published for shard in self.shards)

    @property
    def delivered(self) -> int:
        return sum(shard.delivered for shard in self.shards)

    @property
    def observe_fanout(self) -> Callable[[float], None] | None:
        return self.home.observe_fanout

    @observe_fanout.setter
    def observe_fanout(self, observe: Callable[[float], None] | None) -> None:
        for shard in self.shards:
            shard.observe_fanout = observe

    @property
    def link(self) -> RedisLink:
        """The home shard's connections, for what else keeps per-node state
        in Redis (the relay's Redis spool)."""
        return self.home.link

    # -- life ---------------------------------------------------------------

    @property
    def backend_state(self) -> str:
        """``"up"`` when every shard is; else each shard that is not, with
        its state (``"down: redis://b:6379/0"``)."""
        unwell = [
            f"{state}: {self._labels[id(shard)]}"
            for shard in self.shards
            if (state := shard.backend_state) != "up"
        ]
        return "; ".join(unwell) if unwell else "up"

    def service(self) -> MultiService:
        """Every shard's connections, kept while the server runs (the home
        shard's stopped last)."""
        services = MultiService()
        for shard in self.shards:
            shard.service().setServiceParent(services)
        return services

    def sweep(self) -> int:
        return sum(shard.sweep() for shard in self.shards)

    def make_presence(self, clock: IReactorTime, grace: float) -> ShardedPresence:
        return ShardedPresence([shard.make_presence(clock, grace) for shard in self.shards], self.placement.index)

    # -- the session registry: the home shard's ------------------------------

    def add_session(self, session: Subscriber) -> Deferred[None]:
        return self.home.add_session(session)

    def remove_session(self, session: Subscriber, channels: Iterable[str]) -> None:
        """Leave the channels of the other shards, then the home shard
        forgets the session (and leaves its own channels)."""
        at_home = []
        for name in list(channels):
            shard = self.shard(name)
            if shard is self.home:
                at_home.append(name)
            else:
                shard.unsubscribe(name, session)
        self.home.remove_session(session, at_home)

    # -- subscriptions: the channel's shard ----------------------------------

    def subscribe(self, name: str, subscriber: Subscriber, since: str | None = None) -> Deferred[Replay | None]:
        shard = self.shard(name)
        self._listed(shard, subscriber)
        return shard.subscribe(name, subscriber, since)

    def subscribe_many(
        self, names: list[str], subscriber: Subscriber, since: str | None = None
    ) -> Deferred[ReplayMany | None]:
        """Each shard's channels joined at once; answered once all are in,
        the replays merged by id (exact within a shard, by time across)."""
        groups = self._groups(dict.fromkeys(names))
        for shard, _ in groups:
            self._listed(shard, subscriber)
        if len(groups) == 1:
            shard, group = groups[0]
            return shard.subscribe_many(group, subscriber, since)
        joins = [shard.subscribe_many(group, subscriber, since) for shard, group in groups]
        return gatherResults(joins, consumeErrors=True).addCallbacks(_merge_joins, _first_error)

    def unsubscribe(self, name: str, subscriber: Subscriber) -> bool:
        shard = self.shard(name)
        found = shard.unsubscribe(name, subscriber)
        if found:
            self._listed(shard, subscriber)
        return found

    # -- publishing ------------------------------------------------------------

    def publish(self, names: Iterable[str], data: bytes, exclude: str | None = None) -> Deferred[PublishResult]:
        """One script on each shard holding some of ``names``, all sent at
        once, the receipts merged. Refused (:class:`BackendUnavailable`,
        nothing published) when one of those shards is not connected; a
        shard failing once its script was sent fails the publish, which the
        other shards' channels may have had (a retry repeats it there)."""
        names = list(names)
        groups = self._groups(names)
        if len(groups) == 1:
            shard, group = groups[0]
            return self._named(shard.publish(group, data, exclude), shard)
        for shard, _ in groups:
            if shard.link.commands is None:
                return self._named(defer.fail(BackendUnavailable("not connected to Redis")), shard)
        sent = [self._named(shard.publish(group, data, exclude), shard) for shard, group in groups]
        return gatherResults(sent, consumeErrors=True).addCallbacks(
            lambda results: merge_receipts(names, results), _first_error
        )

    def broadcast(self, data: bytes, exclude: str | None = None) -> Deferred[PublishResult]:
        return self._named(self.home.broadcast(data, exclude), self.home)

    def to_session(self, session_id: str, data: bytes) -> Deferred[PublishResult | None]:
        return self._named(self.home.to_session(session_id, data), self.home)

    def occupy(self, name: str, occupied: bool) -> Deferred[bool]:
        return self.shard(name).occupy(name, occupied)

    def announce(self, name: str, frame: Encoded, exclude: str | None) -> int:
        return self.shard(name).announce(name, frame, exclude)

    # -- what channels hold ------------------------------------------------------

    def history(self, name: str, since: str) -> Deferred[Replay]:
        shard = self.shard(name)
        return self._named(shard.history(name, since), shard)

    def channel_info(self, name: str) -> Deferred[ChannelInfo]:
        shard = self.shard(name)
        return self._named(shard.channel_info(name), shard)

    def channel_list(self) -> Deferred[ChannelListing]:
        """This node's channels of every shard (``scope: node``)."""
        listing: dict[str, ChannelInfo] = {}
        for shard in self.shards:
            for name, channel in shard.channels.items():
                listing[name] = ChannelInfo(name, len(channel.subscribers), channel.last_id, None)
        return defer.succeed(ChannelListing(listing, "node"))

    def session_list(self, limit: int, cursor: str | None) -> Deferred[SessionListing]:
        return self._named(self.home.session_list(limit, cursor), self.home)

    def position(self, name: str | None = None) -> Deferred[str]:
        """The position of ``name``'s shard (None: the home shard's)."""
        shard = self.home if name is None else self.shard(name)
        return self._named(shard.position(), shard)

    def read_history(self, name: str, since: str | None, limit: int) -> Deferred[HistoryPage]:
        shard = self.shard(name)
        return self._named(shard.read_history(name, since, limit), shard)

    # -- users, revocations, commands: the home shard's ---------------------------

    def user_join(self, user: str, session: Subscriber, limit: int) -> Deferred[bool]:
        return self._named(self.home.user_join(user, session, limit), self.home)

    def user_leave(self, user: str, session: Subscriber) -> None:
        """The user channel's count goes first, as on one Redis, though on
        its own shard's connection: a receipt may count the session a
        moment after the user's sessions no longer list it."""
        own = frames.user_channel(user)
        shard = self.shard(own)
        if shard is self.home:
            self.home.user_leave(user, session)
            return
        shard.census.report_now(own)
        self.home.users.leave(user, session)

    def user_sessions(self, user: str) -> Deferred[list[SessionInfo]]:
        return self._named(self.home.user_sessions(user), self.home)

    def user_channels(self, user: str) -> Deferred[list[str]]:
        return self._named(self.home.user_channels(user), self.home)

    def persist_channel(self, user: str, channel: str, keep: bool) -> Deferred[None]:
        return self._named(self.home.persist_channel(user, channel, keep), self.home)

    def revoke(self, jti: str | None, user: str | None, before: float | None, until: float) -> Deferred[None]:
        return self._named(self.home.revoke(jti, user, before, until), self.home)

    def revoked(self, jti: str | None, user: str, iat: float) -> Deferred[bool]:
        return self._named(self.home.revoked(jti, user, iat), self.home)

    def control(self, command: dict[str, Any]) -> Deferred[int]:
        return self._named(self.home.control(command), self.home)

    def serve_control(self, handler: Callable[[dict[str, Any]], None]) -> None:
        self.home.serve_control(handler)

    # -- sessions held by other nodes: through the home shard ---------------------

    def serve_handover(
        self, frames: Callable[[str, bytes], None], poll: Callable[[str, int, Reply], None]
    ) -> None:
        self.home.serve_handover(frames, poll)

    def forward(self, session_id: str, body: bytes) -> Deferred[bool] | None:
        return self.home.forward(session_id, body)

    def forward_poll(self, session_id: str, cursor: int, timeout: float) -> Deferred[tuple[int, bytes] | None] | None:
        return self.home.forward_poll(session_id, cursor, timeout)
