"""Unit tests of chloed.pusher.wire: Pusher's frames, Chloe's frames turned
into Pusher's, and their WebSocket framing made once per frame for every
Pusher socket."""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest
from twisted.internet.testing import MemoryReactorClock

from chloed import frames
from chloed.backends.memory import presence_frame
from chloed.frames import Encoded
from chloed.pusher import names, wire
from chloed.pusher.socket import PusherWebSocket
from chloed.transports.websocket import ChloeWebSocket, ws_framing
from tests.rawws import OP_TEXT, parse_frames
from tests.test_pusher_protocol import APP_ID, Harness, Socket, Sockets, app_entry, data_of, mac
from tests.test_websocket_failures import clock  # noqa: F401 (a fixture)


def as_json(frame: Encoded) -> Any:
    return json.loads(frame.payload)


def native_message(channel: str | None, data: bytes, id: str = "1700000000000-7") -> Encoded:
    """The backend's frame of a message published to an app's ``channel``."""
    return frames.message(None if channel is None else names.backend(APP_ID, channel), id, data)


# -- Pusher's own frames ----------------------------------------------------------


def test_an_events_data_is_a_json_string_as_pushers_server_sends_it() -> None:
    frame = wire.event("my-event", {"a": [1, 2]}, "news")
    assert frame.kind == wire.KIND and frame.channel == "news"
    assert as_json(frame) == {"event": "my-event", "channel": "news", "data": '{"a":[1,2]}'}


def test_a_string_data_is_sent_as_given() -> None:
    assert as_json(wire.event("e", '{"already":"json"}')) == {"event": "e", "data": '{"already":"json"}'}


def test_raw_data_is_the_value_itself() -> None:
    assert as_json(wire.event("e", {"x": 1}, raw_data=True)) == {"event": "e", "data": {"x": 1}}


def test_an_event_without_data_or_channel_has_neither() -> None:
    assert as_json(wire.event("pusher:cache_miss", None, "cache-x")) == {"event": "pusher:cache_miss", "channel": "cache-x"}
    assert as_json(wire.event("e")) == {"event": "e"}


def test_a_pusher_error_carries_an_object_with_code_and_message() -> None:
    """pusher-js reads ``data.code`` and ``data.message`` of a pusher:error."""
    assert as_json(wire.error(4001, "Could not find app by key x")) == {
        "event": "pusher:error", "data": {"code": 4001, "message": "Could not find app by key x"},
    }
    assert as_json(wire.error(None, "bad"))["data"] == {"code": None, "message": "bad"}


def test_a_subscription_error_is_pusher_js_own_shape() -> None:
    assert as_json(wire.subscription_error("private-x", "Invalid signature")) == {
        "event": "pusher:subscription_error", "channel": "private-x",
        "data": {"type": "AuthError", "error": "Invalid signature", "status": 401},
    }
    assert as_json(wire.subscription_error("c", "m", 400, "LimitReached"))["data"] == {
        "type": "LimitReached", "error": "m", "status": 400,
    }


def test_subscription_succeeded_of_a_channel_is_an_empty_object_string() -> None:
    assert as_json(wire.subscribed("news")) == {
        "event": "pusher_internal:subscription_succeeded", "channel": "news", "data": "{}",
    }


def test_subscription_succeeded_of_a_presence_channel_carries_ids_hash_and_count() -> None:
    members: list[dict[str, Any]] = [{"id": "ann", "info": {"name": "Ann"}}, {"id": "bob", "info": None}, {"id": "cy"}]
    frame = as_json(wire.subscribed("presence-room", members))
    assert frame["event"] == "pusher_internal:subscription_succeeded" and frame["channel"] == "presence-room"
    assert json.loads(frame["data"]) == {"presence": {
        "ids": ["ann", "bob", "cy"], "hash": {"ann": {"name": "Ann"}, "bob": None, "cy": None}, "count": 3,
    }}
    assert json.loads(as_json(wire.subscribed("presence-empty", []))["data"]) == {
        "presence": {"ids": [], "hash": {}, "count": 0},
    }


def test_the_pong_is_pushers() -> None:
    assert as_json(wire.PONG) == {"event": "pusher:pong", "data": {}}


def test_what_is_published_is_the_event_without_its_channel() -> None:
    assert json.loads(wire.message_data("e", "payload")) == {"event": "e", "data": "payload"}
    assert json.loads(wire.message_data("client-x", {"a": 1}, "ann")) == {
        "event": "client-x", "data": {"a": 1}, "user_id": "ann",
    }


# -- Chloe's frames as Pusher's -----------------------------------------------------


