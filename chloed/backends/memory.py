"""The memory backend: channels, subscribers, publishing, history and
presence, in this process (``backend = "memory"``).

:class:`Broker` is the engine, plain calls, also what a shared backend fans
out to this process's subscribers with; :class:`MemoryBackend` is it behind
the backend contract (:mod:`chloed.backends.base`), answering with fired
Deferreds; :class:`Presence` is who is in each presence channel.

The broker knows nothing of sockets or HTTP. A subscriber is anything with
``deliver(frame)`` and an ``id`` (in practice a :class:`chloed.session.Session`);
the broker keeps channel → subscribers and session id → session, gives each
message an id, keeps per-channel history for resume, and fans a publish out.

Message ids look like ``"<ms>-<seq>"``: the publish time in milliseconds and
a counter that increases across every channel of this process. Browsers treat
them as opaque; the broker orders them by ``seq``, so one id is also a cursor
over several channels (what an SSE stream's ``Last-Event-ID`` needs). An id
from before this process started cannot be resumed exactly, and says so with
``recovered: false``.

Fan-out encodes the frame once per channel and hands the same
:class:`~chloed.frames.Encoded` to every subscriber, each delivery isolated so
that one broken subscriber never stops the rest.
"""

from __future__ import annotations

import heapq
import re
from bisect import bisect_right
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from twisted.application.service import IService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from chloed import frames
from chloed.backends.base import (
    ChannelInfo, ChannelListing, HistoryPage, Policy, PublishResult, Replay, ReplayMany, Reply, SessionInfo,
    SessionListing, Subscriber, is_presence, listed,
)
from chloed.backends.users import Users
from chloed.frames import Encoded
from chloed.redact import session_tag

log = Logger()

_ID_RE = re.compile(r"([0-9]{1,16})-([0-9]{1,20})", re.ASCII)


@dataclass(frozen=True, slots=True)
class MessageId:
    """A parsed message id: publish time (ms) and the process-wide counter."""

    ms: int
    seq: int

    @classmethod
    def parse(cls, text: str) -> "MessageId | None":
        """The id a browser handed back, or None when it is not one of ours."""
        match = _ID_RE.fullmatch(text)
        if match is None:
            return None
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"


# The default history_memory: 64 MiB.
HISTORY_MEMORY = 64 * 1024 * 1024
# What a retained message costs beyond its bytes: the history entry, the
# frame object and its bytes objects.
HISTORY_OVERHEAD = 256


def message_data(frame: Encoded) -> bytes:
    """The published JSON a ``message`` frame (:func:`chloed.frames.message`)
    holds: what follows its head (whose strings cannot hold ``,"data":``)."""
    payload = frame.payload
    return payload[payload.index(b',"data":') + 8:-1]


def history_cost(frame: Encoded) -> int:
    """The bytes a retained message is counted as: its JSON three times
    (the JSON, and the WebSocket and SSE framings cached on the frame by
    the first recipient of each) plus :data:`HISTORY_OVERHEAD`."""
    return 3 * frame.size + HISTORY_OVERHEAD


class Channel:
    """One channel: its subscribers, and the history kept for resume."""

    __slots__ = ("name", "subscribers", "history", "dropped_seq", "last_id", "created_seq", "size", "ttl")

    def __init__(self, name: str, created_seq: int, size: int = 0, ttl: float = 0.0) -> None:
        self.name = name
        # What its history keeps: messages and seconds (its policy's).
        self.size = size
        self.ttl = ttl
        # What came before this seq belongs to an earlier, forgotten life of
        # the channel: only time can tell whether any of it was missed.
        self.created_seq = created_seq
        self.subscribers: dict[Subscriber, None] = {}
        # (seq, publish time in seconds, the encoded message frame)
        self.history: deque[tuple[int, float, Encoded]] = deque()
        # seq of the newest message that fell out of history: a resume from
        # before it cannot be complete.
        self.dropped_seq = 0
        self.last_id: str | None = None


