"""Unit tests of chloed.hub: sessions and what their frames do, on a Clock with recording sinks."""

from __future__ import annotations

import itertools
import json
import time

import jwt
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from chloed import hub as hub_module
from chloed.backends.memory import Broker, MemoryBackend
from chloed.config import Config
from chloed.hub import Hub
from chloed.relay import Relay
from tests.fakes import HOLD, FakeApp, RecordingSink

SECRET = "the-shared-secret-of-at-least-32-bytes"
URL = "http://app.example/chloe"


class World:
    """A Hub over a Broker on a Clock; with ``app`` answers, a Relay to a FakeApp over StubTreq."""

    def __init__(self, *answers, app: bool = False, **options) -> None:
        options.setdefault("secret", (SECRET,))
        self.config = Config(**options)
        self.clock = Clock()
        self.broker = Broker(self.clock, self.config.history_size, self.config.history_ttl)
        self.app = FakeApp(*answers) if (answers or app) else None
        self.stub = StubTreq(self.app) if self.app is not None else None
        relay = None
        if self.stub is not None:
            relay = Relay(
                self.stub, URL, self.config.secret, self.clock, self.config.upstream_timeout,
                self.config.upstream_retries, self.config.upstream_queue, rng=lambda: 0.0,
            )
        counter = itertools.count(1)
        self.hub = Hub(
            self.config, MemoryBackend.over(self.broker), self.clock, relay, new_id=lambda: f"session-{next(counter)}"
        )

    def connect(self, transport: str = "websocket"):
        """A streaming browser: its session and sink, with ``connected`` already taken off."""
        sink = RecordingSink()
        session = self.hub.open_session(transport, sink)
        assert sink.frames[0]["type"] == "connected"
        del sink.frames[:]
        return session, sink

    def send(self, session, frame) -> None:
        self.hub.receive(session, json.dumps(frame))
        self.flush()

    def flush(self) -> None:
        if self.stub is not None:
            self.stub.flush()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.flush()


def pending(session) -> list[dict]:
    """What a polling session holds for its next poll, decoded."""
    return [json.loads(f.payload) for f in session.take()[1]]


def token(channels, user=None, secret=SECRET) -> str:
    claims = {"channels": channels, "exp": int(time.time()) + 3600}
    if user is not None:
        claims["user"] = user
    return jwt.encode(claims, secret, algorithm="HS256")


# -- session life ----------------------------------------------------------


def test_open_session_delivers_connected():
    """A new browser's first frame is connected, naming its session and the heartbeat."""
    w = World(heartbeat=25.0)
    sink = RecordingSink()
    session = w.hub.open_session("websocket", sink)
    assert sink.frames == [{"type": "connected", "session": session.id, "heartbeat": 25, "rate_limit": 50, "burst": 110}]
    assert w.hub.find(session.id) is session
    assert w.hub.connections["websocket"] == 1


def test_polling_session_holds_connected():
    """A polling browser finds connected waiting for its first poll."""
    w = World()
    session = w.hub.open_session("longpoll")
    assert pending(session) == [{"type": "connected", "session": session.id, "heartbeat": 25, "rate_limit": 50, "burst": 110}]
    assert w.hub.connections["longpoll"] == 0


def test_session_ids_are_unguessable():
    """Session ids carry at least 128 random bits and differ every time."""
    ids = {hub_module.new_session_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) * 6 >= 128 for i in ids)


def test_find_unknown_session():
    """An unknown session id finds nothing."""
    assert World().hub.find("nope") is None


def test_connection_lost_removes_subscriptions():
    """When a streaming connection closes, its session and subscriptions go."""
    w = World()
    session, sink = w.connect()
    w.send(session, {"type": "subscribe", "channel": "a"})
    w.send(session, {"type": "subscribe", "channel": "b"})
    w.hub.connection_lost(session)
    assert w.hub.find(session.id) is None
    assert session.id not in w.broker.sessions
    assert session.channels == set()
    assert all(session not in c.subscribers for c in w.broker.channels.values())
    assert w.hub.connections["websocket"] == 0
    before = len(sink.frames)
    w.broker.publish(["a", "b"], b"1")
    assert len(sink.frames) == before


