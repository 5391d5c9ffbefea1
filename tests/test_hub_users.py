"""Unit tests of users in the hub (chloed.auth, chloed.commands): connection
tokens, their refresh and expiry, messages to a user, the app's commands,
the per-user and per-IP limits and namespaces; on a Clock set to the wall
clock's time (tokens' ``exp`` are epoch seconds), with recording sinks."""

from __future__ import annotations

import itertools
import json
import time

import jwt
import pytest
from twisted.internet.task import Clock

from chloed import frames
from chloed.auth import AUTH_TIMEOUT
from chloed.backends.memory import MemoryBackend
from chloed.config import Config, from_mapping
from chloed.hub import Hub
from tests.fakes import RecordingSink

SECRET = "the-shared-secret-of-at-least-32-bytes"


class World:
    """A Hub over a MemoryBackend (with the config's channel policy) on a Clock."""

    def __init__(self, config: Config | None = None, **options) -> None:
        options.setdefault("secret", (SECRET,))
        self.config = config if config is not None else Config(**options)
        self.clock = Clock()
        self.clock.advance(int(time.time()))
        c = self.config
        self.backend = MemoryBackend(self.clock, c.history_size, c.history_ttl, c.history_memory, c.policy)
        counter = itertools.count(1)
        self.hub = Hub(c, self.backend, self.clock, None, new_id=lambda: f"session-{next(counter)}")

    def now(self) -> float:
        return self.clock.seconds()

    def token(self, sub="alice", lifetime=3600, **claims) -> str:
        claims.setdefault("iat", int(self.now()) - 1)
        return jwt.encode({"sub": sub, "exp": int(self.now()) + lifetime, **claims}, SECRET, algorithm="HS256")

    def connect(self, transport="websocket", **options):
        sink = RecordingSink()
        session = self.hub.open_session(transport, sink, **options)
        assert sink.frames[0]["type"] == "connected"
        del sink.frames[:]
        return session, sink

    def login(self, sub="alice", since=None, **claims):
        session, sink = self.connect()
        frame = {"type": "auth", "token": self.token(sub, **claims)}
        if since is not None:
            frame["since"] = since
        self.send(session, frame)
        assert sink.frames[0]["type"] == "authenticated", sink.frames
        return session, sink

    def send(self, session, frame) -> None:
        self.hub.receive(session, json.dumps(frame))

    def to_user(self, *users, data="hi"):
        names = [frames.user_channel(u) for u in users]
        return self.backend.publish(names, frames.dumps(data))


def types(sink) -> list[str]:
    return [f["type"] for f in sink.frames]


def final(sink) -> dict:
    """The last frame a sink got: the one it closed with, if it was closed."""
    return sink.last if sink.closed else sink.frames[-1]


# -- connecting with a token ---------------------------------------------------


def test_auth_names_the_user_and_gives_the_cursor():
    world = World()
    session, sink = world.login("alice")
    frame = sink.frames[0]
    assert frame["user"] == "alice" and frame["expires"] > world.now()
    assert session.user == {"id": "alice", "info": None}
    assert world.hub.auth.sessions_of("alice") == [session]


def test_a_message_to_a_user_reaches_each_of_its_sessions_and_counts_them():
    world = World()
    _, tab1 = world.login("alice")
    _, tab2 = world.login("alice")
    _, other = world.login("bob")
    receipt = world.to_user("alice", data={"n": 1}).result
    assert receipt.delivered == 2
    for tab in (tab1, tab2):
        assert tab.frames[-1] == {
            "type": "message", "channel": None, "user": "alice", "id": receipt.ids["#u:alice"], "data": {"n": 1},
        }
    assert types(other) == ["authenticated"]


def test_a_tab_reconnecting_within_the_grace_gets_what_was_sent_to_its_user_meanwhile():
    world = World(session_grace=30)
    session, sink = world.login("alice")
    cursor = sink.frames[0]["id"]
    world.hub.connection_lost(session)
    world.clock.advance(1)
    sent = world.to_user("alice", data="while away").result
    assert sent.delivered == 0
    _, again = world.login("alice", since=cursor)
    assert again.frames[1]["data"] == "while away" and again.frames[1]["id"] == sent.ids["#u:alice"]


