"""The broker of one node of several sharing Redis (:class:`RedisBroker`):
the node's channels and sessions, publishing, and delivering live messages.

Its connections are a :class:`~.link.RedisLink`; the channels' pub/sub
subscriptions, the delivery of live messages, joins, the census, presence
and the handover of other nodes' requests have modules of their own, each
given what it needs of the broker, never the broker itself.
"""

from __future__ import annotations

import secrets
from typing import Any, Callable, Iterable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from chloed import frames
from chloed.backends.base import (
    ChannelInfo, ChannelListing, HistoryPage, Policy, PublishResult, Replay, SessionInfo, SessionListing, Subscriber,
)
from chloed.backends.memory import Broker, Channel
from chloed.backends.redis.census import COUNTS_TTL, Census, polling
from chloed.backends.redis.channel import RedisChannel, Retention, _Join, _Snapshot
from chloed.backends.redis.channels import ChannelSubscriptions
from chloed.backends.redis.control import Control
from chloed.backends.redis.delivery import Delivery
from chloed.backends.redis.handover import Handover
from chloed.backends.redis.joins import Joins
from chloed.backends.redis.keys import (
    COUNTS_PREFIX, HISTORY_PREFIX, IDS_KEY, NODES_KEY, OCCUPANCY_PREFIX, SESSION_PREFIX, SESSION_TTL, format_key,
    parse_key, parse_url,
)
from chloed.backends.redis.link import ConnectedWhileRunning, RedisLink, ignore
from chloed.backends.redis.liveness import Liveness
from chloed.backends.redis.presence import RedisPresence
from chloed.backends.redis.roster import Roster
from chloed.backends.redis.scripts import (
    DIRECT_SCRIPT, HISTORY_SCRIPT, OCCUPANCY_SCRIPT, POSITION_SCRIPT, PUBLISH_SCRIPT, SNAPSHOT_SCRIPT,
    SUBSCRIBERS_SCRIPT,
)
from chloed.backends.redis.users import Users
from chloed.frames import Encoded

log = Logger(namespace="chloed.backends.redis")  # as before redis.py became a package