def test_closed_session_ignores_frames():
    """Frames arriving after a session ended are ignored."""
    w = World()
    session, sink = w.connect()
    w.hub.connection_lost(session)
    w.send(session, {"type": "ping"})
    assert sink.frames == []


def test_polling_session_expires_after_grace():
    """A polling session nobody polls is ended session_grace seconds after it opened."""
    w = World(session_grace=30)
    session = w.hub.open_session("longpoll")
    w.send(session, {"type": "subscribe", "channel": "a"})
    w.advance(29.9)
    assert w.hub.find(session.id) is session
    w.advance(0.1)
    assert w.hub.find(session.id) is None
    assert session.closed
    assert "a" not in w.broker.channels or session not in w.broker.channels["a"].subscribers


def test_open_poll_keeps_session_alive():
    """A session with a poll open does not expire; the grace starts again when the poll ends."""
    w = World(session_grace=30)
    session = w.hub.open_session("longpoll")
    w.advance(20)
    w.hub.poll_started(session)
    assert w.hub.connections["longpoll"] == 1
    w.advance(100)
    assert w.hub.find(session.id) is session
    w.hub.poll_ended(session)
    assert w.hub.connections["longpoll"] == 0
    w.advance(29.9)
    assert w.hub.find(session.id) is session
    w.advance(0.1)
    assert w.hub.find(session.id) is None
    assert w.clock.getDelayedCalls() == []


def test_accepting_until_max_connections():
    """New browsers are accepted until max_connections sessions exist."""
    w = World(max_connections=2)
    w.connect()
    assert w.hub.accepting()
    w.connect()
    assert not w.hub.accepting()


def test_shutdown_sends_shutting_down():
    """On shutdown every browser is told shutting_down and its session ends."""
    w = World()
    session, sink = w.connect()
    w.send(session, {"type": "subscribe", "channel": "a"})
    poller = w.hub.open_session("longpoll")
    w.hub.shutdown()
    assert sink.closed
    assert sink.last["type"] == "error" and sink.last["code"] == "shutting_down"
    assert [f["code"] for f in pending(poller)] == ["shutting_down"]
    assert w.hub.sessions == {}
    assert not w.hub.accepting()
    assert w.hub.connections["websocket"] == 0
    assert w.clock.getDelayedCalls() == []
    assert w.hub.last_words(poller.id, "longpoll") is poller  # its next poll hears why


def test_shutdown_wakes_a_waiting_poll():
    """A poll waiting on a session hears about the shutdown at once."""
    w = World()
    poller = w.hub.open_session("longpoll")
    woken = []
    poller.waiter = lambda: woken.append(True)
    w.hub.shutdown()
    assert woken == [True]


# -- frames ----------------------------------------------------------------


def test_ping_pong():
    """ping is answered with pong."""
    w = World()
    session, sink = w.connect()
    w.send(session, {"type": "ping"})
    assert sink.frames == [{"type": "pong"}]


def test_subscribe_then_live_messages():
    """subscribe is answered subscribed; then the channel's messages arrive."""
    w = World()
    session, sink = w.connect()
    w.send(session, {"type": "subscribe", "channel": "pumpkin"})
    result = w.broker.publish(["pumpkin"], b'"Trotter"')
    assert sink.frames == [
        {"type": "subscribed", "channel": "pumpkin", "recovered": True},
        {"type": "message", "channel": "pumpkin", "id": result.ids["pumpkin"], "data": "Trotter"},
    ]
    assert session.channels == {"pumpkin"}


def test_subscribe_with_since_replays_in_order():
    """A subscribe with since gets subscribed, then what it missed, in order."""
    w = World()
    ids = [w.broker.publish(["a"], json.dumps(i).encode()).ids["a"] for i in range(4)]
    session, sink = w.connect()
    w.send(session, {"type": "subscribe", "channel": "a", "since": ids[0]})
    assert sink.frames[0] == {"type": "subscribed", "channel": "a", "recovered": True}
    assert [(f["id"], f["data"]) for f in sink.frames[1:]] == list(zip(ids[1:], [1, 2, 3]))