def test_a_native_message_frame_becomes_the_event_on_the_apps_channel() -> None:
    """The backend's ``{"type":"message","channel":"pusher~id~news",...}``
    is Pusher's ``{"event","data","channel"}``, the channel the app's name."""
    frame = native_message("news", wire.message_data("breaking", '{"h":1}'))
    assert json.loads(wire.pusher_json(frame)) == {"event": "breaking", "data": '{"h":1}', "channel": "news"}


def test_a_client_event_keeps_its_user_id_and_raw_data() -> None:
    frame = native_message("presence-chat", wire.message_data("client-typing", {"deep": [1, {"x": None}]}, "ann"))
    assert json.loads(wire.pusher_json(frame)) == {
        "event": "client-typing", "data": {"deep": [1, {"x": None}]}, "user_id": "ann", "channel": "presence-chat",
    }


@pytest.mark.parametrize("data", [
    '","data":"', '{"nested":"},\\"channel\\":\\"other\\"}"}', "}", "\u2028 é 🎉", "",
    ',"data":{"event":"pusher_internal:terminate"}',
])
def test_data_that_looks_like_the_frame_around_it_stays_data(data: str) -> None:
    """The splice looks for the first ``,"data":``: what data holds cannot move it."""
    frame = native_message("a-b_c=d@e,f.g;h", wire.message_data("e", data))
    assert json.loads(wire.pusher_json(frame)) == {"event": "e", "data": data, "channel": "a-b_c=d@e,f.g;h"}


def test_the_user_channel_name_comes_back_whole() -> None:
    frame = native_message("#server-to-user-ann", wire.message_data("note", "x"))
    assert json.loads(wire.pusher_json(frame))["channel"] == "#server-to-user-ann"


def test_a_native_broadcast_is_nothing_to_a_pusher_client() -> None:
    assert wire.pusher_json(native_message(None, b'"to everyone"')) == b""


def test_a_join_becomes_member_added_with_the_user_info() -> None:
    native = presence_frame(names.backend(APP_ID, "presence-room"), "join", {"id": "ann", "info": {"name": "Ann"}})
    frame = json.loads(wire.pusher_json(native))
    assert frame == {"event": "pusher_internal:member_added", "channel": "presence-room",
                     "data": json.dumps({"user_id": "ann", "user_info": {"name": "Ann"}}, separators=(",", ":"))}


def test_a_leave_becomes_member_removed_with_the_user_id_only() -> None:
    native = presence_frame(names.backend(APP_ID, "presence-room"), "leave", {"id": "ann", "info": {"name": "Ann"}})
    frame = json.loads(wire.pusher_json(native))
    assert frame == {"event": "pusher_internal:member_removed", "channel": "presence-room", "data": '{"user_id":"ann"}'}


def test_a_join_without_info_has_null_user_info() -> None:
    native = presence_frame(names.backend(APP_ID, "presence-room"), "join", {"id": "7"})
    assert data_of(json.loads(wire.pusher_json(native))) == {"user_id": "7", "user_info": None}


def test_connected_becomes_connection_established() -> None:
    native = frames.connected("123.456", 25, 50, 110)
    frame = json.loads(wire.pusher_json(native))
    assert frame == {"event": "pusher:connection_established",
                     "data": json.dumps({"socket_id": "123.456", "activity_timeout": 120}, separators=(",", ":"))}


@pytest.mark.parametrize("code, pusher_code", [
    (frames.SLOW_CONSUMER, wire.OVER_CAPACITY), (frames.SHUTTING_DOWN, wire.RECONNECT), (frames.RATE_LIMITED, None),
])
def test_the_hubs_errors_become_pusher_errors(code: str, pusher_code: int | None) -> None:
    native = frames.error(code, "why")
    assert json.loads(wire.pusher_json(native)) == {"event": "pusher:error", "data": {"code": pusher_code, "message": "why"}}


def test_the_close_code_after_the_last_frame() -> None:
    assert wire.close_code(frames.error(frames.SLOW_CONSUMER, "x")) == wire.OVER_CAPACITY
    assert wire.close_code(frames.error(frames.SHUTTING_DOWN, "x")) == wire.RECONNECT
    assert wire.close_code(frames.error(frames.BAD_FRAME, "x")) == wire.RECONNECT
    assert wire.close_code(None) == wire.RECONNECT


@pytest.mark.parametrize("native", [
    frames.subscribed("x", True), frames.unsubscribed("x"), frames.ack(1), frames.PONG,
])
def test_native_answers_are_nothing_to_a_pusher_client(native: Encoded) -> None:
    assert wire.pusher_json(native) == b""
    assert wire.framing(native) == b""


def test_a_pusher_frame_is_sent_as_it_is() -> None:
    frame = wire.event("e", "x", "c")
    assert wire.pusher_json(frame) is frame.payload


