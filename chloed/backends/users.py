"""Users in one process (the memory backend's): each user's sessions, the
channels its new sessions are subscribed to server-side, and the tokens
the app revoked.

A user is the ``sub`` of a connection token. Its sessions are counted for
``max_connections_per_user``; revocations are kept only as long as they can
matter (a ``jti`` until its ``until``, a user's until :data:`USER_REVOCATION_SECONDS`
have passed) and swept with the channels.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime

#: How long ``POST /revoke {"user": …}`` is kept: longer than any sane
#: connection token lives.
USER_REVOCATION_SECONDS = 30 * 86400


class Users:
    """The users of one process."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._sessions: dict[str, dict[Any, None]] = {}
        self._channels: dict[str, set[str]] = {}
        # jti -> until (epoch seconds); user -> (before, kept until)
        self._jtis: dict[str, float] = {}
        self._users: dict[str, tuple[float, float]] = {}

    def join(self, user: str, session: Any, limit: int) -> bool:
        """Count ``session`` as ``user``'s unless it has ``limit`` already."""
        sessions = self._sessions.setdefault(user, {})
        if session in sessions:
            return True
        if limit and len(sessions) >= limit:
            if not sessions:
                del self._sessions[user]
            return False
        sessions[session] = None
        return True

    def leave(self, user: str, session: Any) -> None:
        sessions = self._sessions.get(user)
        if sessions is not None:
            sessions.pop(session, None)
            if not sessions:
                del self._sessions[user]

    def sessions(self, user: str) -> list[Any]:
        return list(self._sessions.get(user, ()))

    def channels(self, user: str) -> list[str]:
        return sorted(self._channels.get(user, ()))

    def persist(self, user: str, channel: str, keep: bool) -> None:
        if keep:
            self._channels.setdefault(user, set()).add(channel)
            return
        channels = self._channels.get(user)
        if channels is not None:
            channels.discard(channel)
            if not channels:
                del self._channels[user]

    def revoke(self, jti: str | None, user: str | None, before: float | None, until: float) -> None:
        if jti is not None:
            self._jtis[jti] = max(until, self._jtis.get(jti, 0.0))
        if user is not None:
            when = before if before is not None else self._clock.seconds()
            self._users[user] = (when, self._clock.seconds() + USER_REVOCATION_SECONDS)

    def revoked(self, jti: str | None, user: str, iat: float) -> bool:
        now = self._clock.seconds()
        if jti is not None and self._jtis.get(jti, 0.0) > now:
            return True
        entry = self._users.get(user)
        return entry is not None and entry[1] > now and iat < entry[0]

    def sweep(self) -> None:
        """Forget the revocations that can no longer matter."""
        now = self._clock.seconds()
        for jti in [jti for jti, until in self._jtis.items() if until <= now]:
            del self._jtis[jti]
        for user in [user for user, (_, kept) in self._users.items() if kept <= now]:
            del self._users[user]
