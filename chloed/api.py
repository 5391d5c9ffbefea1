"""The application's HTTP API but ``/send`` (:mod:`chloed.send`) and the
control of browsers (:mod:`chloed.control`): ``GET /channels[/NAME]``,
``GET /channels/NAME/presence``, ``GET /channels/NAME/history``, ``GET
/sessions``, ``GET /health``.

``/channels`` and ``/sessions`` take the bearer ``secret``; with no secret
configured they answer loopback clients only (:func:`chloed.http.authorize`).
``/sessions`` and ``/channels/NAME/presence`` are for an app that lost its
state: who is connected, to what, and who is in a presence channel, on
every node. ``/channels/NAME/history`` is for a page that loads a channel's
last messages with the page itself, then subscribes from the ``id`` it
answered (``since``) and misses nothing in between.
Errors are ``{"error": code, "message": text}`` with a 4xx status.
"""

from __future__ import annotations

import re
from typing import Any, NoReturn

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from chloed import __version__, frames
from chloed.backends.base import (
    PUSHER_TRANSPORT, SESSION_CURSOR, BackendUnavailable, ChannelInfo, ChannelListing, HistoryPage, SessionListing,
    is_presence,
)
from chloed.errors import RequestError
from chloed.hub import Hub
from chloed.http import (
    INVALID_REQUEST, authorize, json_body, page_limit, query_arg, json_errors,
)
from chloed.pusher.names import is_pusher
from chloed.send import channel_options, namespaced


#: ``GET /sessions?limit=``: the default, and the most a page holds.
SESSIONS_LIMIT = 100
SESSIONS_MAX = 1000
NOT_PRESENCE = "not_presence"
#: ``GET /channels/NAME/history?limit=``: the default, and the most a page holds.
HISTORY_LIMIT = 100
HISTORY_MAX = 1000
#: A message id (``since``): as every backend writes them.
MESSAGE_ID = re.compile(r"[0-9]+-[0-9]+", re.ASCII)


def backend_failed(failure: Any) -> NoReturn:
    """A 503 when the backend cannot answer now; any other failure goes on
    to Klein, which logs it and answers 500."""
    failure.trap(BackendUnavailable)
    raise RequestError(503, "backend_unavailable", f"the backend is unavailable ({failure.getErrorMessage()})")


def _since(request: IRequest) -> str | None:
    text = query_arg(request, b"since")
    if text is not None and (len(text) > frames.MAX_SINCE_CHARS or MESSAGE_ID.fullmatch(text) is None):
        raise RequestError(400, INVALID_REQUEST, "since must be a message id (digits-digits)")
    return text


def history_body(request: IRequest, name: str, page: HistoryPage) -> bytes:
    """The page as JSON, each message's data spliced in as it is held
    (valid JSON already: it was encoded when it was published)."""
    dumps = frames.dumps
    head = dumps({"channel": name, "id": page.position, "recovered": page.recovered, "more": page.more})
    messages = b",".join(b'{"id":' + dumps(id) + b',"data":' + data + b"}" for id, data in page.messages)
    request.setResponseCode(200)
    request.setHeader(b"content-type", b"application/json")
    return head[:-1] + b',"messages":[' + messages + b"]}"


def _cursor(request: IRequest) -> str | None:
    text = query_arg(request, b"cursor")
    if text is not None and SESSION_CURSOR.fullmatch(text) is None:
        raise RequestError(400, INVALID_REQUEST, "cursor must be the next of an earlier page")
    return text


