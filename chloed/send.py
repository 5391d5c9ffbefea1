"""``POST /send``: the app publishes one message, or a batch of them.

It is the hot route of the app's API, so it is a plain ``twisted.web``
resource of its own, not a Klein route: werkzeug's routing and Klein's
Deferred plumbing cost more than the rest of a publish (bench/profiles).

One message is a form (``data``, ``channel`` and ``user`` given once per
channel or user, ``session``, ``exclude``) or a JSON object of those fields,
answered ``202`` with its receipt. A message to users goes to each one's
user channel (:func:`chloed.frames.user_channel`) in the same publish as
its channels, so every session of the user gets it, on every node; the
receipt has its id per user (``users``) beside the channels' (``ids``).

A batch is a JSON array of such objects, or NDJSON
(``application/x-ndjson``, one object a line): each item is validated and
published on its own, in order, and the ``202`` answer holds one entry per
item in ``results``: the item's receipt, or, for an item that could not go,
``{"index", "status", "error", "message"}`` with the status and error a
single ``/send`` of it would have had. The others still go. A batch holds
at most ``send_batch_items`` messages in at most ``send_batch_bytes``.

Each message's ``data`` is held to ``max_message_bytes``, and to the
smallest ``max_message_bytes`` of the namespaces of the channels it names
(a channel of a namespace not configured is a 400 ``invalid_channel``).

Everything else ``/send`` answers is the API's JSON error (:mod:`chloed.http`).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from chloed import frames
from chloed.backends.base import BackendUnavailable, PublishResult
from chloed.config import ChannelOptions, Config
from chloed.errors import RequestError
from chloed.http import answer_request_error, authorize, error, method_not_allowed
from chloed.hub import Hub
from chloed.transports._turn import Turn

log = Logger(namespace="chloed.api")

_FIELDS = frozenset(("data", "channel", "user", "session", "exclude"))
_FORM_FIELDS = frozenset(f.encode("ascii") for f in _FIELDS)
_NDJSON = b"application/x-ndjson"
_BAD_CHANNEL = "channel names are 1 to 128 of A-Z a-z 0-9 _ . : @ = -"
_RESERVED = f"{frames.RESERVED_PREFIX}* channels are Chloe's own: only it publishes there"
_NO_NAMESPACE = "the channel is in no configured namespace"
#: The error code of a user id that cannot be one (:func:`checked_user`).
INVALID_USER = "invalid_user"
_BAD_USER = f"a user id is 1 to {frames.MAX_USER_CHARS} characters, none of them a control character"

#: ``Config.channel_options``: a channel's namespace options (None: in no
#: configured namespace).
Options = Callable[[str], ChannelOptions | None]


def checked_user(value: object) -> str:
    """``value`` as a user id, for every route of the API that takes one.

    :raises RequestError: 400 ``invalid_user`` unless
        :func:`chloed.frames.valid_user`.
    """
    if not isinstance(value, str) or not frames.valid_user(value):
        raise RequestError(400, INVALID_USER, _BAD_USER)
    return value


def channel_options(config: Config) -> Options | None:
    """The config's namespace lookup; None when it has no namespaces (every
    channel has the globals, which ``/send`` checks already)."""
    return config.channel_options if config.namespaces else None


def namespaced(options: Options, channel: str) -> ChannelOptions:
    """``channel``'s options (its namespace's over the globals).

    :raises RequestError: 400 ``invalid_channel`` for a channel of a
        namespace that is not configured.
    """
    found = options(channel)
    if found is None:
        raise RequestError(400, frames.INVALID_CHANNEL, _NO_NAMESPACE)
    return found


def _text(value: bytes, field: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(400, "bad_request", f"{field} is not UTF-8") from None


class SendRequest:
    """One validated message: JSON ``data`` bytes and its targets."""

    __slots__ = ("data", "channels", "users", "session", "exclude")

    def __init__(self, data: bytes, channels: list[str], users: list[str], session: str | None,
                 exclude: str | None) -> None:
        self.data = data
        self.channels = channels
        self.users = users
        self.session = session
        self.exclude = exclude

    @classmethod
    def from_object(cls, obj: Any, max_bytes: int, options: Options | None = None) -> "SendRequest":
        """A message given as JSON (an object, or one item of a batch).

        :param max_bytes: the largest ``data`` may be, encoded.
        :param options: the channels' namespaces (:func:`channel_options`).
        """
        if not isinstance(obj, dict):
            raise RequestError(400, "bad_request", "a message must be a JSON object")
        if not _FIELDS.issuperset(obj):
            raise RequestError(400, "bad_request", f"unknown field {sorted(set(obj) - _FIELDS)[0]!r}")
        if "data" not in obj:
            raise RequestError(400, "bad_request", "data is required")
        channels = obj.get("channel")
        if channels is None:
            channels = []
        elif type(channels) is str:
            channels = [channels]
        elif not isinstance(channels, list):
            raise RequestError(400, frames.INVALID_CHANNEL, "channel must be a string or a list of strings")
        elif not channels:
            raise RequestError(400, frames.INVALID_CHANNEL, "the channel list is empty (leave channel out to send to everyone)")
        users = obj.get("user")
        if users is None:
            users = []
        elif type(users) is str:
            users = [users]
        elif not isinstance(users, list):
            raise RequestError(400, INVALID_USER, "user must be a string or a list of strings")
        elif not users:
            raise RequestError(400, INVALID_USER, "the user list is empty")
        session = obj.get("session")
        exclude = obj.get("exclude")
        for key, value in (("session", session), ("exclude", exclude)):
            if value is not None and not isinstance(value, str):
                raise RequestError(400, "bad_request", f"{key} must be a string")
        try:
            data = frames.dumps(obj["data"])
        except UnicodeEncodeError:
            raise RequestError(400, "bad_request", "data is not valid Unicode") from None
        if len(data) > max_bytes:
            raise RequestError(413, frames.TOO_LARGE, f"data is limited to {max_bytes} bytes")
        return cls.checked(data, channels, users, session, exclude, options)

    @classmethod
    def from_form(cls, args: dict[bytes, list[bytes]], options: Options | None = None) -> "SendRequest":
        """A message given as a form (``request.args``)."""
        # An unknown field is a mistake (a typo of channel or session), and
        # without it the request would read as "everyone": refuse it by name.
        if not _FORM_FIELDS.issuperset(args):
            name = sorted(set(args) - _FORM_FIELDS)[0].decode("utf-8", "replace")
            raise RequestError(400, "bad_request", f"unknown field {name!r}")
        data = args.get(b"data")
        if not data:
            raise RequestError(400, "bad_request", "data is required")
        if len(data) > 1:
            raise RequestError(400, "bad_request", "give data once")
        channels = [_text(c, "channel") for c in args.get(b"channel", ())]
        users = [_text(u, "user") for u in args.get(b"user", ())]
        single = {}
        for key in (b"session", b"exclude"):
            values = args.get(key, ())
            if len(values) > 1:
                raise RequestError(400, "bad_request", f"give {key.decode()} once")
            single[key] = _text(values[0], key.decode()) if values else None
        return cls.checked(
            frames.dumps(_text(data[0], "data")), channels, users, single[b"session"], single[b"exclude"], options
        )

    @classmethod
    def checked(cls, data: bytes, channels: list[Any], users: list[Any], session: str | None, exclude: str | None,
                options: Options | None = None) -> "SendRequest":
        valid, reserved = frames.valid_channel, frames.reserved
        for channel in channels:
            if not valid(channel):
                raise RequestError(400, frames.INVALID_CHANNEL, _BAD_CHANNEL)
            if reserved(channel):
                raise RequestError(400, frames.INVALID_CHANNEL, _RESERVED)
        for user in users:
            checked_user(user)
        if session is not None and channels:
            raise RequestError(400, "bad_request", "give channel or session, not both")
        if session is not None and users:
            raise RequestError(400, "bad_request", "give user or session, not both")
        # An empty session or channel list is a mistake, not "everyone".
        if session == "":
            raise RequestError(400, "bad_request", "session is empty")
        # One delivery per channel or user, however often it was named.
        if len(channels) > 1:
            channels = list(dict.fromkeys(channels))
        if len(users) > 1:
            users = list(dict.fromkeys(users))
        if options is not None and channels:
            limit = min(namespaced(options, channel).max_message_bytes for channel in channels)
            if len(data) > limit:
                raise RequestError(413, frames.TOO_LARGE, f"data is limited to {limit} bytes on these channels")
        return cls(data, channels, users, session, exclude or None)


def receipt(result: PublishResult, users: bool = False) -> dict[str, Any]:
    """The id per channel (or ``id`` for a broadcast or a session), how
    many sessions got it now and how many hold it for their next poll.

    :param users: the message went to users too: their user channels'
        ids are the receipt's ``users`` (user id -> message id), not ``ids``.
    """
    ids = result.ids
    body: dict[str, Any] = {"ids": ids, "delivered": result.delivered, "queued": result.queued}
    if users:
        prefix, skip = frames.USER_PREFIX, len(frames.USER_PREFIX)
        body["ids"] = {name: id for name, id in ids.items() if not name.startswith(prefix)}
        body["users"] = {name[skip:]: id for name, id in ids.items() if name.startswith(prefix)}
    if result.id is not None:
        body["id"] = result.id
    if result.lower_bound:
        body["lower_bound"] = True
    return body


def _refusal(failure: Failure) -> RequestError:
    """What a publish that failed answers: its refusal, a 503 when the
    backend cannot take it, else a 500, logged (a bug of Chloe's)."""
    if isinstance(failure.value, RequestError):
        return failure.value
    if failure.check(BackendUnavailable):
        return RequestError(
            503, "backend_unavailable", f"the backend cannot take messages now ({failure.getErrorMessage()}); retry"
        )
    log.failure("POST /send failed", failure)
    return RequestError(500, "internal_error", "the message could not be published")


def _known(result: PublishResult | None) -> PublishResult:
    if result is None:
        raise RequestError(404, "unknown_session", "no such session on this server")
    return result


class SendResource(Resource):
    """``/send``, bound to one hub."""

    isLeaf = True

    def __init__(self, hub: Hub, turn: Turn | None = None) -> None:
        super().__init__()
        self.hub = hub
        # The WebSockets' turn (chloed.transports._turn): a batch is
        # gathered, so each socket gets the batch in one write.
        self._turn = turn
        self.broker = hub.broker
        self.config = hub.config
        self._options = channel_options(hub.config)

    def render(self, request: Any) -> bytes | int:
        if request.postpath:  # /send/… names nothing
            return error(request, 404, "not_found", "no such endpoint")
        if request.method != b"POST":
            return method_not_allowed(request, [b"POST"])
        try:
            authorize(request, self.config.secret)
            return self._send(request)
        except RequestError as refusal:
            return answer_request_error(request, refusal)

    def _send(self, request: Any) -> bytes | int:
        ctype = (request.getHeader(b"content-type") or b"").partition(b";")[0].strip().lower()
        if ctype == b"application/json":
            body = request.content.read()
            start = body.lstrip()[:1]
            if start == b"[":
                return self._batch(request, self._json_items(body))
            self._within(body, self.config.max_message_bytes, "bodies")
            try:
                obj = frames.loads(body)
            except (ValueError, RecursionError):
                raise RequestError(400, "bad_request", "the body is not valid JSON") from None
            if not isinstance(obj, dict):
                raise RequestError(400, "bad_request", "the body must be a JSON object or an array of them")
            req = SendRequest.from_object(obj, self.config.max_message_bytes, self._options)
        elif ctype == _NDJSON:
            return self._batch(request, self._ndjson_items(request.content.read()))
        else:
            self._within(request.content.read(), self.config.max_message_bytes, "bodies")
            req = SendRequest.from_form(request.args, self._options)
        body = self._users_receipt_body if req.users else self._receipt_body
        return self._answer(request, self._publish(req), body)

    @staticmethod
    def _within(body: bytes, limit: int, what: str) -> None:
        if len(body) > limit:
            raise RequestError(413, frames.TOO_LARGE, f"{what} are limited to {limit} bytes")

    def _publish(self, req: SendRequest) -> Deferred[PublishResult | None]:
        if req.session is not None:
            return self.broker.to_session(req.session, req.data)
        if req.users:
            names = req.channels + [frames.user_channel(user) for user in req.users]
            return self.broker.publish(names, req.data, exclude=req.exclude)  # type: ignore[return-value]
        if req.channels:
            return self.broker.publish(req.channels, req.data, exclude=req.exclude)  # type: ignore[return-value]
        return self.broker.broadcast(req.data, exclude=req.exclude)  # type: ignore[return-value]

    @staticmethod
    def _receipt_body(result: PublishResult | None) -> bytes:
        return frames.dumps(receipt(_known(result)))

    @staticmethod
    def _users_receipt_body(result: PublishResult | None) -> bytes:
        return frames.dumps(receipt(_known(result), users=True))

    # -- batches ----------------------------------------------------------

    def _json_items(self, body: bytes) -> list[Any]:
        self._within(body, self.config.send_batch_bytes, "batches")
        try:
            items = frames.loads(body)
        except (ValueError, RecursionError):
            raise RequestError(400, "bad_request", "the body is not valid JSON") from None
        return self._counted(items)

    def _ndjson_items(self, body: bytes) -> list[Any]:
        """Each line parsed on its own: a line that is not JSON is that
        item's error, not the batch's."""
        self._within(body, self.config.send_batch_bytes, "batches")
        items: list[Any] = []
        for line in body.split(b"\n"):
            if not line.strip():
                continue
            try:
                items.append(frames.loads(line))
            except (ValueError, RecursionError):
                items.append(_NOT_JSON)
        return self._counted(items)

    def _counted(self, items: list[Any]) -> list[Any]:
        if not items:
            raise RequestError(400, "bad_request", "the batch is empty")
        limit = self.config.send_batch_items
        if len(items) > limit:
            raise RequestError(413, frames.TOO_LARGE, f"a batch holds at most {limit} messages, not {len(items)}")
        return items

    def _batch(self, request: Any, items: list[Any]) -> bytes | int:
        """Publish each item in order; one result per item."""
        max_bytes = self.config.max_message_bytes
        results: list[Any] = [None] * len(items)
        waiting: list[Deferred[None]] = []
        turn = self._turn
        if turn is not None:
            turn.gather()
        try:
            self._publish_items(items, max_bytes, results, waiting)
        finally:
            if turn is not None:
                turn.release()
        done = DeferredList(waiting) if waiting else succeed(None)
        return self._answer(request, done, lambda _: _batch_body(results))

    def _publish_items(self, items: list[Any], max_bytes: int, results: list[Any],
                       waiting: list[Deferred[None]]) -> None:
        options = self._options
        for index, item in enumerate(items):
            try:
                if item is _NOT_JSON:
                    raise RequestError(400, "bad_request", "the line is not valid JSON")
                req = SendRequest.from_object(item, max_bytes, options)
            except RequestError as refusal:
                results[index] = _item_error(refusal, index)
                continue
            outcome = self._publish(req).addCallbacks(
                _item_published, _item_failed, callbackArgs=(results, index, bool(req.users)),
                errbackArgs=(results, index),
            )
            if not outcome.called:
                waiting.append(outcome)

    # -- the answer -------------------------------------------------------

    def _answer(self, request: Any, outcome: Deferred[Any], body: Callable[[Any], bytes]) -> bytes | int:
        """``202`` with the ``body`` of the backend's ``outcome``: at once
        when the backend has answered already (the memory backend), else
        when it does."""
        now: list[bytes] = []
        outcome.addCallbacks(self._accepted, self._refused, callbackArgs=(request, body), errbackArgs=(request,))
        outcome.addCallback(now.append)
        if now:
            return now[0]
        outcome.addCallback(lambda _: self._finish(now[0], request))
        return NOT_DONE_YET

    @staticmethod
    def _accepted(outcome: Any, request: Any, body: Callable[[Any], bytes]) -> bytes:
        try:
            payload = body(outcome)
        except RequestError as refusal:
            return answer_request_error(request, refusal)
        request.setResponseCode(202)
        request.setHeader(b"content-type", b"application/json")
        return payload

    @staticmethod
    def _refused(failure: Failure, request: Any) -> bytes:
        return answer_request_error(request, _refusal(failure))

    @staticmethod
    def _finish(payload: bytes, request: Any) -> None:
        """Answer a request the backend kept waiting."""
        if request.finished or getattr(request, "_disconnected", False):
            return  # the app went away before the backend answered
        request.setHeader(b"content-length", b"%d" % len(payload))
        request.write(payload)
        request.finish()


#: An NDJSON line that did not parse.
_NOT_JSON = object()


def _item_error(refusal: RequestError, index: int) -> dict[str, Any]:
    return {"index": index, "status": refusal.status, "error": refusal.code, "message": refusal.message}


def _item_published(result: PublishResult | None, results: list[Any], index: int, users: bool) -> None:
    try:
        results[index] = receipt(_known(result), users)
    except RequestError as refusal:
        results[index] = _item_error(refusal, index)


def _item_failed(failure: Failure, results: list[Any], index: int) -> None:
    results[index] = _item_error(_refusal(failure), index)


def _batch_body(results: list[Any]) -> bytes:
    failed = sum(1 for value in results if "error" in value)
    return frames.dumps({"results": results, "sent": len(results) - failed, "failed": failed})
