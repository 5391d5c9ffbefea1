"""The backend contract: what the hub, the API and the transports may ask of
where channels live, whichever backend that is.

Two backends implement it: :class:`chloed.backends.memory.MemoryBackend`
(one process) and :class:`chloed.backends.redis.RedisBroker` (several nodes
sharing Redis). The contract is asynchronous everywhere a shared backend
has to ask someone: those methods return Deferreds. The memory backend
answers with Deferreds that have already fired (``succeed(...)``), so its
callbacks run at once, in the same order as plain calls would, as Klein's
memory session store does. Fan-out to this process's subscribers stays a
plain call (``announce``, and the local delivery behind ``publish``):
nothing about the contract is paid per delivery.

Written as :class:`typing.Protocol`\\ s: a backend conforms by having the
methods, mypy checks that it does where one is used as a :class:`Backend`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol

from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from chloed.frames import Encoded


class BackendUnavailable(Exception):
    """The backend cannot take a publish now (Redis is down or answered an
    error); ``/send`` answers 503 ``backend_unavailable``."""


class Subscriber(Protocol):
    """What a channel delivers to: a session (or a test's recorder).

    Receipts count a subscriber as ``queued`` (held for its next poll)
    rather than ``delivered``: the memory backend when ``deliver`` returns
    True, the Redis census by its ``transport`` (``"longpoll"`` or
    ``"jsonp"``), which a :class:`chloed.session.Session` has.
    """

    id: str

    def deliver(self, frame: Encoded) -> bool | None:
        """Take ``frame``; True when it is held for a later poll."""


@dataclass(slots=True)
class PublishResult:
    """What a publish did: the id per channel (``id`` for a message to
    everyone or to one session), how many sessions got it now
    (``delivered``) and how many hold it for their next poll (``queued``);
    ``lower_bound`` when the counts may miss some (several nodes)."""

    ids: dict[str, str] = field(default_factory=dict)
    id: str | None = None
    delivered: int = 0
    queued: int = 0
    lower_bound: bool = False


#: A join's answer: whether the replay after ``since`` is complete
#: (``recovered``), and the messages missed, in publish order.
Replay = tuple[bool, list[Encoded]]
#: A join of several channels: ``recovered`` per channel, and the missed
#: messages of all of them merged in publish order.
ReplayMany = tuple[dict[str, bool], list[Encoded]]
#: ``reply(status, JSON body)``: how a handed-over poll is answered.
Reply = Callable[[int, bytes], None]


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """One channel as ``GET /channels/NAME`` reports it: its subscribers
    (on every node), its last message id, and how many messages its
    history holds where the backend keeps it in this process (else None)."""

    name: str
    subscribers: int
    last_id: str | None
    history: int | None


@dataclass(frozen=True, slots=True)
class ChannelListing:
    """``GET /channels``: the active channels with their subscribers and
    last id; ``scope`` says whose: ``"node"`` (this process's subscribers
    only, with several nodes) or ``"cluster"`` (everyone's)."""

    channels: dict[str, ChannelInfo]
    scope: str


#: A session's ``transport`` when it is a Pusher socket: those are the
#: Pusher app's (its own API reports them), never listed by ``GET /sessions``.
PUSHER_TRANSPORT = "pusher"


#: What a ``GET /sessions`` cursor may be: a session id (memory), or a node
#: and a session id (``<node>~<id>``, Redis); any such string is a position.
SESSION_CURSOR = re.compile(r"[A-Za-z0-9_.~-]{1,512}", re.ASCII)


def listed(subscriber: Subscriber) -> bool:
    """Whether ``GET /sessions`` lists ``subscriber`` (not a Pusher socket)."""
    return getattr(subscriber, "transport", None) != PUSHER_TRANSPORT


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One session as ``GET /sessions`` lists it: its transport, its token
    user (None before a token named one), its channels (sorted) and the
    node holding it (None with the memory backend: there is one)."""

    id: str
    transport: str
    user: Any
    channels: list[str]
    node: str | None

    @classmethod
    def of(cls, session: Subscriber, node: str | None) -> "SessionInfo":
        """What a session says of itself (a :class:`chloed.session.Session`
        has every attribute; a test's recorder may have none)."""
        return cls(
            session.id, getattr(session, "transport", ""), getattr(session, "user", None),
            sorted(getattr(session, "channels", ())), node,
        )


@dataclass(frozen=True, slots=True)
class SessionListing:
    """A page of ``GET /sessions``: at most ``limit`` sessions in a stable
    order, ``next`` the cursor of the page after (None after the last), and
    ``scope`` whose (always ``"cluster"``: every node's)."""

    sessions: list[SessionInfo]
    next: str | None
    scope: str


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """``GET /channels/NAME/history``: ``messages`` as ``(id, data JSON
    bytes)``, oldest first; ``position``, the cursor a browser subscribes
    from (``since``) to get everything after them; ``recovered`` false when
    some published after the ``since`` asked for are gone; ``more`` when
    more follow the page."""

    messages: list[tuple[str, bytes]]
    position: str
    recovered: bool
    more: bool


#: ``policy(channel) -> (history_size, history_ttl)``: what a channel keeps
#: (its namespace's, a user channel's, or the globals).
Policy = Callable[[str], tuple[int, float]]


class LocalChannel(Protocol):
    """A channel as this process holds it: its local subscribers."""

    name: str
    last_id: str | None

    @property
    def subscribers(self) -> Mapping[Subscriber, None]:
        """This process's subscribers (a dict used as an ordered set)."""


def is_presence(name: str) -> bool:
    """Whether ``name`` is a presence channel: ``presence-...``, or a
    namespaced one whose own name is (a Pusher app's ``pusher~<id>~presence-...``;
    ``~`` is in no channel name itself); never a user's own channel
    (``#u:<id>``, whatever the id)."""
    return name[:1] != "#" and name.rpartition("~")[2].startswith("presence-")


class Presence(Protocol):
    """Who is in each ``presence-`` channel (a member is a user, however
    many sessions it has there). ``idle(session_id)``, set by the hub, says
    whether a session is between two polls. ``changed(channel, joined,
    user_id)``, when set, hears each member join and leave once, on one
    node of all that share the backend (the one that decided it)."""

    idle: Callable[[str], bool]
    changed: Callable[[str, bool, str], None] | None
    #: Which channels have members (set by the hub: a namespace may say so).
    is_presence: Callable[[str], bool]

    def members(self, channel: str) -> list[dict[str, Any]]:
        """The members of ``channel`` as ``{"id", "info"}``, as this
        process knows them (up to date where it has subscribers)."""

    def fetch(self, channel: str) -> Deferred[list[dict[str, Any]]]:
        """The members of ``channel`` now, wherever they are held (for an
        API call on a node that may have no subscriber there)."""

    def join(self, channel: str, session: str, user: dict[str, Any]) -> None:
        """``session`` of ``user`` subscribed to ``channel``."""

    def part(self, channel: str, session: str, user: dict[str, Any], away: bool = False) -> None:
        """``session`` left ``channel``; ``away``: it had been gone for the
        grace already (its member leaves at once)."""


class Backend(Protocol):
    """Where channels live: subscriptions, publishing, history, the session
    registry, presence and the handover of sessions between nodes.

    ``channels`` and ``sessions`` are this process's own (its subscribers
    and sessions); ``published`` and ``delivered`` count this process's
    publishes and deliveries; ``observe_fanout``, when set, is called with
    the seconds each fan-out took.
    """

    #: ``"memory"`` or ``"redis"``.
    backend: str
    sessions: dict[str, Subscriber]
    observe_fanout: Callable[[float], None] | None

    @property
    def channels(self) -> Mapping[str, LocalChannel]:
        """This process's channels."""

    @property
    def published(self) -> int:
        """Messages this process published."""

    @property
    def delivered(self) -> int:
        """Messages this process handed to sessions."""

    # -- life -------------------------------------------------------------

    @property
    def backend_state(self) -> str:
        """``"up"``, or why not (``/health`` answers 503 unless up)."""

    def service(self) -> IService | None:
        """What to start with the server and stop last (a connection to
        keep), or None when there is nothing to run."""

    def sweep(self) -> int:
        """Forget what expired (history nobody listens to); periodic."""

    # -- the session registry -------------------------------------------

    def add_session(self, session: Subscriber) -> Deferred[None]:
        """Register ``session``; fires once every later ``/send`` on any
        node counts it (the hub answers ``connected`` then)."""

    def remove_session(self, session: Subscriber, channels: Iterable[str]) -> None:
        """Forget ``session``, and its subscriptions to ``channels``."""

    # -- subscriptions -----------------------------------------------------

    def subscribe(self, name: str, subscriber: Subscriber, since: str | None = None) -> Deferred[Replay | None]:
        """Join ``name``; fires once the subscriber is in (and counted by
        every later publish's receipt), with the replay after ``since``
        (``(True, [])`` without it), or None when it left meanwhile."""

    def subscribe_many(
        self, names: list[str], subscriber: Subscriber, since: str | None = None
    ) -> Deferred[ReplayMany | None]:
        """Join every channel of ``names`` at once, the replay after one
        cursor merged across them."""

    def unsubscribe(self, name: str, subscriber: Subscriber) -> bool:
        """Leave ``name``; whether the subscriber was in."""

    # -- publishing --------------------------------------------------------

    def publish(self, names: Iterable[str], data: bytes, exclude: str | None = None) -> Deferred[PublishResult]:
        """Publish ``data`` (JSON bytes) to each channel of ``names``, kept
        in their history; fails with :class:`BackendUnavailable` when it
        cannot be taken now."""

    def broadcast(self, data: bytes, exclude: str | None = None) -> Deferred[PublishResult]:
        """Send ``data`` to every session, kept in no history."""

    def to_session(self, session_id: str, data: bytes) -> Deferred[PublishResult | None]:
        """Send ``data`` to one session (on any node); None when there is
        no such session."""

    def occupy(self, name: str, occupied: bool) -> Deferred[bool]:
        """This process's subscribers of ``name`` went from none to some
        (``occupied``) or from some to none: fires with whether every
        node's did too, the channel occupied or vacated as a whole (True on
        one node only, for each such change)."""

    def announce(self, name: str, frame: Encoded, exclude: str | None) -> int:
        """Deliver ``frame`` (not a message: presence, the status feed) to
        this process's subscribers of ``name``; how many took it."""

    # -- what channels hold ------------------------------------------------

    def history(self, name: str, since: str) -> Deferred[Replay]:
        """What ``name`` retains after ``since``, and whether that is all
        that was published after it."""

    def channel_info(self, name: str) -> Deferred[ChannelInfo]:
        """``name``'s subscribers on every node and its last id."""

    def channel_list(self) -> Deferred[ChannelListing]:
        """The active channels (see :class:`ChannelListing` for whose)."""

    def session_list(self, limit: int, cursor: str | None) -> Deferred[SessionListing]:
        """A page of the sessions of every node, Pusher sockets left out:
        at most ``limit`` of them after ``cursor`` (a page's ``next``; None
        for the first page), in one total order, so that a walk of every
        page lists each session there from its first page to its last once.
        Every string of the cursor alphabet (``[A-Za-z0-9_.~-]``) is a
        position in that order: none is refused. Fails with
        :class:`BackendUnavailable` when it cannot be read now."""

    def position(self, name: str | None = None) -> Deferred[str]:
        """The last message id given out (on every node), as a cursor: a
        join with ``since`` this misses nothing published after it. With
        several Redis shards ids are per shard: ``name`` says which
        channel the cursor is for (None: one of the home shard's); one
        backend ignores it."""

    def read_history(self, name: str, since: str | None, limit: int) -> Deferred[HistoryPage]:
        """A page of ``name``'s history: without ``since`` its newest
        ``limit`` messages, with it the first ``limit`` after it."""

    # -- users -------------------------------------------------------------

    def user_join(self, user: str, session: Subscriber, limit: int) -> Deferred[bool]:
        """Count ``session`` as one of ``user``'s; False (not counted) when
        the user has ``limit`` sessions already, on every node (0: no limit)."""

    def user_leave(self, user: str, session: Subscriber) -> None:
        """``session`` of ``user`` ended."""

    def user_sessions(self, user: str) -> Deferred[list[SessionInfo]]:
        """``user``'s sessions, on every node."""

    def user_channels(self, user: str) -> Deferred[list[str]]:
        """The channels ``user``'s new sessions are subscribed to
        server-side (``POST /subscribe`` with ``persist``)."""

    def persist_channel(self, user: str, channel: str, keep: bool) -> Deferred[None]:
        """Add ``channel`` to ``user``'s persisted subscriptions (``keep``),
        or remove it."""

    def revoke(self, jti: str | None, user: str | None, before: float | None, until: float) -> Deferred[None]:
        """Refuse from now on the token ``jti`` (until ``until``, epoch
        seconds), or ``user``'s tokens issued before ``before``."""

    def revoked(self, jti: str | None, user: str, iat: float) -> Deferred[bool]:
        """Whether a token (its ``jti``, ``sub`` and ``iat``) was revoked."""

    def control(self, command: dict[str, Any]) -> Deferred[int]:
        """Run ``command`` on every node (each node's control handler, this
        one's too); fires with how many sessions it targets (a session: 1
        or 0; a user: its sessions on every node), counted before it ran."""

    def serve_control(self, handler: Callable[[dict[str, Any]], None]) -> None:
        """Where the commands of :meth:`control` go on this node (the hub)."""

    def make_presence(self, clock: IReactorTime, grace: float) -> Presence:
        """The presence of this backend (in this process, or shared); made
        before the backend is started (the Redis one refreshes its members
        from then on)."""

    # -- sessions held by other nodes ----------------------------------------

    def serve_handover(
        self, frames: Callable[[str, bytes], None], poll: Callable[[str, int, Reply], None]
    ) -> None:
        """Where frames and polls other nodes take for this node's sessions
        go: ``frames(session_id, body)``, ``poll(session_id, cursor, reply)``."""

    def forward(self, session_id: str, body: bytes) -> Deferred[bool] | None:
        """Hand browser frames to the node holding ``session_id``: fires
        with whether it took them; None when there is no other node."""

    def forward_poll(self, session_id: str, cursor: int, timeout: float) -> Deferred[tuple[int, bytes] | None] | None:
        """Have the node holding ``session_id`` answer a poll: fires with
        ``(status, JSON body)``, or None when no node holds it; None when
        there is no other node."""
