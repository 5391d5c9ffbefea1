"""What a Pusher client's frames do, on the hub's sessions and the backend.

A Pusher socket is a hub session (transport ``"pusher"``, its id the
socket id): the backend delivers to it, counts it, and the hub ends it
(``slow_consumer``, draining) as any other. What differs is the protocol,
here: ``pusher:subscribe`` with Pusher's auth, presence from
``channel_data``, client events, sign-in; and what an app hears of it,
through :class:`chloed.pusher.webhooks.Webhooks`.

Presence members leave at once when their last socket goes, as Pusher's
do (``away``), not ``session_grace`` later as Chloe-native members.
"""

from __future__ import annotations

import secrets
from collections import Counter
from typing import Any, Callable

from twisted.logger import Logger

from chloed import frames, lograte
from chloed.frames import Encoded
from chloed.hub import Hub
from chloed.pusher import auth, names, wire
from chloed.pusher.apps import PusherApp, PusherConfig
from chloed.pusher.webhooks import Webhooks
from chloed.session import Session

log = Logger()

#: Pusher's limits on a presence channel: members, and the bytes of a
#: member's ``channel_data`` (user id and info).
MAX_MEMBERS = 100
MAX_CHANNEL_DATA = 1024
MAX_USER_ID_CHARS = 128
MAX_EVENT_NAME_CHARS = 200
#: Since this id, a subscriber gets all a channel retains: a ``cache-``
#: channel's join reads its last event so.
_EVERYTHING = "0-0"


def new_socket_id() -> str:
    """Pusher's ``NNN.NNN``, from 60 random bits."""
    return f"{secrets.randbelow(10**9)}.{secrets.randbelow(10**9)}"


def signed_in(session: Session) -> str | None:
    """The id of the user the socket signed in as (``pusher:signin``)."""
    user = session.user
    return user["id"] if isinstance(user, dict) else None


