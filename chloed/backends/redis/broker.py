"""The broker of one node of several sharing Redis (:class:`RedisBroker`):
connecting, joins with history, publishing, and delivering live messages."""

from __future__ import annotations

import heapq
import secrets
import time
from typing import Any, Iterable

import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.internet import task
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from chloed import frames
from chloed.backends import BackendUnavailable
from chloed.backends.redis.census import COUNTS_TTL, Census, polling
from chloed.backends.redis.channel import RedisChannel, _Join, _Snapshot
from chloed.backends.redis.connection import _Commands, _Connector, _Factory, _Subscriptions
from chloed.backends.redis.keys import (
    COUNTS_PREFIX, HISTORY_PREFIX, IDS_KEY, NODES_KEY, SESSION_PREFIX, SESSION_TTL, ZERO, Key, format_key, parse_key, parse_url,
)
from chloed.backends.redis.presence import RedisPresence
from chloed.backends.redis.scripts import (
    DIRECT_SCRIPT, FORWARD_SCRIPT, PUBLISH_SCRIPT, SNAPSHOT_SCRIPT, SUBSCRIBERS_SCRIPT,
)
from chloed.broker import Broker, Channel, PublishResult, Subscriber
from chloed.frames import Encoded
from chloed.redact import session_tag

log = Logger(namespace="chloed.backends.redis")  # as before redis.py became a package

REPLY_TIMEOUT = 5.0
RETRY_DELAY = 0.5
LOOKUP_AGAIN = 0.2