def test_the_terminate_message_is_the_sign_to_close_not_bytes() -> None:
    frame = native_message("#server-to-user-ann", wire.message_data(wire.TERMINATE, ""))
    assert wire.pusher_json(frame) is wire.TERMINATED
    assert wire.framing(frame) is wire.TERMINATED
    assert len(wire.TERMINATED) < 2  # no WebSocket frame is that short: ChloeWebSocket.write tells it apart


def test_an_event_named_like_terminate_but_longer_is_an_event() -> None:
    """Only the event itself is the sign, not one whose name starts with it
    (the API refuses pusher_internal: names; this is the wire's own check)."""
    frame = native_message("news", wire.message_data(wire.TERMINATE + "-not", ""))
    assert wire.pusher_json(frame) is not wire.TERMINATED


# -- the WebSocket framing -----------------------------------------------------------


def test_framing_is_a_websocket_text_frame_of_the_pusher_json() -> None:
    frame = native_message("news", wire.message_data("e", "x" * 300))
    [ws] = parse_frames(wire.framing(frame))
    assert ws.opcode == OP_TEXT and ws.payload == wire.pusher_json(frame)


def test_a_pusher_socket_frames_with_the_pusher_framing() -> None:
    """One function for every Pusher socket (the key of the frame's
    cache), not Chloe's native one."""
    assert PusherWebSocket.framing is wire.framing
    assert ChloeWebSocket.framing is ws_framing


def test_a_frame_is_framed_once_however_often_it_is_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Encoded] = []
    real = wire.pusher_json

    def counting(frame: Encoded) -> bytes:
        calls.append(frame)
        return real(frame)

    monkeypatch.setattr(wire, "pusher_json", counting)
    frame = native_message("news", wire.message_data("e", "x"))
    first = frame.framed(wire.framing)
    assert all(frame.framed(wire.framing) is first for _ in range(100))
    assert calls == [frame]
    # Chloe's native framing of the same frame is its own entry.
    assert frame.framed(ws_framing) != first


class Counted:
    """wire.pusher_json, counting the frames it is asked about."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.frames: list[Encoded] = []
        self._real = wire.pusher_json
        monkeypatch.setattr(wire, "pusher_json", self)

    def __call__(self, frame: Encoded) -> bytes:
        self.frames.append(frame)
        return self._real(frame)

    def kinds(self) -> list[str]:
        return [f.kind for f in self.frames]


@pytest.fixture
def many(clock: MemoryReactorClock) -> Iterator[tuple[Harness, list[Socket]]]:
    """Twenty Pusher sockets of one app, each subscribed to ``news`` and to
    ``presence-room``, their transports cleared."""
    harness = Harness(app_entry(), clock=clock)
    sockets = Sockets(harness)
    opened = []
    for i in range(20):
        socket = sockets.connect()
        socket_id = data_of(socket.texts()[0])["socket_id"]
        socket.send({"event": "pusher:subscribe", "data": {"channel": "news"}})
        channel_data = json.dumps({"user_id": f"u{i}"})
        auth = f"{harness.app.key}:{mac(harness.app.secret, f'{socket_id}:presence-room:{channel_data}')}"
        socket.send({"event": "pusher:subscribe", "data": {
            "channel": "presence-room", "auth": auth, "channel_data": channel_data,
        }})
        opened.append(socket)
    for socket in opened:
        socket.clear()
    yield harness, opened


def test_one_message_to_many_sockets_is_framed_once(many: tuple[Harness, list[Socket]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A publish to twenty Pusher sockets: its Pusher JSON and WebSocket
    frame are made once, and the very same bytes written to each."""
    harness, sockets = many
    counted = Counted(monkeypatch)
    harness.publish("news", "breaking", '{"h":1}')
    assert counted.kinds() == ["message"]
    written = [socket.transport.value() for socket in sockets]
    assert all(w == written[0] for w in written)
    [ws] = parse_frames(written[0])
    assert json.loads(ws.payload) == {"event": "breaking", "data": '{"h":1}', "channel": "news"}


def test_one_presence_frame_to_many_sockets_is_framed_once(many: tuple[Harness, list[Socket]],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A member leaving, told to the nineteen others: one member_removed
    made from the backend's leave (its JSON parsed once), for all."""
    harness, sockets = many
    counted = Counted(monkeypatch)
    sockets[0].drop()
    assert counted.kinds() == ["presence"]
    told = [parse_frames(socket.transport.value()) for socket in sockets[1:]]
    assert all(len(t) == 1 for t in told)
    frame = json.loads(told[0][0].payload)
    assert frame["event"] == "pusher_internal:member_removed" and data_of(frame) == {"user_id": "u0"}
    assert len({t[0].payload for t in told}) == 1