def test_what_was_sent_to_a_user_is_kept_only_for_the_grace():
    world = World(session_grace=5)
    session, sink = world.login("alice")
    cursor = sink.frames[0]["id"]
    world.hub.connection_lost(session)
    world.to_user("alice", data="too long ago")
    world.clock.advance(6)
    _, again = world.login("alice", since=cursor)
    assert types(again) == ["authenticated"]


@pytest.mark.parametrize(
    "make,code",
    [
        (lambda w: "not a jwt", "token_invalid"),
        (lambda w: w.token(lifetime=-10), "token_expired"),
        (lambda w: jwt.encode({"sub": "a", "exp": int(w.now()) + 60}, "another-secret-of-32-bytes-or-more!!", algorithm="HS256"), "token_invalid"),
        (lambda w: w.token(sub="x" * 200), "token_invalid"),
        (lambda w: w.token(sub="a\nb"), "token_invalid"),
        (lambda w: w.token(nbf=int(w.now()) + 60), "token_invalid"),
        (lambda w: w.token(iat="yesterday"), "token_invalid"),
        (lambda w: jwt.encode({"exp": int(w.now()) + 60}, SECRET, algorithm="HS256"), "token_invalid"),
        (lambda w: jwt.encode({"sub": "a", "exp": int(w.now()) + 60}, SECRET, algorithm="HS512"), "token_invalid"),
        (lambda w: jwt.encode({"sub": "a", "exp": int(w.now()) + 60}, None, algorithm="none"), "token_invalid"),
    ],
    ids=["junk", "expired", "wrong-key", "long-sub", "control-sub", "nbf", "bad-iat", "no-sub", "hs512", "alg-none"],
)
def test_a_bad_connection_token_ends_the_session_with_the_reason(make, code):
    world = World()
    session, sink = world.connect()
    world.send(session, {"type": "auth", "token": make(world)})
    assert final(sink)["type"] == "error" and final(sink)["code"] == code
    assert sink.closed and session.closed


def test_a_huge_token_is_a_bad_frame():
    world = World()
    session, sink = world.connect()
    world.send(session, {"type": "auth", "token": world.token(sub="x" * 10000)})
    assert sink.frames[-1]["code"] == "bad_frame"


def test_a_second_auth_is_refused_but_the_session_goes_on():
    world = World()
    session, sink = world.login()
    world.send(session, {"type": "auth", "token": world.token()})
    assert sink.frames[-1]["code"] == "bad_frame" and not session.closed


def test_required_tokens_refuse_frames_before_auth_and_sessions_that_never_send_one():
    world = World(require_connection_token=True)
    session, sink = world.connect()
    world.send(session, {"type": "subscribe", "channel": "news"})
    assert final(sink)["code"] == "token_required" and session.closed
    quiet, quiet_sink = world.connect()
    world.clock.advance(AUTH_TIMEOUT + 0.1)
    assert final(quiet_sink)["code"] == "token_required" and quiet.closed
    _, fine = world.login()
    world.clock.advance(AUTH_TIMEOUT + 0.1)
    assert types(fine) == ["authenticated"]


def test_a_polling_session_without_a_token_is_refused_when_one_is_required():
    world = World(require_connection_token=True)
    session = world.hub.open_session("longpoll")
    assert session.closed
    assert [json.loads(f.payload)["code"] for f in session.take()[1]] == ["token_required"]


def test_a_token_on_the_url_authenticates_and_opens_its_channels():
    world = World()
    token = world.token("carol", channels=["private-room"])
    sink = RecordingSink()
    session = world.hub.open_session("sse", sink, token=token)
    world.hub.subscribe_all(session, ["private-room"], None, token)
    assert types(sink) == ["connected", "authenticated", "subscribed"]
    assert session.user == {"id": "carol", "info": None}


# -- refresh and expiry -----------------------------------------------------------


def test_a_connection_token_is_refreshed_before_it_expires_without_reconnecting():
    world = World(token_refresh_margin=10)
    session, sink = world.login(lifetime=60)
    world.clock.advance(50)
    assert sink.frames[-1]["type"] == "token_expiring"
    world.send(session, {"type": "refresh", "token": world.token(lifetime=3600)})
    assert sink.frames[-1]["type"] == "refreshed"
    world.clock.advance(20)
    assert not session.closed