class Broker:
    """Channels and sessions of one process.

    :param clock: the reactor's time, for ids and history expiry.
    :param history_size: messages kept per channel.
    :param history_ttl: seconds a message is kept.
    :param policy: ``(history_size, history_ttl)`` per channel, when not
        the same for every channel (namespaces, users' channels).

    ``published`` (messages given an id) and ``delivered`` (frames handed to
    subscribers) are counted once per publish, never per subscriber;
    ``observe_fanout``, when set, is called with the seconds each publish
    took to fan out. ``backend`` and ``backend_state`` say what holds the
    channels and whether it is ``"up"``: a shared backend sets its own.
    """

    backend = "memory"
    backend_state = "up"

    def __init__(
        self, clock: IReactorTime, history_size: int, history_ttl: float, history_memory: int = HISTORY_MEMORY,
        policy: Policy | None = None,
    ) -> None:
        self._clock = clock
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.policy: Policy = policy if policy is not None else (lambda name: (history_size, history_ttl))
        # The bytes the history of every channel may hold together, and
        # what it holds (see history_cost); the channels that hold any, the
        # least recently published to first, lose theirs first.
        self.history_memory = history_memory
        self.history_bytes = 0
        self._holding: OrderedDict[str, Channel] = OrderedDict()
        # The newest seq the budget evicted, of any channel: a channel
        # forgotten since may have lost messages before they expired.
        self._evicted_seq = 0
        self.channels: dict[str, Channel] = {}
        self.sessions: dict[str, Subscriber] = {}
        self._seq = 0
        self._boot_ms = int(clock.seconds() * 1000)
        self.published = 0
        self.delivered = 0
        self.observe_fanout: Callable[[float], None] | None = None

    # -- sessions ---------------------------------------------------------

    def add_session(self, session: Subscriber) -> None:
        self.sessions[session.id] = session

    def remove_session(self, session: Subscriber, channels: Iterable[str]) -> None:
        """Forget a session and its subscriptions."""
        for name in channels:
            self.unsubscribe(name, session)
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]

    # -- subscriptions ----------------------------------------------------

    def subscribe(
        self, name: str, subscriber: Subscriber, since: str | None = None
    ) -> tuple[bool, list[Encoded]]:
        """Add ``subscriber`` to channel ``name``.

        :param since: the last message id the browser saw, if resuming.
        :returns: whether the replay is complete (``recovered``), and the
            retained messages after ``since`` in order (none without since).
        """
        channel = self.channels.get(name)
        if channel is None:
            channel = self.channels[name] = self._new_channel(name, self._seq)
        channel.subscribers[subscriber] = None
        if since is None:
            return True, []
        return self.replay(name, since)

    def _new_channel(self, name: str, created_seq: int) -> Channel:
        size, ttl = self.policy(name)
        return Channel(name, created_seq, size, ttl)

    def unsubscribe(self, name: str, subscriber: Subscriber) -> bool:
        """Remove ``subscriber``; True when it was subscribed."""
        channel = self.channels.get(name)
        if channel is None or subscriber not in channel.subscribers:
            return False
        del channel.subscribers[subscriber]
        self._maybe_forget(channel)
        return True

    def replay(self, name: str, since: str) -> tuple[bool, list[Encoded]]:
        """Retained messages of ``name`` after ``since``, and whether that is
        everything the browser missed."""
        recovered, missed = self._missed(name, since)
        return recovered, [frame for _, frame in missed]

    def replay_many(self, names: Iterable[str], since: str) -> tuple[bool, list[Encoded]]:
        """Replay several channels after one cursor, merged in publish order."""
        recovered = True
        streams = []
        for name in names:
            ok, missed = self._missed(name, since)
            recovered = recovered and ok
            streams.append(missed)
        return recovered, [frame for _, frame in heapq.merge(*streams, key=lambda entry: entry[0])]

    def _missed(self, name: str, since: str) -> tuple[bool, list[tuple[int, Encoded]]]:
        after = MessageId.parse(since)
        channel = self.channels.get(name)
        now = self._clock.seconds()
        if channel is not None:
            self._expire(channel, now)
        history = channel.history if channel is not None else ()
        if after is None or after.ms < self._boot_ms or after.seq > self._seq:
            # Not an id of this process: whatever came before is gone.
            return False, [(seq, frame) for seq, _, frame in history]
        # A channel is forgotten only once its history is empty: whatever it
        # held after ``since`` is gone unless it cannot have expired yet.
        size, ttl = (channel.size, channel.ttl) if channel is not None else self.policy(name)
        unexpired = size > 0 and after.ms >= (now - ttl) * 1000 and after.seq >= self._evicted_seq
        if channel is None:
            return unexpired or after.seq >= self._seq, []
        missed = [(seq, frame) for seq, _, frame in history if seq > after.seq]
        recovered = after.seq >= channel.dropped_seq
        if after.seq < channel.created_seq:
            recovered = recovered and unexpired
        return recovered, missed

    # -- publishing -------------------------------------------------------

    def _next_id(self, now: float) -> tuple[int, str]:
        self._seq += 1
        return self._seq, f"{int(now * 1000)}-{self._seq}"

    def publish(
        self, names: Iterable[str], data: bytes, exclude: str | None = None
    ) -> PublishResult:
        """Publish ``data`` (JSON bytes) to each channel in ``names``.

        Channels with no subscribers still get an id and keep the message in
        history, so a browser subscribing a moment later can resume it.
        """
        result = PublishResult()
        now = self._clock.seconds()
        started = time.perf_counter()
        for name in names:
            seq, id = self._next_id(now)
            frame = frames.message(name, id, data)
            channel = self.channels.get(name)
            if channel is None:
                channel = self.channels[name] = self._new_channel(name, seq - 1)
            self._retain(channel, seq, now, frame)
            channel.last_id = id
            result.ids[name] = id
            self._fan_out(channel.subscribers, frame, exclude, result)
            self._maybe_forget(channel)
        self._count(len(result.ids), result, started)
        return result

    def subscribers(self, name: str) -> int:
        """How many sessions subscribe to channel ``name``."""
        channel = self.channels.get(name)
        return 0 if channel is None else len(channel.subscribers)

    def broadcast(self, data: bytes, exclude: str | None = None) -> PublishResult:
        """Send ``data`` to every session (``channel: null``)."""
        _, id = self._next_id(self._clock.seconds())
        result = PublishResult(id=id)
        started = time.perf_counter()
        self._fan_out(self.sessions.values(), frames.message(None, id, data), exclude, result)
        self._count(1, result, started)
        return result

    def to_session(self, session_id: str, data: bytes) -> PublishResult | None:
        """Send ``data`` to one session; None when there is no such session."""
        session = self.sessions.get(session_id)
        if session is None:
            return None
        _, id = self._next_id(self._clock.seconds())
        result = PublishResult(id=id)
        started = time.perf_counter()
        self._fan_out((session,), frames.message(None, id, data), None, result)
        self._count(1, result, started)
        return result

    def announce(self, name: str, frame: Encoded, exclude: str | None) -> int:
        """Deliver a frame that is not a message (presence) to a channel's
        subscribers; it is not kept in history."""
        channel = self.channels.get(name)
        if channel is None:
            return 0
        return self._fan_out(channel.subscribers, frame, exclude)

    def _count(self, published: int, result: PublishResult, started: float) -> None:
        """Count one publish (not each subscriber) for ``/status`` and
        ``/metrics``, and time its fan-out."""
        self.published += published
        self.delivered += result.delivered + result.queued
        if self.observe_fanout is not None:
            self.observe_fanout(time.perf_counter() - started)

    def _fan_out(
        self,
        subscribers: Iterable[Subscriber],
        frame: Encoded,
        exclude: str | None,
        result: PublishResult | None = None,
    ) -> int:
        """Deliver ``frame`` to each subscriber; returns how many took it.

        With ``result``, adds to its ``delivered`` (written to a connection
        now) and ``queued`` (held for the session's next poll).
        """
        reached = held = 0
        # A copy: a delivery may end a slow subscriber, which unsubscribes it.
        for subscriber in tuple(subscribers):
            if exclude is not None and subscriber.id == exclude:
                continue
            try:
                later = subscriber.deliver(frame)
            except Exception:
                log.failure("delivery to {session} failed", session=session_tag(subscriber.id))
            else:
                reached += 1
                if later:
                    held += 1
        if result is not None:
            result.delivered += reached - held
            result.queued += held
        return reached

    # -- history ----------------------------------------------------------

    def _retain(self, channel: Channel, seq: int, now: float, frame: Encoded) -> None:
        history = channel.history
        cost = history_cost(frame)
        if channel.size <= 0 or channel.ttl <= 0:
            channel.dropped_seq = seq
            return
        if frames.reserved(channel.name) or cost > self.history_memory:
            # Chloe's own channels keep nothing (nobody may forge them), nor
            # does one message larger than the whole budget.
            channel.dropped_seq = self._evicted_seq = seq
            return
        history.append((seq, now, frame))
        self.history_bytes += cost
        holding = self._holding
        holding[channel.name] = channel
        holding.move_to_end(channel.name)
        while len(history) > channel.size:
            self._drop_oldest(channel)
        self._expire(channel, now)
        while self.history_bytes > self.history_memory:
            self._evicted_seq = max(self._evicted_seq, self._drop_oldest(next(iter(holding.values()))))

    def _drop_oldest(self, channel: Channel) -> int:
        """The oldest message of ``channel`` falls out of its history; its seq."""
        seq, _, frame = channel.history.popleft()
        channel.dropped_seq = seq
        self.history_bytes -= history_cost(frame)
        if not channel.history:
            del self._holding[channel.name]
        return seq

    def _expire(self, channel: Channel, now: float) -> None:
        history = channel.history
        oldest = now - channel.ttl
        while history and history[0][1] <= oldest:
            self._drop_oldest(channel)

    def _maybe_forget(self, channel: Channel) -> None:
        if not channel.subscribers and not channel.history:
            self.channels.pop(channel.name, None)

    def sweep(self) -> int:
        """Expire old history of channels nobody listens to, and forget the
        empty ones; called periodically. Returns how many were forgotten."""
        now = self._clock.seconds()
        idle = [c for c in self.channels.values() if not c.subscribers]
        for channel in idle:
            self._expire(channel, now)
            self._maybe_forget(channel)
        return sum(1 for c in idle if c.name not in self.channels)

    def channel_names(self) -> Iterator[str]:
        return iter(self.channels)

    def position(self) -> str:
        """The last id given out, as a cursor (see :meth:`Backend.position`)."""
        return f"{int(self._clock.seconds() * 1000)}-{self._seq}"

    def read_history(self, name: str, since: str | None, limit: int) -> HistoryPage:
        """A page of ``name``'s history (see :class:`HistoryPage`)."""
        if since is None:
            channel = self.channels.get(name)
            if channel is not None:
                self._expire(channel, self._clock.seconds())
            entries = [frame for _, _, frame in channel.history][-limit:] if channel is not None else []
            recovered, more = True, False
        else:
            recovered, missed = self._missed(name, since)
            entries = [frame for _, frame in missed[:limit]]
            more = len(missed) > limit
        messages = [(frame.id or "", message_data(frame)) for frame in entries]
        position = messages[-1][0] if messages else self.position()
        return HistoryPage(messages, position, recovered, more)