def test_subscribe_with_lost_since_says_not_recovered():
    """A resume from before what is retained is answered recovered false, with what is left."""
    w = World(history_size=2)
    ids = [w.broker.publish(["a"], json.dumps(i).encode()).ids["a"] for i in range(4)]
    session, sink = w.connect()
    w.send(session, {"type": "subscribe", "channel": "a", "since": ids[0]})
    assert sink.frames[0]["recovered"] is False
    assert [f["data"] for f in sink.frames[1:]] == [2, 3]


def test_unsubscribe():
    """unsubscribe is answered unsubscribed and the channel's messages stop."""
    w = World()
    session, sink = w.connect()
    w.send(session, {"type": "subscribe", "channel": "a"})
    w.send(session, {"type": "unsubscribe", "channel": "a"})
    w.broker.publish(["a"], b"1")
    assert sink.frames == [
        {"type": "subscribed", "channel": "a", "recovered": True},
        {"type": "unsubscribed", "channel": "a"},
    ]
    assert session.channels == set()


def test_unsubscribe_when_not_subscribed():
    """Unsubscribing from a channel one is not on is still answered unsubscribed."""
    w = World()
    session, sink = w.connect()
    w.send(session, {"type": "unsubscribe", "channel": "a"})
    assert sink.frames == [{"type": "unsubscribed", "channel": "a"}]


def test_too_many_subscriptions():
    """Beyond max_subscriptions a subscribe is refused; resubscribing a held channel is fine."""
    w = World(max_subscriptions=2)
    session, sink = w.connect()
    for channel in ("a", "b"):
        w.send(session, {"type": "subscribe", "channel": channel})
    w.send(session, {"type": "subscribe", "channel": "c", "ref": 9})
    assert sink.frames[-1] == {
        "type": "error", "code": "too_many_subscriptions", "message": sink.frames[-1]["message"],
        "ref": 9, "channel": "c",
    }
    assert session.channels == {"a", "b"}
    w.send(session, {"type": "subscribe", "channel": "a"})
    assert sink.frames[-1] == {"type": "subscribed", "channel": "a", "recovered": True}
    w.send(session, {"type": "unsubscribe", "channel": "b"})
    w.send(session, {"type": "subscribe", "channel": "c"})
    assert sink.frames[-1] == {"type": "subscribed", "channel": "c", "recovered": True}


def test_private_channel_without_token_is_forbidden():
    """A private- channel without a token is refused forbidden, and nothing is subscribed."""
    w = World()
    session, sink = w.connect()
    w.send(session, {"type": "subscribe", "channel": "private-room"})
    assert [(f["type"], f["code"], f["channel"]) for f in sink.frames] == [("error", "forbidden", "private-room")]
    assert session.channels == set()
    w.broker.publish(["private-room"], b"1")
    assert len(sink.frames) == 1


def test_private_channel_with_token():
    """A private- channel opens with a token for it."""
    w = World()
    session, sink = w.connect()
    w.send(session, {"type": "subscribe", "channel": "private-room", "token": token(["private-room"])})
    assert sink.frames == [{"type": "subscribed", "channel": "private-room", "recovered": True}]


def test_private_channel_with_wrong_secret_token():
    """A token not signed with the server's secret does not open a private channel."""
    w = World()
    session, sink = w.connect()
    bad = token(["private-room"], secret="not-the-secret-but-at-least-32-bytes")
    w.send(session, {"type": "subscribe", "channel": "private-room", "token": bad})
    assert sink.frames[0]["code"] == "forbidden"


def test_presence_token_user_becomes_session_user():
    """The member a presence token carries is the session's user from then on."""
    w = World()
    session, _ = w.connect()
    user = {"id": "u1", "info": {"name": "Ann"}}
    w.send(session, {"type": "subscribe", "channel": "presence-lobby", "token": token(["presence-lobby"], user)})
    assert session.user == user


def test_forbidden_error_carries_the_ref():
    """The forbidden error answering a subscribe names that subscribe's ref."""
    w = World()
    session, sink = w.connect()
    w.send(session, {"type": "subscribe", "channel": "private-room", "ref": "r1"})
    assert sink.frames[0].get("ref") == "r1"


