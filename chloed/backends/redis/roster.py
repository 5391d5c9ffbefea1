"""Which sessions each node holds, kept in Redis so that ``GET /sessions``
on any node lists the whole cluster's (an app that lost its state finds out
who is connected, and to what).

``chloe:roster:<node>``
    a sorted set, every score 0, of members ``"<session id> <row>"``, the
    row compact JSON ``{"t": transport, "u": user, "c": [channels]}``
    (``u`` left out while there is none). Members sort by session id
    (``ZRANGEBYLEX``), so a page starts exactly after the last id of the
    one before, however the set changed in between: no session is skipped
    or listed twice, as a hash's ``HSCAN`` cannot promise. The key expires
    :data:`TTL_FACTOR` times the node's census ttl after it was last
    written or refreshed (each census beat), so a dead node's roster goes
    by itself; a node listing the cluster reads only the rosters of the
    nodes alive in ``chloe:nodes`` anyway.

Nothing a browser waits on writes to Redis: a session opening, subscribing
or leaving marks its id, and every :data:`FLUSH_DELAY` seconds one script
per :data:`CHUNK` marked sessions writes their rows as they are then (or
removes those gone), all sent at once. Pusher sockets are never written
(:func:`chloed.backends.base.listed`). When Redis comes back every row is
written again; so it is when a beat finds the roster gone while the node
has sessions to list (Redis lost it, or gave it up).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from chloed import frames
from chloed.backends.base import SessionInfo, SessionListing, Subscriber, listed
from chloed.backends.redis.keys import NODES_KEY, ROSTER_PREFIX
from chloed.backends.redis.link import Call, Ignore
from chloed.backends.redis.scripts import ROSTER_PAGE_SCRIPT, ROSTER_SCRIPT

FLUSH_DELAY = 0.2
# Sessions per write: a reconnect's rewrite of a large node is many scripts
# (sent back to back), none long enough to stall Redis.
CHUNK = 500
# The roster outlives the node's census entry (refreshed by the same beat),
# so that it is there whenever the node counts as alive.
TTL_FACTOR = 2
# Between a node's name and a session id in a cursor: in neither.
SEPARATOR = "~"


def row(session: Subscriber) -> bytes:
    """The roster's JSON of ``session``, as it is now."""
    value: dict[str, Any] = {"t": getattr(session, "transport", ""), "c": sorted(getattr(session, "channels", ()))}
    user = getattr(session, "user", None)
    if user is not None:
        value["u"] = user
    return frames.dumps(value)


def parse_page(reply: list[Any]) -> tuple[list[SessionInfo], str | None]:
    """``ROSTER_PAGE_SCRIPT``'s answer: the sessions, and the next cursor."""
    rows, node, after = reply
    sessions = []
    for i in range(0, len(rows), 2):
        member = rows[i + 1].decode("utf-8")
        id, _, text = member.partition(" ")
        value = frames.loads(text)
        sessions.append(SessionInfo(id, value["t"], value.get("u"), value["c"], rows[i].decode("utf-8")))
    if not node:
        return sessions, None
    return sessions, node.decode("utf-8") + SEPARATOR + after.decode("utf-8")


