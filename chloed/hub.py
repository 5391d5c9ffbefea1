"""Where every transport hands its browsers: sessions and the frames they send.

Transports are thin. They ask the hub for a session when a browser connects,
hand it each frame the browser sends, and tell it when the connection goes.
The hub answers frames (through the session, so the answer takes whatever way
the session's transport has), subscribes through the broker, relays ``send``
to the app, and owns the session's life: a streaming session ends with its
connection; a polling session, which has no connection between two polls, is
kept ``session_grace`` seconds after the last one.
"""

from __future__ import annotations

import re
import secrets
from collections import Counter
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from chloed import frames, lograte, tokens
from chloed.auth import Authenticator
from chloed.backends.base import Backend, Presence, Reply, is_presence
from chloed.commands import Commands
from chloed.config import Config
from chloed.errors import ProtocolError, RelayRejected
from chloed.frames import Frame
from chloed.http import origin_allowed
from chloed.lograte import ClientErrors
from chloed.relay import Relay, delivery_id, event_body, lifecycle_body
from chloed.spool.base import EVENT
from chloed.session import Session, Sink

log = Logger()

# Seconds a poll handed to another node may take beyond longpoll_timeout.
POLL_HANDOVER_SLACK = 10
# What new_session_id makes; anything else is no session of any node.
SESSION_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)
# Transports whose session ends with its connection.
_STREAMING = frozenset({"websocket", "sse"})


def new_session_id() -> str:
    """144 random bits, URL-safe: knowing it is what lets a poll read it."""
    return secrets.token_urlsafe(18)