def test_a_connection_token_not_refreshed_closes_the_session():
    world = World()
    session, sink = world.login(lifetime=30)
    world.clock.advance(31)
    assert final(sink)["code"] == "token_expired" and session.closed and sink.closed
    assert world.hub.auth.sessions_of("alice") == []


def test_a_refresh_must_name_the_same_user():
    world = World()
    session, sink = world.login("alice")
    world.send(session, {"type": "refresh", "token": world.token("mallory")})
    assert sink.frames[-1]["code"] == "forbidden" and not session.closed


def test_a_channel_token_ending_ends_the_subscription_unless_refreshed():
    world = World(token_refresh_margin=5)
    session, sink = world.connect()

    def channel_token(lifetime):
        return jwt.encode({"channels": ["private-a"], "exp": int(world.now()) + lifetime}, SECRET, algorithm="HS256")

    world.send(session, {"type": "subscribe", "channel": "private-a", "token": channel_token(20)})
    assert sink.frames[-1]["type"] == "subscribed"
    world.clock.advance(16)
    assert sink.frames[-1] == {"type": "token_expiring", "channel": "private-a", "expires": int(world.now()) + 4}
    world.send(session, {"type": "refresh", "channel": "private-a", "token": channel_token(20)})
    assert sink.frames[-1]["type"] == "refreshed"
    world.clock.advance(10)
    assert "private-a" in session.channels
    world.clock.advance(11)
    assert sink.frames[-1] == {"type": "unsubscribed", "channel": "private-a", "reason": "token_expired"}
    assert "private-a" not in session.channels and not session.closed


# -- revocation --------------------------------------------------------------------


def test_a_revoked_jti_is_refused_at_connect_and_ends_the_sessions_using_it():
    world = World()
    session, sink = world.login(jti="leaked")
    world.backend.revoke("leaked", None, None, world.now() + 3600)
    world.backend.control({"op": "revoke", "jti": "leaked"})
    assert final(sink)["code"] == "token_revoked" and session.closed
    again, again_sink = world.connect()
    world.send(again, {"type": "auth", "token": world.token(jti="leaked")})
    assert final(again_sink)["code"] == "token_revoked"
    world.login(jti="fresh")


def test_revoking_a_user_refuses_the_tokens_issued_before():
    world = World()
    session, sink = world.login("alice")
    world.backend.revoke(None, "alice", world.now(), world.now() + 3600)
    world.backend.control({"op": "revoke", "user": "alice", "before": world.now()})
    assert final(sink)["code"] == "token_revoked"
    world.clock.advance(2)
    world.login("alice", iat=int(world.now()))


def test_a_revoked_channel_token_is_refused_at_subscribe():
    world = World()
    session, sink = world.connect()
    world.backend.revoke("t1", None, None, world.now() + 60)
    token = jwt.encode({"channels": ["private-a"], "exp": int(world.now()) + 60, "jti": "t1"}, SECRET, algorithm="HS256")
    world.send(session, {"type": "subscribe", "channel": "private-a", "token": token})
    assert sink.frames[-1]["code"] == "token_revoked" and "private-a" not in session.channels


# -- commands of the app -----------------------------------------------------------


def test_disconnect_a_user_tells_each_of_its_sessions_whether_to_come_back():
    world = World()
    one, sink1 = world.login("alice")
    two, sink2 = world.login("alice")
    stays, _ = world.login("bob")
    assert world.backend.control({"op": "disconnect", "user": "alice", "reason": "banned", "reconnect": False}).result == 2
    for session, sink in ((one, sink1), (two, sink2)):
        assert final(sink) == {"type": "disconnect", "reason": "banned", "reconnect": False}
        assert session.closed and sink.closed
    assert not stays.closed


def test_server_side_subscriptions_and_persisted_ones():
    world = World()
    session, sink = world.login("alice")
    world.backend.control({"op": "subscribe", "user": "alice", "channel": "news"})
    assert sink.frames[-1] == {"type": "subscribed", "channel": "news", "recovered": True, "server": True}
    assert "news" in session.channels
    world.backend.control({"op": "unsubscribe", "session": session.id, "channel": "news"})
    assert sink.frames[-1] == {"type": "unsubscribed", "channel": "news", "reason": "server"}
    world.backend.persist_channel("alice", "alerts", True)
    later, later_sink = world.login("alice")
    assert later_sink.frames[1]["channel"] == "alerts" and later_sink.frames[1]["server"] is True


