"""Unit tests of the hub's lifecycle events: numbered per node, on the
session's lane, ``resume`` instead of ``disconnect`` + ``connect``, and
``accepted`` from a durable spool."""

from __future__ import annotations

from chloed.relay import Relay
from tests.fakes import RecordingSink
from tests.test_hub import URL, World
from tests.test_relay_spool import DurableSpool

EVENTS = ("message", "connect", "disconnect", "subscribe", "unsubscribe", "resume")


def events(w: World) -> list[dict]:
    return [r.json for r in w.app.requests]


def test_events_carry_the_node_and_a_sequence():
    """Every lifecycle event names this node and the next number of its
    sequence, so that the app can tell it missed one."""
    w = World(app=True, events=EVENTS)
    session, _ = w.connect()
    w.send(session, {"type": "subscribe", "channel": "news"})
    w.hub.connection_lost(session)
    w.flush()
    got = events(w)
    assert [e["type"] for e in got] == ["connect", "subscribe", "unsubscribe"]
    assert [e["seq"] for e in got] == [1, 2, 3]
    assert {e["node"] for e in got} == {w.hub.node}
    # (disconnect is held for a resume)
    w.advance(w.config.session_grace)
    assert [e["type"] for e in events(w)][-1] == "disconnect"
    assert events(w)[-1]["seq"] == 4


def test_resume_instead_of_disconnect_and_connect():
    """A browser that comes back within session_grace with ?resume=<old id>
    gives the app one resume event naming the old session, and never a
    disconnect for it."""
    w = World(app=True, events=EVENTS)
    first, _ = w.connect()
    w.hub.connection_lost(first)
    w.advance(5.0)
    sink = RecordingSink()
    second = w.hub.open_session("websocket", sink, resume=first.id)
    w.flush()
    w.advance(w.config.session_grace * 2)
    got = events(w)
    assert [e["type"] for e in got] == ["connect", "resume"]
    assert got[1]["session"] == second.id and got[1]["previous"] == first.id
    # The resumed session goes on in the first one's lane.
    assert second.lane == first.id


def test_resume_too_late_is_disconnect_then_connect():
    """After session_grace the old session is gone: disconnect, then a
    plain connect for the new one."""
    w = World(app=True, events=EVENTS)
    first, _ = w.connect()
    w.hub.connection_lost(first)
    w.advance(w.config.session_grace + 1)
    w.hub.open_session("websocket", RecordingSink(), resume=first.id)
    w.flush()
    assert [e["type"] for e in events(w)] == ["connect", "disconnect", "connect"]


def test_without_resume_in_events_disconnect_is_at_once():
    """Unless events lists resume, the app hears disconnect at once, as before."""
    w = World(app=True, events=("connect", "disconnect"))
    first, _ = w.connect()
    w.hub.connection_lost(first)
    w.flush()
    assert [e["type"] for e in events(w)] == ["connect", "disconnect"]


def test_a_drain_tells_the_held_disconnects():
    """A node going away tells the app every held disconnect at once."""
    w = World(app=True, events=EVENTS)
    first, _ = w.connect()
    w.hub.connection_lost(first)
    w.hub.shutdown()
    w.flush()
    assert [e["type"] for e in events(w)] == ["connect", "disconnect"]


def test_accepted_then_ack_from_a_durable_spool():
    """A browser's send relayed through a durable spool is answered
    accepted once spooled, then ack once the app took it."""
    w = World(app=True)
    spool = DurableSpool()
    w.hub.relay = Relay(w.stub, URL, w.config.secret, w.clock, 10.0, None, 100, spool=spool)
    w.hub.relay.start()
    session, sink = w.connect()
    w.send(session, {"type": "send", "data": "hi", "ref": "r1"})
    assert sink.frames == []
    spool.settle_all()
    w.flush()
    assert [(f["type"], f["ref"]) for f in sink.frames] == [("accepted", "r1"), ("ack", "r1")]
