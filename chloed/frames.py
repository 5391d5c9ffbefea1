"""The wire protocol: JSON frames between browsers and Chloe.

Every transport carries the same JSON objects (SPEC section 2). A browser
sends ``subscribe``, ``unsubscribe``, ``send`` and ``ping``; Chloe answers
with ``subscribed``, ``unsubscribed``, ``ack``, ``pong`` and ``error``, and
pushes ``connected``, ``message`` and ``presence``.

This module turns raw bytes from any transport into a validated
:class:`Frame` (or raises :class:`~chloed.errors.ProtocolError` with the
error code the browser will see), and encodes Chloe's frames.

Encoding happens once per frame, not once per recipient: :class:`Encoded`
holds the JSON bytes and caches each transport's framing of them (a WebSocket
frame header, an SSE event), so a publish to ten thousand subscribers writes
the same ``bytes`` object ten thousand times.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from chloed.errors import ProtocolError

BAD_FRAME = "bad_frame"
UNKNOWN_TYPE = "unknown_type"
TOO_LARGE = "too_large"
INVALID_CHANNEL = "invalid_channel"
FORBIDDEN = "forbidden"
TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
RATE_LIMITED = "rate_limited"
NO_APPLICATION = "no_application"
UPSTREAM_REJECTED = "upstream_rejected"
UPSTREAM_FAILED = "upstream_failed"
SLOW_CONSUMER = "slow_consumer"
SHUTTING_DOWN = "shutting_down"
TOKEN_REQUIRED = "token_required"
TOKEN_INVALID = "token_invalid"
TOKEN_EXPIRED = "token_expired"
TOKEN_REVOKED = "token_revoked"
TOO_MANY_CONNECTIONS = "too_many_connections"

ERROR_CODES = frozenset(
    {
        BAD_FRAME,
        UNKNOWN_TYPE,
        TOO_LARGE,
        INVALID_CHANNEL,
        FORBIDDEN,
        TOO_MANY_SUBSCRIPTIONS,
        RATE_LIMITED,
        NO_APPLICATION,
        UPSTREAM_REJECTED,
        UPSTREAM_FAILED,
        SLOW_CONSUMER,
        SHUTTING_DOWN,
        TOKEN_REQUIRED,
        TOKEN_INVALID,
        TOKEN_EXPIRED,
        TOKEN_REVOKED,
        TOO_MANY_CONNECTIONS,
    }
)

CHANNEL_RE = re.compile(r"[A-Za-z0-9_.:@=-]{1,128}")
MAX_REF_CHARS = 128
MAX_SINCE_CHARS = 64
MAX_TOKEN_CHARS = 8192

_dumps = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False
).encode


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is out of range")
    return value


# A \uD800-\uDFFF escape: the only way a lone surrogate gets into valid
# UTF-8 JSON, so the only case in which the decoded value needs a look.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_UTF8_BOM = b"\xef\xbb\xbf"


def _has_lone_surrogate(value: Any) -> bool:
    """Whether a decoded JSON value holds a string that is not Unicode text
    (iteratively: the value may be nested as deep as the parser went)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def loads(raw: bytes | str) -> Any:
    """Strict JSON in UTF-8, and only what can be written back as such: no
    ``NaN`` or ``Infinity`` (no browser can parse them), no number too big
    for a float (``1e400``), no other encoding, and no lone surrogate
    (``"\\ud800"``), which has no UTF-8 form.

    :raises ValueError: for anything else (``RecursionError`` when nested
        deeper than the parser goes).
    """
    if not isinstance(raw, str):
        if raw[:3] == _UTF8_BOM:
            raw = raw[3:]
        raw = bytes(raw).decode("utf-8")
    elif _SURROGATE.search(raw):
        raise ValueError("the text holds a lone surrogate")
    value = json.loads(raw, parse_constant=_no_constants, parse_float=_finite)
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(value):
        raise ValueError("a string holds a lone surrogate, which is not Unicode text")
    return value


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON, the only encoding Chloe writes."""
    return _dumps(value).encode("utf-8")


def valid_channel(name: object) -> bool:
    """Whether ``name`` is a channel name SPEC section 2 allows."""
    return isinstance(name, str) and CHANNEL_RE.fullmatch(name) is not None


#: Channels named ``chloe.…`` are Chloe's own: only the server publishes
#: there (browsers get ``forbidden``, ``/send`` a 400) and they keep no
#: history, so nobody can forge what they say.
RESERVED_PREFIX = "chloe."
#: The status page's live feed (:meth:`chloed.metrics.Metrics.announce`).
STATUS_CHANNEL = "chloe.status"


def reserved(channel: str) -> bool:
    """Whether ``channel`` is one of Chloe's own."""
    return channel.startswith(RESERVED_PREFIX)


