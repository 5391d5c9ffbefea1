"""Pusher protocol 7 on the wire: the frames Chloe sends Pusher clients, and
Chloe's own frames as a Pusher client reads them.

A Pusher socket is a session like any other: the backend hands it the same
:class:`~chloed.frames.Encoded` frames it hands every subscriber of a
channel, and :func:`framing` makes the Pusher WebSocket frame of one, once
per frame for every Pusher subscriber (cached on the frame, as
:func:`chloed.transports.websocket.ws_framing` is). A message published
through the Pusher API carries, as its data, the Pusher event without its
channel (``{"event", "data"[, "user_id"]}``), so its Pusher frame is that
data with the channel spliced in: no JSON is parsed on the fan-out path.
"""

from __future__ import annotations

import json
from typing import Any

from chloed import frames
from chloed.frames import Encoded
from chloed.pusher.names import pusher_name
from chloed.transports.websocket import ws_framing

#: The kind of the frames this module makes (already Pusher's).
KIND = "pusher"
#: The event of the message that ends a user's connections
#: (``terminate_connections``); nobody else can publish a ``pusher_internal:``.
TERMINATE = "pusher_internal:terminate"

# Pusher's close and error codes (its protocol docs, "Error codes").
APP_NOT_FOUND = 4001
APP_DISABLED = 4003
OVER_QUOTA = 4004
PATH_NOT_FOUND = 4005
INVALID_VERSION = 4006
UNSUPPORTED_PROTOCOL = 4007
NO_PROTOCOL = 4008
UNAUTHORIZED = 4009
OVER_CAPACITY = 4100
RECONNECT = 4200
PONG_NOT_RECEIVED = 4201
CLOSED_INACTIVE = 4202
CLIENT_EVENT_RATE = 4301

#: Seconds a client may be silent before it pings (pusher-js takes the
#: smaller of this and its own, 120 s).
ACTIVITY_TIMEOUT = 120


def event(name: str, data: Any = None, channel: str | None = None, raw_data: bool = False) -> Encoded:
    """A Pusher frame; ``data`` JSON-encoded into a string as Pusher's
    server sends it, unless ``raw_data`` (a client event's own value)."""
    frame: dict[str, Any] = {"event": name}
    if channel is not None:
        frame["channel"] = channel
    if data is not None:
        frame["data"] = data if raw_data or isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return Encoded(frames.dumps(frame), KIND, channel)


def error(code: int | None, message: str) -> Encoded:
    """``pusher:error``; its data is an object, as pusher-js reads it."""
    return event("pusher:error", {"code": code, "message": message}, raw_data=True)


def subscription_error(channel: str, message: str, status: int = 401, kind: str = "AuthError") -> Encoded:
    """Refusing a subscription, the way pusher-js reports its own refusals
    (``pusher:subscription_error`` on the channel)."""
    return event("pusher:subscription_error", {"type": kind, "error": message, "status": status}, channel, raw_data=True)


def subscribed(channel: str, members: list[dict[str, Any]] | None = None) -> Encoded:
    """``pusher_internal:subscription_succeeded``; a presence channel's
    carries its members."""
    if members is None:
        return event("pusher_internal:subscription_succeeded", "{}", channel)
    hash_ = {m["id"]: m.get("info") for m in members}
    data = {"presence": {"ids": list(hash_), "hash": hash_, "count": len(hash_)}}
    return event("pusher_internal:subscription_succeeded", data, channel)


def message_data(name: str, data: Any, user_id: str | None = None) -> bytes:
    """What a Pusher event is published as: the event without its channel."""
    body: dict[str, Any] = {"event": name, "data": data}
    if user_id is not None:
        body["user_id"] = user_id
    return frames.dumps(body)


PONG = event("pusher:pong", {}, raw_data=True)
#: What :func:`framing` makes of a :data:`TERMINATE` message: not bytes to
#: write but the sign to close.
TERMINATED = b"\x00"
_TERMINATE_HEAD = b'{"event":"' + TERMINATE.encode("ascii") + b'"'

_DATA = b',"data":'


def _message(frame: Encoded) -> bytes:
    """The Pusher frame of a ``message`` published through the Pusher layer:
    its data, ``{"event", "data"...}``, with the channel spliced in."""
    payload = frame.payload
    data = payload[payload.index(_DATA) + len(_DATA):-1]
    assert frame.channel is not None
    return data[:-1] + b',"channel":' + frames.dumps(pusher_name(frame.channel)) + b"}"


def _presence(frame: Encoded) -> bytes:
    """A presence frame of the backend as ``member_added`` / ``member_removed``."""
    native = json.loads(frame.payload)
    member = native["member"]
    channel = pusher_name(native["channel"])
    if native["event"] == "join":
        data: dict[str, Any] = {"user_id": member["id"], "user_info": member.get("info")}
        return event("pusher_internal:member_added", data, channel).payload
    return event("pusher_internal:member_removed", {"user_id": member["id"]}, channel).payload


def _connected(frame: Encoded) -> bytes:
    """The hub's ``connected`` as ``pusher:connection_established``."""
    socket_id = json.loads(frame.payload)["session"]
    data = {"socket_id": socket_id, "activity_timeout": ACTIVITY_TIMEOUT}
    return event("pusher:connection_established", data).payload


#: The hub's errors that end a session, as Pusher's close codes.
CLOSE_CODES = {
    frames.SLOW_CONSUMER: OVER_CAPACITY,
    frames.SHUTTING_DOWN: RECONNECT,
}


def _error(frame: Encoded) -> bytes:
    native = json.loads(frame.payload)
    return error(CLOSE_CODES.get(native.get("code")), native.get("message", "")).payload


def pusher_json(frame: Encoded) -> bytes:
    """The Pusher JSON of any frame a Pusher session is handed; empty for a
    frame it has no use for (a native ``subscribed``, ``ack``...);
    :data:`TERMINATED` for :data:`TERMINATE`, which the socket acts on."""
    kind = frame.kind
    if kind == KIND:
        return frame.payload
    if kind == "message":
        if frame.channel is None:
            return b""  # a native broadcast: not for Pusher clients
        wire = _message(frame)
        return TERMINATED if wire.startswith(_TERMINATE_HEAD) else wire
    if kind == "presence":
        return _presence(frame)
    if kind == "connected":
        return _connected(frame)
    if kind == "error":
        return _error(frame)
    return b""


def framing(frame: Encoded) -> bytes:
    """The WebSocket frame of :func:`pusher_json`: empty for none, and
    :data:`TERMINATED` itself (the socket tells it by identity)."""
    wire = pusher_json(frame)
    if not wire or wire is TERMINATED:
        return wire
    return ws_framing(Encoded(wire, KIND))


def close_code(last: Encoded | None) -> int:
    """The close code to end a Pusher socket with after ``last``."""
    if last is None:
        return RECONNECT
    if last.kind == "error":
        return CLOSE_CODES.get(json.loads(last.payload).get("code"), RECONNECT)
    return RECONNECT
