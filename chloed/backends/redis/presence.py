"""Presence across every node, kept in Redis (:class:`RedisPresence`)."""

from __future__ import annotations

from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from chloed import frames
from chloed.backends.base import is_presence
from chloed.backends.memory import presence_frame
from chloed.backends.redis.keys import IDS_KEY
from chloed.backends.redis.link import Call, Ignore
from chloed.backends.redis.scripts import MEMBERS_SCRIPT, PRESENCE_SCRIPT
from chloed.frames import Encoded

log = Logger(namespace="chloed.backends.redis")  # as before redis.py became a package


class RedisPresence:
    """Who is in each ``presence-`` channel, across every node.

    The hub's interface of :class:`chloed.backends.memory.Presence`. A user is a
    member while some node holds a session of it there: that node pushes the
    user's expiry in Redis ``session_grace`` ahead, every ``interval``
    seconds; once no node does (its last tab left, or its node died) it
    expires, and the first node to sweep announces the leave. ``members``
    answers from this node's copy, loaded when the channel gets its first
    local subscriber and kept up by the join and leave announcements.

    :param call: sends a command to Redis.
    :param ignore: the errback of commands sent without waiting.
    :param pubsub: the prefix of the pub/sub channels (``chloe:<db>:``).
    :param channels: the names of this node's channels now.
    :param announce: ``announce(channel, frame, exclude)`` tells this
        node's subscribers of ``channel``.
    """

    def __init__(
        self,
        clock: IReactorTime,
        grace: float,
        *,
        call: Call,
        ignore: Ignore,
        pubsub: str,
        channels: Callable[[], Iterable[str]],
        announce: Callable[[str, Encoded, str | None], object],
    ) -> None:
        self._call = call
        self._ignore = ignore
        self._pubsub = pubsub
        self._channels = channels
        self._announce = announce
        self._clock = clock
        self._hold_ms = max(1, int(grace * 1000))
        self.interval = max(0.2, min(grace / 3.0, 10.0))
        # channel -> user id -> (member JSON, this node's sessions of it)
        self._local: dict[str, dict[str, tuple[bytes, set[str]]]] = {}
        # channel -> user id -> member JSON: every member, as last heard
        self._mirror: dict[str, dict[str, bytes]] = {}
        self._floor: dict[str, int] = {}
        self._loading: dict[str, list[bytes]] = {}
        self._ticker: LoopingCall | None = None
        # Whether a session is away (a polling session between two polls,
        # in its grace): the hub says. A member only such sessions hold is
        # not held any more, so it leaves session_grace after the last
        # poll, as its session ends, not a second grace after that.
        self.idle: Callable[[str], bool] = lambda session: False
        # Which channels have members: the hub's rule (namespaces may have
        # presence), the names' by default.
        self.is_presence: Callable[[str], bool] = is_presence
        # Hears each join and leave once in the cluster: on the node whose
        # script made it (see PRESENCE_SCRIPT's answer).
        self.changed: Callable[[str, bool, str], None] | None = None

    def start(self) -> None:
        self._ticker = LoopingCall(self.refresh)
        self._ticker.clock = self._clock
        self._ticker.start(self.interval, now=False).addErrback(
            lambda f: log.failure("presence refresh stopped", f)
        )

    def stop(self) -> None:
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()

    def members(self, channel: str) -> list[dict[str, Any]]:
        """The members of ``channel`` as ``{"id", "info"}``."""
        return [frames.loads(member) for member in self._mirror.get(channel, {}).values()]

    def fetch(self, channel: str) -> Deferred[list[dict[str, Any]]]:
        """The members in Redis now (``MEMBERS_SCRIPT``), whether or not
        this node listens to ``channel``."""
        keys = [IDS_KEY, "chloe:p:" + channel, "chloe:pi:" + channel]
        return self._call("eval", MEMBERS_SCRIPT, keys, []).addCallback(
            lambda reply: [frames.loads(reply[i + 1]) for i in range(1, len(reply) - 1, 2)]
        )

    def join(self, channel: str, session: str, user: dict[str, Any]) -> None:
        """``session`` of ``user`` subscribed to ``channel`` on this node."""
        uid = str(user["id"])
        local = self._local.setdefault(channel, {})
        entry = local.get(uid)
        if entry is not None:
            entry[1].add(session)
            return
        member = frames.dumps({"id": uid, "info": user.get("info")})
        local[uid] = (member, {session})
        self._mirror.setdefault(channel, {})[uid] = member
        self._hold(channel, [(uid, member)], session)

    def part(self, channel: str, session: str, user: dict[str, Any], away: bool = False) -> None:
        """``session`` left ``channel``; once this node has no session of
        the user there it stops holding it, and it leaves when it expires."""
        uid = str(user["id"])
        local = self._local.get(channel, {})
        entry = local.get(uid)
        if entry is None:
            return
        entry[1].discard(session)
        if not entry[1]:
            del local[uid]
            if not local:
                del self._local[channel]
            # Once it has expired, someone sweeps it out, even if no node
            # is left listening to the channel (a webhook is owed).
            self._clock.callLater(self._hold_ms / 1000 + self.interval, self._hold, channel, [], "")

    def refresh(self) -> None:
        """Hold this node's members, and sweep those nobody holds, in every
        presence channel this node has members or subscribers in."""
        names = set(self._local)
        names.update(name for name in self._channels() if self.is_presence(name))
        idle = self.idle
        for channel in names:
            held = [
                (uid, entry[0]) for uid, entry in self._local.get(channel, {}).items()
                if not all(idle(session) for session in entry[1])
            ]
            self._hold(channel, held, "")

    def _hold(self, channel: str, held: list[tuple[str, bytes]], exclude: str) -> None:
        keys = [IDS_KEY, "chloe:p:" + channel, "chloe:pi:" + channel]
        args: list[Any] = [self._hold_ms, self._pubsub + "c:" + channel, exclude]
        for uid, member in held:
            args += [uid, member]
        self._call("eval", PRESENCE_SCRIPT, keys, args).addCallback(self._changed, channel).addErrback(self._ignore)

    def _changed(self, reply: Any, channel: str) -> None:
        """The joins and leaves the script made: ``[event, uid, ...]``."""
        changed = self.changed
        if changed is None or not isinstance(reply, list):
            return
        for i in range(0, len(reply) - 1, 2):
            event, uid = reply[i], reply[i + 1]
            changed(channel, event == b"join", uid.decode("utf-8") if isinstance(uid, bytes) else str(uid))

    def load(self, channel: str) -> Deferred[None]:
        """Read the members of ``channel`` (when this node starts listening
        to it); announcements coming meanwhile are applied after."""
        self._loading[channel] = []
        keys = [IDS_KEY, "chloe:p:" + channel, "chloe:pi:" + channel]

        def loaded(reply: list[Any]) -> None:
            mirror = {}
            for i in range(1, len(reply) - 1, 2):
                mirror[reply[i].decode("utf-8")] = reply[i + 1]
            for uid, entry in self._local.get(channel, {}).items():
                mirror.setdefault(uid, entry[0])
            self._mirror[channel] = mirror
            self._floor[channel] = int(reply[0])
            for payload in self._loading.pop(channel, []):
                self.event(channel, payload)

        def failed(failure: Failure) -> Failure:
            self._loading.pop(channel, None)
            return failure

        return self._call("eval", MEMBERS_SCRIPT, keys, []).addCallbacks(loaded, failed)

    def event(self, channel: str, payload: bytes) -> None:
        """A join or leave announced through Redis: update the copy, tell
        this node's subscribers."""
        pending = self._loading.get(channel)
        if pending is not None:
            pending.append(payload)
            return
        _, raw_seq, event, exclude, member = payload.split(b" ", 4)
        if int(raw_seq) <= self._floor.get(channel, 0):
            return
        value = frames.loads(member)
        uid = str(value.get("id"))
        mirror = self._mirror.setdefault(channel, {})
        if event == b"join":
            mirror[uid] = member
        else:
            mirror.pop(uid, None)
        frame = presence_frame(channel, event.decode("ascii"), value)
        self._announce(channel, frame, exclude.decode("ascii") or None)

    def forget(self, channel: str) -> None:
        """This node no longer listens to ``channel``."""
        if channel not in self._local:
            self._mirror.pop(channel, None)
        self._floor.pop(channel, None)
        self._loading.pop(channel, None)
