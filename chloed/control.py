"""The app's control of browsers (bearer secret): ``POST /disconnect``,
``POST /subscribe``, ``POST /unsubscribe``, ``POST /revoke`` and ``GET
/users/ID``.

A command names one session (``"session"``) or every session of one user
(``"user"``, a connection token's ``sub``), on every node. It is validated
here, whole, then handed to the backend (:meth:`Backend.control`), which
runs it on each node (:mod:`chloed.commands`) and says how many sessions
it targeted: ``202 {"sessions": N}``. A session no node holds is a 404
``unknown_session``; a user with no session is ``{"sessions": 0}``, not an
error (a persisted subscription or a revocation still applies to the
sessions it opens later).

A body is one JSON object of the fields the route takes: another field, a
field of the wrong type, or both or neither of ``session`` and ``user`` is
a 400 ``invalid_request``, a bad user id a 400 ``invalid_user``, a channel
that is not a channel name (or one of Chloe's own ``chloe.*``, or one of a
namespace not configured) a 400 ``invalid_channel``.
"""

from __future__ import annotations

import math

from typing import Any

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest
from werkzeug.routing import PathConverter

from chloed import frames
from chloed.api import backend_failed
from chloed.backends.base import SessionInfo
from chloed.backends.users import USER_REVOCATION_SECONDS
from chloed.errors import RequestError
from chloed.http import INVALID_REQUEST, authorize, json_body, json_errors
from chloed.hub import SESSION_ID_RE, Hub
from chloed.send import channel_options, checked_user, namespaced

#: The first path segments this module serves (the site's root hands each
#: whole to :meth:`ControlApi.resource`).
PATHS = (b"disconnect", b"subscribe", b"unsubscribe", b"revoke", b"users")

#: A command is a few short fields; a user id of 128 four-byte characters
#: fits many times over, a 10,000-character one still gets its 400.
BODY_MAX = 64 * 1024
DEFAULT_REASON = "disconnected by the application"
MAX_REASON_CHARS = 200
#: How long a ``jti`` revocation is kept when ``until`` is not given.
JTI_SECONDS = 86400.0
#: Epoch seconds a ``before`` or ``until`` may be: 9999-12-31, so every
#: backend can store it as a time.
MAX_EPOCH = 253402300799
UNKNOWN_SESSION = "unknown_session"


def _invalid(message: str) -> RequestError:
    return RequestError(400, INVALID_REQUEST, message)


def command_body(request: IRequest, fields: frozenset[str]) -> dict[str, Any]:
    """The request's JSON object, holding no field but ``fields``.

    :raises RequestError: 413 over :data:`BODY_MAX`, else 400.
    """
    body = request.content.read(BODY_MAX + 1) if request.content is not None else b""
    if len(body) > BODY_MAX:
        raise RequestError(413, frames.TOO_LARGE, f"a command is at most {BODY_MAX} bytes")
    try:
        value = frames.loads(body)
    except (ValueError, RecursionError):
        raise _invalid("the body is not JSON") from None
    if not isinstance(value, dict):
        raise _invalid("the body must be a JSON object")
    unknown = set(value) - fields
    if unknown:
        raise _invalid(f"unknown field {sorted(unknown)[0][:64]!r}; this route takes {', '.join(sorted(fields))}")
    return value


def target(body: dict[str, Any]) -> tuple[str, str]:
    """Whom a command names: ``("session", id)`` or ``("user", id)``.

    :raises RequestError: 400 unless exactly one of them, well formed.
    """
    if ("session" in body) == ("user" in body):
        raise _invalid("give session or user (one of them)")
    if "user" in body:
        return "user", checked_user(body["user"])
    session = body["session"]
    if not isinstance(session, str) or not session:
        raise _invalid("session must be a session id (a non-empty string)")
    if SESSION_ID_RE.fullmatch(session) is None:
        raise RequestError(404, UNKNOWN_SESSION, "no such session")  # (no node made that id)
    return "session", session


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise _invalid(f"{name} must be true or false")
    return value


def _epoch(body: dict[str, Any], name: str) -> float | None:
    """An optional time in epoch seconds."""
    if name not in body:
        return None
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_EPOCH:
        raise _invalid(f"{name} must be a time in epoch seconds, from 0 to {MAX_EPOCH}")
    return float(value)


_DISCONNECT = frozenset(("session", "user", "reason", "reconnect"))
_SUBSCRIPTION = frozenset(("session", "user", "channel", "persist"))
_REVOKE = frozenset(("jti", "until", "user", "before"))


class Anything(PathConverter):
    """A path parameter of any characters, ``/`` and control characters
    too (werkzeug's ``path`` stops at a newline and cannot start with
    ``/``), so that every user id sent percent-encoded reaches the route
    and a bad one is told ``invalid_user``."""

    regex = r"[\s\S]+?"
    part_isolating = False  # (werkzeug would guess True: the regex has no "/")


