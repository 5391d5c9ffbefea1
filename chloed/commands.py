"""What the app's control API asks of this node's sessions: disconnect,
subscribe, unsubscribe, and end the sessions of revoked tokens.

The API (:mod:`chloed.control`) validates a command and hands it to the
backend, which runs it on every node (:meth:`Backend.control`); here each
node applies it to the sessions it holds: a session by id, a user's by the
user index, a token's by its ``jti``. Nothing here scans every session.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.logger import Logger

from chloed import frames
from chloed.auth import Authenticator
from chloed.frames import Encoded
from chloed.session import Session

log = Logger()


def disconnect_frame(reason: str, reconnect: bool) -> frames.Encoded:
    """What a session the app disconnects is told last; ``reconnect``
    false asks the client not to come back (a ban)."""
    return frames.encode({"type": "disconnect", "reason": reason, "reconnect": reconnect})


class Host(Protocol):
    """What the commands ask of the hub (:class:`chloed.hub.Hub`)."""

    auth: Authenticator

    def find(self, session_id: str) -> Session | None: ...

    def end_session(self, session: Session, last: Encoded | None) -> None: ...

    def server_subscribe(self, session: Session, channel: str) -> None: ...

    def server_unsubscribe(self, session: Session, channel: str, reason: str = "server") -> None: ...


class Commands:
    """Applies control commands to this node's sessions."""

    def __init__(self, hub: Host) -> None:
        self.hub = hub
        self._ops = {
            "disconnect": self._disconnect,
            "subscribe": self._subscribe,
            "unsubscribe": self._unsubscribe,
            "revoke": self._revoke,
        }

    def targets(self, command: dict[str, Any]) -> list[Session]:
        """The sessions of this node ``command`` names."""
        if "session" in command:
            session = self.hub.find(command["session"])
            return [] if session is None else [session]
        if "user" in command:
            return self.hub.auth.sessions_of(command["user"])
        return []

    def handle(self, command: dict[str, Any]) -> None:
        """Apply ``command`` here (a bad one, from a node of another
        version, is logged and dropped: it has no sender to answer)."""
        op = self._ops.get(command.get("op", ""))
        if op is None:
            log.warn("a control command of no known op was dropped: {op!r}", op=command.get("op"))
            return
        op(command)

    def _disconnect(self, command: dict[str, Any]) -> None:
        last = disconnect_frame(str(command.get("reason") or "disconnected"), bool(command.get("reconnect", True)))
        for session in self.targets(command):
            self.hub.end_session(session, last)

    def _subscribe(self, command: dict[str, Any]) -> None:
        for session in self.targets(command):
            self.hub.server_subscribe(session, command["channel"])

    def _unsubscribe(self, command: dict[str, Any]) -> None:
        for session in self.targets(command):
            self.hub.server_unsubscribe(session, command["channel"])

    def _revoke(self, command: dict[str, Any]) -> None:
        auth = self.hub.auth
        if "jti" in command:
            sessions = auth.sessions_with(command["jti"])
            for session, channel in auth.subscriptions_with(command["jti"]):
                self.hub.server_unsubscribe(session, channel, "token_revoked")
        else:
            before = float(command.get("before", 0))
            sessions = [
                s for s in auth.sessions_of(command["user"]) if s.auth is not None and s.auth.iat < before
            ]
        for session in sessions:
            auth.refuse(session, frames.TOKEN_REVOKED, "this token was revoked")