class RedisBroker(Broker):
    """The broker of one node of several sharing Redis.

    :param url: ``redis://host:port/db``.
    :param reactor: connects to Redis; the clock unless given.
    :param node: this node's name in Redis (random unless given).
    :param policy: ``(history_size, history_ttl)`` per channel (None: the
        globals for every channel); asked once per channel a call names.
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
        policy: Policy | None = None,
    ) -> None:
        super().__init__(clock, history_size, history_ttl, policy=policy)
        self.url = url
        self.host, self.port, self.db = parse_url(url)
        self._reactor = reactor if reactor is not None else clock
        self.node = node or secrets.token_hex(8)
        self.pubsub = f"chloe:{self.db}:"
        self.channels: dict[str, RedisChannel] = {}  # type: ignore[assignment]  # invariant dict, RedisChannels only
        # Lambdas: the delivery and the channels' subscriptions are made below.
        self._link = RedisLink(
            self._reactor, self.host, self.port, self.db,
            channels=[self.pubsub + "all", self.pubsub + "n:" + self.node],
            on_message=lambda channel, payload: self._delivery.on_message(channel, payload),
            on_commands_up=self._commands_ready,
            on_pubsub_up=lambda: self._channel_subscriptions.subscribed_again(),
            on_pubsub_down=self._pubsub_lost,
        )
        call = self._link.call
        # Probes through pub/sub: heals a connection gone half-dead.
        own = self.pubsub + "n:" + self.node
        self.liveness = Liveness(
            clock, publish=lambda payload: call("publish", own, payload), up=lambda: self._link.up,
            heal=self._link.reset_pubsub,
        )
        self.presence: RedisPresence | None = None
        self._renewal: LoopingCall | None = None
        # Subscriber counts in Redis, for /send receipts.
        self.census = Census(
            clock, call=call, ignore=ignore, node=self.node, channels=lambda: self.channels, connected=self._connected
        )
        # Which sessions the node holds, for GET /sessions on any node.
        self.roster = Roster(
            clock, call=call, ignore=ignore, node=self.node, sessions=self.sessions, connected=self._connected,
            ttl_ms=lambda: self.census.node_ttl_ms,
        )
        self.census.on_beat = self.roster.refresh
        # Each user's sessions on every node; written again whenever the
        # census is (Redis came back, or had given this node up).
        self.users = Users(call=call, ignore=ignore, node=self.node, connected=self._connected)
        self.census.on_recount = self.users.rewrite
        # The app's commands to every node, and its revocations.
        self._control = Control(clock, call=call, pubsub=self.pubsub, node=self.node)
        self._joins = Joins(
            self.channels, census=self.census, snapshot=self._snapshot, later=self._link.later,
            connected=self._connected, forget=self._maybe_forget,
        )
        # Frames and polls of sessions held by another node, or by this one.
        self._handover = Handover(self._reactor, call=call, ignore=ignore, pubsub=self.pubsub, node=self.node)
        self._delivery = Delivery(
            self.channels, self.sessions, pubsub=self.pubsub, node=self.node,
            node_kinds={**self._handover.kinds(), **self.liveness.kinds()}, everyone_kinds=self._control.kinds(),
            offer=self._joins.offer, fan_out=self._fan_out, count=self._count, presence=lambda: self.presence,
        )
        self._channel_subscriptions = ChannelSubscriptions(
            self.channels, link=self._link, pubsub=self.pubsub, connected=self._connected, snapshot=self._snapshot,
            deliver=self._delivery.deliver_live, try_join=self._joins.try_join, presence=lambda: self.presence,
            retention=lambda name: Retention.of(self.policy, name),
        )

    # -- connections ------------------------------------------------------

    def serve_handover(self, frames: Any, poll: Any) -> None:
        """Where frames and polls other nodes hand over for this node's
        sessions go: ``frames(session_id, body)``, ``poll(session_id,
        cursor, reply)`` with ``reply(status, body)``."""
        self._handover.serve(frames, poll)

    @property
    def on_forward(self) -> Callable[[str, bytes], None] | None:
        """Where frames handed over for this node's sessions go (as
        :meth:`serve_handover` sets it)."""
        return self._handover.on_forward

    @on_forward.setter
    def on_forward(self, frames: Callable[[str, bytes], None] | None) -> None:
        self._handover.on_forward = frames

    @property
    def link(self) -> RedisLink:
        """The node's connections to Redis, for what else keeps state there
        (the relay's Redis spool)."""
        return self._link

    def service(self) -> Service:
        """The service that connects this broker while the server runs."""
        return ConnectedWhileRunning(self.connect, self.disconnect)

    def make_presence(self, clock: IReactorTime, grace: float, announce: Any = None) -> "RedisPresence":
        """Presence kept in Redis, for the hub (in place of
        :class:`chloed.backends.memory.Presence`)."""
        self.presence = RedisPresence(
            clock, grace, call=self._link.call, ignore=ignore, pubsub=self.pubsub,
            channels=lambda: self.channels, announce=self.announce,
        )
        return self.presence

    def connect(self) -> None:
        """Open both connections; they come back by themselves when lost."""
        self.census.start()
        self.roster.start()
        if self.presence is not None:
            self.presence.start()
        # Sessions older than SESSION_TTL stay reachable by /send, and
        # counted as their users'.
        self._renewal = LoopingCall(self._renew)
        self._renewal.clock = self._clock
        self._renewal.start(SESSION_TTL / 4, now=False).addErrback(
            lambda f: log.failure("renewing session keys stopped", f)
        )
        self.liveness.start()
        self._link.connect()

    def disconnect(self) -> Deferred[Any]:
        """Leave the census, stop the timers, close both connections."""
        self.census.stop()
        self.roster.stop()
        if self.presence is not None:
            self.presence.stop()
        if self._renewal is not None and self._renewal.running:
            self._renewal.stop()
        self.liveness.stop()
        return self._link.disconnect()

    @property
    def backend_state(self) -> str:  # type: ignore[override]  # a property where the memory broker has a constant
        """``down`` while a connection is, ``degraded`` from a missed probe
        until one comes back (see :mod:`.liveness`), else ``up``."""
        if not self._link.up:
            return "down"
        return "degraded" if self.liveness.degraded else "up"

    @property
    def _commands(self) -> Any:
        """The command connection, None while there is none (tests watch it)."""
        return self._link.commands

    @property
    def _subscriptions(self) -> Any:
        """The pub/sub connection, None while there is none."""
        return self._link.subscriptions

    def _connected(self) -> bool:
        return self._link.commands is not None

    def _pubsub_lost(self) -> None:
        self._channel_subscriptions.lost()
        self.liveness.lost()

    def _commands_ready(self) -> None:
        # First on the new connection, so every join and session after it
        # adds to complete counts.
        self.census.recount()
        self._register_all()
        self.roster.rewrite()
        for channel in list(self.channels.values()):
            self._channel_subscriptions.check(channel)
            for join in list(channel.joining):
                self._joins.try_join(join)

    # -- sessions ---------------------------------------------------------

    def add_session(  # type: ignore[override]  # the hub waits on it before ``connected``
        self, session: Subscriber
    ) -> Deferred[None]:
        """Count and register the session; fires once Redis counts it (the
        hub answers ``connected`` then), at once when there is nothing to
        wait for (Redis away: the node recounts once it is back)."""
        new = session.id not in self.sessions
        if new:
            self.census.session_added(session)
        super().add_session(session)
        if new:
            self.roster.added(session)
        opened = self.census.session_opened(session.id) if new else None
        if opened is None:
            self._register(session.id)
            return defer.succeed(None)
        return opened.addCallback(lambda _: None)

    def remove_session(self, session: Subscriber, channels: Iterable[str]) -> None:
        if self.sessions.get(session.id) is session:
            self.census.session_removed(session)
            self.roster.removed(session)
        super().remove_session(session, channels)
        if self._connected() and session.id not in self.sessions:
            self._link.call("delete", SESSION_PREFIX + session.id).addErrback(ignore)

    def _register_all(self) -> None:
        for session_id in list(self.sessions):
            self._register(session_id)

    def _renew(self) -> None:
        self._register_all()
        self.users.rewrite()

    def _register(self, session_id: str) -> None:
        if self._connected():
            self._link.call("set", SESSION_PREFIX + session_id, self.node, SESSION_TTL).addErrback(ignore)

    # -- subscriptions ----------------------------------------------------

    def subscribe(  # type: ignore[override]  # answers with a Deferred: Redis answers later
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
        self, names: list[str], subscriber: Subscriber, since: str | None = None
    ) -> Deferred[tuple[dict[str, bool], list[Encoded]] | None]:
        """Join ``subscriber`` to several channels at once, replaying after
        one cursor merged across them in publish order.

        Fires with ``({channel: recovered}, missed)`` once it is in every
        channel (``recovered`` only for those given ``since``), or None when
        it left them all before; waits while Redis is away.
        """
        join = _Join(subscriber, list(dict.fromkeys(names)), since)
        self.roster.changed(subscriber)
        for name in join.names:
            channel = self._channel_subscriptions.channel(name)
            channel.joining.append(join)
        self._joins.try_join(join)
        return join.deferred

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
        if self._joins.withdraw(channel, subscriber):
            found = True
        if found:
            self.roster.changed(subscriber)
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
            self._channel_subscriptions.unsubscribe(channel)

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
        return self._link.call("eval", SNAPSHOT_SCRIPT, keys, args).addCallback(_Snapshot)

    # -- publishing -------------------------------------------------------

    def publish(  # type: ignore[override]  # answers with a Deferred: Redis answers later
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
        kept = [self._retention(name) for name in names]
        args = (
            [data, self.pubsub + "c:", exclude or "", len(names)]
            + names + [k.size for k in kept] + [k.ttl_ms for k in kept]
        )

        def done(reply: list[Any]) -> PublishResult:
            result = PublishResult()
            for name, id in zip(names, reply):
                result.ids[name] = id.decode("ascii")
            result.delivered, result.queued = int(reply[-3]), int(reply[-2])
            result.lower_bound = bool(int(reply[-1]))
            return result

        return self._link.call("eval", PUBLISH_SCRIPT, keys, args).addCallback(done)

    def broadcast(  # type: ignore[override]  # answers with a Deferred: Redis answers later
        self, data: bytes, exclude: str | None = None
    ) -> Deferred[PublishResult]:
        """Send ``data`` to every session of every node; the receipt counts
        the sessions of every node alive (each node tells Redis of a session
        as it opens, of one that closed a moment later)."""
        d = self._link.call("eval", DIRECT_SCRIPT, [IDS_KEY, NODES_KEY], [data, self.pubsub, exclude or ""])

        def done(reply: list[Any]) -> PublishResult:
            return PublishResult(
                id=reply[0].decode("ascii"), delivered=int(reply[1]), queued=int(reply[2]),
                lower_bound=bool(int(reply[3])),
            )

        return d.addCallback(done)

    def to_session(  # type: ignore[override]  # answers with a Deferred: Redis answers later
        self, session_id: str, data: bytes
    ) -> Deferred[PublishResult | None]:
        """Send ``data`` to one session on whichever node holds it; fires
        with None when none does (``delivered`` 1: its node has it)."""
        keys = [IDS_KEY, NODES_KEY, SESSION_PREFIX + session_id]
        d = self._link.call("eval", DIRECT_SCRIPT, keys, [data, self.pubsub, "", session_id])
        return d.addCallback(lambda reply: PublishResult(id=reply[0].decode("ascii"), delivered=1) if reply else None)

    def subscribers(self, name: str) -> Deferred[int]:  # type: ignore[override]  # Redis answers later
        """How many sessions subscribe to channel ``name`` on every node
        alive, as the nodes last reported them."""
        d = self._link.call("eval", SUBSCRIBERS_SCRIPT, [NODES_KEY, COUNTS_PREFIX + name], [])
        return d.addCallback(lambda reply: int(reply[0]) + int(reply[1]))

    # -- what channels hold -------------------------------------------------

    def _retention(self, name: str) -> Retention:
        """What ``name``'s history keeps: its policy's (asked once per
        channel this node holds, once per call for the others)."""
        channel = self.channels.get(name)
        return channel.retention if channel is not None else Retention.of(self.policy, name)

    def history(self, name: str, since: str) -> Deferred[Replay]:
        """What Redis retains of ``name`` after ``since`` (one atomic read),
        and whether that is everything published after it."""
        after = parse_key(since)
        read = format_key(after) if after is not None else "0-0"
        retention = self._retention(name)

        def answer(snapshot: _Snapshot) -> Replay:
            recovered = (
                after is not None and after <= snapshot.head
                and snapshot.recovered(0, after, retention)
            )
            return recovered, [frames.message(name, id, data) for _, id, data in snapshot.entries(0)]

        return self._snapshot([name], [read]).addCallback(answer)

    def position(self, name: str | None = None) -> Deferred[str]:  # type: ignore[override]  # Redis answers later
        """The cluster's last id given out, as a cursor: its seq, under an
        ms pushed on to Redis's clock (``POSITION_SCRIPT``), so that a join
        from it within a channel's ttl is recovered however long ago the
        last message was. One Redis has one sequence: ``name`` (the
        channel the cursor is for, see :mod:`.shards`) changes nothing."""
        d = self._link.call("eval", POSITION_SCRIPT, [IDS_KEY], [])
        return d.addCallback(lambda reply: f"{int(reply[0])}-{int(reply[1])}")

    def read_history(  # type: ignore[override]  # Redis answers later
        self, name: str, since: str | None, limit: int
    ) -> Deferred[HistoryPage]:
        """A page of ``name``'s history, read in one script: without
        ``since`` its newest ``limit`` messages; with it the first ``limit``
        after it, ``recovered`` as a join's (a cursor not of this cluster
        reads from the oldest, not recovered). ``position`` is the last
        message of the page, or the cluster's position when it is empty."""
        after = parse_key(since) if since is not None else None
        if since is None:
            args: list[Any] = [limit, "", "", ""]
        else:
            read = after if after is not None else (0, 0)
            args = [limit, format_key(read), read[0], read[1]]
        retention = self._retention(name)

        def page(reply: list[Any]) -> HistoryPage:
            snapshot = _Snapshot(reply[:5])
            messages = [(id, data) for _, id, data in snapshot.entries(0)]
            position = messages[-1][0] if messages else f"{int(reply[6])}-{snapshot.head[1]}"
            recovered = since is None or (
                after is not None and after <= snapshot.head and after[1] <= snapshot.head[1]
                and snapshot.recovered(0, after, retention)
            )
            return HistoryPage(messages, position, recovered, bool(int(reply[5])))

        return self._link.call("eval", HISTORY_SCRIPT, [IDS_KEY, HISTORY_PREFIX + name], args).addCallback(page)

    def occupy(self, name: str, occupied: bool) -> Deferred[bool]:
        """Whether the cluster's subscribers of ``name`` went with this
        node's (``OCCUPANCY_SCRIPT``)."""
        keys = [OCCUPANCY_PREFIX + name, NODES_KEY]
        d = self._link.call("eval", OCCUPANCY_SCRIPT, keys, [self.node, "1" if occupied else "0"])
        return d.addCallback(lambda answer: answer == 1)

    def channel_info(self, name: str) -> Deferred[ChannelInfo]:
        """The subscribers of every node alive; the last id this node
        delivered (the history lives in Redis: not counted here)."""
        channel = self.channels.get(name)
        last_id = None if channel is None else channel.last_id
        return self.subscribers(name).addCallback(lambda count: ChannelInfo(name, count, last_id, None))

    def channel_list(self) -> Deferred[ChannelListing]:
        """This node's channels and subscribers (``scope: node``): the
        cluster's would mean asking every node."""
        listing = {
            name: ChannelInfo(name, len(channel.subscribers), channel.last_id, None)
            for name, channel in self.channels.items()
        }
        return defer.succeed(ChannelListing(listing, "node"))

    def session_list(self, limit: int, cursor: str | None) -> Deferred[SessionListing]:
        """Every live node's sessions, from their rosters in Redis (each
        within :data:`~.roster.FLUSH_DELAY` of a change): one script a
        page (see :class:`~.roster.Roster`)."""
        return self.roster.page(limit, cursor)

    # -- the handover (see .handover) -------------------------------------

    def forward(self, session_id: str, body: bytes) -> Deferred[bool]:
        """Hand browser frames POSTed here to the node holding
        ``session_id``; fires with whether one does."""
        return self._handover.forward(session_id, body)

    def forward_poll(self, session_id: str, cursor: int, timeout: float) -> Deferred[tuple[int, bytes] | None]:
        """Ask the node holding ``session_id`` for its next poll answer
        after ``cursor``; fires with ``(status, JSON body)``, or None when no
        node holds the session (or it did not answer within ``timeout``)."""
        return self._handover.forward_poll(session_id, cursor, timeout)

    def answer_poll(self, node: str, request_id: str, status: int, body: bytes) -> None:
        """Send a poll's answer back to the node that forwarded it."""
        self._handover.answer_poll(node, request_id, status, body)

    def sweep(self) -> int:
        """History lives in Redis, which expires it: nothing to sweep."""
        return 0

    # -- users (see .users) and the app's commands (see .control) -----------

    def user_join(self, user: str, session: Subscriber, limit: int) -> Deferred[bool]:
        """Count ``session`` as ``user``'s, unless the user has ``limit``
        sessions (0: no limit) on the nodes alive already: one script."""
        return self.users.join(user, session, limit)

    def user_leave(self, user: str, session: Subscriber) -> None:
        """``session`` of ``user`` ended (sent without waiting). The user
        channel's count here goes first, on the same connection: once the
        user's sessions no longer list it, receipts no longer count it."""
        self.census.report_now(frames.user_channel(user))
        self.users.leave(user, session)

    def user_sessions(self, user: str) -> Deferred[list[SessionInfo]]:
        """``user``'s sessions on the nodes alive, by node then id: this
        node's as they are, the others' channels and transport as their
        rosters last said (within the roster's flush delay)."""
        return self.users.sessions(user, self.sessions)

    def user_channels(self, user: str) -> Deferred[list[str]]:
        """``user``'s persisted server-side subscriptions."""
        return self.users.channels(user)

    def persist_channel(self, user: str, channel: str, keep: bool) -> Deferred[None]:
        """Keep ``channel`` among ``user``'s persisted subscriptions, or not."""
        return self.users.persist(user, channel, keep)

    def revoke(self, jti: str | None, user: str | None, before: float | None, until: float) -> Deferred[None]:
        """Refuse the token ``jti`` until ``until``, or ``user``'s tokens
        issued before ``before`` (now when None), on every node."""
        return self._control.revoke(jti, user, before, until)

    def revoked(self, jti: str | None, user: str, iat: float) -> Deferred[bool]:
        """Whether the token was revoked (one round trip)."""
        return self._control.revoked(jti, user, iat)

    def control(self, command: dict[str, Any]) -> Deferred[int]:
        """Have every node's handler (this one's too) run ``command``; fires
        with the sessions it targets on the nodes alive, counted in the
        script that publishes it; fails with :class:`BackendUnavailable`
        while Redis is away."""
        return self._control.send(command)

    def serve_control(self, handler: Callable[[dict[str, Any]], None]) -> None:
        """Where the commands of :meth:`control` go on this node."""
        self._control.handler = handler