# -- presence ----------------------------------------------------------------
#
# Who is in a ``presence-`` channel.
# 
# A member is a user (the ``user`` of the session's token), not a session: a
# user with three tabs open joins once, when the first tab subscribes, and
# leaves once, ``session_grace`` seconds after the last tab went away (a page
# reload does not make everyone see a leave and a join). A long-poll tab is
# away from its last poll on: its session ends ``session_grace`` later, and
# its member leaves then, not a second grace after. ``join`` and
# ``leave`` frames go to the channel's other subscribers.


def presence_frame(channel: str, event: str, member: dict[str, Any]) -> Encoded:
    return frames.encode({"type": "presence", "channel": channel, "event": event, "member": member})


class _Member:
    __slots__ = ("info", "sessions", "leaving")

    def __init__(self, info: Any) -> None:
        self.info = info
        self.sessions: set[str] = set()
        self.leaving: IDelayedCall | None = None


class Presence:
    """Members of every presence channel of this process.

    :param announce: ``announce(channel, frame, exclude_session)`` sends a
        frame to the channel's subscribers.
    :param grace: ``session_grace``: how long a member stays after its last
        session left.
    """

    def __init__(self, clock: IReactorTime, grace: float, announce: Callable[[str, Encoded, str | None], object]) -> None:
        self._clock = clock
        self._grace = grace
        self._announce = announce
        self._channels: dict[str, dict[str, _Member]] = {}
        # Whether a session is between two polls: the hub sets it; here a
        # member leaves when its session ends, which already waited that.
        self.idle: Callable[[str], bool] = lambda session: False
        self.changed: Callable[[str, bool, str], None] | None = None
        # (The memory presence knows a channel by its members.)
        self.is_presence: Callable[[str], bool] = is_presence

    def members(self, channel: str) -> list[dict[str, Any]]:
        """The members of ``channel``, as ``{"id", "info"}``."""
        return [{"id": uid, "info": m.info} for uid, m in self._channels.get(channel, {}).items()]

    def fetch(self, channel: str) -> Deferred[list[dict[str, Any]]]:
        return succeed(self.members(channel))

    def join(self, channel: str, session: str, user: dict[str, Any]) -> None:
        """``session`` of ``user`` subscribed to ``channel``."""
        uid = str(user["id"])
        members = self._channels.setdefault(channel, {})
        member = members.get(uid)
        if member is None:
            member = members[uid] = _Member(user.get("info"))
            member.sessions.add(session)
            self._announce(channel, presence_frame(channel, "join", {"id": uid, "info": member.info}), session)
            if self.changed is not None:
                self.changed(channel, True, uid)
            return
        member.sessions.add(session)
        if member.leaving is not None:
            member.leaving.cancel()
            member.leaving = None

    def part(self, channel: str, session: str, user: dict[str, Any], away: bool = False) -> None:
        """``session`` left ``channel``; the member leaves after the grace
        if it was its last session there, or at once when ``away`` (the
        session had already been gone for the grace: a long-poll session
        that expired)."""
        uid = str(user["id"])
        member = self._channels.get(channel, {}).get(uid)
        if member is None or session not in member.sessions:
            return
        member.sessions.discard(session)
        if member.sessions:
            return
        if away:
            if member.leaving is not None:
                member.leaving.cancel()
                member.leaving = None
            self._leave(channel, uid)
        elif member.leaving is None:
            member.leaving = self._clock.callLater(self._grace, self._leave, channel, uid)

    def _leave(self, channel: str, uid: str) -> None:
        members = self._channels.get(channel, {})
        member = members.pop(uid, None)
        if not members:
            self._channels.pop(channel, None)
        if member is not None:
            self._announce(channel, presence_frame(channel, "leave", {"id": uid, "info": member.info}), None)
            if self.changed is not None:
                self.changed(channel, False, uid)