def test_bad_frame_answered_and_session_goes_on():
    """A bad frame gets an error frame; the session keeps working."""
    w = World()
    session, sink = w.connect()
    w.hub.receive(session, b"{not json")
    w.send(session, {"type": "dance", "ref": 3})
    w.send(session, {"type": "subscribe", "channel": "no spaces"})
    w.send(session, {"type": "ping"})
    assert [(f["type"], f.get("code"), f.get("ref")) for f in sink.frames] == [
        ("error", "bad_frame", None), ("error", "unknown_type", 3), ("error", "invalid_channel", None), ("pong", None, None),
    ]
    assert not sink.closed
    assert w.hub.find(session.id) is session


def test_too_large_frame():
    """A frame beyond max_message_bytes is answered too_large."""
    w = World(max_message_bytes=64)
    session, sink = w.connect()
    w.send(session, {"type": "send", "data": "x" * 100})
    assert sink.frames[0]["code"] == "too_large"


def test_send_with_lone_surrogate_answered_bad_frame():
    """A send whose data holds a lone surrogate gets bad_frame and the session goes on."""
    w = World()
    session, sink = w.connect()
    w.hub.receive(session, b'{"type":"send","data":"\\udc00","ref":1}')
    w.send(session, {"type": "ping"})
    assert [f["type"] for f in sink.frames] == ["error", "pong"]


def test_subscribe_with_odd_since_is_answered():
    """A subscribe whose since has non-ASCII digits is answered like any unknown cursor."""
    w = World()
    session, sink = w.connect()
    w.hub.receive(session, json.dumps({"type": "subscribe", "channel": "a", "since": "\u00b2-1"}))
    assert sink.frames == [{"type": "subscribed", "channel": "a", "recovered": False}]


# -- send ------------------------------------------------------------------


def test_send_without_application():
    """A send with no application_server_url is answered no_application with its ref."""
    w = World()
    session, sink = w.connect()
    w.send(session, {"type": "send", "data": "hi mom", "ref": "r1"})
    assert sink.frames == [
        {"type": "error", "code": "no_application", "message": "this server has no application_server_url",
         "ref": "r1"}
    ]


def test_send_when_message_event_not_relayed():
    """With an app but "message" not among events, a send is answered no_application."""
    w = World(app=True, events=("connect",))
    session, sink = w.connect()
    w.app.requests.clear()
    w.send(session, {"type": "send", "data": 1, "ref": 2})
    error = sink.of_type("error")[0]
    assert error["code"] == "no_application" and '"message" is not in events' in error["message"]
    assert w.app.requests == []


def test_send_relayed_and_acked():
    """A send is POSTed to the app and acked with its ref once the app answers 2xx."""
    w = World(HOLD)
    session, sink = w.connect()
    w.send(session, {"type": "send", "data": {"text": "hi"}, "channel": "room", "ref": "r1"})
    [request] = w.app.requests
    assert request.json == {
        "type": "message", "session": session.id, "channel": "room", "data": {"text": "hi"}, "ref": "r1", "user": None,
    }
    assert sink.frames == []
    request.request.setResponseCode(204)
    request.request.finish()
    w.flush()
    assert sink.frames == [{"type": "ack", "ref": "r1"}]


def test_relayed_send_carries_the_user():
    """A relayed send names the user the session's presence token carried."""
    w = World(app=True)
    session, _ = w.connect()
    user = {"id": 7, "info": {}}
    w.send(session, {"type": "subscribe", "channel": "presence-x", "token": token(["presence-x"], user)})
    w.send(session, {"type": "send", "data": 1})
    assert w.app.requests[-1].json["user"] == user


def test_send_rejected_by_app():
    """A send the app answers 4xx is answered upstream_rejected with its ref and channel."""
    w = World(422)
    session, sink = w.connect()
    w.send(session, {"type": "send", "data": 1, "channel": "room", "ref": 5})
    [error] = sink.frames
    assert (error["type"], error["code"], error["ref"], error["channel"]) == ("error", "upstream_rejected", 5, "room")
    assert "422" in error["message"]


def test_send_failed_after_retries():
    """A send the app keeps failing is answered upstream_failed once the retries are spent."""
    w = World(503, 503, upstream_retries=1)
    session, sink = w.connect()
    w.send(session, {"type": "send", "data": 1, "ref": 5})
    assert sink.frames == []
    w.advance(0.25)
    assert [(f["code"], f["ref"]) for f in sink.frames] == [("upstream_failed", 5)]