class Roster:
    """This node's sessions in Redis, and the cluster's read back.

    :param call: sends a command to Redis.
    :param ignore: the errback of commands sent without waiting.
    :param node: this node's name.
    :param sessions: this node's sessions now (the broker's).
    :param connected: whether the command connection is up now.
    :param ttl_ms: the node's census ttl now (tests shorten it).
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        call: Call,
        ignore: Ignore,
        node: str,
        sessions: Mapping[str, Subscriber],
        connected: Callable[[], bool],
        ttl_ms: Callable[[], int],
    ) -> None:
        self._clock = clock
        self._call = call
        self._ignore = ignore
        self.node = node
        self.key = ROSTER_PREFIX + node
        self._sessions = sessions
        self._connected = connected
        self._ttl_ms = ttl_ms
        # Ids whose row may differ from Redis's; the flush due, if any.
        self._dirty: set[str] = set()
        self._flush: IDelayedCall | None = None
        # How many sessions the roster should hold (listed ones).
        self.listed = 0
        self._stopped = False

    # -- what changed -----------------------------------------------------

    def added(self, session: Subscriber) -> None:
        """A new session of this node."""
        if listed(session):
            self.listed += 1
            self.changed(session)

    def removed(self, session: Subscriber) -> None:
        """A session of this node ended (called while it is still known)."""
        if listed(session):
            self.listed -= 1
            self.changed(session)

    def changed(self, session: Subscriber) -> None:
        """``session``'s channels (or user) changed: write it soon."""
        if listed(session):
            self._dirty.add(session.id)
            self._soon()

    def _soon(self, delay: float = FLUSH_DELAY) -> None:
        if self._flush is None and not self._stopped:
            self._flush = self._clock.callLater(delay, self.flush)

    # -- telling Redis ----------------------------------------------------

    def flush(self) -> Deferred[Any]:
        """Write every marked session's row (or remove it), :data:`CHUNK`
        a script, all sent now; fires once Redis took them (tests wait on
        it; the server does not). While Redis is away the marks stay, for
        :meth:`rewrite` when it is back."""
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush = None
        if not self._dirty or not self._connected():
            return succeed(None)
        dirty, self._dirty = list(self._dirty), set()
        sessions = self._sessions
        ttl = self._ttl_ms() * TTL_FACTOR
        writes = []
        for start in range(0, len(dirty), CHUNK):
            ids = dirty[start:start + CHUNK]
            args: list[Any] = [ttl]
            for id in ids:
                session = sessions.get(id)
                args += [id, row(session) if session is not None and listed(session) else b""]
            writes.append(self._call("eval", ROSTER_SCRIPT, [self.key], args).addErrback(self._failed, ids))
        return gatherResults(writes)

    def _failed(self, failure: Any, ids: list[str]) -> None:
        """A write failed: its sessions are written again, in a while (at
        once when Redis is back, by :meth:`rewrite`)."""
        self._dirty.update(ids)
        self._ignore(failure)
        if self._connected():
            self._soon(FLUSH_DELAY * 5)

    def rewrite(self) -> Deferred[Any]:
        """Write every row again (Redis came back: the roster may be gone,
        or have missed what changed meanwhile)."""
        self._dirty.update(id for id, session in self._sessions.items() if listed(session))
        return self.flush()

    def refresh(self) -> Deferred[Any]:
        """Push the roster's expiry on (each census beat); write it all
        again when it is gone and should not be. Fires when done (tests)."""
        if self._stopped or not self._connected():
            return succeed(None)

        def answered(existed: Any) -> Any:
            if not int(existed) and self.listed > 0:
                return self.rewrite()
            return None

        d = self._call("execute_command", "PEXPIRE", self.key, self._ttl_ms() * TTL_FACTOR)
        return d.addCallback(answered).addErrback(self._ignore)

    def stop(self) -> Deferred[Any]:
        """The node is leaving: its roster goes with it."""
        self._stopped = True
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush = None
        self._dirty = set()
        if not self._connected():
            return succeed(None)
        return self._call("delete", self.key).addErrback(self._ignore)

    def start(self) -> None:
        self._stopped = False

    # -- reading the cluster's --------------------------------------------

    def page(self, limit: int, cursor: str | None) -> Deferred[SessionListing]:
        """A page of every live node's sessions, by node name then session
        id, in one script (one round trip); ``cursor`` is ``<node>~<id>``
        (``<node>~``: from that node's first), and any other string of the
        cursor alphabet a position too (no ``~``: a node's name)."""
        node = after = ""
        if cursor is not None:
            node, separated, after = cursor.rpartition(SEPARATOR)
            if not separated:
                node = after
                after = ""
        d = self._call("eval", ROSTER_PAGE_SCRIPT, [NODES_KEY], [ROSTER_PREFIX, limit, node, after])
        return d.addCallback(lambda reply: SessionListing(*parse_page(reply), "cluster"))