class ControlApi:
    """Klein routes of the control API, bound to one hub."""

    app = Klein()
    json_errors(app)
    app.url_map.converters["anything"] = Anything
    app.url_map.merge_slashes = False  # (a user id may hold "//")

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.broker = hub.broker
        self.config = hub.config
        self._options = channel_options(hub.config)

    def resource(self) -> Any:
        return self.app.resource()


    def _command(self, request: IRequest, command: dict[str, Any], kind: str) -> Deferred[bytes]:
        """Run ``command`` on every node; 202 with how many sessions it
        targeted (a 404 for a session none holds)."""
        return self.broker.control(command).addCallbacks(
            self._targeted, backend_failed, callbackArgs=(kind, request)
        )

    @staticmethod
    def _targeted(sessions: int, kind: str, request: IRequest) -> bytes:
        if kind == "session" and not sessions:
            raise RequestError(404, UNKNOWN_SESSION, "no such session")
        return json_body(request, 202, {"sessions": sessions})

    @app.route("/disconnect", methods=["POST"])
    def disconnect(self, request: IRequest) -> Deferred[bytes]:
        """End a session, or every session of a user, telling each
        ``{"type": "disconnect", "reason", "reconnect"}`` first."""
        authorize(request, self.config.secret)
        body = command_body(request, _DISCONNECT)
        kind, id = target(body)
        reason = body.get("reason", DEFAULT_REASON)
        if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS:
            raise _invalid(f"reason must be a string of at most {MAX_REASON_CHARS} characters")
        reconnect = _flag(body, "reconnect", True)
        command = {"op": "disconnect", kind: id, "reason": reason, "reconnect": reconnect}
        return self._command(request, command, kind)

    @app.route("/subscribe", methods=["POST"])
    def subscribe(self, request: IRequest) -> Deferred[bytes]:
        """Subscribe a session, or a user's sessions, to a channel
        server-side (no token asked); ``persist`` (a user's only): its
        later sessions too."""
        return self._subscription(request, "subscribe")

    @app.route("/unsubscribe", methods=["POST"])
    def unsubscribe(self, request: IRequest) -> Deferred[bytes]:
        """Unsubscribe them; ``persist``: the user's later sessions are no
        longer subscribed either."""
        return self._subscription(request, "unsubscribe")

    def _subscription(self, request: IRequest, op: str) -> Deferred[bytes]:
        authorize(request, self.config.secret)
        body = command_body(request, _SUBSCRIPTION)
        kind, id = target(body)
        channel = self._channel(body.get("channel"))
        if "persist" in body and kind != "user":
            raise _invalid("persist is for a user's subscriptions (its later sessions), not a session's")
        persist = _flag(body, "persist", False)
        command = {"op": op, kind: id, "channel": channel}
        if not persist:
            return self._command(request, command, kind)
        persisted = self.broker.persist_channel(id, channel, op == "subscribe")
        return persisted.addCallback(lambda _: self._command(request, command, kind)).addErrback(backend_failed)

    def _channel(self, channel: Any) -> str:
        if channel is None:
            raise _invalid("channel is required")
        if not frames.valid_channel(channel):
            raise RequestError(400, frames.INVALID_CHANNEL, "channel names are 1 to 128 of A-Z a-z 0-9 _ . : @ = -")
        if frames.reserved(channel):
            raise RequestError(400, frames.INVALID_CHANNEL, f"{frames.RESERVED_PREFIX}* channels are Chloe's own")
        if self._options is not None:
            namespaced(self._options, channel)
        return str(channel)

    @app.route("/revoke", methods=["POST"])
    def revoke(self, request: IRequest) -> Deferred[bytes]:
        """Refuse a token (``jti``, until ``until``) or a user's tokens
        issued before ``before`` (now by default) from now on, at connect,
        subscribe and refresh; the sessions using them now are ended with
        ``token_revoked``."""
        authorize(request, self.config.secret)
        body = command_body(request, _REVOKE)
        if ("jti" in body) == ("user" in body):
            raise _invalid("give jti or user (one of them)")
        now = self.hub.clock.seconds()
        command: dict[str, Any]
        if "jti" in body:
            jti = body["jti"]
            if "before" in body:
                raise _invalid("before is for a user's tokens; a jti takes until")
            if not frames.valid_user(jti):  # (a token's jti is held to the rule of a user id)
                raise _invalid(f"jti must be 1 to {frames.MAX_USER_CHARS} characters, none of them a control character")
            until = _epoch(body, "until")
            stored = self.broker.revoke(jti, None, None, now + JTI_SECONDS if until is None else until)
            command = {"op": "revoke", "jti": jti}
        else:
            if "until" in body:
                raise _invalid("until is for a jti; a user's revocation is kept 30 days")
            user = checked_user(body["user"])
            before = _epoch(body, "before")
            if before is None:
                # From the start of this second: a token's iat is whole
                # seconds, and one minted after the logout in the same
                # second (the user logging in again) must be taken.
                before = float(math.floor(now))
            stored = self.broker.revoke(None, user, before, now + USER_REVOCATION_SECONDS)
            command = {"op": "revoke", "user": user, "before": before}
        return (
            stored.addCallback(lambda _: self.broker.control(command))
            .addCallbacks(lambda _: json_body(request, 202, {}), backend_failed)
        )

    @app.route("/users/<anything:user>", methods=["GET"])
    def user(self, request: IRequest, user: str) -> Deferred[bytes]:
        """A user's sessions, on every node (the id percent-encoded: it may
        hold a ``/``)."""
        authorize(request, self.config.secret)
        checked_user(user)
        return self.broker.user_sessions(user).addCallbacks(
            self._user_body, backend_failed, callbackArgs=(user, request)
        )

    @staticmethod
    def _user_body(sessions: list[SessionInfo], user: str, request: IRequest) -> bytes:
        listed = [
            {"id": info.id, "transport": info.transport, "node": info.node, "channels": info.channels}
            for info in sessions
        ]
        return json_body(request, 200, {"user": user, "sessions": listed})