def test_send_when_relay_queue_full():
    """When the relay queue is full a send is answered upstream_failed at once."""
    w = World(HOLD, upstream_queue=1)
    session, sink = w.connect()
    w.send(session, {"type": "send", "data": 1, "ref": 1})
    w.send(session, {"type": "send", "data": 2, "ref": 2})
    assert [(f["code"], f["ref"]) for f in sink.frames] == [("upstream_failed", 2)]


def test_sends_of_one_session_acked_in_order():
    """Several sends of one browser reach the app and are acked in the order sent."""
    w = World(app=True)
    session, sink = w.connect()
    for ref in range(3):
        w.send(session, {"type": "send", "data": ref, "ref": ref})
    assert [r.json["data"] for r in w.app.requests] == [0, 1, 2]
    assert sink.frames == [{"type": "ack", "ref": r} for r in range(3)]


def test_lifecycle_events_posted():
    """Events listed in events are POSTed: connect, subscribe, unsubscribe, disconnect."""
    w = World(app=True, events=("connect", "disconnect", "subscribe", "unsubscribe"))
    session, _ = w.connect()
    w.send(session, {"type": "subscribe", "channel": "a"})
    w.send(session, {"type": "subscribe", "channel": "b"})
    w.send(session, {"type": "unsubscribe", "channel": "a"})
    w.hub.connection_lost(session)
    w.flush()
    assert [(r.json["type"], r.json["channel"]) for r in w.app.requests] == [
        ("connect", None), ("subscribe", "a"), ("subscribe", "b"), ("unsubscribe", "a"),
        ("unsubscribe", "b"), ("disconnect", None),
    ]
    assert all(r.json["session"] == session.id for r in w.app.requests)


def test_unlisted_events_not_posted():
    """With the default events only browser messages reach the app."""
    w = World(app=True)
    session, _ = w.connect()
    w.send(session, {"type": "subscribe", "channel": "a"})
    w.hub.connection_lost(session)
    w.flush()
    assert w.app.requests == []


def test_client_publish_to_subscribed_channel():
    """With client_publish, a browser's send to a channel it is on is published there and acked."""
    w = World(client_publish=True)
    alice, alice_sink = w.connect()
    bob, bob_sink = w.connect()
    for s in (alice, bob):
        w.send(s, {"type": "subscribe", "channel": "room"})
    w.send(alice, {"type": "send", "channel": "room", "data": "hello", "ref": 1})
    assert [(f["type"], f.get("data")) for f in bob_sink.frames[1:]] == [("message", "hello")]
    assert [f["type"] for f in alice_sink.frames[1:]] == ["message", "ack"]


def test_client_publish_to_public_channel_without_subscribing():
    """A public channel is open to client publish, subscribed or not."""
    w = World(client_publish=True)
    sender, sender_sink = w.connect()
    reader, reader_sink = w.connect()
    w.send(reader, {"type": "subscribe", "channel": "room"})
    w.send(sender, {"type": "send", "channel": "room", "data": "hi", "ref": 2})
    assert [(f["type"], f.get("data")) for f in reader_sink.frames[1:]] == [("message", "hi")]
    assert sender_sink.frames[-1] == {"type": "ack", "ref": 2}


def test_client_publish_to_token_channels_only():
    """Token channels are open to client publish when a token the session
    subscribed with lists them; the others are forbidden."""
    w = World(client_publish=True)
    session, sink = w.connect()
    w.send(session, {"type": "subscribe", "channel": "private-a", "token": token(["private-a", "private-b"])})
    w.send(session, {"type": "send", "channel": "private-b", "data": 1, "ref": 3})
    assert sink.frames[-1] == {"type": "ack", "ref": 3}
    assert w.broker.channels["private-b"].last_id is not None
    w.send(session, {"type": "send", "channel": "private-c", "data": 1, "ref": 4})
    error = sink.frames[-1]
    assert (error["code"], error["ref"], error["channel"]) == ("forbidden", 4, "private-c")
    assert "private-c" not in w.broker.channels