class RedisBroker(Broker):
    """The broker of one node of several sharing Redis.

    :param url: ``redis://host:port/db``.
    :param reactor: connects to Redis; the clock unless given.
    :param node: this node's name in Redis (random unless given).
    """

    backend = "redis"
    asynchronous = True

    def __init__(
        self,
        clock: IReactorTime,
        history_size: int,
        history_ttl: float,
        url: str,
        reactor: Any = None,
        node: str | None = None,
    ) -> None:
        super().__init__(clock, history_size, history_ttl)
        self.url = url
        self.host, self.port, self.db = parse_url(url)
        self._reactor = reactor if reactor is not None else clock
        self.node = node or secrets.token_hex(8)
        self.pubsub = f"chloe:{self.db}:"
        self._channel_prefix = (self.pubsub + "c:").encode("ascii")
        self._all = (self.pubsub + "all").encode("ascii")
        self._mine = (self.pubsub + "n:" + self.node).encode("ascii")
        self._ttl_ms = int(history_ttl * 1000)
        self._keeps = history_size > 0 and self._ttl_ms > 0
        self.channels: dict[str, RedisChannel] = {}  # type: ignore[assignment]
        self._commands: Any = None
        self._subscriptions: Any = None
        self._base_confirmed = False
        self._services: list[ClientService] = []
        self.presence: RedisPresence | None = None
        self._stopping = False
        # Set by the hub: takes frames POSTed for one of this node's
        # sessions on another node.
        self.on_forward: Any = None
        # Set by the poll transport: answers a poll of one of this node's
        # sessions that reached another node, through the replier it is given.
        self.on_poll: Any = None
        self._polls: dict[str, Deferred[Any]] = {}
        self._renewal: LoopingCall | None = None
        # Subscriber counts in Redis, for /send receipts.
        self.census = Census(self, clock)

    # -- connections ------------------------------------------------------

    def serve_handover(self, frames: Any, poll: Any) -> None:
        """Where frames and polls other nodes hand over for this node's
        sessions go: ``frames(session_id, body)``, ``poll(session_id,
        cursor, reply)`` with ``reply(status, body)``."""
        self.on_forward, self.on_poll = frames, poll

    def service(self) -> Service:
        """The service that connects this broker while the server runs."""
        return _Connector(self)

    def make_presence(self, clock: IReactorTime, grace: float, announce: Any = None) -> "RedisPresence":
        """Presence kept in Redis, for the hub (in place of
        :class:`chloed.presence.Presence`)."""
        self.presence = RedisPresence(self, clock, grace)
        return self.presence

    def connect(self) -> None:
        """Open both connections; they come back by themselves when lost."""
        self.census.start()
        if self.presence is not None:
            self.presence.start()
        # Sessions older than SESSION_TTL stay reachable by /send.
        self._renewal = LoopingCall(self._register_all)
        self._renewal.clock = self._clock
        self._renewal.start(SESSION_TTL / 4, now=False).addErrback(
            lambda f: log.failure("renewing session keys stopped", f)
        )
        policy = backoffPolicy(initialDelay=0.1, maxDelay=2.0, factor=2.0)
        for proto, dbid, timeout in ((_Commands, self.db, REPLY_TIMEOUT), (_Subscriptions, None, None)):
            endpoint = HostnameEndpoint(self._reactor, self.host, self.port, timeout=5)
            service = ClientService(
                endpoint, _Factory(self, proto, dbid, timeout), retryPolicy=policy, clock=self._reactor
            )
            self._services.append(service)
            service.startService()

    def disconnect(self) -> Deferred[Any]:
        services, self._services = self._services, []
        self._stopping = True
        self.census.stop()
        if self.presence is not None:
            self.presence.stop()
        if self._renewal is not None and self._renewal.running:
            self._renewal.stop()
        return defer.gatherResults([s.stopService() for s in services], consumeErrors=True)

    @property  # type: ignore[override]
    def backend_state(self) -> str:
        """``up`` while both connections are, ``down`` otherwise."""
        if self._commands is not None and self._subscriptions is not None and self._base_confirmed:
            return "up"
        return "down"

    def _commands_ready(self, proto: Any) -> None:
        log.info("redis: connected to {host}:{port}/{db}", host=self.host, port=self.port, db=self.db)
        self._commands = proto
        # First on the new connection, so every join and session after it
        # adds to complete counts.
        self.census.recount()
        self._register_all()
        for channel in list(self.channels.values()):
            self._check(channel)
            for join in list(channel.joining):
                self._try_join(join)

    def _commands_lost(self, proto: Any) -> None:
        if self._commands is proto:
            self._commands = None
            if not self._stopping:
                log.warn("redis: lost the connection for commands; /send answers 503 until it is back")

    def _subscriptions_ready(self, proto: Any) -> None:
        self._subscriptions = proto
        base = [self._all.decode("ascii"), self._mine.decode("ascii")]
        self._call_sub("subscribe", base).addCallbacks(
            self._base_subscribed, self._base_failed, callbackArgs=(proto,), errbackArgs=(proto,)
        )
        for channel in list(self.channels.values()):
            self._subscribe_channel(channel)

    def _base_subscribed(self, _: Any, proto: Any) -> None:
        if self._subscriptions is proto:
            self._base_confirmed = True

    def _base_failed(self, failure: Failure, proto: Any) -> None:
        if self._subscriptions is proto:
            log.warn("redis: SUBSCRIBE failed ({why}); trying again", why=failure.getErrorMessage())
            self._later(self._subscriptions_ready, proto)

    def _later(self, f: Any, *args: Any) -> None:
        """Try ``f`` again in a moment: Redis answered an error (it may be
        loading its data after a restart)."""
        if not self._stopping:
            self._reactor.callLater(RETRY_DELAY, f, *args)

    def _subscriptions_lost(self, proto: Any) -> None:
        if self._subscriptions is not proto:
            return
        self._subscriptions = None
        self._base_confirmed = False
        if not self._stopping:
            log.warn("redis: lost the pub/sub connection; resubscribing when it is back")
        for channel in self.channels.values():
            # Read again, once subscribed again, after the last id delivered
            # live; joins still dropping repeats go on dropping them.
            channel.confirmed = channel.ready = channel.subscribing = False

    def _call(self, method: str, *args: Any) -> Deferred[Any]:
        """A command on the command connection; fails with
        :class:`BackendUnavailable` when there is none."""
        proto = self._commands
        if proto is None:
            return defer.fail(BackendUnavailable("not connected to Redis"))
        try:
            d = getattr(proto, method)(*args)
        except Exception as exc:
            return defer.fail(BackendUnavailable(str(exc)))
        return d.addErrback(self._unavailable)

    @staticmethod
    def _unavailable(failure: Failure) -> Failure:
        if failure.check(txredisapi.ConnectionError, ConnectionError):
            raise BackendUnavailable(failure.getErrorMessage())
        if failure.check(txredisapi.ResponseError):
            raise BackendUnavailable("Redis answered: " + failure.getErrorMessage())
        return failure

    def _call_sub(self, method: str, names: list[str]) -> Deferred[Any]:
        proto = self._subscriptions
        if proto is None:
            return defer.fail(BackendUnavailable("no pub/sub connection"))
        try:
            return getattr(proto, method)(names)
        except Exception as exc:
            return defer.fail(BackendUnavailable(str(exc)))

    # -- sessions ---------------------------------------------------------

    def add_session(self, session: Subscriber) -> Deferred[Any] | None:  # type: ignore[override]  # the hub waits on it before ``connected``
        """Count and register the session; the Deferred fires once Redis
        counts it (the hub answers ``connected`` then), None when there is
        nothing to wait for."""
        new = session.id not in self.sessions
        if new:
            self.census.session_added(session)
        super().add_session(session)
        if new:
            return self.census.session_opened(session.id)
        self._register(session.id)
        return None

    def remove_session(self, session: Subscriber, channels: Iterable[str]) -> None:
        if self.sessions.get(session.id) is session:
            self.census.session_removed(session)
        super().remove_session(session, channels)
        if self._commands is not None and session.id not in self.sessions:
            self._call("delete", SESSION_PREFIX + session.id).addErrback(self._ignore)

    def _register_all(self) -> None:
        for session_id in list(self.sessions):
            self._register(session_id)

    def _register(self, session_id: str) -> None:
        if self._commands is not None:
            self._call("set", SESSION_PREFIX + session_id, self.node, SESSION_TTL).addErrback(self._ignore)

    @staticmethod
    def _ignore(failure: Failure) -> None:
        """For commands sent without waiting: Redis being away is expected
        (they are sent again when it is back); anything else is logged."""
        if not failure.check(BackendUnavailable, txredisapi.ConnectionError):
            log.failure("redis: a command failed", failure)

    # -- subscriptions ----------------------------------------------------

    def _channel(self, name: str) -> RedisChannel:
        channel = self.channels.get(name)
        if channel is None:
            channel = self.channels[name] = RedisChannel(name)
            self._subscribe_channel(channel)
        return channel

    def _subscribe_channel(self, channel: RedisChannel) -> None:
        if self._subscriptions is None or channel.subscribing or channel.confirmed:
            return
        if self.channels.get(channel.name) is not channel:
            return  # forgotten meanwhile
        channel.subscribing = True
        proto = self._subscriptions
        self._call_sub("subscribe", [self.pubsub + "c:" + channel.name]).addCallbacks(
            self._confirmed, self._subscribe_failed, callbackArgs=(channel, proto), errbackArgs=(channel,)
        )

    def _confirmed(self, _: Any, channel: RedisChannel, proto: Any) -> None:
        if self.channels.get(channel.name) is not channel or self._subscriptions is not proto:
            return
        channel.subscribing = False
        channel.confirmed = True
        if channel.delivering():
            channel.buffer = []
        self._check(channel)

    def _subscribe_failed(self, failure: Failure, channel: RedisChannel) -> None:
        channel.subscribing = False
        if self._subscriptions is not None:
            self._later(self._subscribe_channel, channel)
        if not failure.check(BackendUnavailable, txredisapi.ConnectionError):
            log.failure("redis: subscribing to {channel} failed", failure, channel=channel.name)

    def _check(self, channel: RedisChannel) -> None:
        """Once subscribed: learn the channel's position (and, after Redis
        came back, deliver what its subscribers missed), then let joins in."""
        if not channel.confirmed or channel.ready or channel.checking or self._commands is None:
            return
        if self.channels.get(channel.name) is not channel:
            return
        channel.checking = True
        position = channel.position()
        since = format_key(position) if position is not None and channel.delivering() else ""
        self._snapshot([channel.name], [since]).addCallbacks(
            self._checked, self._check_failed, callbackArgs=(channel, since), errbackArgs=(channel,)
        )

    def _checked(self, snapshot: _Snapshot, channel: RedisChannel, since: str) -> None:
        channel.checking = False
        if self.channels.get(channel.name) is not channel or not channel.confirmed:
            return
        floor = snapshot.head
        position = channel.position()
        buffered, channel.buffer = channel.buffer or [], None
        if since:
            after = parse_key(since) or ZERO
            if not snapshot.recovered(0, after, self._ttl_ms, self._keeps):
                log.warn("redis: some messages of {channel} were lost while Redis was away", channel=channel.name)
            for key, id, data in snapshot.entries(0):
                self._deliver_live(channel, id, data, None)
            for key, id, data, exclude in buffered:
                if key > floor:
                    self._deliver_live(channel, id, data, exclude)
        channel.cursor = floor if position is None else max(floor, position)
        if self.presence is not None and channel.name.startswith("presence-"):
            channel.checking = True
            self.presence.load(channel.name).addCallbacks(
                self._loaded, self._check_failed, callbackArgs=(channel,), errbackArgs=(channel,)
            )
            return
        self._now_ready(channel)

    def _loaded(self, _: Any, channel: RedisChannel) -> None:
        channel.checking = False
        if self.channels.get(channel.name) is channel and channel.confirmed:
            self._now_ready(channel)

    def _now_ready(self, channel: RedisChannel) -> None:
        channel.ready = True
        for join in list(channel.joining):
            self._try_join(join)

    def _check_failed(self, failure: Failure, channel: RedisChannel) -> None:
        channel.checking = False
        if self._commands is not None:
            self._later(self._check, channel)
        if not failure.check(BackendUnavailable):
            log.failure("redis: reading {channel} failed", failure, channel=channel.name)

    def subscribe(  # type: ignore[override]
        self, name: str, subscriber: Subscriber, since: str | None = None
    ) -> Deferred[tuple[bool, list[Encoded]] | None]:
        """Join ``subscriber`` to ``name``; fires with ``(recovered,
        missed)`` once it is in, or None when it left before."""

        def one(answer: Any) -> Any:
            if answer is None:
                return None
            recovered, missed = answer
            return recovered.get(name, True), missed

        return self.subscribe_many([name], subscriber, since).addCallback(one)

    def subscribe_many(
        self, names: list[str], subscriber: Subscriber, since: str | None
    ) -> Deferred[tuple[dict[str, bool], list[Encoded]] | None]:
        """Join ``subscriber`` to several channels at once, replaying after
        one cursor merged across them in publish order.

        Fires with ``({channel: recovered}, missed)`` once it is in every
        channel (``recovered`` only for those given ``since``), or None when
        it left them all before; waits while Redis is away.
        """
        join = _Join(subscriber, list(dict.fromkeys(names)), since)
        for name in join.names:
            channel = self._channel(name)
            channel.joining.append(join)
        self._try_join(join)
        return join.deferred

    def _try_join(self, join: _Join) -> None:
        """Once its channels are ready: one script writes this node's counts
        of them, the subscriber included (before it is answered, so every
        publish after counts it), and reads the history after ``since``."""
        if join.reading or join.deferred.called or join.floor is not None:
            return
        channels = [self.channels[name] for name in join.names]
        if not all(channel.ready for channel in channels):
            return
        join.reading = True
        names = list(join.names)
        for channel in channels:
            if join.subscriber not in channel.subscribers:
                channel.arriving[join.subscriber] = None
        # A node leaving the census (shutting down) counts nobody any more.
        counts = [self.census.count(name) for name in names] if self.census.counting else None
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

    def _told(self, snapshot: _Snapshot, join: _Join) -> None:
        """A join without ``since``: Redis counts it; it is in."""
        join.reading = False
        self.census.told(snapshot.fresh)
        if join.deferred.called:
            return
        if not all(self.channels.get(name) is not None and self.channels[name].ready for name in join.names):
            self._try_join(join)  # Redis went away meanwhile: again once it is back
            return
        self._finish(join, None, {})

    def _read(self, snapshot: _Snapshot, join: _Join, names: list[str], after: Key | None) -> None:
        join.reading = False
        self.census.told(snapshot.fresh)
        if join.deferred.called:
            return
        channels = [self.channels.get(name) for name in join.names]
        if not all(channel is not None and channel.ready for channel in channels):
            # Redis went away meanwhile: read again once it is back.
            self._try_join(join)
            return
        if after is not None and after > snapshot.head:
            after = None  # not an id of this cluster
        recovered: dict[str, bool] = {}
        streams = []
        for index, name in enumerate(names):
            if name not in join.names:
                continue  # unsubscribed meanwhile
            recovered[name] = after is not None and snapshot.recovered(index, after, self._ttl_ms, self._keeps)
            streams.append([(key, name, id, data) for key, id, data in snapshot.entries(index)])
        missed = [frames.message(name, id, data) for _, name, id, data in heapq.merge(*streams)]
        self._finish(join, snapshot.head, recovered, missed)

    def _read_failed(self, failure: Failure, join: _Join) -> None:
        join.reading = False
        if not failure.check(BackendUnavailable):
            log.failure("redis: reading history failed", failure)
            self._abandon(join, failure)
        elif self._commands is not None:
            self._later(self._try_join, join)
        # else: tried again when the command connection is back

    def _abandon(self, join: _Join, failure: Failure) -> None:
        for name in join.names:
            channel = self.channels.get(name)
            if channel is not None and join in channel.joining:
                channel.joining.remove(join)
                if channel.arrived(join.subscriber):
                    self.census.changed(name)
                self._maybe_forget(channel)
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
            channel = self.channels[name]
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
                self.census.changed(channel.name)

    def unsubscribe(self, name: str, subscriber: Subscriber) -> bool:
        """Remove ``subscriber`` (joined or still joining); True when it was
        there."""
        channel = self.channels.get(name)
        if channel is None:
            return False
        found = False
        if subscriber in channel.subscribers:
            del channel.subscribers[subscriber]
            if polling(subscriber):
                channel.polling -= 1
            self.census.changed(name)
            found = True
        if channel.arrived(subscriber):
            self.census.changed(name)
        for join in list(channel.joining):
            if join.subscriber is subscriber:
                channel.joining.remove(join)
                join.catching.discard(name)
                if name in join.names and not join.deferred.called:
                    join.names.remove(name)
                    if not join.names:
                        join.deferred.callback(None)
                    else:
                        self._try_join(join)
                found = True
        self._maybe_forget(channel)
        return found

    def _maybe_forget(self, channel: Channel) -> None:
        assert isinstance(channel, RedisChannel)
        if channel.subscribers or channel.joining:
            return
        if self.channels.get(channel.name) is channel:
            del self.channels[channel.name]
            if self.presence is not None:
                self.presence.forget(channel.name)
            if channel.confirmed or channel.subscribing:
                self._call_sub("unsubscribe", [self.pubsub + "c:" + channel.name]).addErrback(self._ignore)

    def replay(self, name: str, since: str) -> tuple[bool, list[Encoded]]:  # pragma: no cover
        raise NotImplementedError("with Redis, subscribe and subscribe_many replay")

    def replay_many(self, names: Iterable[str], since: str) -> tuple[bool, list[Encoded]]:  # pragma: no cover
        raise NotImplementedError("with Redis, subscribe and subscribe_many replay")

    def _snapshot(self, names: list[str], sinces: list[str], counts: list[str] | None = None) -> Deferred[_Snapshot]:
        """Read the channels' position and history after ``sinces``; for a
        join, write this node's ``counts`` of them in the same step."""
        keys = [IDS_KEY, NODES_KEY] + [HISTORY_PREFIX + name for name in names]
        if counts is None:
            args = [len(names), "", "", "", "", ""] + sinces
        else:
            keys += [COUNTS_PREFIX + name for name in names]
            args = [len(names)] + self.census.entry() + [COUNTS_TTL] + sinces + counts
        return self._call("eval", SNAPSHOT_SCRIPT, keys, args).addCallback(_Snapshot)

    # -- publishing -------------------------------------------------------

    def publish(  # type: ignore[override]
        self, names: Iterable[str], data: bytes, exclude: str | None = None
    ) -> Deferred[PublishResult]:
        """Publish ``data`` to each channel; fires once Redis has stored and
        published it, with the ids and the receipt (the subscribers of every
        node alive, every one answered ``subscribed`` before included:
        streaming ones ``delivered``, polling ones ``queued``; and whether
        that is a lower bound), or fails with :class:`BackendUnavailable`."""
        names = list(names)
        keys = (
            [IDS_KEY, NODES_KEY]
            + [HISTORY_PREFIX + name for name in names]
            + [COUNTS_PREFIX + name for name in names]
        )
        args = [data, self.history_size, self._ttl_ms, self.pubsub + "c:", exclude or "", len(names)] + names

        def done(reply: list[Any]) -> PublishResult:
            result = PublishResult()
            for name, id in zip(names, reply):
                result.ids[name] = id.decode("ascii")
            result.delivered, result.queued = int(reply[-3]), int(reply[-2])
            result.lower_bound = bool(int(reply[-1]))
            return result

        return self._call("eval", PUBLISH_SCRIPT, keys, args).addCallback(done)

    def broadcast(self, data: bytes, exclude: str | None = None) -> Deferred[PublishResult]:  # type: ignore[override]
        """Send ``data`` to every session of every node; the receipt counts
        the sessions of every node alive (each node tells Redis of a session
        as it opens, of one that closed a moment later)."""
        d = self._call("eval", DIRECT_SCRIPT, [IDS_KEY, NODES_KEY], [data, self.pubsub, exclude or ""])

        def done(reply: list[Any]) -> PublishResult:
            return PublishResult(
                id=reply[0].decode("ascii"), delivered=int(reply[1]), queued=int(reply[2]),
                lower_bound=bool(int(reply[3])),
            )

        return d.addCallback(done)

    def to_session(self, session_id: str, data: bytes) -> Deferred[PublishResult | None]:  # type: ignore[override]
        """Send ``data`` to one session on whichever node holds it; fires
        with None when none does (``delivered`` 1: its node has it)."""
        keys = [IDS_KEY, NODES_KEY, SESSION_PREFIX + session_id]
        d = self._call("eval", DIRECT_SCRIPT, keys, [data, self.pubsub, "", session_id])
        return d.addCallback(lambda reply: PublishResult(id=reply[0].decode("ascii"), delivered=1) if reply else None)

    def subscribers(self, name: str) -> Deferred[int]:  # type: ignore[override]
        """How many sessions subscribe to channel ``name`` on every node
        alive, as the nodes last reported them."""
        d = self._call("eval", SUBSCRIBERS_SCRIPT, [NODES_KEY, COUNTS_PREFIX + name], [])
        return d.addCallback(lambda reply: int(reply[0]) + int(reply[1]))

    def forward(self, session_id: str, body: bytes) -> Deferred[bool]:
        """Hand browser frames POSTed here to the node holding
        ``session_id``; fires with whether one does."""
        return self._hand_over(session_id, "f", body)

    def _hand_over(self, session_id: str, kind: str, body: bytes | str, again: bool = True) -> Deferred[bool]:
        """Publish a request to the node holding ``session_id``; fires with
        whether one took it. A session is registered without waiting for
        Redis, so a request following its opening at once may come first:
        a session not found is looked up once more a moment later."""
        args = [self.pubsub, session_id, body, kind]
        found = self._call("eval", FORWARD_SCRIPT, [SESSION_PREFIX + session_id], args).addCallback(bool)
        if not again:
            return found

        def retry(taken: bool) -> Any:
            if taken:
                return True
            return task.deferLater(self._reactor, LOOKUP_AGAIN, self._hand_over, session_id, kind, body, False)

        return found.addCallback(retry)

    def forward_poll(self, session_id: str, cursor: int, timeout: float) -> Deferred[tuple[int, bytes] | None]:
        """Ask the node holding ``session_id`` for its next poll answer
        after ``cursor``; fires with ``(status, JSON body)``, or None when no
        node holds the session (or it did not answer within ``timeout``)."""
        request_id = secrets.token_hex(8)
        answer: Deferred[tuple[int, bytes] | None] = Deferred()
        self._polls[request_id] = answer
        timer = self._reactor.callLater(timeout, self._poll_answered, request_id, None)
        body = f"{request_id} {self.node} {cursor}"
        asked = self._hand_over(session_id, "q", body)

        def sent(reached: Any) -> None:
            if not reached:
                self._poll_answered(request_id, None)

        def failed(failure: Failure) -> None:
            if timer.active():
                timer.cancel()
            self._polls.pop(request_id, None)
            if not answer.called:
                answer.errback(failure)

        asked.addCallbacks(sent, failed)
        return answer.addBoth(self._poll_done, timer)

    @staticmethod
    def _poll_done(result: Any, timer: Any) -> Any:
        if timer.active():
            timer.cancel()
        return result

    def _poll_answered(self, request_id: str, answer: tuple[int, bytes] | None) -> None:
        waiting = self._polls.pop(request_id, None)
        if waiting is not None and not waiting.called:
            waiting.callback(answer)

    def answer_poll(self, node: str, request_id: str, status: int, body: bytes) -> None:
        """Send a poll's answer back to the node that forwarded it."""
        payload = b"r %s %d %s" % (request_id.encode("ascii"), status, body)
        self._call("publish", self.pubsub + "n:" + node, payload).addErrback(self._ignore)

    def _poll_replier(self, node: str, request_id: str) -> Any:
        def reply(status: int, body: bytes) -> None:
            self.answer_poll(node, request_id, status, body)

        return reply

    # -- live messages ----------------------------------------------------

    def _on_message(self, channel_name: bytes, payload: bytes) -> None:
        if channel_name.startswith(self._channel_prefix):
            name = channel_name[len(self._channel_prefix):].decode("ascii")
            channel = self.channels.get(name)
            if channel is None:
                return
            if payload[:2] == b"p ":
                if self.presence is not None:
                    self.presence.event(name, payload)
                return
            raw_id, raw_exclude, data = payload.split(b" ", 2)
            id = raw_id.decode("ascii")
            exclude = raw_exclude.decode("ascii") or None
            if channel.buffer is not None:
                key = parse_key(id)
                if key is not None:
                    channel.buffer.append((key, id, data, exclude))
                return
            self._deliver_live(channel, id, data, exclude)
            return
        if channel_name == self._mine:
            if payload[:2] == b"f ":
                _, session_id, body = payload.split(b" ", 2)
                if self.on_forward is not None:
                    self.on_forward(session_id.decode("ascii"), body)
                return
            if payload[:2] == b"q ":
                _, session_id, request_id, node, cursor = payload.split(b" ", 4)
                if self.on_poll is not None:
                    self.on_poll(session_id.decode("ascii"), int(cursor), self._poll_replier(
                        node.decode("ascii"), request_id.decode("ascii")))
                return
            if payload[:2] == b"r ":
                _, request_id, status, body = payload.split(b" ", 3)
                self._poll_answered(request_id.decode("ascii"), (int(status), body))
                return
            session_id, rest = payload.split(b" ", 1)
            session = self.sessions.get(session_id.decode("ascii"))
            raw_id, _, data = rest.split(b" ", 2)
            if session is not None:
                started = time.perf_counter()
                result = PublishResult()
                self._fan_out((session,), frames.message(None, raw_id.decode("ascii"), data), None, result)
                self._count(1, result, started)
            return
        if channel_name == self._all:
            raw_id, raw_exclude, data = payload.split(b" ", 2)
            started = time.perf_counter()
            result = PublishResult()
            frame = frames.message(None, raw_id.decode("ascii"), data)
            self._fan_out(self.sessions.values(), frame, raw_exclude.decode("ascii") or None, result)
            self._count(1, result, started)

    def _deliver_live(self, channel: RedisChannel, id: str, data: bytes, exclude: str | None) -> None:
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

    def _offer(self, join: _Join, channel: RedisChannel, key: Key, frame: Encoded, exclude: str | None) -> None:
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

    def sweep(self) -> int:
        """History lives in Redis, which expires it: nothing to sweep."""
        return 0