class Api:
    """Klein routes of the app-facing API, bound to one hub."""

    app = Klein()
    json_errors(app)
    # A path is matched as given: /channels//history names no channel
    # (werkzeug would match /channels/history, the channel "history").
    app.url_map.merge_slashes = False

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.broker = hub.broker
        self.config = hub.config
        self._options = channel_options(hub.config)

    def resource(self) -> Any:
        return self.app.resource()

    def _authorize(self, request: IRequest) -> None:
        authorize(request, self.config.secret)

    @app.route("/channels", methods=["GET"])
    def channels(self, request: IRequest) -> Deferred[bytes]:
        """The active channels; ``scope`` says whose (``node``: this node's,
        with several nodes)."""
        self._authorize(request)
        return self.broker.channel_list().addCallback(self._listing_body, request)

    def _listing_body(self, listing: ChannelListing, request: IRequest) -> bytes:
        channels: dict[str, Any] = {}
        for name, info in listing.channels.items():
            if is_pusher(name):
                continue  # a Pusher app's: its own API lists it
            entry: dict[str, Any] = {"subscribers": info.subscribers, "last_id": info.last_id}
            if name.startswith("presence-"):
                entry["members"] = self.hub.presence.members(name)
            channels[name] = entry
        return json_body(request, 200, {"channels": channels, "scope": listing.scope})

    @app.route("/channels/<string:name>", methods=["GET"])
    def channel(self, request: IRequest, name: str) -> Deferred[bytes]:
        """One channel: with several nodes, the subscribers of every node."""
        self._authorize(request)
        if not frames.valid_channel(name):
            raise RequestError(400, frames.INVALID_CHANNEL, "not a valid channel name")
        return self.broker.channel_info(name).addCallbacks(
            self._channel_body, backend_failed, callbackArgs=(request,)
        )

    @app.route("/channels/<string:name>/presence", methods=["GET"])
    def presence(self, request: IRequest, name: str) -> Deferred[bytes]:
        """Who is in a presence channel, on every node (read from where the
        members are held: with Redis, Redis, whether or not this node has
        subscribers there)."""
        self._authorize(request)
        if not frames.valid_channel(name):
            raise RequestError(400, frames.INVALID_CHANNEL, "not a valid channel name")
        if not self.hub.is_presence(name) and not is_presence(name):
            raise RequestError(400, NOT_PRESENCE, f"{name} is not a presence channel (presence-...)")
        return self.hub.presence.fetch(name).addCallbacks(
            lambda members: json_body(request, 200, {"channel": name, "members": members}), backend_failed
        )

    @app.route("/channels/<string:name>/history", methods=["GET"])
    def history(self, request: IRequest, name: str) -> Deferred[bytes]:
        """A page of a channel's history, on every node: without ``since``
        its newest ``limit`` messages (1 to 1000, 100 by default), oldest
        first; with it, the first ``limit`` after it. ``id`` is where a
        browser subscribes from (``since``) to get what follows."""
        self._authorize(request)
        if not frames.valid_channel(name):
            raise RequestError(400, frames.INVALID_CHANNEL, "not a valid channel name")
        if self._options is not None:
            namespaced(self._options, name)
        limit, since = page_limit(request, HISTORY_LIMIT, HISTORY_MAX), _since(request)
        return self.broker.read_history(name, since, limit).addCallbacks(
            lambda page: history_body(request, name, page), backend_failed
        )

    @app.route("/sessions", methods=["GET"])
    def sessions(self, request: IRequest) -> Deferred[bytes]:
        """A page of every node's sessions: ``?limit=`` of them (1 to
        1000, 100 by default) after ``?cursor=`` (the ``next`` of the page
        before). Pusher sockets are the Pusher apps' and not listed."""
        self._authorize(request)
        limit, cursor = page_limit(request, SESSIONS_LIMIT, SESSIONS_MAX), _cursor(request)
        return self.broker.session_list(limit, cursor).addCallbacks(
            self._sessions_body, backend_failed, callbackArgs=(request,)
        )

    @staticmethod
    def _sessions_body(listing: SessionListing, request: IRequest) -> bytes:
        sessions = [
            {
                "id": info.id, "transport": info.transport, "user": info.user,
                "channels": [name for name in info.channels if not is_pusher(name)], "node": info.node,
            }
            for info in listing.sessions
            if info.transport != PUSHER_TRANSPORT
        ]
        return json_body(request, 200, {"sessions": sessions, "next": listing.next, "scope": listing.scope})

    def _channel_body(self, info: ChannelInfo, request: IRequest) -> bytes:
        body: dict[str, Any] = {
            "channel": info.name,
            "subscribers": info.subscribers,
            "last_id": info.last_id,
            "members": self.hub.presence.members(info.name),
        }
        if info.history is not None:
            body["history"] = info.history  # (with Redis it lives there)
        return json_body(request, 200, body)

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        if self.hub.draining:
            return json_body(request, 503, {"status": "draining"})
        state = self.broker.backend_state
        if state != "up":
            # "down": Redis is away; "degraded": its pub/sub missed a probe
            # and is being healed (chloed.backends.redis.liveness).
            return json_body(request, 503, {"status": "degraded", "backend": self.broker.backend, "state": state})
        return json_body(request, 200, {"status": "ok", "version": __version__})