def test_client_publish_without_token_forbidden():
    """A session with no token may not publish to a private channel."""
    w = World(client_publish=True)
    session, sink = w.connect()
    w.send(session, {"type": "send", "channel": "presence-x", "data": 1, "ref": 5})
    assert (sink.frames[-1]["code"], sink.frames[-1]["ref"]) == ("forbidden", 5)


def test_publish_receipt_counts_delivered_now_and_held_for_later():
    """A streaming session and a poll waiting get it now; a polling session
    between two polls holds it (the /send receipt's delivered and queued)."""
    w = World()
    streaming, _ = w.connect()
    between = w.hub.open_session("longpoll")
    waiting = w.hub.open_session("longpoll")
    answered = []
    for s in (streaming, between, waiting):
        w.send(s, {"type": "subscribe", "channel": "a"})
    waiting.waiter = lambda: answered.append(True)
    result = w.broker.publish(["a"], b"1")
    assert (result.delivered, result.queued) == (2, 1)
    assert answered == [True]


# -- rate limit ------------------------------------------------------------


def test_rate_limit_refuses_frames_beyond_the_burst():
    """Past the burst each frame is answered rate_limited with its ref and is
    not processed; the session stays, and time refills the bucket."""
    w = World(rate_limit=10, max_subscriptions=5)
    session, sink = w.connect()
    burst = 20  # max(2 * rate_limit, max_subscriptions + 10)
    for n in range(burst):
        w.send(session, {"type": "ping"})
    assert [f["type"] for f in sink.frames] == ["pong"] * burst
    w.send(session, {"type": "subscribe", "channel": "a", "ref": 9})
    assert sink.frames[-1]["code"] == "rate_limited"
    assert (sink.frames[-1]["ref"], sink.frames[-1]["channel"]) == (9, "a")
    assert "a" not in session.channels
    assert w.hub.rate_limited == 1
    w.advance(0.1)  # one frame's worth at 10 per second
    w.send(session, {"type": "ping"})
    assert sink.frames[-1] == {"type": "pong"}
    w.send(session, {"type": "ping"})
    assert sink.frames[-1]["code"] == "rate_limited"
    assert not session.closed


def test_rate_limit_burst_covers_resubscribing_every_channel():
    """A reconnect that resubscribes max_subscriptions channels at once fits the burst."""
    w = World(rate_limit=1, max_subscriptions=30)
    session, sink = w.connect()
    for n in range(30):
        w.send(session, {"type": "subscribe", "channel": f"c{n}"})
    assert len(session.channels) == 30
    assert [f["type"] for f in sink.frames] == ["subscribed"] * 30


def test_rate_limit_is_per_session():
    """One flooding session does not limit another."""
    w = World(rate_limit=1, max_subscriptions=1)
    flood, flood_sink = w.connect()
    calm, calm_sink = w.connect()
    for n in range(50):
        w.send(flood, {"type": "ping"})
    assert flood_sink.frames[-1]["code"] == "rate_limited"
    w.send(calm, {"type": "ping"})
    assert calm_sink.frames[-1] == {"type": "pong"}


def test_rate_limit_zero_is_off():
    w = World(rate_limit=0)
    session, sink = w.connect()
    for n in range(500):
        w.send(session, {"type": "ping"})
    assert sink.frames[-1] == {"type": "pong"}
    assert w.hub.rate_limited == 0


# -- slow consumers --------------------------------------------------------


def test_buffer_overflow_ends_session_with_slow_consumer():
    """A polling session with more than outbound_buffer_bytes waiting is ended with slow_consumer; others still get the message."""
    w = World(outbound_buffer_bytes=1024)
    poller = w.hub.open_session("longpoll")
    w.send(poller, {"type": "subscribe", "channel": "a"})
    other, other_sink = w.connect()
    w.send(other, {"type": "subscribe", "channel": "a"})
    w.broker.publish(["a"], json.dumps("x" * 600).encode())
    assert not poller.closed
    w.broker.publish(["a"], json.dumps("y" * 600).encode())
    assert poller.closed
    assert [(f["type"], f.get("code")) for f in pending(poller)] == [("error", "slow_consumer")]
    assert w.hub.slow_consumers == 1
    assert w.hub.find(poller.id) is None
    assert poller not in w.broker.channels["a"].subscribers
    assert [f["type"] for f in other_sink.frames] == ["subscribed", "message", "message"]
    w.broker.publish(["a"], b"1")
    assert len(pending(poller)) == 1