class PusherProtocol:
    """Pusher's protocol 7 for every app of ``config``, on ``hub``.

    :param webhooks: what tells the apps (one :class:`Webhooks` per server).
    """

    def __init__(self, hub: Hub, config: PusherConfig, webhooks: Webhooks) -> None:
        self.hub = hub
        self.config = config
        self.webhooks = webhooks
        self.broker = hub.broker
        # Sockets of each app now (app id -> count), for max_connections.
        self.sockets: Counter[str] = Counter()
        # This node's sockets in each channel (backend name -> count), for
        # occupied and vacated.
        self._local: Counter[str] = Counter()
        self.client_events = 0
        self.refused_frames = 0
        # The HTTP API's requests, and those refused (chloed.pusher.api).
        self.api_requests = 0
        self.api_refused = 0
        self._handlers: dict[str, Callable[[Session, PusherApp, Any], None]] = {
            "pusher:ping": self._ping,
            "pusher:pong": self._pong,
            "pusher:subscribe": self._subscribe,
            "pusher:unsubscribe": self._unsubscribe,
            "pusher:signin": self._signin,
        }
        hub.presence.changed = self._member_changed

    def status(self) -> dict[str, Any]:
        """``/status``'s ``pusher``: sockets per app, what clients sent and
        had refused, the API's requests and the webhooks' fate."""
        return {
            "sockets": {app.id: self.sockets[app.id] for app in self.config.apps},
            "client_events": self.client_events,
            "refused_frames": self.refused_frames,
            "api_requests": self.api_requests,
            "api_refused": self.api_refused,
            "webhooks": self.webhooks.status(),
        }

    # -- sockets --------------------------------------------------------------

    def refusal(self, key: str | None, protocol: str | None) -> tuple[int, str] | None:
        """Why a socket to ``/app/{key}?protocol=`` is refused (Pusher's code
        and message), or None; ``key`` None: the path is not ``/app/{key}``."""
        if key is None:
            return wire.PATH_NOT_FOUND, "Path not found: connect to /app/{key}"
        if protocol is None:
            return wire.NO_PROTOCOL, "No protocol version supplied"
        if not protocol.isascii() or not protocol.isdigit():
            return wire.INVALID_VERSION, "Invalid version string format"
        if len(protocol) > 2 or not 5 <= int(protocol) <= 7:
            return wire.UNSUPPORTED_PROTOCOL, f"Unsupported protocol version {protocol}"
        app = self.config.by_key(key)
        if app is None:
            return wire.APP_NOT_FOUND, f"Could not find app by key {key[:64]}"
        if self.hub.draining:
            return wire.RECONNECT, "This server is restarting; reconnect"
        if not self.hub.accepting():
            return wire.OVER_CAPACITY, "Over capacity"
        if app.max_connections and self.sockets[app.id] >= app.max_connections:
            return wire.OVER_QUOTA, "Application is over connection quota"
        return None

    def opened(self, app: PusherApp, sink: Any) -> Session:
        """A socket of ``app`` is open: its session, answered
        ``pusher:connection_established`` (the hub's ``connected``)."""
        self.sockets[app.id] += 1
        return self.hub.open_session("pusher", sink, id=new_socket_id())

    def closed(self, app: PusherApp, session: Session) -> None:
        """The socket went: it leaves every channel, then the hub forgets
        the session."""
        self.ending(app, session)
        self.hub.connection_lost(session)

    def ending(self, app: PusherApp, session: Session) -> None:
        """The socket is going (gone, or closed by the hub, which forgets
        the session next): it leaves every channel, its members at once,
        as Pusher's do."""
        self.sockets[app.id] -= 1
        for channel in sorted(session.channels):
            self._leave(session, app, channel)
        session.channels.clear()

    # -- frames -----------------------------------------------------------------

    def receive(self, session: Session, app: PusherApp, raw: bytes) -> None:
        """One text frame of the socket; a bad one is answered
        ``pusher:error`` and the socket stays, as Pusher's does."""
        if session.closed:
            return
        hub = self.hub
        hub.frames_received += 1
        if not hub.admit(session):
            hub.rate_limited += 1
            self.refuse(session, None, f"Too many frames: at most {hub.config.rate_limit:g} a second (rate_limit)")
            return
        if len(raw) > app.max_message_bytes + MAX_CHANNEL_DATA + 512:
            self.refuse(session, None, f"Frames are limited to {app.max_message_bytes} bytes of data")
            return
        try:
            message = frames.loads(raw)
        except (ValueError, RecursionError):
            self.refuse(session, None, "Frames are JSON objects")
            return
        name = message.get("event") if isinstance(message, dict) else None
        if not isinstance(name, str):
            self.refuse(session, None, "A frame needs a string event")
            return
        handler = self._handlers.get(name)
        if handler is not None:
            data = message.get("data")
            # (a ping's or a pong's data is never read, whatever it is)
            if isinstance(data, str) and name not in ("pusher:ping", "pusher:pong"):
                try:
                    data = frames.loads(data)
                except (ValueError, RecursionError):
                    self.refuse(session, None, f"{name}'s data is not JSON")
                    return
            handler(session, app, data)
        elif name.startswith("client-"):
            self._client_event(session, app, name, message, len(raw))
        else:
            self.refuse(session, None, f"Unsupported event {name[:MAX_EVENT_NAME_CHARS]}")

    def refuse(self, session: Session, code: int | None, message: str) -> None:
        """Answer a frame with ``pusher:error``, counted and logged sparingly."""
        self.refused_frames += 1
        self.hub.client_errors.report(
            session.tag, lograte.FRAME_ERROR, f"pusher: {message}", session=session.tag, code=code
        )
        session.deliver(wire.error(code, message))

    def _ping(self, session: Session, app: PusherApp, data: Any) -> None:
        session.deliver(wire.PONG)

    def _pong(self, session: Session, app: PusherApp, data: Any) -> None:
        """An answer to a ping: the heartbeat has heard the socket already."""

    # -- subscriptions ----------------------------------------------------------

    def _subscribe(self, session: Session, app: PusherApp, data: Any) -> None:
        channel = data.get("channel") if isinstance(data, dict) else None
        if not names.valid(channel):
            shown = channel if isinstance(channel, str) and len(channel) <= names.MAX_CHANNEL_CHARS else None
            if shown is None:
                self.refuse(session, None, "pusher:subscribe needs a valid channel name")
            else:
                self._deny(session, shown, "Invalid channel name", 400, "InvalidChannel")
            return
        assert isinstance(channel, str) and isinstance(data, dict)
        backend = names.backend(app.id, channel)
        member = None
        if channel.startswith(names.USER_PREFIX):
            user_id = signed_in(session)
            if user_id is None or names.user_channel(user_id) != channel:
                self._deny(session, channel, "Only the signed-in user may subscribe to its channel")
                return
        elif names.private(channel):
            member = self._authorize(session, app, channel, data)
            if member is False:
                return
        if backend not in session.channels and len(session.channels) >= self.hub.config.max_subscriptions:
            self._deny(session, channel, f"At most {self.hub.config.max_subscriptions} channels per connection",
                       400, "LimitReached")
            return
        fresh = backend not in session.channels
        session.channels.add(backend)
        if fresh:
            self._occupy(app, channel, backend, 1)
        since = _EVERYTHING if names.cached(channel) else None
        self.broker.subscribe(backend, session, since).addCallback(
            self._joined, session, app, channel, backend, member, fresh
        ).addErrback(
            lambda f: log.failure("pusher: subscribing {session} to {channel} failed", f,
                                  session=session.tag, channel=channel)
        )

    def _deny(self, session: Session, channel: str, message: str, status: int = 401, kind: str = "AuthError") -> None:
        self.refused_frames += 1
        self.hub.client_errors.report(
            session.tag, lograte.FRAME_ERROR, f"pusher: {message}", session=session.tag, code=status
        )
        session.deliver(wire.subscription_error(channel, message, status, kind))

    def _authorize(self, session: Session, app: PusherApp, channel: str, data: dict[str, Any]) -> Any:
        """Check a private or presence subscription's auth; the member a
        presence one joins as (``{"id", "info"}``), None for a private one,
        False when refused (the socket is told)."""
        channel_data = data.get("channel_data")
        if channel_data is not None and not isinstance(channel_data, str):
            self._deny(session, channel, "channel_data must be a string", 400, "InvalidData")
            return False
        if isinstance(channel_data, str) and len(channel_data.encode("utf-8")) > MAX_CHANNEL_DATA:
            self._deny(session, channel, f"channel_data is limited to {MAX_CHANNEL_DATA} bytes", 400, "InvalidData")
            return False
        presence = names.presence(channel)
        signed = channel_data if presence else None
        if not auth.channel_auth_ok(app, data.get("auth"), session.id, channel, signed):
            self._deny(session, channel, "Invalid signature: the auth does not sign this socket and channel")
            return False
        if not presence:
            return None
        if channel_data is None:
            user = session.user
            if signed_in(session) is None or not isinstance(user, dict):
                self._deny(session, channel, "A presence subscription needs channel_data, or a signed-in user")
                return False
            return {"id": user["id"], "info": user.get("user_info")}
        try:
            parsed = frames.loads(channel_data)
        except (ValueError, RecursionError):
            parsed = None
        user_id = parsed.get("user_id") if isinstance(parsed, dict) else None
        if isinstance(user_id, int) and not isinstance(user_id, bool):
            user_id = str(user_id)
        if not isinstance(user_id, str) or not user_id or len(user_id) > MAX_USER_ID_CHARS:
            self._deny(session, channel, "channel_data needs a user_id string", 400, "InvalidData")
            return False
        assert isinstance(parsed, dict)
        backend = names.backend(app.id, channel)
        present = self.hub.presence.members(backend)
        if len(present) >= MAX_MEMBERS and all(m["id"] != user_id for m in present):
            self._deny(session, channel, f"Presence channels hold at most {MAX_MEMBERS} members", 400, "LimitReached")
            return False
        return {"id": user_id, "info": parsed.get("user_info")}

    def _joined(
        self, answer: Any, session: Session, app: PusherApp, channel: str, backend: str,
        member: dict[str, Any] | None, fresh: bool,
    ) -> None:
        if answer is None or session.closed or backend not in session.channels:
            return
        if member is not None:
            if session.presence is None:
                session.presence = {}
            previous = session.presence.get(backend)
            if previous is None or previous["id"] != member["id"]:
                if previous is not None:
                    self.hub.presence.part(backend, session.id, previous, away=True)
                session.presence[backend] = member
                self.hub.presence.join(backend, session.id, member)
            session.deliver(wire.subscribed(channel, self.hub.presence.members(backend)))
        else:
            session.deliver(wire.subscribed(channel))
        if names.cached(channel):
            missed = answer[1]
            if missed:
                session.deliver(missed[-1])
            else:
                session.deliver(wire.event("pusher:cache_miss", None, channel))
                self.webhooks.cache_miss(app, channel)

    def _occupy(self, app: PusherApp, channel: str, backend: str, change: int) -> None:
        """One socket of this node more (1) or fewer (-1) in ``channel``:
        when this node's first came or last went, the backend says whether
        the cluster's did, and the app hears ``channel_occupied`` or
        ``channel_vacated`` from the one node where it did."""
        if channel.startswith(names.USER_PREFIX):
            return
        count = self._local[backend] + change
        if count:
            self._local[backend] = count
            if count > 1 or change < 0:
                return
        else:
            del self._local[backend]
        occupied = change > 0
        self.broker.occupy(backend, occupied).addCallback(self._occupied, app, channel, occupied).addErrback(
            lambda f: log.failure("pusher: occupancy of {channel} unknown", f, channel=channel)
        )

    def _occupied(self, cluster: bool, app: PusherApp, channel: str, occupied: bool) -> None:
        if not cluster:
            return
        if occupied:
            self.webhooks.occupied(app, channel)
        else:
            self.webhooks.vacated(app, channel)

    def _member_changed(self, backend: str, joined: bool, user_id: str) -> None:
        """A member joined or left a presence channel (once in the cluster)."""
        if not names.is_pusher(backend):
            return
        app = self.config.by_id(names.app_id(backend))
        if app is not None:
            self.webhooks.member(app, names.pusher_name(backend), joined, user_id)

    def _unsubscribe(self, session: Session, app: PusherApp, data: Any) -> None:
        channel = data.get("channel") if isinstance(data, dict) else None
        if not names.valid(channel):
            self.refuse(session, None, "pusher:unsubscribe needs a valid channel name")
            return
        assert isinstance(channel, str)
        backend = names.backend(app.id, channel)
        if backend in session.channels:
            session.channels.discard(backend)
            self._leave(session, app, backend)

    def _leave(self, session: Session, app: PusherApp, backend: str) -> None:
        """``session`` is out of ``backend``: its member leaves at once, and
        the app hears the channel vacated if it was the last one."""
        self.broker.unsubscribe(backend, session)
        if session.presence is not None:
            member = session.presence.pop(backend, None)
            if member is not None:
                self.hub.presence.part(backend, session.id, member, away=True)
        self._occupy(app, names.pusher_name(backend), backend, -1)

    # -- users ------------------------------------------------------------------

    def _signin(self, session: Session, app: PusherApp, data: Any) -> None:
        user_data = data.get("user_data") if isinstance(data, dict) else None
        if not isinstance(user_data, str) or len(user_data.encode("utf-8")) > MAX_CHANNEL_DATA:
            self.refuse(session, wire.UNAUTHORIZED, f"pusher:signin needs user_data, a string of at most {MAX_CHANNEL_DATA} bytes")
            return
        assert isinstance(data, dict)
        if not auth.signin_ok(app, data.get("auth"), session.id, user_data):
            self.refuse(session, wire.UNAUTHORIZED, "Invalid signature: the auth does not sign this socket and user_data")
            return
        try:
            user = frames.loads(user_data)
        except (ValueError, RecursionError):
            user = None
        user_id = user.get("id") if isinstance(user, dict) else None
        if not isinstance(user_id, str) or not user_id or len(user_id) > MAX_USER_ID_CHARS:
            self.refuse(session, wire.UNAUTHORIZED, "user_data needs an id, a non-empty string")
            return
        assert isinstance(user, dict)
        if signed_in(session) not in (None, user_id):
            self.refuse(session, wire.UNAUTHORIZED, "This socket is signed in as another user")
            return
        session.user = user
        # In the user's channel from now on, whether the client subscribes
        # to it or not: send_to_user and terminate_connections reach it.
        # signin_success once the backend has it in (on Redis, later), so
        # that whatever the app sends the user after it arrives.
        success = wire.event("pusher:signin_success", {"user_data": user_data})
        backend = names.backend(app.id, names.user_channel(user_id))
        if backend in session.channels:
            session.deliver(success)
            return
        session.channels.add(backend)
        self.broker.subscribe(backend, session).addCallback(self._signed_in, session, backend, success).addErrback(
            lambda f: log.failure("pusher: signing {session} in failed", f, session=session.tag)
        )

    def _signed_in(self, answer: Any, session: Session, backend: str, success: Encoded) -> None:
        if answer is not None and not session.closed and backend in session.channels:
            session.deliver(success)

    # -- client events ------------------------------------------------------------

    def _client_event(self, session: Session, app: PusherApp, name: str, message: dict[str, Any], size: int) -> None:
        channel = message.get("channel")
        if not app.enable_client_messages:
            self.refuse(session, None, "To send client events, you must enable this feature in the Settings page of your dashboard.")
            return
        if not isinstance(channel, str) or not names.private(channel) or names.encrypted(channel):
            self.refuse(session, None, "Client events are only supported on private and presence channels, not encrypted ones")
            return
        backend = names.backend(app.id, channel)
        if backend not in session.channels:
            self.refuse(session, None, f"Client events need a subscription to {channel[:names.MAX_CHANNEL_CHARS]}")
            return
        if len(name) > MAX_EVENT_NAME_CHARS:
            self.refuse(session, None, f"Event names are limited to {MAX_EVENT_NAME_CHARS} characters")
            return
        if size > app.max_message_bytes:
            self.refuse(session, None, f"Client events are limited to {app.max_message_bytes} bytes")
            return
        interval = 1.0 / app.client_events_per_second
        # A burst of one second's worth, then the rate.
        burst = max(0.0, interval * (app.client_events_per_second - 1))
        if not session.admit_event(self.hub.clock.seconds(), interval, burst + 1e-6):
            self.refuse(session, wire.CLIENT_EVENT_RATE, "Client event rejected due to rate limit")
            return
        member = session.presence.get(backend) if session.presence is not None else None
        user_id = member["id"] if member is not None else None
        data = message.get("data")
        self.client_events += 1
        self.broker.publish([backend], wire.message_data(name, data, user_id), session.id).addErrback(
            self._client_event_failed, session
        )
        self.webhooks.client_event(app, channel, name, data, session.id, user_id)

    def _client_event_failed(self, failure: Any, session: Session) -> None:
        log.warn("pusher: client event from {session} not published: {why}",
                 session=session.tag, why=failure.getErrorMessage())
        session.deliver(wire.error(None, f"The client event could not be published: {failure.getErrorMessage()}"))