# -- limits ----------------------------------------------------------------------------


def test_the_per_user_limit_refuses_one_more_connection():
    world = World(max_connections_per_user=2)
    world.login("alice")
    first, _ = world.login("alice")
    third, sink = world.connect()
    world.send(third, {"type": "auth", "token": world.token("alice")})
    assert final(sink)["code"] == "too_many_connections" and third.closed
    assert world.hub.auth.refused["user"] == 1
    world.hub.connection_lost(first)
    world.login("alice")


def test_the_per_ip_limit_counts_polling_sessions_and_exempts_loopback():
    world = World(max_connections_per_ip=2)
    polls = [world.hub.open_session("longpoll", ip="192.0.2.7") for _ in range(2)]
    assert world.hub.ip_full("192.0.2.7") and world.hub.auth.refused["ip"] == 1
    assert not world.hub.ip_full("192.0.2.8") and not world.hub.ip_full("127.0.0.1")
    world.hub.close_session(polls[0])
    assert not world.hub.ip_full("192.0.2.7") and world.hub.per_ip["192.0.2.7"] == 1


# -- namespaces ----------------------------------------------------------------------------


def namespaced(**extra) -> Config:
    return from_mapping({
        "secret": SECRET,
        "namespaces": {
            "chat": {"history_size": 2, "client_publish": True, "max_message_bytes": 100},
            "vip": {"require_token": True},
            "room": {"presence": True},
            "site": {"allowed_origins": ["https://good.example"]},
        },
        **extra,
    })


def test_an_unknown_namespace_is_an_invalid_channel():
    world = World(namespaced())
    session, sink = world.connect()
    world.send(session, {"type": "subscribe", "channel": "nope:x"})
    assert sink.frames[-1]["code"] == "invalid_channel"
    world.send(session, {"type": "subscribe", "channel": "plain"})
    assert sink.frames[-1]["type"] == "subscribed"


def test_a_namespace_keeps_its_own_history_and_publish_rules():
    world = World(namespaced())
    for n in range(3):
        world.backend.publish(["chat:a"], frames.dumps(n))
    assert len(world.backend.local.channels["chat:a"].history) == 2
    session, sink = world.connect()
    world.send(session, {"type": "send", "channel": "chat:a", "data": "x" * 200, "ref": 1})
    assert sink.frames[-1]["code"] == "too_large"
    world.send(session, {"type": "send", "channel": "chat:a", "data": "ok", "ref": 2})
    assert sink.frames[-1] == {"type": "ack", "ref": 2}
    world.send(session, {"type": "send", "channel": "plain", "data": "no", "ref": 3})
    assert sink.frames[-1]["code"] == "no_application"


def test_a_namespace_may_require_a_token_or_track_presence():
    world = World(namespaced())
    session, sink = world.connect()
    world.send(session, {"type": "subscribe", "channel": "vip:lounge"})
    assert sink.frames[-1]["code"] == "forbidden"
    user, user_sink = world.login("dana")
    world.send(user, {"type": "subscribe", "channel": "room:1"})
    assert user_sink.frames[-1] == {
        "type": "subscribed", "channel": "room:1", "recovered": True, "members": [{"id": "dana", "info": None}],
    }
    world.send(session, {"type": "subscribe", "channel": "room:1"})
    assert sink.frames[-1]["code"] == "forbidden"


def test_a_namespace_may_take_pages_of_some_origins_only():
    world = World(namespaced())
    bad, bad_sink = world.connect(origin="https://evil.example")
    world.send(bad, {"type": "subscribe", "channel": "site:x"})
    assert bad_sink.frames[-1]["code"] == "forbidden"
    good, good_sink = world.connect(origin="https://good.example")
    world.send(good, {"type": "subscribe", "channel": "site:x"})
    assert good_sink.frames[-1]["type"] == "subscribed"


def test_authenticated_says_whether_the_gap_was_recovered():
    world = World(session_grace=5)
    session, sink = world.login("alice")
    assert sink.frames[0]["recovered"] is True
    cursor = sink.frames[0]["id"]
    world.hub.connection_lost(session)
    world.to_user("alice", data="lost")
    world.clock.advance(6)
    _, again = world.login("alice", since=cursor)
    assert again.frames[0]["recovered"] is False