# -- the backend ---------------------------------------------------------------


class MemoryBackend:
    """The backend contract (:class:`chloed.backends.base.Backend`) on one
    :class:`Broker` and one :class:`Presence`, for one process: every
    answer is a Deferred that has fired already, so the hub's callbacks run
    at once, in the order plain calls would."""

    backend = "memory"
    backend_state = "up"

    def __init__(
        self, clock: IReactorTime, history_size: int, history_ttl: float, history_memory: int = HISTORY_MEMORY,
        policy: Policy | None = None,
    ) -> None:
        self._use(Broker(clock, history_size, history_ttl, history_memory, policy))

    @classmethod
    def over(cls, local: Broker) -> "MemoryBackend":
        """The contract over an engine made elsewhere (tests drive both)."""
        backend = cls.__new__(cls)
        backend._use(local)
        return backend

    def _use(self, local: Broker) -> None:
        self.local = local
        self.channels = local.channels
        self.sessions = local.sessions
        # The listed session ids, sorted, as the first page of the latest
        # walk of GET /sessions found them (see session_list).
        self._roll: list[str] | None = None
        self.users = Users(local._clock)
        self._control: Callable[[dict[str, Any]], None] | None = None

    # The counters and the fan-out timer are the engine's.
    @property
    def published(self) -> int:
        return self.local.published

    @property
    def delivered(self) -> int:
        return self.local.delivered

    @property
    def history_bytes(self) -> int:
        """What the history of every channel holds (see :func:`history_cost`)."""
        return self.local.history_bytes

    @property
    def observe_fanout(self) -> Callable[[float], None] | None:
        return self.local.observe_fanout

    @observe_fanout.setter
    def observe_fanout(self, observe: Callable[[float], None] | None) -> None:
        self.local.observe_fanout = observe

    # -- life -------------------------------------------------------------

    def service(self) -> IService | None:
        return None

    def sweep(self) -> int:
        self.users.sweep()
        return self.local.sweep()

    # -- the session registry -------------------------------------------

    def add_session(self, session: Subscriber) -> Deferred[None]:
        self.local.add_session(session)
        return succeed(None)

    def remove_session(self, session: Subscriber, channels: Iterable[str]) -> None:
        self.local.remove_session(session, channels)

    # -- subscriptions -----------------------------------------------------

    def subscribe(self, name: str, subscriber: Subscriber, since: str | None = None) -> Deferred[Replay | None]:
        return succeed(self.local.subscribe(name, subscriber, since))

    def subscribe_many(
        self, names: list[str], subscriber: Subscriber, since: str | None = None
    ) -> Deferred[ReplayMany | None]:
        local = self.local
        recovered: dict[str, bool] = {}
        for name in names:
            local.subscribe(name, subscriber, None)
            if since is not None:
                recovered[name] = local.replay(name, since)[0]
        missed = local.replay_many(names, since)[1] if since is not None else []
        return succeed((recovered, missed))

    def unsubscribe(self, name: str, subscriber: Subscriber) -> bool:
        return self.local.unsubscribe(name, subscriber)

    # -- publishing --------------------------------------------------------

    def publish(self, names: Iterable[str], data: bytes, exclude: str | None = None) -> Deferred[PublishResult]:
        return succeed(self.local.publish(names, data, exclude))

    def broadcast(self, data: bytes, exclude: str | None = None) -> Deferred[PublishResult]:
        return succeed(self.local.broadcast(data, exclude))

    def to_session(self, session_id: str, data: bytes) -> Deferred[PublishResult | None]:
        return succeed(self.local.to_session(session_id, data))

    def announce(self, name: str, frame: Encoded, exclude: str | None) -> int:
        return self.local.announce(name, frame, exclude)

    def occupy(self, name: str, occupied: bool) -> Deferred[bool]:
        """One process is the whole cluster."""
        return succeed(True)

    # -- what channels hold ------------------------------------------------

    def history(self, name: str, since: str) -> Deferred[Replay]:
        return succeed(self.local.replay(name, since))

    def channel_info(self, name: str) -> Deferred[ChannelInfo]:
        channel = self.channels.get(name)
        if channel is None:
            return succeed(ChannelInfo(name, 0, None, None))
        return succeed(ChannelInfo(name, len(channel.subscribers), channel.last_id, len(channel.history)))

    def channel_list(self) -> Deferred[ChannelListing]:
        listing = {
            name: ChannelInfo(name, len(channel.subscribers), channel.last_id, len(channel.history))
            for name, channel in self.channels.items()
        }
        return succeed(ChannelListing(listing, "cluster"))

    def session_list(self, limit: int, cursor: str | None) -> Deferred[SessionListing]:
        """This process's sessions (``scope: cluster``: it is the cluster)
        in id order, ``cursor`` the last id of the page before.

        A walk's first page sorts the ids once (the *roll*); the pages
        after it bisect that roll, so a walk costs one sort, not a scan per
        page. Whoever started the newest walk made the roll, so it is never
        older than any walk going on: each session there throughout a walk
        is in it. Ids gone since are skipped; sessions opened since may be
        left out, as they may be on Redis.
        """
        roll = self._roll
        if cursor is None or roll is None:
            roll = self._roll = sorted(id for id, session in self.sessions.items() if listed(session))
        at = 0 if cursor is None else bisect_right(roll, cursor)
        sessions = self.sessions
        found: list[SessionInfo] = []
        more = False
        while at < len(roll):
            session = sessions.get(roll[at])
            if session is not None:
                if len(found) == limit:
                    more = True
                    break
                found.append(SessionInfo.of(session, None))
            at += 1
        if not more:
            self._roll = None  # a walk ended: its memory goes
        return succeed(SessionListing(found, found[-1].id if more else None, "cluster"))

    def make_presence(self, clock: IReactorTime, grace: float) -> Presence:
        return Presence(clock, grace, self.local.announce)

    def position(self, name: str | None = None) -> Deferred[str]:
        """One id sequence for every channel: ``name`` changes nothing."""
        return succeed(self.local.position())

    def read_history(self, name: str, since: str | None, limit: int) -> Deferred[HistoryPage]:
        return succeed(self.local.read_history(name, since, limit))

    # -- users ---------------------------------------------------------------

    def user_join(self, user: str, session: Subscriber, limit: int) -> Deferred[bool]:
        return succeed(self.users.join(user, session, limit))

    def user_leave(self, user: str, session: Subscriber) -> None:
        self.users.leave(user, session)

    def user_sessions(self, user: str) -> Deferred[list[SessionInfo]]:
        return succeed([SessionInfo.of(session, None) for session in self.users.sessions(user)])

    def user_channels(self, user: str) -> Deferred[list[str]]:
        return succeed(self.users.channels(user))

    def persist_channel(self, user: str, channel: str, keep: bool) -> Deferred[None]:
        self.users.persist(user, channel, keep)
        return succeed(None)

    def revoke(self, jti: str | None, user: str | None, before: float | None, until: float) -> Deferred[None]:
        self.users.revoke(jti, user, before, until)
        return succeed(None)

    def revoked(self, jti: str | None, user: str, iat: float) -> Deferred[bool]:
        return succeed(self.users.revoked(jti, user, iat))

    def control(self, command: dict[str, Any]) -> Deferred[int]:
        """Counted, then run here: this process is every node."""
        if "session" in command:
            targets = 1 if command["session"] in self.sessions else 0
        elif "user" in command:
            targets = len(self.users.sessions(command["user"]))
        else:
            targets = 0  # (a token's sessions are not counted)
        if self._control is not None:
            self._control(command)
        return succeed(targets)

    def serve_control(self, handler: Callable[[dict[str, Any]], None]) -> None:
        self._control = handler

    # -- sessions held by other nodes: one process has none ----------------

    def serve_handover(
        self, frames: Callable[[str, bytes], None], poll: Callable[[str, int, Reply], None]
    ) -> None:
        """Nothing is ever handed over: there is no other node to do it."""

    def forward(self, session_id: str, body: bytes) -> Deferred[bool] | None:
        return None

    def forward_poll(self, session_id: str, cursor: int, timeout: float) -> Deferred[tuple[int, bytes] | None] | None:
        return None
