"""Each user's sessions on every node, and the channels its new sessions
are subscribed to server-side, kept in Redis (:class:`Users`), so that
``max_connections_per_user``, ``GET /users/ID`` and ``POST /disconnect``
see the whole cluster.

``chloe:u:<user>``
    a hash, session id → the node holding it. A session counts while its
    node is alive in ``chloe:nodes`` (the census' rule); the entries of
    nodes gone are dropped by the scripts that meet them. The hash expires
    :data:`~.keys.SESSION_TTL` after it was last written, as ``chloe:s:``
    keys do: each node writes its users' sessions again when Redis comes
    back or had given the node up (the census recounts then), and every
    few hours with the session keys, so a dead node leaves nothing for
    longer.
``chloe:uc:<user>``
    a set of channels: the user's persisted server-side subscriptions.

A join is one script (:data:`USER_JOIN_SCRIPT`): the count and the write
in one step, so two nodes letting the user's last allowed session in at
once cannot both succeed. A leave is sent without waiting; one Redis may
have missed (it was away) is sent again when it is back.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.python.failure import Failure

from chloed import frames
from chloed.backends.base import SessionInfo, Subscriber
from chloed.backends.redis.keys import NODES_KEY, ROSTER_PREFIX, SESSION_TTL, USER_CHANNELS_PREFIX, USERS_PREFIX
from chloed.backends.redis.link import Call, Ignore
from chloed.backends.redis.scripts import USER_JOIN_SCRIPT, USER_SESSIONS_SCRIPT, USERS_SCRIPT

# Entries per write: a reconnect's rewrite of a large node is many scripts,
# none long enough to stall Redis.
CHUNK = 500


def roster_info(session_id: str, node: str, member: bytes) -> SessionInfo:
    """A session of another node as its roster member tells it (see
    :mod:`.roster`); only the id and node while the member is not written
    yet (within the roster's flush delay of the session's opening)."""
    if not member:
        return SessionInfo(session_id, "", None, [], node)
    value = frames.loads(member.partition(b" ")[2])
    return SessionInfo(session_id, value["t"], value.get("u"), value["c"], node)


class Users:
    """This node's share of the users' sessions, and the cluster's read back.

    :param call: sends a command to Redis.
    :param ignore: the errback of commands sent without waiting.
    :param node: this node's name.
    :param connected: whether the command connection is up now.
    """

    def __init__(self, *, call: Call, ignore: Ignore, node: str, connected: Callable[[], bool]) -> None:
        self._call = call
        self._ignore = ignore
        self._node = node
        self._connected = connected
        # session id -> (user, session): counted in Redis (_joined), or on
        # the way (_joining: written by its own script, not by a rewrite).
        self._joined: dict[str, tuple[str, Subscriber]] = {}
        self._joining: dict[str, tuple[str, Subscriber]] = {}
        # session id -> user: gone, but Redis may still count it.
        self._gone: dict[str, str] = {}

    # -- this node's sessions ---------------------------------------------

    def join(self, user: str, session: Subscriber, limit: int) -> Deferred[bool]:
        """Count ``session`` as ``user``'s unless the user has ``limit``
        sessions (0: no limit) on the nodes alive; fires with whether it is
        counted, or fails with :class:`~chloed.backends.base.BackendUnavailable`
        (then it is not: removed once Redis is back, in case it was)."""
        self._joining[session.id] = (user, session)
        keys = [NODES_KEY, USERS_PREFIX + user]
        d = self._call("eval", USER_JOIN_SCRIPT, keys, [session.id, self._node, limit, SESSION_TTL])

        def answered(counted: Any) -> bool:
            entry = self._joining.pop(session.id, None)
            if not int(counted):
                return False
            if entry is not None:  # else it left meanwhile: its removal follows
                self._joined[session.id] = entry
                self._gone.pop(session.id, None)
            return True

        def failed(failure: Failure) -> Failure:
            if self._joining.pop(session.id, None) is not None:
                self._gone[session.id] = user
            return failure

        return d.addCallbacks(answered, failed)

    def leave(self, user: str, session: Subscriber) -> None:
        """``session`` of ``user`` ended: Redis stops counting it (sent now,
        after its join on the same connection; again once Redis is back
        if it is away)."""
        for held in (self._joined, self._joining):
            entry = held.get(session.id)
            if entry is not None and entry[1] is session:
                del held[session.id]
                self._send([(user, session.id, False)])

    def rewrite(self) -> Deferred[Any]:
        """Write every session of this node again, and remove those gone
        that Redis may still count (Redis came back, had given the node up,
        or the keys' expiry is due to be pushed on). Fires when done."""
        entries = [(user, id, False) for id, user in self._gone.items() if id not in self._joined]
        entries += [(user, id, True) for id, (user, _) in self._joined.items()]
        self._gone = {}
        return self._send(entries)

    def _send(self, entries: list[tuple[str, str, bool]]) -> Deferred[Any]:
        if not entries:
            return succeed(None)
        if not self._connected():
            self._failed(None, entries)
            return succeed(None)
        writes = []
        for start in range(0, len(entries), CHUNK):
            chunk = entries[start:start + CHUNK]
            keys = [USERS_PREFIX + user for user, _, _ in chunk]
            args: list[Any] = [self._node, SESSION_TTL]
            for _, id, held in chunk:
                args += [id, "1" if held else "0"]
            writes.append(self._call("eval", USERS_SCRIPT, keys, args).addErrback(self._failed, chunk))
        return gatherResults(writes)

    def _failed(self, failure: Failure | None, entries: list[tuple[str, str, bool]]) -> None:
        """Removals Redis may not have are sent again with the next
        rewrite (writes are anyway)."""
        for user, id, held in entries:
            if not held and id not in self._joined:
                self._gone[id] = user
        if failure is not None:
            self._ignore(failure)

    # -- the cluster's ------------------------------------------------------

    def sessions(self, user: str, local: Mapping[str, Subscriber]) -> Deferred[list[SessionInfo]]:
        """``user``'s sessions on the nodes alive, by node then id: this
        node's as they are now (``local``: its sessions), the others' as
        their rosters last said (one script)."""
        d = self._call("eval", USER_SESSIONS_SCRIPT, [NODES_KEY, USERS_PREFIX + user], [ROSTER_PREFIX, self._node])

        def parse(reply: list[Any]) -> list[SessionInfo]:
            found = []
            for i in range(0, len(reply), 3):
                id, node = reply[i].decode("utf-8"), reply[i + 1].decode("utf-8")
                if node != self._node:
                    found.append(roster_info(id, node, reply[i + 2]))
                    continue
                entry = self._joined.get(id)
                session = entry[1] if entry is not None else local.get(id)
                if session is not None:  # else it ended meanwhile
                    found.append(SessionInfo.of(session, node))
            return sorted(found, key=lambda info: (info.node or "", info.id))

        return d.addCallback(parse)

    def channels(self, user: str) -> Deferred[list[str]]:
        """``user``'s persisted server-side subscriptions, sorted."""
        d = self._call("smembers", USER_CHANNELS_PREFIX + user)
        return d.addCallback(lambda members: sorted(m.decode("utf-8") for m in members))

    def persist(self, user: str, channel: str, keep: bool) -> Deferred[None]:
        """Add ``channel`` to ``user``'s persisted subscriptions, or remove it."""
        d = self._call("sadd" if keep else "srem", USER_CHANNELS_PREFIX + user, channel)
        return d.addCallback(lambda _: None)