def test_revoking_a_channel_tokens_jti_ends_the_subscriptions_it_opened():
    world = World()
    session, sink = world.connect()
    token = jwt.encode({"channels": ["private-a"], "exp": int(world.now()) + 60, "jti": "c1"}, SECRET, algorithm="HS256")
    world.send(session, {"type": "subscribe", "channel": "private-a", "token": token})
    assert sink.frames[-1]["type"] == "subscribed"
    world.backend.control({"op": "revoke", "jti": "c1"})
    assert sink.frames[-1] == {"type": "unsubscribed", "channel": "private-a", "reason": "token_revoked"}
    assert not session.closed and world.hub.auth.subscriptions_with("c1") == []


def test_a_server_side_subscription_to_a_presence_channel_makes_the_user_a_member():
    world = World()
    session, sink = world.login("alice", info={"name": "A"})
    world.backend.control({"op": "subscribe", "session": session.id, "channel": "presence-room"})
    assert sink.frames[-1]["members"] == [{"id": "alice", "info": {"name": "A"}}]
    assert world.hub.presence.members("presence-room") == [{"id": "alice", "info": {"name": "A"}}]


def test_status_reports_the_limits_and_the_history_memory():
    from chloed.metrics import Metrics

    world = World(max_connections_per_user=1)
    world.login("alice")
    third, _ = world.connect()
    world.send(third, {"type": "auth", "token": world.token("alice")})
    world.backend.publish(["news"], frames.dumps("kept"))
    metrics = Metrics(world.clock).attach(world.hub)
    status = metrics.status()
    assert status["users"] == 1
    limits = status["limits"]
    assert limits["refused_per_user"] == 1 and limits["max_connections_per_user"] == 1
    assert limits["history_bytes"] > 0 and limits["history_memory"] == world.config.history_memory
    exposition = metrics.exposition().decode()
    assert 'chloe_connections_refused_total{limit="user"} 1.0' in exposition
    assert "chloe_history_bytes " in exposition and "chloe_users 1.0" in exposition


def test_deadlines_of_sessions_gone_do_not_pile_up():
    """Sessions that come and go with hour-long tokens leave deadlines that
    would only fire in an hour: they are dropped once they outnumber what
    is watched, and the live ones still fire."""
    from chloed import auth

    world = World()
    keeper, sink = world.login("keeper", lifetime=600)
    for n in range(auth.PRUNE_SLACK):
        session, _ = world.login(f"user{n}")
        world.hub.connection_lost(session)
    assert len(world.hub.auth.deadlines) < auth.PRUNE_SLACK + 100
    world.clock.advance(601)
    assert final(sink)["code"] == "token_expired" and keeper.closed


def test_a_deadline_heap_keeps_its_order_after_a_prune():
    from chloed.deadlines import Deadlines

    clock = Clock()
    deadlines, fired = Deadlines(clock), []
    for when in (5, 1, 3, 2, 4):
        deadlines.at(when, fired.append, when)
    assert deadlines.prune(lambda when: when % 2 == 1) == 2
    clock.advance(10)
    assert fired == [1, 3, 5]


def test_which_channels_have_members():
    """presence-…, a Pusher app's presence channels, a namespace's with
    presence; never a user's channel, whatever its id."""
    world = World(namespaced())
    hub = world.hub
    assert hub.is_presence("presence-a") and hub.is_presence("pusher~app1~presence-room")
    assert hub.is_presence("room:1") and not hub.is_presence("chat:1") and not hub.is_presence("plain")
    assert not hub.is_presence(frames.user_channel("presence-x")) and not hub.is_presence("#u:room:1")


def test_status_counts_no_users_channel_among_the_channels():
    """A user's own channel is no channel anyone subscribed to: /status
    and /metrics count neither it nor its subscriptions."""
    from chloed.metrics import Metrics

    world = World()
    world.login("alice")
    session, _ = world.connect()
    world.send(session, {"type": "subscribe", "channel": "news"})
    status = Metrics(world.clock).attach(world.hub).status()
    assert (status["channels"], status["subscriptions"]) == (1, 1)
