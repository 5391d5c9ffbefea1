"""Connection tokens for the hub: who a session's user is, for how long.

A session presents a connection token (:func:`chloed.tokens.identify`) in
an ``auth`` frame, or on the URL that opens it. The token is checked
against the app's revocations and the user's connection limit (both in the
backend, so on every node), then the session joins its user's channel
(``#u:<id>``, what ``/send user=`` publishes to), replaying what was sent
to the user since the cursor a reconnecting tab gives, and the channels the
app subscribed the user to. Frames that come while this is under way wait
for it, in order.

A token ending is enforced: ``token_refresh_margin`` seconds before its
``exp`` the session is told (``token_expiring``) and may send a fresh one
(``refresh``); at ``exp`` a connection still without one is closed with
``token_expired``, a channel subscription ends with ``unsubscribed``. Both
kinds of deadline live in one :class:`~chloed.deadlines.Deadlines` heap.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from chloed import frames, tokens
from chloed.backends.base import Backend
from chloed.config import Config
from chloed.deadlines import Deadlines
from chloed.errors import ProtocolError
from chloed.frames import Encoded, Frame
from chloed.session import Session
from chloed.tokens import Identity

log = Logger()

#: Seconds a WebSocket has to send ``auth`` when a token is required.
AUTH_TIMEOUT = 10.0
#: The token deadlines kept before those no longer holding are dropped: a
#: few per session (a connection token's, its channels'), plus slack.
PRUNE_FACTOR = 8
PRUNE_SLACK = 4096
#: Frames a session may send while its token is being checked; past it
#: each is refused (a client that waits for nothing is misbehaving).
HELD_MAX = 64


def token_frame(kind: str, expires: float, channel: str | None = None) -> frames.Encoded:
    """``token_expiring`` or ``refreshed``, for the connection or a channel."""
    frame: dict[str, Any] = {"type": kind, "expires": int(expires)}
    if channel is not None:
        frame["channel"] = channel
    return frames.encode(frame)


class Host(Protocol):
    """What the authenticator asks of the hub (:class:`chloed.hub.Hub`)."""

    config: Config
    broker: Backend
    clock: IReactorTime

    def end_session(self, session: Session, last: Encoded | None) -> None: ...

    def handle(self, session: Session, raw: bytes | str) -> None: ...

    def server_subscribe(self, session: Session, channel: str) -> None: ...

    def token_ended(self, session: Session, channel: str) -> None: ...


class Authenticator:
    """The hub's connection tokens, users and token deadlines."""

    def __init__(self, hub: Host) -> None:
        self.hub = hub
        self.config = hub.config
        self.broker = hub.broker
        self.clock = hub.clock
        self.deadlines = Deadlines(hub.clock)
        #: This node's authenticated sessions, by user and by token ``jti``.
        self.users: dict[str, dict[Session, None]] = {}
        self._jtis: dict[str, dict[Session, None]] = {}
        # Channel tokens with a jti: jti -> the (session, channel) joined with it.
        self._channel_jtis: dict[str, dict[tuple[Session, str], None]] = {}
        # Sessions whose token is being checked: their frames meanwhile.
        self.held: dict[str, list[bytes | str]] = {}
        #: Refusals: ``user`` (max_connections_per_user), ``ip``
        #: (max_connections_per_ip), ``token`` (missing, bad, expired, revoked).
        self.refused: Counter[str] = Counter()

    # -- connecting --------------------------------------------------------

    def expect(self, session: Session) -> None:
        """A session opened without a token where one is required: it has
        :data:`AUTH_TIMEOUT` seconds to send ``auth``."""
        self.deadlines.at(self.clock.seconds() + AUTH_TIMEOUT, self._auth_due, session)

    def _auth_due(self, session: Session) -> None:
        if not session.closed and session.auth is None and session.id not in self.held:
            self.refuse(session, frames.TOKEN_REQUIRED, "this server needs a connection token: send auth first")

    def identify(self, token: str) -> Identity:
        """Verify ``token``'s signature and claims (not yet its revocation).

        :raises ProtocolError: ``token_invalid`` or ``token_expired``.
        """
        return tokens.identify(token, self.config.secret, self.config.public_keys(), self.clock.seconds())

    def authenticate(self, session: Session, token: str, since: str | None) -> None:
        """Check ``token`` and make ``session`` its user's, or end it with
        the reason (the caller has nothing more to do either way)."""
        if session.auth is not None or session.id in self.held:
            raise ProtocolError(frames.BAD_FRAME, "this session is authenticated already: send refresh")
        try:
            identity = self.identify(token)
        except ProtocolError as exc:
            self.refuse(session, exc.code, exc.message)
            return
        self.begin(session, identity, since)

    def begin(self, session: Session, identity: Identity, since: str | None) -> None:
        """The checks of an identified token that ask the backend."""
        session.user = identity.member
        self.held[session.id] = []
        self.broker.revoked(identity.jti, identity.user, identity.iat).addCallback(
            self._checked, session, identity, since
        ).addErrback(self._failed, session)

    def _checked(self, revoked: bool, session: Session, identity: Identity, since: str | None) -> Any:
        if session.closed:
            return None
        if revoked:
            self.refuse(session, frames.TOKEN_REVOKED, "this token was revoked")
            return None
        return self.broker.user_join(
            identity.user, session, self.config.max_connections_per_user
        ).addCallback(self._joined, session, identity, since)

    def _joined(self, counted: bool, session: Session, identity: Identity, since: str | None) -> Any:
        if not counted:
            self.refused["user"] += 1
            self.refuse(
                session, frames.TOO_MANY_CONNECTIONS,
                f"this user has {self.config.max_connections_per_user} connections already",
            )
            return None
        if session.closed:
            self.broker.user_leave(identity.user, session)
            return None
        self._own(session, identity)
        # The user channel's own position: with shards, ids are per shard.
        position = succeed(since) if since is not None else self.broker.position(frames.user_channel(identity.user))
        return position.addCallback(self._join_user_channel, session, identity)

    def _join_user_channel(self, cursor: str, session: Session, identity: Identity) -> Any:
        if session.closed:
            return None
        return self.broker.subscribe(frames.user_channel(identity.user), session, cursor).addCallback(
            self._in, session, identity, cursor
        )

    def _in(self, answer: Any, session: Session, identity: Identity, cursor: str) -> Any:
        if answer is None or session.closed:
            return None
        recovered, missed = answer
        session.deliver(frames.encode({
            "type": "authenticated", "user": identity.user, "id": cursor, "expires": int(identity.exp),
            "recovered": recovered,
        }))
        for message in missed:
            session.deliver(message)
        self._release(session)
        return self.broker.user_channels(identity.user).addCallback(self._persisted, session)

    def _persisted(self, channels: list[str], session: Session) -> None:
        for channel in channels:
            if session.closed:
                return
            self.hub.server_subscribe(session, channel)

    def _failed(self, failure: Any, session: Session) -> None:
        log.failure("authenticating {session} failed", failure, session=session.tag)
        self.refuse(session, frames.UPSTREAM_FAILED, "the token could not be checked now; reconnect")

    def _release(self, session: Session) -> None:
        """Handle the frames that came while the token was checked."""
        for raw in self.held.pop(session.id, ()):
            if session.closed:
                return
            self.hub.handle(session, raw)

    def hold(self, session: Session, raw: bytes | str) -> bool:
        """Keep a frame that came while ``session``'s token is checked;
        False when no check is under way."""
        held = self.held.get(session.id)
        if held is None:
            return False
        if len(held) >= HELD_MAX:
            raise ProtocolError(frames.RATE_LIMITED, "too many frames before the token was checked")
        held.append(raw)
        return True

    def refuse(self, session: Session, code: str, message: str) -> None:
        """End ``session`` with the error that says why its token was not taken."""
        self.held.pop(session.id, None)
        if code != frames.TOO_MANY_CONNECTIONS:
            self.refused["token"] += 1
        self.hub.end_session(session, frames.error(code, message))

    # -- what an authenticated session has ----------------------------------

    def _own(self, session: Session, identity: Identity) -> None:
        session.auth = identity
        self.users.setdefault(identity.user, {})[session] = None
        if identity.jti is not None:
            self._jtis.setdefault(identity.jti, {})[session] = None
        self._watch(session, None, identity.exp)

    def _disown(self, session: Session, identity: Identity) -> None:
        for index, key in ((self.users, identity.user), (self._jtis, identity.jti)):
            if key is None:
                continue
            sessions = index.get(key)
            if sessions is not None:
                sessions.pop(session, None)
                if not sessions:
                    del index[key]

    def closed(self, session: Session) -> None:
        """``session`` ended: it leaves its user (and its user's channel)."""
        self.held.pop(session.id, None)
        for channel in list(session.expiries or ()):
            self.unwatch_channel(session, channel)
        identity = session.auth
        if identity is None:
            return
        self._disown(session, identity)
        self.broker.unsubscribe(frames.user_channel(identity.user), session)
        self.broker.user_leave(identity.user, session)

    def sessions_of(self, user: str) -> list[Session]:
        return list(self.users.get(user, ()))

    def sessions_with(self, jti: str) -> list[Session]:
        return list(self._jtis.get(jti, ()))

    def subscriptions_with(self, jti: str) -> list[tuple[Session, str]]:
        """The subscriptions joined with a channel token of ``jti``."""
        return list(self._channel_jtis.get(jti, ()))

    # -- token lifetimes ----------------------------------------------------

    def _watch(self, session: Session, channel: str | None, exp: float) -> None:
        """Warn ``token_refresh_margin`` before ``exp``, end at ``exp``."""
        deadlines = self.deadlines
        deadlines.at(exp - self.config.token_refresh_margin, self._expiring, session, channel, exp)
        deadlines.at(exp, self._expired, session, channel, exp)
        if len(deadlines) > PRUNE_FACTOR * len(self.broker.sessions) + PRUNE_SLACK:
            deadlines.prune(self._holds)

    def _holds(self, session: Session, channel: str | None = None, exp: float | None = None) -> bool:
        """Whether a deadline of ``session`` may still do something."""
        if session.closed:
            return False
        if exp is None:  # the wait for a first auth
            return session.auth is None
        return self._current(session, channel) == exp

    def _current(self, session: Session, channel: str | None) -> float | None:
        if channel is None:
            return session.auth.exp if session.auth is not None else None
        entry = (session.expiries or {}).get(channel)
        return entry[0] if entry is not None else None

    def _expiring(self, session: Session, channel: str | None, exp: float) -> None:
        if not session.closed and self._current(session, channel) == exp:
            session.deliver(token_frame("token_expiring", exp, channel))

    def _expired(self, session: Session, channel: str | None, exp: float) -> None:
        if session.closed or self._current(session, channel) != exp:
            return
        if channel is None:
            self.refused["token"] += 1
            self.hub.end_session(session, frames.error(frames.TOKEN_EXPIRED, "the connection token expired"))
        else:
            self.hub.token_ended(session, channel)

    def watch_channel(self, session: Session, channel: str, exp: float, jti: str | None) -> None:
        """``session`` joined ``channel`` with a token that ends at ``exp``
        (and is revoked by ``jti``)."""
        self.unwatch_channel(session, channel)
        if session.expiries is None:
            session.expiries = {}
        session.expiries[channel] = (exp, jti)
        if jti is not None:
            self._channel_jtis.setdefault(jti, {})[(session, channel)] = None
        self._watch(session, channel, exp)

    def unwatch_channel(self, session: Session, channel: str) -> None:
        """``session`` left ``channel``: its token no longer matters."""
        entry = session.expiries.pop(channel, None) if session.expiries is not None else None
        if entry is None or entry[1] is None:
            return
        joined = self._channel_jtis.get(entry[1])
        if joined is not None:
            joined.pop((session, channel), None)
            if not joined:
                del self._channel_jtis[entry[1]]

    def refresh(self, session: Session, frame: Frame) -> None:
        """A ``refresh`` frame: a fresh connection token or channel token."""
        assert frame.token is not None
        if frame.channel is not None:
            self._refresh_channel(session, frame.channel, frame.token, frame.ref)
            return
        identity = session.auth
        if identity is None:
            raise ProtocolError(frames.BAD_FRAME, "this session has no connection token to refresh: send auth", ref=frame.ref)
        fresh = self.identify(frame.token)
        if fresh.user != identity.user:
            raise ProtocolError(frames.FORBIDDEN, "a refreshed token must name the same user", ref=frame.ref)
        self.broker.revoked(fresh.jti, fresh.user, fresh.iat).addCallback(
            self._refreshed, session, identity, fresh
        ).addErrback(self._failed, session)

    def _refreshed(self, revoked: bool, session: Session, before: Identity, fresh: Identity) -> None:
        if session.closed or session.auth is not before:
            return
        if revoked:
            self.refuse(session, frames.TOKEN_REVOKED, "this token was revoked")
            return
        self._disown(session, before)
        self._own(session, fresh)
        session.user = fresh.member
        session.deliver(token_frame("refreshed", fresh.exp))

    def _refresh_channel(self, session: Session, channel: str, token: str, ref: object) -> None:
        if channel not in (session.expiries or {}):
            raise ProtocolError(
                frames.BAD_FRAME, "this session holds no token of that channel to refresh", ref=ref, channel=channel
            )
        try:
            grant = tokens.verify(token, channel, self.config.secret)
        except ProtocolError as exc:
            exc.ref = ref
            raise
        checked: Deferred[bool] = (
            self.broker.revoked(grant.jti, "", 0.0) if grant.jti is not None else succeed(False)
        )

        def answer(revoked: bool) -> None:
            if session.closed or channel not in (session.expiries or {}):
                return
            if revoked:
                session.deliver(frames.error(frames.TOKEN_REVOKED, "this token was revoked", ref, channel))
                return
            self.watch_channel(session, channel, grant.exp, grant.jti)
            session.deliver(token_frame("refreshed", grant.exp, channel))

        checked.addCallback(answer).addErrback(self._failed, session)

    def stop(self) -> None:
        self.deadlines.stop()
