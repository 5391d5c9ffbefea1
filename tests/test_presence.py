"""Presence channels: who is here, joins and leaves, one member per user
however many tabs, leaving only after the last tab's grace period."""

from __future__ import annotations

import json
import time

import jwt
from twisted.internet.task import Clock

from chloed.backends.memory import MemoryBackend
from chloed.config import Config
from chloed.hub import Hub
from tests.fakes import RecordingSink

SECRET = "a-presence-test-secret-of-32-bytes!!"


def token(uid: str, name: str, channel: str = "presence-room") -> str:
    claims = {"channels": [channel], "exp": int(time.time()) + 3600, "user": {"id": uid, "info": {"name": name}}}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def setup(grace: float = 30.0):
    clock = Clock()
    config = Config(secret=(SECRET,), session_grace=grace)
    hub = Hub(config, MemoryBackend(clock, 100, 300), clock, relay=None)
    return clock, hub


def join(hub: Hub, uid: str, name: str):
    sink = RecordingSink()
    session = hub.open_session("websocket", sink)
    hub.receive(session, json.dumps({"type": "subscribe", "channel": "presence-room", "token": token(uid, name)}))
    return session, sink


def presence_events(sink: RecordingSink) -> list[tuple[str, str]]:
    return [(f["event"], f["member"]["id"]) for f in sink.frames if f["type"] == "presence"]


def test_subscribed_answer_lists_the_members():
    """A member joining gets the member list in its subscribed answer, itself included."""
    _, hub = setup()
    join(hub, "1", "ann")
    _, sink = join(hub, "2", "bob")
    subscribed = [f for f in sink.frames if f["type"] == "subscribed"][0]
    assert sorted(m["id"] for m in subscribed["members"]) == ["1", "2"]
    assert {"id": "1", "info": {"name": "ann"}} in subscribed["members"]


def test_others_see_join_and_leave_after_grace():
    """Others see a join when a user arrives, and a leave only after the grace period once it left."""
    clock, hub = setup(grace=30)
    _, ann_sink = join(hub, "1", "ann")
    bob, _ = join(hub, "2", "bob")
    assert presence_events(ann_sink) == [("join", "2")]
    hub.connection_lost(bob)
    clock.advance(29)
    assert presence_events(ann_sink) == [("join", "2")]
    clock.advance(2)
    assert presence_events(ann_sink) == [("join", "2"), ("leave", "2")]
    assert [m["id"] for m in hub.presence.members("presence-room")] == ["1"]


def test_several_tabs_join_once_and_leave_once():
    """A user with two tabs joins once, and leaves once after the last tab closes."""
    clock, hub = setup(grace=5)
    _, ann_sink = join(hub, "1", "ann")
    tab1, _ = join(hub, "2", "bob")
    tab2, _ = join(hub, "2", "bob")
    assert presence_events(ann_sink) == [("join", "2")]
    hub.connection_lost(tab1)
    clock.advance(10)
    assert presence_events(ann_sink) == [("join", "2")]
    hub.receive(tab2, '{"type":"unsubscribe","channel":"presence-room"}')
    clock.advance(10)
    assert presence_events(ann_sink) == [("join", "2"), ("leave", "2")]


def test_reload_within_grace_is_not_a_leave():
    """A page reload (gone, back within the grace) shows no leave and no second join."""
    clock, hub = setup(grace=5)
    _, ann_sink = join(hub, "1", "ann")
    bob, _ = join(hub, "2", "bob")
    hub.connection_lost(bob)
    clock.advance(2)
    join(hub, "2", "bob")
    clock.advance(10)
    assert presence_events(ann_sink) == [("join", "2")]


def test_presence_needs_a_user_in_the_token():
    """A token without a user cannot enter a presence channel."""
    _, hub = setup()
    sink = RecordingSink()
    session = hub.open_session("websocket", sink)
    bare = jwt.encode({"channels": ["presence-room"], "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    hub.receive(session, json.dumps({"type": "subscribe", "channel": "presence-room", "token": bare, "ref": 3}))
    error = sink.frames[-1]
    assert error["code"] == "forbidden" and error["ref"] == 3


def test_a_long_poll_member_leaves_one_grace_after_its_last_poll():
    """A long-poll tab that stops polling is gone session_grace after its
    last poll: its session ends then, and its member leaves then too, not a
    second grace later."""
    clock, hub = setup(grace=30)
    _, ann_sink = join(hub, "1", "ann")
    bob = hub.open_session("longpoll")
    hub.receive(bob, json.dumps({"type": "subscribe", "channel": "presence-room", "token": token("2", "bob")}))
    assert presence_events(ann_sink) == [("join", "2")]
    clock.advance(29.9)  # no poll since the session opened
    assert presence_events(ann_sink) == [("join", "2")]
    clock.advance(0.2)
    assert bob.closed
    assert presence_events(ann_sink) == [("join", "2"), ("leave", "2")]
    assert [m["id"] for m in hub.presence.members("presence-room")] == ["1"]


def test_a_long_poll_member_with_another_tab_stays():
    """The member stays while another tab of the same user is there."""
    clock, hub = setup(grace=30)
    _, ann_sink = join(hub, "1", "ann")
    join(hub, "2", "bob")
    bob = hub.open_session("longpoll")
    hub.receive(bob, json.dumps({"type": "subscribe", "channel": "presence-room", "token": token("2", "bob")}))
    clock.advance(31)
    assert bob.closed
    assert presence_events(ann_sink) == [("join", "2")]
