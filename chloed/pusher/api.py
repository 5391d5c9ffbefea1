"""Pusher's HTTP API: ``/apps/{id}/...``, signed as Pusher signs it, on the
backend every other publish goes through.

Every request carries ``auth_key``, ``auth_timestamp`` (within
``timestamp_window`` seconds of this server's clock), ``auth_version``
1.0, ``body_md5`` (of a body, when there is one) and ``auth_signature``,
the HMAC of the method, the path and the sorted query; each compared in
constant time. Errors are Pusher's: a status (400 bad request, 401 bad
auth, 404 no such app or route, 413 too large, 503 the backend is away)
and a line of text, which the Pusher libraries raise with.

``POST /events`` answers Pusher's ``{}`` (with ``channels`` when ``info``
asks), plus Chloe's receipt, which the libraries ignore: ``ids`` (the
message id per channel), ``delivered`` and ``queued``.

``POST /users/{user_id}/terminate_connections`` is also served without
``/apps/{id}`` before it, the app known by ``auth_key``: the path the
``pusher`` Python library posts to.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from chloed import frames, lograte
from chloed.backends.base import BackendUnavailable, ChannelInfo, PublishResult
from chloed.pusher import auth, names, wire
from chloed.pusher.apps import PusherApp
from chloed.pusher.protocol import MAX_EVENT_NAME_CHARS, MAX_USER_ID_CHARS, PusherProtocol

log = Logger()

#: Channels one ``POST /events`` may name (Pusher's limit).
MAX_CHANNELS = 100
SOCKET_ID_RE = re.compile(r"[0-9]{1,20}\.[0-9]{1,20}", re.ASCII)


class ApiError(Exception):
    """A request refused with Pusher's status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _query(request: Any) -> dict[str, str]:
    """The query's parameters, each once (a repeated one is refused)."""
    raw = urlsplit(request.uri).query.decode("latin-1")
    try:
        parsed = parse_qs(raw, keep_blank_values=True, strict_parsing=False, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise ApiError(400, "The query is not UTF-8") from None
    query = {}
    for name, values in parsed.items():
        if len(values) != 1:
            raise ApiError(400, f"The parameter {name[:64]} is given more than once")
        query[name] = values[0]
    return query


def _attributes(query: dict[str, str]) -> set[str]:
    info = query.get("info", "")
    return {a for a in info.split(",") if a}


#: The routes after ``/apps/{id}``: method, path segments (None: a name,
#: passed to the handler), and the handler's name on :class:`PusherApi`.
_ROUTES: tuple[tuple[bytes, tuple[str | None, ...], str], ...] = (
    (b"POST", ("events",), "_events"),
    (b"POST", ("batch_events",), "_batch_events"),
    (b"GET", ("channels",), "_channels"),
    (b"GET", ("channels", None), "_channel"),
    (b"GET", ("channels", None, "users"), "_users"),
    (b"POST", ("users", None, "terminate_connections"), "_terminate"),
)


class PusherApi(Resource):
    """``/apps`` (and ``/users``): the HTTP API of every app of ``config``."""

    isLeaf = True

    def __init__(self, pusher: PusherProtocol, by_key: bool = False) -> None:
        super().__init__()
        self.pusher = pusher
        self.hub = pusher.hub
        self.config = pusher.config
        self.broker = pusher.hub.broker
        # /users/...: the app is the one auth_key names.
        self._by_key = by_key

    # -- routing and authentication --------------------------------------------

    def render(self, request: Any) -> Any:
        self.pusher.api_requests += 1
        try:
            query = _query(request)
            app, handler, args = self._route(request, query)
            body = request.content.read() if request.content is not None else b""
            self._authenticate(request, app, query, body)
            return handler(request, app, query, body, *args)
        except ApiError as refusal:
            return self._refuse(request, refusal)

    def _route(self, request: Any, query: dict[str, str]) -> tuple[PusherApp, Callable[..., Any], tuple[str, ...]]:
        try:
            parts = [unquote(p.decode("utf-8"), errors="strict") for p in request.postpath]
        except UnicodeDecodeError:
            raise ApiError(400, "The path is not UTF-8") from None
        if self._by_key:
            app = self.config.by_key(query.get("auth_key", ""))
            if app is None:
                raise ApiError(401, "Unknown auth_key")
            parts = [app.id, "users"] + parts
        else:
            app = self.config.by_id(parts[0]) if parts else None
            if app is None:
                raise ApiError(404, "Unknown app")
        method = request.method
        rest = parts[1:]
        for verb, pattern, handler in _ROUTES:
            if len(pattern) == len(rest) and all(p is None or p == r for p, r in zip(pattern, rest)):
                if method != verb:
                    request.setHeader(b"allow", verb)
                    raise ApiError(405, f"Use {verb.decode()} here")
                return app, getattr(self, handler), tuple(r for p, r in zip(pattern, rest) if p is None)
        raise ApiError(404, "Not found")

    def _authenticate(self, request: Any, app: PusherApp, query: dict[str, str], body: bytes) -> None:
        if not hmac.compare_digest(query.get("auth_key", "").encode("utf-8"), app.key.encode("utf-8")):
            raise ApiError(401, "Unknown auth_key")
        stamp = query.get("auth_timestamp", "")
        if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
            raise ApiError(401, "auth_timestamp must be a UNIX time in seconds")
        now = int(self.hub.clock.seconds())
        window = self.config.timestamp_window
        if abs(now - int(stamp)) > window:
            raise ApiError(401, f"Timestamp expired: Given timestamp ({stamp}) not within {window}s of server time ({now})")
        if query.get("auth_version") != "1.0":
            raise ApiError(401, "auth_version must be 1.0")
        if body or "body_md5" in query:
            md5 = hashlib.md5(body).hexdigest()
            if not hmac.compare_digest(query.get("body_md5", "").encode("utf-8"), md5.encode("ascii")):
                raise ApiError(401, "body_md5 does not match the body")
        path = unquote(request.path.decode("latin-1"))
        if not auth.query_ok(app, request.method.decode("ascii"), path, query):
            raise ApiError(401, "Invalid signature: Expected HMAC SHA256 hex digest of the method, path and sorted query")

    def _refuse(self, request: Any, refusal: ApiError) -> bytes:
        self.pusher.api_refused += 1
        if refusal.status < 500:
            peer = request.getClientAddress()
            self.hub.client_errors.report(
                str(getattr(peer, "host", peer)), lograte.HTTP_REFUSED, f"pusher {refusal.status}: {refusal.message}"
            )
        request.setResponseCode(refusal.status)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return refusal.message.encode("utf-8") + b"\n"

    def _later(self, request: Any, d: Deferred[Any]) -> Any:
        """Answer what ``d`` fires with (a JSON value), or its failure: at
        once when it has fired (the memory backend), else when it does."""
        now: list[bytes] = []
        waiting: list[bool] = []

        def answer(body: bytes) -> None:
            if not waiting:
                now.append(body)
            elif not request.finished and not request._disconnected:
                request.write(body)
                request.finish()

        def ok(value: Any) -> None:
            request.setResponseCode(200)
            request.setHeader(b"content-type", b"application/json")
            answer(frames.dumps(value))

        def failed(failure: Any) -> None:
            if failure.check(ApiError):
                refusal = failure.value
            elif failure.check(BackendUnavailable):
                refusal = ApiError(503, f"The backend cannot take it now: {failure.getErrorMessage()}")
            else:
                log.failure("pusher API request failed", failure)
                refusal = ApiError(500, "Internal error")
            answer(self._refuse(request, refusal))

        d.addCallbacks(ok, failed)
        if now:
            return now[0]
        waiting.append(True)
        return NOT_DONE_YET

    # -- publishing ------------------------------------------------------------

    def _event(self, app: PusherApp, item: Any, many: bool) -> tuple[list[str], bytes, str | None, set[str]]:
        """One event of ``/events`` or of a batch, checked: its channels,
        the data to publish, the socket to leave out, the info asked."""
        if not isinstance(item, dict):
            raise ApiError(400, "An event is a JSON object")
        name = item.get("name")
        if not isinstance(name, str) or not name or len(name) > MAX_EVENT_NAME_CHARS:
            raise ApiError(400, f"name must be a string of 1 to {MAX_EVENT_NAME_CHARS} characters")
        if name.startswith("pusher_internal:"):
            raise ApiError(400, "pusher_internal: events are the server's own")
        data = item.get("data")
        if not isinstance(data, str):
            raise ApiError(400, "data must be a string (JSON-encode objects first)")
        if len(data.encode("utf-8")) > app.max_message_bytes:
            raise ApiError(413, f"Payload too large: data is limited to {app.max_message_bytes} bytes")
        if "channels" in item and many:
            channels = item["channels"]
            if not isinstance(channels, list) or not channels:
                raise ApiError(400, "channels must be a non-empty list")
        elif "channel" in item:
            channels = [item["channel"]]
        else:
            raise ApiError(400, "An event needs channel" + (" or channels" if many else ""))
        if len(channels) > MAX_CHANNELS:
            raise ApiError(400, f"Too many channels: at most {MAX_CHANNELS} per event")
        for channel in channels:
            if not names.valid(channel):
                raise ApiError(400, f"Invalid channel name {str(channel)[:names.MAX_CHANNEL_CHARS]!r}")
        if len(channels) > 1 and any(names.encrypted(c) for c in channels):
            raise ApiError(400, "You cannot trigger to multiple channels when using encrypted channels")
        socket_id = item.get("socket_id")
        if socket_id is not None and (not isinstance(socket_id, str) or not SOCKET_ID_RE.fullmatch(socket_id)):
            raise ApiError(400, "Invalid socket_id")
        info = item.get("info", "")
        if not isinstance(info, str):
            raise ApiError(400, "info must be a comma-separated string")
        attributes = {a for a in info.split(",") if a}
        self._check_attributes(attributes, channels)
        return list(dict.fromkeys(channels)), wire.message_data(name, data), socket_id, attributes

    def _check_attributes(self, attributes: set[str], channels: list[str]) -> None:
        unknown = attributes - {"subscription_count", "user_count"}
        if unknown:
            raise ApiError(400, f"Unknown info attribute {sorted(unknown)[0][:64]}")
        if "user_count" in attributes and not all(names.presence(c) for c in channels):
            raise ApiError(400, "user_count is only for presence channels")

    def _publish(self, app: PusherApp, checked: tuple[list[str], bytes, str | None, set[str]]) -> Deferred[Any]:
        channels, data, socket_id, attributes = checked
        backends = [names.backend(app.id, c) for c in channels]
        d = self.broker.publish(backends, data, socket_id)

        def receipt(result: PublishResult) -> Any:
            answer: dict[str, Any] = {
                "ids": {names.pusher_name(b): id for b, id in result.ids.items()},
                "delivered": result.delivered, "queued": result.queued,
            }
            if not attributes:
                return answer
            return self._infos(app, channels, attributes).addCallback(
                lambda infos: {
                    "channels": {c: {k: v for k, v in i.items() if k != "occupied"} for c, i in infos.items()},
                    **answer,
                }
            )

        return d.addCallback(receipt)

    def _events(self, request: Any, app: PusherApp, query: dict[str, str], body: bytes) -> Any:
        item = self._json(body)
        return self._later(request, self._publish(app, self._event(app, item, many=True)))

    def _batch_events(self, request: Any, app: PusherApp, query: dict[str, str], body: bytes) -> Any:
        batch = self._json(body)
        items = batch.get("batch") if isinstance(batch, dict) else None
        if not isinstance(items, list) or not items:
            raise ApiError(400, "batch must be a non-empty list of events")
        limit = self.hub.config.send_batch_items
        if len(items) > limit:
            raise ApiError(400, f"Batch too large: at most {limit} events")
        checked = [self._event(app, item, many=False) for item in items]
        asked = any(c[3] for c in checked)
        d = gatherResults([self._publish(app, c) for c in checked], consumeErrors=True)

        def answer(receipts: list[Any]) -> Any:
            out: dict[str, Any] = {"results": receipts}
            if asked:
                out["batch"] = [
                    r.get("channels", {}).get(c[0][0], {}) for r, c in zip(receipts, checked)
                ]
            return out

        def unwrap(failure: Any) -> Any:
            return failure.value.subFailure if hasattr(failure.value, "subFailure") else failure

        return self._later(request, d.addCallbacks(answer, unwrap))

    def _json(self, body: bytes) -> Any:
        try:
            return frames.loads(body)
        except (ValueError, RecursionError):
            raise ApiError(400, "The body is not JSON") from None

    # -- what channels hold ------------------------------------------------------

    def _infos(self, app: PusherApp, channels: list[str], attributes: set[str]) -> Deferred[dict[str, Any]]:
        ds = [self._info(names.backend(app.id, c), attributes) for c in channels]
        return gatherResults(ds, consumeErrors=True).addCallback(lambda infos: dict(zip(channels, infos)))

    def _info(self, backend: str, attributes: set[str], info: ChannelInfo | None = None) -> Deferred[dict[str, Any]]:
        """``subscription_count`` and ``user_count`` of a channel, as asked
        (``info`` when the caller has its subscribers already)."""
        out: dict[str, Any] = {}
        known: Deferred[Any] = self.broker.channel_info(backend) if info is None else succeed(info)

        def counted(info: ChannelInfo) -> Any:
            out["occupied"] = info.subscribers > 0
            if "subscription_count" in attributes:
                out["subscription_count"] = info.subscribers
            if "user_count" not in attributes:
                return out
            return self.hub.presence.fetch(backend).addCallback(lambda members: {**out, "user_count": len(members)})

        return known.addCallback(counted)

    def _channels(self, request: Any, app: PusherApp, query: dict[str, str], body: bytes) -> Any:
        prefix = query.get("filter_by_prefix", "")
        attributes = _attributes(query)
        unknown = attributes - {"user_count"}
        if unknown:
            raise ApiError(400, f"Unknown info attribute {sorted(unknown)[0][:64]} (only user_count)")
        if "user_count" in attributes and not prefix.startswith("presence-"):
            raise ApiError(400, "info=user_count needs filter_by_prefix=presence-")
        mine = names.app_prefix(app.id) + prefix

        def listing(found: Any) -> Any:
            listed = [
                (names.pusher_name(name), name, info) for name, info in found.channels.items()
                if name.startswith(mine) and info.subscribers > 0
                and not names.pusher_name(name).startswith(names.USER_PREFIX)
            ]
            ds = [self._info(backend, attributes, info) for _, backend, info in listed]

            def described(infos: list[dict[str, Any]]) -> Any:
                return {"channels": {
                    name: {k: v for k, v in info.items() if k != "occupied"}
                    for (name, _, _), info in zip(listed, infos)
                }}

            return gatherResults(ds, consumeErrors=True).addCallback(described)

        return self._later(request, self.broker.channel_list().addCallback(listing))

    def _channel(self, request: Any, app: PusherApp, query: dict[str, str], body: bytes, channel: str) -> Any:
        if not names.valid(channel):
            raise ApiError(400, "Invalid channel name")
        attributes = _attributes(query)
        self._check_attributes(attributes, [channel])

        return self._later(request, self._info(names.backend(app.id, channel), attributes))

    def _users(self, request: Any, app: PusherApp, query: dict[str, str], body: bytes, channel: str) -> Any:
        if not names.valid(channel) or not names.presence(channel):
            raise ApiError(400, "Users are listed for presence channels only")
        members = self.hub.presence.fetch(names.backend(app.id, channel))
        return self._later(request, members.addCallback(lambda found: {"users": [{"id": m["id"]} for m in found]}))

    def _terminate(self, request: Any, app: PusherApp, query: dict[str, str], body: bytes, user_id: str) -> Any:
        if not user_id or len(user_id) > MAX_USER_ID_CHARS:
            raise ApiError(400, "Invalid user id")
        backend = names.backend(app.id, names.user_channel(user_id))
        d = self.broker.publish([backend], wire.message_data(wire.TERMINATE, ""))
        return self._later(request, d.addCallback(lambda result: {}))
