"""The application's HTTP API: ``POST /send``, ``GET /channels[/NAME]``,
``GET /health``.

``/send`` and ``/channels`` take the bearer ``secret``; with no secret
configured they answer loopback clients only (:func:`chloed.http.authorize`).
Errors are ``{"error": code, "message": text}`` with a 4xx status.
"""

from __future__ import annotations

from typing import Any, NoReturn

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from chloed import __version__, frames
from chloed.backends.base import BackendUnavailable, ChannelInfo, ChannelListing, PublishResult
from chloed.errors import RequestError
from chloed.hub import Hub
from chloed.http import answer_request_error, authorize, json_body, routing_error


def _text(value: bytes, field: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(400, "bad_request", f"{field} is not UTF-8") from None


_FIELDS = frozenset((b"data", b"channel", b"session", b"exclude"))


class SendRequest:
    """A validated ``/send``: JSON ``data`` bytes and its targets."""

    def __init__(self, data: bytes, channels: list[str], session: str | None, exclude: str | None) -> None:
        self.data = data
        self.channels = channels
        self.session = session
        self.exclude = exclude

    @classmethod
    def from_request(cls, request: IRequest, max_bytes: int) -> "SendRequest":
        body = request.content.read(max_bytes + 1)
        if len(body) > max_bytes:
            raise RequestError(413, frames.TOO_LARGE, f"bodies are limited to {max_bytes} bytes")
        ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if ctype == b"application/json":
            return cls._from_json(body)
        return cls._from_form(request)

    @classmethod
    def _from_json(cls, body: bytes) -> "SendRequest":
        try:
            obj = frames.loads(body)
        except (ValueError, RecursionError):
            raise RequestError(400, "bad_request", "the body is not valid JSON") from None
        if not isinstance(obj, dict):
            raise RequestError(400, "bad_request", "the body must be a JSON object")
        unknown = set(obj) - {"data", "channel", "session", "exclude"}
        if unknown:
            raise RequestError(400, "bad_request", f"unknown field {sorted(unknown)[0]!r}")
        if "data" not in obj:
            raise RequestError(400, "bad_request", "data is required")
        channels = obj.get("channel")
        if channels is None:
            channels = []
        elif isinstance(channels, str):
            channels = [channels]
        elif not isinstance(channels, list):
            raise RequestError(400, frames.INVALID_CHANNEL, "channel must be a string or a list of strings")
        elif not channels:
            raise RequestError(400, frames.INVALID_CHANNEL, "the channel list is empty (leave channel out to send to everyone)")
        for key in ("session", "exclude"):
            if obj.get(key) is not None and not isinstance(obj[key], str):
                raise RequestError(400, "bad_request", f"{key} must be a string")
        try:
            data = frames.dumps(obj["data"])
        except UnicodeEncodeError:
            raise RequestError(400, "bad_request", "data is not valid Unicode") from None
        return cls._checked(data, channels, obj.get("session"), obj.get("exclude"))

    @classmethod
    def _from_form(cls, request: IRequest) -> "SendRequest":
        args = request.args
        # An unknown field is a mistake (a typo of channel or session), and
        # without it the request would read as "everyone": refuse it by name.
        unknown = sorted(set(args) - _FIELDS)
        if unknown:
            name = unknown[0].decode("utf-8", "replace")
            raise RequestError(400, "bad_request", f"unknown field {name!r}")
        data = args.get(b"data")
        if not data:
            raise RequestError(400, "bad_request", "data is required")
        if len(data) > 1:
            raise RequestError(400, "bad_request", "give data once")
        channels = [_text(c, "channel") for c in args.get(b"channel", [])]
        single = {}
        for key in (b"session", b"exclude"):
            values = args.get(key, [])
            if len(values) > 1:
                raise RequestError(400, "bad_request", f"give {key.decode()} once")
            single[key] = _text(values[0], key.decode()) if values else None
        return cls._checked(
            frames.dumps(_text(data[0], "data")), channels, single[b"session"], single[b"exclude"]
        )

    @classmethod
    def _checked(cls, data: bytes, channels: list[Any], session: str | None, exclude: str | None) -> "SendRequest":
        for channel in channels:
            if not frames.valid_channel(channel):
                raise RequestError(
                    400, frames.INVALID_CHANNEL, "channel names are 1 to 128 of A-Z a-z 0-9 _ . : @ = -"
                )
            if frames.reserved(channel):
                raise RequestError(
                    400, frames.INVALID_CHANNEL, f"{frames.RESERVED_PREFIX}* channels are Chloe's own: only it publishes there"
                )
        if session is not None and channels:
            raise RequestError(400, "bad_request", "give channel or session, not both")
        # An empty session or channel list is a mistake, not "everyone".
        if session == "":
            raise RequestError(400, "bad_request", "session is empty")
        if exclude == "":
            exclude = None
        # One delivery per channel, however often it was named.
        return cls(data, list(dict.fromkeys(channels)), session or None, exclude or None)


def _receipt(request: IRequest, result: Any) -> bytes:
    """``202``: the id per channel (or ``id`` for a broadcast or a session),
    how many sessions got it now and how many hold it for their next poll."""
    body: dict[str, Any] = {"ids": result.ids, "delivered": result.delivered, "queued": result.queued}
    if result.id is not None:
        body["id"] = result.id
    if result.lower_bound:
        body["lower_bound"] = True
    return json_body(request, 202, body)


class Api:
    """Klein routes of the app-facing API, bound to one hub."""

    app = Klein()

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.broker = hub.broker
        self.config = hub.config

    def resource(self) -> Any:
        return self.app.resource()

    @app.handle_errors(RequestError)
    def _request_error(self, request: IRequest, failure: Any) -> bytes:
        return answer_request_error(request, failure.value)

    def _authorize(self, request: IRequest) -> None:
        authorize(request, self.config.secret)

    @app.route("/send", methods=["POST"])
    def send(self, request: IRequest) -> Deferred[bytes]:
        """202 with the receipt once the backend has stored the message."""
        self._authorize(request)
        req = SendRequest.from_request(request, self.config.max_message_bytes)
        result: Deferred[PublishResult] | Deferred[PublishResult | None]
        if req.session is not None:
            result = self.broker.to_session(req.session, req.data)
        elif req.channels:
            result = self.broker.publish(req.channels, req.data, exclude=req.exclude)
        else:
            result = self.broker.broadcast(req.data, exclude=req.exclude)
        return result.addCallbacks(self._sent, self._not_sent, callbackArgs=(request,))

    def _sent(self, result: PublishResult | None, request: IRequest) -> bytes:
        if result is None:
            raise RequestError(404, "unknown_session", "no such session on this server")
        return _receipt(request, result)

    @staticmethod
    def _not_sent(failure: Any) -> NoReturn:
        failure.trap(BackendUnavailable)
        raise RequestError(
            503, "backend_unavailable", f"the backend cannot take messages now ({failure.getErrorMessage()}); retry"
        )

    @app.route("/channels", methods=["GET"])
    def channels(self, request: IRequest) -> Deferred[bytes]:
        """The active channels; ``scope`` says whose (``node``: this node's,
        with several nodes)."""
        self._authorize(request)
        return self.broker.channel_list().addCallback(self._listing_body, request)

    def _listing_body(self, listing: ChannelListing, request: IRequest) -> bytes:
        channels: dict[str, Any] = {}
        for name, info in listing.channels.items():
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
            self._channel_body, self._backend_failed, callbackArgs=(request,)
        )

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

    @staticmethod
    def _backend_failed(failure: Any) -> NoReturn:
        failure.trap(BackendUnavailable)
        raise RequestError(503, "backend_unavailable", f"the backend is unavailable ({failure.getErrorMessage()})")

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        if self.hub.draining:
            return json_body(request, 503, {"status": "draining"})
        if self.broker.backend_state != "up":
            return json_body(request, 503, {"status": "degraded", "backend": self.broker.backend})
        return json_body(request, 200, {"status": "ok", "version": __version__})

    @app.handle_errors(NotFound, MethodNotAllowed)
    def _routing_error(self, request: IRequest, failure: Any) -> bytes:
        return routing_error(request, failure)