def test_slow_streaming_session_closed_with_slow_consumer():
    """A streaming session the hub finds slow is closed with slow_consumer as its last frame."""
    w = World()
    session, sink = w.connect()
    w.hub.slow(session)
    assert sink.closed and sink.last["code"] == "slow_consumer"
    assert w.hub.find(session.id) is None
    assert w.hub.connections["websocket"] == 0


# -- batches and URL subscriptions -----------------------------------------


def test_receive_batch_answers_each_frame_in_order():
    """A POSTed JSON array of frames is handled frame by frame, bad ones answered with errors."""
    w = World()
    session, sink = w.connect()
    w.hub.receive_batch(session, b'[{"type":"ping"},{"type":"nope"},{"type":"subscribe","channel":"a"}]', 65536)
    assert [f["type"] for f in sink.frames] == ["pong", "error", "subscribed"]


def test_receive_batch_single_frame():
    """A POSTed single frame is handled like a WebSocket message."""
    w = World()
    session, sink = w.connect()
    w.hub.receive_batch(session, b'{"type":"ping"}', 65536)
    assert sink.frames == [{"type": "pong"}]


def test_subscribe_all_merges_replay():
    """Subscribing to several channels at once answers each, then replays them merged in publish order."""
    w = World()
    cursor = w.broker.publish(["a"], b'"a0"').ids["a"]
    w.broker.publish(["b"], b'"b1"')
    w.broker.publish(["a"], b'"a2"')
    session, sink = w.connect("sse")
    w.hub.subscribe_all(session, ["a", "b", "a", "bad name"], cursor)
    assert [(f["type"], f.get("channel"), f.get("data")) for f in sink.frames] == [
        ("subscribed", "a", None), ("subscribed", "b", None), ("error", "bad name", None),
        ("message", "b", "b1"), ("message", "a", "a2"),
    ]
    assert sink.frames[2]["code"] == "invalid_channel"
    assert session.channels == {"a", "b"}


class _CountingBroker(MemoryBackend):
    """A backend that, like Redis, counts a session asynchronously: the hub
    must not answer ``connected`` before the count is in."""

    def __init__(self, clock) -> None:
        super().__init__(clock, 100, 300)
        self.counting: list = []

    def add_session(self, session):
        super().add_session(session)
        d = Deferred()
        self.counting.append(d)
        return d


def test_connected_waits_until_a_shared_backend_has_counted_the_session():
    """A streaming browser hears connected (and whatever came meanwhile,
    in order) only once the backend counted it; a polling one's first
    answer waits on counted(); a connection lost meanwhile is not attached;
    one ended meanwhile is closed with the frame that says why."""
    clock = Clock()
    broker = _CountingBroker(clock)
    hub = Hub(Config(secret=(SECRET,)), broker, clock, None)
    sink = RecordingSink()
    session = hub.open_session("websocket", sink)
    hub.receive(session, json.dumps({"type": "ping"}))
    assert sink.frames == [] and hub.connections["websocket"] == 0
    broker.counting[0].callback(None)
    assert [f["type"] for f in sink.frames] == ["connected", "pong"]
    assert hub.connections["websocket"] == 1

    polling = hub.open_session("longpoll")
    waiting = hub.counted(polling)
    answered = []
    waiting.addCallback(answered.append)
    assert answered == []
    broker.counting[1].callback(None)
    assert answered == [None] and hub.counted(polling) is None
    assert [json.loads(f.payload)["type"] for f in polling.take()[1]] == ["connected"]

    lost_sink = RecordingSink()
    lost = hub.open_session("sse", lost_sink)
    hub.connection_lost(lost)
    broker.counting[2].callback(None)
    assert lost_sink.frames == [] and not lost_sink.closed and hub.connections["sse"] == 0

    ended_sink = RecordingSink()
    hub.open_session("websocket", ended_sink)
    hub.shutdown()
    broker.counting[3].callback(None)
    assert ended_sink.closed and ended_sink.last["code"] == "shutting_down" and ended_sink.frames == []