class Hub:
    """Sessions, and what their frames do.

    :param relay: the relay to the app; None without ``application_server_url``.
    """

    def __init__(
        self,
        config: Config,
        broker: Backend,
        clock: IReactorTime,
        relay: Relay | None,
        new_id: Callable[[], str] = new_session_id,
    ) -> None:
        self.config = config
        self.broker = broker
        self.clock = clock
        self.relay = relay
        self._new_id = new_id
        # Every session's overflow callback: one bound method, not one each.
        self._on_overflow = self.slow
        self.connections: Counter[str] = Counter()
        self.frames_received = 0
        self.sent_by_browsers = 0
        self.slow_consumers = 0
        # Polling sessions ended while no poll was open, for one more poll
        # to read why (slow_consumer, shutting_down) within session_grace.
        self._last_words: dict[str, Session] = {}
        self.rate_limited = 0
        # Sessions a shared backend is still counting: session id -> the
        # Deferred of the count (see open_session).
        self._uncounted: dict[str, Deferred[Any]] = {}
        # What browsers and clients get wrong, counted and logged sparingly
        # (/status client_errors); the transports report here too.
        self.client_errors = ClientErrors(clock)
        # Sessions whose rate limiting was logged: once each, not per frame.
        self._limited: set[str] = set()
        self.draining = False
        #: The Pusher layer (:class:`chloed.pusher.protocol.PusherProtocol`)
        #: when apps are configured, for /status and /metrics.
        self.pusher: Any = None
        self._burst = max(2 * config.rate_limit, config.max_subscriptions + 10)
        if config.rate_limit:
            self._interval = 1.0 / config.rate_limit
            # (a microsecond more: the sums of intervals are not exact)
            self._tolerance = (self._burst - 1) * self._interval + 1e-6
        broker.serve_handover(self._forwarded, self._handed_over_poll)
        self._answer_poll: Callable[[str, int, Reply], None] | None = None
        self.presence: Presence = broker.make_presence(clock, config.session_grace)
        self.presence.idle = self._idle
        self.presence.is_presence = self.is_presence
        #: This node's name in lifecycle events, with their sequence number.
        self.node: str = getattr(broker, "node", None) or secrets.token_hex(8)
        self.event_seq = 0
        # Streaming sessions whose connection went, while their browser
        # may resume them (``resume`` in events): id -> (session, timer).
        self._departed: dict[str, tuple[Session, IDelayedCall]] = {}
        #: Connection tokens, users and token deadlines.
        self.auth = Authenticator(self)
        self.commands = Commands(self)
        broker.serve_control(self.commands.handle)
        # Sessions per client address, for max_connections_per_ip.
        self.per_ip: Counter[str] = Counter()
        self._handlers: dict[str, Callable[[Session, Frame], None]] = {
            "subscribe": self._subscribe,
            "unsubscribe": self._unsubscribe,
            "send": self._send,
            "ping": self._ping,
            "auth": self._auth,
            "refresh": self.auth.refresh,
        }

    # -- session life -----------------------------------------------------

    @property
    def sessions(self) -> dict[str, Any]:
        return self.broker.sessions

    def accepting(self) -> bool:
        """Whether a new browser may connect (not draining, under the limit)."""
        return not self.draining and len(self.broker.sessions) < self.config.max_connections

    def ip_full(self, host: str | None) -> bool:
        """Whether ``host`` has ``max_connections_per_ip`` sessions already
        (counted, a refusal); never for an exempt address."""
        limit = self.config.max_connections_per_ip
        if not limit or host is None or self.config.ip_exempt(host):
            return False
        if self.per_ip[host] < limit:
            return False
        self.auth.refused["ip"] += 1
        return True

    def open_session(
        self, transport: str, sink: Sink | None = None, id: str | None = None, resume: str | None = None,
        ip: str | None = None, origin: str | None = None, token: str | None = None,
        user_since: str | None = None,
    ) -> Session:
        """A new session; its first frame, ``connected``, is delivered
        (written, or held until the backend has counted the session).

        :param sink: a streaming connection, or None for a polling transport.
        :param id: its id, when the transport makes its own (a Pusher
            socket id); else a new one of the hub's.
        :param resume: the id of the session this browser had before (its
            connection went within ``session_grace``): the app hears
            ``resume`` instead of that one's ``disconnect`` and this one's
            ``connect``.
        :param ip: the client's address, counted for ``max_connections_per_ip``.
        :param origin: the page's ``Origin``, for namespaces' ``allowed_origins``.
        :param token: a connection token given on the URL (SSE, polls), and
            ``user_since`` the user cursor of a reconnecting tab; a token
            without ``sub`` is a channel token only (the URL's channels').
        """
        session = Session(
            id or self._new_id(), transport, self.config.outbound_buffer_bytes, self._on_overflow
        )
        if ip is not None and self.config.max_connections_per_ip and not self.config.ip_exempt(ip):
            session.ip = ip
            self.per_ip[ip] += 1
        session.origin = origin
        identity = refusal = None
        if token is not None and tokens.is_connection_token(token):
            try:
                identity = self.auth.identify(token)
            except ProtocolError as exc:
                refusal = exc
            else:
                session.user = identity.member  # (so the app's connect event names it)
        counted = self.broker.add_session(session)
        if sink is None:
            self._start_grace(session)
        session.deliver(frames.connected(session.id, self.config.heartbeat, self.config.rate_limit, self._burst))
        departed = self._departed.pop(resume, None) if resume is not None else None
        if departed is not None:
            before, timer = departed
            timer.cancel()
            # One lane for both: the app hears the first one's messages
            # before this one's ``resume``.
            session.lane = before.lane or before.id
            self._event("resume", session, previous=before.id)
        else:
            self._event("connect", session)
        if not counted.called:
            # A shared backend counts the session for broadcast receipts
            # first: the browser hears ``connected`` (and what follows it,
            # held meanwhile) only once every later /send, on any node,
            # counts it (see counted()).
            self._uncounted[session.id] = counted
            counted.addBoth(self._counted, session, sink)
        elif sink is not None:
            self._attach(session, sink)
        if refusal is not None:
            self.auth.refuse(session, refusal.code, refusal.message)
        elif identity is not None:
            self.auth.begin(session, identity, user_since)
        elif self.config.require_connection_token and transport != "pusher":
            if sink is None or transport == "sse":
                self.auth.refuse(session, frames.TOKEN_REQUIRED, "this server needs a connection token (?token=)")
            else:
                self.auth.expect(session)
        return session

    def counted(self, session: Session) -> Deferred[None] | None:
        """None once ``session`` is counted by every node's receipts (so it
        may be answered ``connected``); before, a Deferred firing then. A
        polling transport waits on it before its first answer."""
        counting = self._uncounted.get(session.id)
        if counting is None:
            return None
        done: Deferred[None] = Deferred()

        def fire(result: object) -> object:
            done.callback(None)
            return result

        counting.addBoth(fire)
        return done

    def _counted(self, result: Any, session: Session, sink: Sink | None) -> None:
        if self._uncounted.pop(session.id, None) is None or sink is None:
            return  # (its connection was lost meanwhile: nothing to write to)
        if session.closed:
            # Ended while being counted (a drain, a slow start): the
            # connection still closes with the frame that says why.
            pending = session.pending
            sink.close(pending[-1][1] if pending else None)
            return
        self._attach(session, sink)

    def _attach(self, session: Session, sink: Sink) -> None:
        session.attach(sink)
        self.connections[session.transport] += 1

    def find(self, session_id: str) -> Session | None:
        session = self.broker.sessions.get(session_id)
        return session if isinstance(session, Session) and not session.closed else None

    def poll_started(self, session: Session) -> None:
        """A poll is open: the session is not idle, whatever the grace."""
        if session.grace is not None:
            session.grace.cancel()
            session.grace = None
        self.connections[session.transport] += 1

    def poll_ended(self, session: Session) -> None:
        """The poll answered or went away: the grace starts again."""
        self.connections[session.transport] -= 1
        if not session.closed:
            self._start_grace(session)

    def _idle(self, session_id: str) -> bool:
        """Whether a session is between two polls (in its grace)."""
        session = self.broker.sessions.get(session_id)
        return isinstance(session, Session) and session.grace is not None

    def connection_lost(self, session: Session) -> None:
        """A streaming connection closed: its session ends."""
        self._uncounted.pop(session.id, None)
        if session.sink is not None:
            session.detach()
            self.connections[session.transport] -= 1
        self.close_session(session)

    def _start_grace(self, session: Session) -> None:
        if session.grace is not None:
            session.grace.cancel()
        session.grace = self.clock.callLater(self.config.session_grace, self._expire, session)

    def _expire(self, session: Session) -> None:
        session.grace = None
        log.debug("session {session} expired after its grace", session=session.tag)
        # It has been away for the grace already: its members leave now,
        # not after a second grace.
        self.close_session(session, away=True)

    def close_session(self, session: Session, away: bool = False) -> None:
        """End ``session``: unsubscribe it everywhere, forget it.

        :param away: the session was already away ``session_grace``
            seconds (a polling session that was not polled): its presence
            members leave at once.
        """
        if session.closed:
            return
        session.closed = True
        self._limited.discard(session.id)
        self.auth.closed(session)
        if session.ip is not None:
            count = self.per_ip[session.ip] - 1
            if count > 0:
                self.per_ip[session.ip] = count
            else:
                del self.per_ip[session.ip]
        grace: IDelayedCall | None = session.grace
        if grace is not None and grace.active():
            grace.cancel()
        session.grace = None
        for channel in sorted(session.channels):
            self._part(session, channel, away)
            self._event("unsubscribe", session, channel)
        self.broker.remove_session(session, session.channels)
        session.channels.clear()
        if self._may_resume(session):
            self._departed[session.id] = (
                session, self.clock.callLater(self.config.session_grace, self._gone, session.id)
            )
        else:
            self._event("disconnect", session)
        if session.waiter is not None:
            waiter, session.waiter = session.waiter, None
            waiter()

    def _may_resume(self, session: Session) -> bool:
        """Whether the app hears of ``session``'s end only once it is not
        resumed within ``session_grace`` (a streaming session; a polling
        one had its grace already)."""
        return (
            self.relay is not None and "resume" in self.config.events and not self.draining
            and session.transport in _STREAMING and self.config.session_grace > 0
        )

    def _gone(self, session_id: str) -> None:
        """No browser resumed ``session_id`` in time: the app hears
        ``disconnect``."""
        departed = self._departed.pop(session_id, None)
        if departed is not None:
            self._event("disconnect", departed[0])

    def slow(self, session: Session) -> None:
        """More than ``outbound_buffer_bytes`` wait for ``session``: end it
        with ``slow_consumer``, so the others keep getting their messages."""
        self.slow_consumers += 1
        log.warn(
            "session {session} dropped: more than {limit} bytes waiting for it",
            session=session.tag, limit=self.config.outbound_buffer_bytes,
        )
        self.end_session(session, frames.error(frames.SLOW_CONSUMER, "too many messages waiting for this connection"))

    def end_session(self, session: Session, last: frames.Encoded | None) -> None:
        """Close the session and its connection, telling the browser why."""
        sink = session.sink
        if sink is not None:
            session.detach()
            self.connections[session.transport] -= 1
            sink.close(last)
        elif last is not None:
            session.replace_pending(last)
            if session.waiter is None:
                self._last_words[session.id] = session
                if not self.draining:  # draining, they last as long as the process
                    self.clock.callLater(self.config.session_grace, self._last_words.pop, session.id, None)
        self.close_session(session)

    def last_words(self, session_id: str, transport: str) -> Session | None:
        """A polling session that was ended with no poll open, once: its
        next poll gets the frame that says why, the one after is 404."""
        session = self._last_words.get(session_id)
        if session is None or session.transport != transport:
            return None
        del self._last_words[session_id]
        return session

    def shutdown(self) -> None:
        """Tell every browser ``shutting_down`` and end its session."""
        self.draining = True
        last = frames.error(frames.SHUTTING_DOWN, "this server is restarting; reconnect")
        for session in list(self.broker.sessions.values()):
            if isinstance(session, Session):
                try:
                    self.end_session(session, last)
                except Exception:
                    # One broken connection must not keep the rest from hearing it.
                    log.failure("ending {session} failed", session=session.tag)
        # Nobody resumes a session on a node going away: the app hears now.
        for session_id in list(self._departed):
            self._departed[session_id][1].cancel()
            self._gone(session_id)

    # -- frames -----------------------------------------------------------

    def receive(self, session: Session, raw: bytes | str) -> None:
        """Handle one frame from ``session``'s browser.

        A bad frame is answered with an ``error`` frame; the session goes on.
        """
        if session.closed:
            return
        self.frames_received += 1
        if not self.admit(session):
            self._refuse_rate(session, raw)
            return
        try:
            if not self.auth.hold(session, raw):
                self._dispatch(session, raw)
        except ProtocolError as exc:
            self._frame_error(session, exc)

    def handle(self, session: Session, raw: bytes | str) -> None:
        """Handle a frame admitted already (one held while the session's
        token was checked)."""
        try:
            self._dispatch(session, raw)
        except ProtocolError as exc:
            self._frame_error(session, exc)

    def _dispatch(self, session: Session, raw: bytes | str) -> None:
        frame = frames.parse(raw, self.config.max_message_bytes)
        if (
            session.auth is None and frame.type != "auth" and frame.type != "ping"
            and self.config.require_connection_token
        ):
            self.auth.refuse(session, frames.TOKEN_REQUIRED, "this server needs a connection token: send auth first")
            return
        self._handlers[frame.type](session, frame)

    def _frame_error(self, session: Session, exc: ProtocolError) -> None:
        # Counted each, logged at most once a minute per session.
        self.client_errors.report(
            session.tag, lograte.FRAME_ERROR, f"{exc.code}: {exc.message}", session=session.tag, code=exc.code
        )
        session.deliver(frames.from_protocol_error(exc))

    def admit(self, session: Session) -> bool:
        """Whether one more frame of ``session`` is within ``rate_limit``
        (always, with none); the frame is counted if so."""
        return not self.config.rate_limit or session.admit(self.clock.seconds(), self._interval, self._tolerance)

    def _refuse_rate(self, session: Session, raw: bytes | str) -> None:
        """Answer ``rate_limited`` (with the frame's ref, so a ``send``'s
        sender knows which one); logged once per session, not per frame."""
        self.rate_limited += 1
        if session.id not in self._limited:
            self._limited.add(session.id)
            log.info(
                "session {session}: rate_limited: more than {rate} frames per second",
                session=session.tag, rate=self.config.rate_limit,
            )
        ref = channel = None
        try:
            frame = frames.parse(raw, self.config.max_message_bytes)
            ref, channel = frame.ref, frame.channel
        except ProtocolError:
            pass
        session.deliver(frames.error(
            frames.RATE_LIMITED, f"at most {self.config.rate_limit:g} frames per second", ref, channel
        ))

    def forward(self, session_id: str, body: bytes) -> Any:
        """Browser frames POSTed here for a session this node does not hold:
        with a shared backend, a Deferred firing with whether the node that
        holds it took them; None when there is nobody to ask."""
        if not SESSION_ID_RE.fullmatch(session_id):
            return None
        return self.broker.forward(session_id, body)

    def forward_poll(self, session_id: str, cursor: int) -> Deferred[tuple[int, bytes] | None] | None:
        """A poll of a session this node does not hold: with a shared
        backend, a Deferred firing with the answer of the node that holds it
        (None: no node does); None when there is nobody to ask."""
        if self.find(session_id) is not None or not SESSION_ID_RE.fullmatch(session_id):
            return None
        return self.broker.forward_poll(session_id, cursor, self.config.longpoll_timeout + POLL_HANDOVER_SLACK)

    def serve_polls(self, answer: Callable[[str, int, Reply], None]) -> None:
        """The long-poll transport answers polls other nodes hand over:
        ``answer(session_id, cursor, reply)``, ``reply(status, JSON body)``."""
        self._answer_poll = answer

    def _handed_over_poll(self, session_id: str, cursor: int, reply: Reply) -> None:
        if self._answer_poll is None:
            reply(404, frames.dumps({"error": "unknown_session", "message": "no such session: start a new one"}))
            return
        self._answer_poll(session_id, cursor, reply)

    def _forwarded(self, session_id: str, body: bytes) -> None:
        """Frames another node took for one of this node's sessions."""
        session = self.find(session_id)
        if session is None or session.transport not in ("sse", "longpoll", "jsonp"):
            return
        try:
            self.receive_batch(session, body, self.config.max_message_bytes * 4)
        except ProtocolError as exc:
            session.deliver(frames.from_protocol_error(exc))

    def receive_batch(self, session: Session, body: bytes, limit: int) -> None:
        """Handle a POSTed body: one frame, or a JSON array of frames.

        :param limit: the largest body accepted; each frame is still held to
            ``max_message_bytes``.
        :raises ProtocolError: when the body as a whole is unusable.
        """
        if len(body) > limit:
            raise ProtocolError(frames.TOO_LARGE, f"bodies are limited to {limit} bytes")
        try:
            batch = frames.loads(body)
        except (ValueError, RecursionError):
            raise ProtocolError(frames.BAD_FRAME, "the body is not JSON") from None
        if not isinstance(batch, list):
            self.receive(session, body)
            return
        for item in batch:
            self.receive(session, frames.dumps(item))

    def subscribe_all(
        self, session: Session, channels: list[str], since: str | None, token: str | None = None
    ) -> None:
        """Subscribe ``session`` to ``channels`` at once (channels in an SSE or
        poll URL), replaying after one cursor merged across them.

        Each channel is answered like a ``subscribe`` frame (``subscribed``
        or an ``error``, in the order given) once the backend has them all
        in; then comes what was missed, in publish order.
        """
        outcomes: list[tuple[str, Any]] = []
        joining: list[str] = []
        for channel in dict.fromkeys(channels):
            try:
                frame = frames.parse_object(
                    {"type": "subscribe", "channel": channel, "token": token, "since": since}
                )
                grant = self._admit(session, frame)
            except ProtocolError as exc:
                outcomes.append((channel, exc))
            else:
                outcomes.append((channel, (grant, channel not in session.channels)))
                session.channels.add(channel)
                joining.append(channel)
        if not joining:
            self._answer_joins(session, outcomes, {}, [])
            return
        self.broker.subscribe_many(joining, session, since).addCallbacks(
            self._joined_all, self._join_failed, callbackArgs=(session, outcomes),
            errbackArgs=(session, outcomes, joining),
        )

    def _joined_all(self, answer: Any, session: Session, outcomes: list[tuple[str, Any]]) -> None:
        if session.closed:
            return
        recovered, missed = answer if answer is not None else ({}, [])
        self._answer_joins(session, outcomes, recovered, missed)

    def _join_failed(self, failure: Any, session: Session, outcomes: list[tuple[str, Any]], names: list[str]) -> None:
        log.failure("subscribing {session} to {channels} failed", failure, session=session.tag, channels=names)
        if not session.closed:
            # The refusals are still owed; the joins are answered when the
            # backend is back (it resubscribes its channels).
            self._answer_joins(session, [o for o in outcomes if isinstance(o[1], ProtocolError)], {}, [])

    def _answer_joins(
        self, session: Session, outcomes: list[tuple[str, Any]], recovered: dict[str, bool], missed: list[Any]
    ) -> None:
        for channel, outcome in outcomes:
            if isinstance(outcome, ProtocolError):
                session.deliver(frames.from_protocol_error(outcome))
            elif channel in session.channels:
                grant, fresh = outcome
                self._subscribed(session, channel, grant, fresh, recovered.get(channel, True), ())
        for message in missed:
            session.deliver(message)

    def _admit(self, session: Session, frame: Frame) -> Any:
        """Check the token and the subscription limit of a ``subscribe``;
        returns the token's grant (None for a public channel)."""
        channel = frame.channel
        assert channel is not None
        grant = None
        options = self.config.channel_options(channel)
        if options is None:
            raise ProtocolError(
                frames.INVALID_CHANNEL, f"no namespace {channel.partition(':')[0]!r} on this server",
                ref=frame.ref, channel=channel,
            )
        if session.origin is not None and options.namespace is not None and not origin_allowed(
            session.origin, options.allowed_origins
        ):
            raise ProtocolError(
                frames.FORBIDDEN, f"pages of this origin may not join {options.namespace}:* channels",
                ref=frame.ref, channel=channel,
            )
        identity = session.auth
        if frames.reserved(channel):
            self._admit_reserved(frame)
        elif identity is not None and channel in identity.channels and frame.token is None:
            # The connection token opens it.
            grant = tokens.Grant(identity.channels, identity.member)
        elif tokens.needs_token(channel) or options.require_token:
            try:
                grant = tokens.verify(frame.token, channel, self.config.secret, presence=self.is_presence(channel))
            except ProtocolError as exc:
                exc.ref = frame.ref
                raise
            if identity is not None:
                grant = tokens.Grant(grant.channels, identity.member, grant.exp, grant.jti)
            elif grant.user is not None:
                session.user = grant.user
            session.granted = grant.channels if session.granted is None else session.granted | grant.channels
        elif self.is_presence(channel):
            # A namespace's presence channel that needs no token: its
            # members are the connections' users.
            if identity is None:
                raise ProtocolError(
                    frames.FORBIDDEN, "presence channels need a user: a connection token, or a token with user",
                    ref=frame.ref, channel=channel,
                )
            grant = tokens.Grant(frozenset(), identity.member)
        if channel not in session.channels and len(session.channels) >= self.config.max_subscriptions:
            raise ProtocolError(
                frames.TOO_MANY_SUBSCRIPTIONS,
                f"at most {self.config.max_subscriptions} subscriptions per session",
                ref=frame.ref, channel=channel,
            )
        return grant

    def _admit_reserved(self, frame: Frame) -> None:
        """One of Chloe's own channels: the status feed, open to whoever
        ``/status`` answers (the page chloed serves them carries a token
        for it), or to anyone with ``public_status``; no other exists."""
        channel = frame.channel
        assert channel is not None
        if channel != frames.STATUS_CHANNEL:
            raise ProtocolError(
                frames.FORBIDDEN, f"{frames.RESERVED_PREFIX}* channels are Chloe's own", ref=frame.ref, channel=channel
            )
        if self.config.public_status:
            return
        try:
            tokens.verify(frame.token, channel, tokens.feed_keys(self.config.secret))
        except ProtocolError as exc:
            exc.ref = frame.ref
            raise

    def is_presence(self, channel: str) -> bool:
        """Whether ``channel`` tracks members: ``presence-…`` (a Pusher
        app's ``pusher~<id>~presence-…`` too, never a user's channel), or
        in a namespace with ``presence = true``."""
        if is_presence(channel):
            return True
        if channel[:1] == "#":
            return False
        options = self.config.channel_options(channel)
        return options is not None and options.presence

    def _subscribe(self, session: Session, frame: Frame) -> None:
        """A ``subscribe`` frame: answered once the backend has it in (a
        token with a ``jti`` once it is known not to be revoked)."""
        grant = self._admit(session, frame)
        if grant is not None and grant.jti is not None:
            self.broker.revoked(grant.jti, "", 0.0).addCallback(self._unless_revoked, session, frame, grant)
            return
        self._join(session, frame, grant)

    def _unless_revoked(self, revoked: bool, session: Session, frame: Frame, grant: Any) -> None:
        if session.closed:
            return
        if revoked:
            session.deliver(frames.error(frames.TOKEN_REVOKED, "this token was revoked", frame.ref, frame.channel))
            return
        self._join(session, frame, grant)

    def _join(self, session: Session, frame: Frame, grant: Any) -> None:
        channel = frame.channel
        assert channel is not None
        fresh = channel not in session.channels
        session.channels.add(channel)
        self.broker.subscribe(channel, session, frame.since).addCallback(
            self._joined, session, channel, grant, fresh
        ).addErrback(
            lambda f: log.failure(
                "subscribing {session} to {channel} failed", f, session=session.tag, channel=channel
            )
        )

    def _joined(self, answer: Any, session: Session, channel: str, grant: Any, fresh: bool) -> None:
        if answer is None or session.closed or channel not in session.channels:
            return  # it left before it was in
        recovered, missed = answer
        self._subscribed(session, channel, grant, fresh, recovered, missed)

    def _subscribed(
        self, session: Session, channel: str, grant: Any, fresh: bool, recovered: bool, missed: Any
    ) -> None:
        """The session is in: ``subscribed`` (with the members on a presence
        channel), then the replay."""
        presence = self.is_presence(channel)
        if fresh and grant is not None and presence:
            if session.presence is None:
                session.presence = {}
            session.presence[channel] = grant.user
            self.presence.join(channel, session.id, grant.user)
        if grant is not None and grant.exp:
            self.auth.watch_channel(session, channel, grant.exp, grant.jti)
        if presence:
            session.deliver(frames.encode({
                "type": "subscribed", "channel": channel, "recovered": recovered,
                "members": self.presence.members(channel),
            }))
        else:
            session.deliver(frames.subscribed(channel, recovered))
        for message in missed:
            session.deliver(message)
        if fresh:
            self._event("subscribe", session, channel)

    def _unsubscribe(self, session: Session, frame: Frame) -> None:
        channel = frame.channel
        assert channel is not None
        if self.broker.unsubscribe(channel, session):
            session.channels.discard(channel)
            self.auth.unwatch_channel(session, channel)
            self._part(session, channel)
            self._event("unsubscribe", session, channel)
        session.deliver(frames.unsubscribed(channel))

    def _part(self, session: Session, channel: str, away: bool = False) -> None:
        if session.presence is not None and channel in session.presence:
            self.presence.part(channel, session.id, session.presence.pop(channel), away)

    def _ping(self, session: Session, frame: Frame) -> None:
        session.deliver(frames.PONG)

    def _auth(self, session: Session, frame: Frame) -> None:
        assert frame.token is not None
        self.auth.authenticate(session, frame.token, frame.since)

    # -- what the app does to sessions (chloed.commands) ----------------------

    def server_subscribe(self, session: Session, channel: str) -> None:
        """Subscribe ``session`` to ``channel`` because the app said so (no
        token asked); it hears ``subscribed`` with ``server: true``."""
        if session.closed or channel in session.channels:
            return
        if len(session.channels) >= self.config.max_subscriptions:
            log.info(
                "server-side subscription of {session} to {channel} skipped: it has {n} already",
                session=session.tag, channel=channel, n=len(session.channels),
            )
            return
        session.channels.add(channel)

        def joined(answer: Any) -> None:
            if answer is None or session.closed or channel not in session.channels:
                return
            recovered, missed = answer
            frame: dict[str, Any] = {"type": "subscribed", "channel": channel, "recovered": recovered, "server": True}
            user = session.user
            if self.is_presence(channel) and isinstance(user, dict) and "id" in user:
                # A member as its user, as if it had joined with a token.
                if session.presence is None:
                    session.presence = {}
                session.presence[channel] = user
                self.presence.join(channel, session.id, user)
                frame["members"] = self.presence.members(channel)
            session.deliver(frames.encode(frame))
            for message in missed:
                session.deliver(message)
            self._event("subscribe", session, channel)

        self.broker.subscribe(channel, session).addCallback(joined).addErrback(
            lambda f: log.failure("subscribing {session} to {channel} failed", f, session=session.tag, channel=channel)
        )

    def server_unsubscribe(self, session: Session, channel: str, reason: str = "server") -> None:
        """End ``session``'s subscription to ``channel``, telling it why."""
        if channel not in session.channels:
            return
        self.broker.unsubscribe(channel, session)
        session.channels.discard(channel)
        self.auth.unwatch_channel(session, channel)
        self._part(session, channel)
        self._event("unsubscribe", session, channel)
        session.deliver(frames.encode({"type": "unsubscribed", "channel": channel, "reason": reason}))

    def token_ended(self, session: Session, channel: str) -> None:
        """The token ``session`` joined ``channel`` with ran out unrefreshed."""
        self.server_unsubscribe(session, channel, "token_expired")

    def _send(self, session: Session, frame: Frame) -> None:
        """A browser's ``send``: published to its channel (``client_publish``),
        relayed to the app (``message`` in ``events``), or both; acked once
        the app took it, or, with no relay, once it is published."""
        assert frame.data is not None
        self.sent_by_browsers += 1
        channel = frame.channel
        if channel is not None and frames.reserved(channel):
            raise ProtocolError(
                frames.FORBIDDEN, f"only Chloe publishes to {frames.RESERVED_PREFIX}* channels",
                ref=frame.ref, channel=channel,
            )
        options = self.config.channel_options(channel) if channel is not None else None
        if channel is not None and options is None:
            raise ProtocolError(
                frames.INVALID_CHANNEL, f"no namespace {channel.partition(':')[0]!r} on this server",
                ref=frame.ref, channel=channel,
            )
        if options is not None and len(frame.data) > options.max_message_bytes:
            raise ProtocolError(
                frames.TOO_LARGE, f"messages to {options.namespace}:* are limited to {options.max_message_bytes} bytes",
                ref=frame.ref, channel=channel,
            )
        publishing = options is not None and options.client_publish
        relaying = self.relay is not None and "message" in self.config.events
        if not publishing and not relaying:
            why = (
                "this server has no application_server_url" if self.relay is None
                else "this server does not relay browser messages (\"message\" is not in events)"
            )
            raise ProtocolError(frames.NO_APPLICATION, why, ref=frame.ref)
        published = self._publish_from(session, frame) if publishing else None
        if relaying:
            self._relay_from(session, frame)
        elif published is not None:
            published.addCallback(lambda result: result and session.deliver(frames.ack(frame.ref)))

    def _publish_from(self, session: Session, frame: Frame) -> Deferred[Any]:
        """Publish a browser's ``send`` to its channel: a public one, or one
        a token it subscribed with lists. Fires with the receipt, or None
        when the backend could not take it (the browser is told)."""
        channel = frame.channel
        assert channel is not None and frame.data is not None
        if tokens.needs_token(channel) and channel not in (session.granted or ()):
            raise ProtocolError(
                frames.FORBIDDEN,
                "a browser may publish only to public channels and to channels its token lists",
                ref=frame.ref, channel=channel,
            )
        return self.broker.publish([channel], frame.data).addErrback(self._publish_failed, session, frame)

    def _relay_from(self, session: Session, frame: Frame) -> None:
        """Relay a browser's ``send`` to the app; acked once it took it."""
        assert self.relay is not None
        body = event_body("message", session.id, frame.channel, frame.data, frame.ref, session.user)
        ref = frame.ref
        self.relay.submit(
            session.lane or session.id, body, delivery_id(ref),
            accepted=lambda: session.deliver(frames.accepted(ref)),
        ).addCallbacks(
            lambda _: session.deliver(frames.ack(frame.ref)),
            self._relay_failed,
            errbackArgs=(session, frame),
        )

    def _publish_failed(self, failure: Any, session: Session, frame: Frame) -> None:
        """A browser's publish the backend could not take."""
        log.warn("publish from {session} failed: {why}", session=session.tag, why=failure.getErrorMessage())
        session.deliver(frames.error(
            frames.UPSTREAM_FAILED, f"could not publish: {failure.getErrorMessage()}", frame.ref, frame.channel
        ))
        return None

    def _relay_failed(self, failure: Any, session: Session, frame: Frame) -> None:
        if failure.check(RelayRejected):
            code, message = frames.UPSTREAM_REJECTED, f"the application refused it ({failure.value.status})"
        else:
            code, message = frames.UPSTREAM_FAILED, f"the application could not take it: {failure.value}"
        session.deliver(frames.error(code, message, frame.ref, frame.channel))

    def _event(self, kind: str, session: Session, channel: str | None = None, previous: str | None = None) -> None:
        """POST a lifecycle event to the app, when ``events`` lists it (a
        Pusher socket's app hears of it by Pusher's webhooks instead), on
        the session's lane (after its messages), numbered in this node's
        sequence so that the app can tell it missed one."""
        if self.relay is None or kind not in self.config.events or session.transport == "pusher":
            return
        self.event_seq += 1
        body = lifecycle_body(kind, session.id, channel, session.user, self.node, self.event_seq, previous)
        self.relay.submit(session.lane or session.id, body, kind=EVENT).addErrback(
            lambda f: log.info(
                "{kind} event for {session} not delivered: {why}",
                kind=kind, session=session.tag, why=f.getErrorMessage(),
            )
        )