#: A user's own channel is ``#u:<user id>``: every session of the user is in
#: it (server-side), ``/send user=`` publishes to it. ``#`` is in no channel
#: name a browser or the app can give, so nobody else can name it.
USER_PREFIX = "#u:"
MAX_USER_CHARS = 128
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def valid_user(user: object) -> bool:
    """Whether ``user`` can be a user id: 1 to 128 characters, no control
    characters (it is a key in the backend and appears in frames)."""
    return (
        isinstance(user, str) and 0 < len(user) <= MAX_USER_CHARS and _CONTROL.search(user) is None
        and not _SURROGATE.search(user)
    )


def user_channel(user: str) -> str:
    return USER_PREFIX + user


def is_user_channel(name: str) -> bool:
    return name.startswith(USER_PREFIX)


@dataclass(frozen=True, slots=True)
class Frame:
    """One validated frame from a browser.

    :param type: ``subscribe``, ``unsubscribe``, ``send``, ``ping``,
        ``auth`` or ``refresh``.
    :param data: the raw JSON ``data`` of a ``send``, as bytes, so it is
        relayed without being decoded and encoded again.
    """

    type: str
    channel: str | None = None
    since: str | None = None
    token: str | None = None
    data: bytes | None = None
    ref: object = None


def _ref(obj: dict[str, Any]) -> object:
    """The frame's ``ref``: absent, an integer, or a string Chloe can echo.
    Anything else is refused rather than acked without it, so a client
    never waits for an answer that cannot name its frame."""
    ref = obj.get("ref")
    if ref is None:
        return None
    if (isinstance(ref, int) and not isinstance(ref, bool)) or (
        isinstance(ref, str) and len(ref) <= MAX_REF_CHARS
    ):
        return ref
    raise ProtocolError(BAD_FRAME, f"ref must be an integer or a string of at most {MAX_REF_CHARS} characters")


def _channel(obj: dict[str, Any], ref: object, required: bool) -> str | None:
    channel = obj.get("channel")
    if channel is None and not required:
        return None
    if channel is None:
        raise ProtocolError(BAD_FRAME, "this frame needs a channel", ref=ref)
    if not valid_channel(channel):
        raise ProtocolError(
            INVALID_CHANNEL,
            "channel names are 1 to 128 of A-Z a-z 0-9 _ . : @ = -",
            ref=ref,
            channel=channel if isinstance(channel, str) and len(channel) <= 128 else None,
        )
    return channel


def _optional_str(obj: dict[str, Any], key: str, limit: int, ref: object, channel: str | None) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ProtocolError(
            BAD_FRAME, f"{key} must be a non-empty string of at most {limit} characters",
            ref=ref, channel=channel,
        )
    return value


def parse(raw: bytes | str, max_bytes: int) -> Frame:
    """Validate one frame from a browser.

    :param raw: the frame as received (a WebSocket text message, a POST body).
    :param max_bytes: ``max_message_bytes``; a longer frame is ``too_large``.
    :raises ProtocolError: with the code the browser is told.
    """
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if len(raw) > max_bytes:
        raise ProtocolError(TOO_LARGE, f"frames are limited to {max_bytes} bytes")
    try:
        obj = loads(raw)
    except (ValueError, RecursionError):
        raise ProtocolError(BAD_FRAME, "a frame is one JSON object") from None
    return parse_object(obj)


def parse_object(obj: Any) -> Frame:
    """Validate one already-decoded frame (see :func:`parse`)."""
    if not isinstance(obj, dict):
        raise ProtocolError(BAD_FRAME, "a frame is one JSON object")
    ref = _ref(obj)
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(BAD_FRAME, "a frame needs a string type", ref=ref)
    if kind == "ping":
        return Frame("ping", ref=ref)
    if kind == "subscribe":
        channel = _channel(obj, ref, required=True)
        return Frame(
            "subscribe",
            channel=channel,
            since=_optional_str(obj, "since", MAX_SINCE_CHARS, ref, channel),
            token=_optional_str(obj, "token", MAX_TOKEN_CHARS, ref, channel),
            ref=ref,
        )
    if kind == "unsubscribe":
        return Frame("unsubscribe", channel=_channel(obj, ref, required=True), ref=ref)
    if kind == "auth" or kind == "refresh":
        # auth: the connection token, and the user cursor of a reconnect;
        # refresh: a new connection token, or a new channel token (channel).
        channel = _channel(obj, ref, required=False) if kind == "refresh" else None
        token = _optional_str(obj, "token", MAX_TOKEN_CHARS, ref, channel)
        if token is None:
            raise ProtocolError(BAD_FRAME, f"{kind} needs a token", ref=ref, channel=channel)
        since = _optional_str(obj, "since", MAX_SINCE_CHARS, ref, channel) if kind == "auth" else None
        return Frame(kind, channel=channel, since=since, token=token, ref=ref)
    if kind == "send":
        channel = _channel(obj, ref, required=False)
        if "data" not in obj:
            raise ProtocolError(BAD_FRAME, "send needs data", ref=ref, channel=channel)
        try:
            data = dumps(obj["data"])
        except (ValueError, RecursionError):
            # Unicode or range errors of a value that did not come from
            # :func:`loads` (parse_object takes any decoded object).
            raise ProtocolError(BAD_FRAME, "data is not valid JSON text", ref=ref, channel=channel) from None
        return Frame("send", channel=channel, data=data, ref=ref)
    raise ProtocolError(
        UNKNOWN_TYPE,
        "type must be subscribe, unsubscribe, send, ping, auth or refresh",
        ref=ref,
    )


class Encoded:
    """One frame from Chloe, encoded once and shared by every recipient.

    ``payload`` is the JSON; transports ask :meth:`framed` for their own
    wrapping of it, computed by the first recipient and reused by the rest.
    ``size`` is what a recipient's buffer is charged for holding it.
    """

    __slots__ = ("payload", "kind", "channel", "id", "_framed")

    def __init__(self, payload: bytes, kind: str, channel: str | None = None, id: str | None = None) -> None:
        self.payload = payload
        self.kind = kind
        self.channel = channel
        self.id = id
        self._framed: dict[Callable[["Encoded"], bytes], bytes] | None = None

    @property
    def size(self) -> int:
        return len(self.payload)

    def framed(self, framing: Callable[["Encoded"], bytes]) -> bytes:
        """The bytes ``framing`` makes of this frame, made only once.

        :param framing: a transport's function from frame to wire bytes.
        """
        cache = self._framed
        if cache is None:
            cache = self._framed = {}
        wire = cache.get(framing)
        if wire is None:
            wire = cache[framing] = framing(self)
        return wire


def encode(frame: dict[str, Any]) -> Encoded:
    """Encode one of Chloe's frames (not a ``message``: see :func:`message`)."""
    return Encoded(dumps(frame), frame["type"])


def message(channel: str | None, id: str | None, data: bytes) -> Encoded:
    """Encode a ``message`` frame around ``data``, already JSON.

    :param data: the published data as JSON bytes, spliced in unparsed.
    """
    if channel is not None and channel[:3] == USER_PREFIX:
        head = dumps({"type": "message", "channel": None, "user": channel[3:], "id": id})
    else:
        head = dumps({"type": "message", "channel": channel, "id": id})
    return Encoded(head[:-1] + b',"data":' + data + b"}", "message", channel, id)


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def connected(session: str, heartbeat: float, rate_limit: float = 0, burst: float = 0) -> Encoded:
    """The first frame; with a rate limit it says the rate and the burst, so
    that a client can pace itself instead of being refused."""
    frame: dict = {"type": "connected", "session": session, "heartbeat": _number(heartbeat)}
    if rate_limit:
        frame["rate_limit"] = _number(rate_limit)
        frame["burst"] = _number(burst)
    return encode(frame)


def subscribed(channel: str, recovered: bool) -> Encoded:
    return encode({"type": "subscribed", "channel": channel, "recovered": recovered})


def unsubscribed(channel: str) -> Encoded:
    return encode({"type": "unsubscribed", "channel": channel})


def ack(ref: object) -> Encoded:
    return encode({"type": "ack", "ref": ref})


def accepted(ref: object) -> Encoded:
    """A durable spool holds the browser's ``send``: the app will get it,
    even if this server dies first (``ack`` follows once it took it)."""
    return encode({"type": "accepted", "ref": ref})


PONG = encode({"type": "pong"})


def error(code: str, message: str, ref: object = None, channel: str | None = None) -> Encoded:
    """Encode an ``error`` frame; ``ref`` and ``channel`` only when known."""
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if ref is not None:
        frame["ref"] = ref
    if channel is not None:
        frame["channel"] = channel
    return encode(frame)


def from_protocol_error(exc: ProtocolError) -> Encoded:
    return error(exc.code, exc.message, exc.ref, exc.channel)
