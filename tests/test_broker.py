"""Unit tests of the memory backend's engine (chloed.backends.memory.Broker): channels, fan-out, ids and history, on a Clock."""

from __future__ import annotations

import json

import pytest
from twisted.internet.task import Clock

from chloed.backends.memory import Broker, MessageId
from chloed.redact import session_tag
from tests.fakes import ExplodingSubscriber, RecordingSubscriber, captured_log


def make_broker(history_size: int = 100, history_ttl: float = 300.0, start: float = 0.0):
    clock = Clock()
    clock.advance(start)
    return clock, Broker(clock, history_size, history_ttl)


def data_of(frames) -> list:
    """The data of each message frame, decoded."""
    return [json.loads(f.payload)["data"] for f in frames]


def seq(id: str) -> int:
    return int(id.split("-")[1])


# -- subscriptions ---------------------------------------------------------


def test_subscriber_gets_publishes_of_its_channel():
    """A subscriber of a channel gets each message published to it, as a message frame."""
    _, broker = make_broker()
    alice = RecordingSubscriber("alice")
    assert broker.subscribe("pumpkin", alice) == (True, [])
    result = broker.publish(["pumpkin"], b'"Trotter"')
    assert alice.decoded == [
        {"type": "message", "channel": "pumpkin", "id": result.ids["pumpkin"], "data": "Trotter"}
    ]
    assert result.delivered == 1


def test_other_channels_are_not_delivered():
    """A subscriber does not get messages of channels it did not subscribe to."""
    _, broker = make_broker()
    alice = RecordingSubscriber("alice")
    broker.subscribe("a", alice)
    result = broker.publish(["b"], b"1")
    assert alice.frames == []
    assert result.delivered == 0


def test_unsubscribe_stops_delivery():
    """After unsubscribing, a subscriber gets no more messages of that channel."""
    _, broker = make_broker()
    alice = RecordingSubscriber("alice")
    broker.subscribe("a", alice)
    assert broker.unsubscribe("a", alice) is True
    broker.publish(["a"], b"1")
    assert alice.frames == []


def test_unsubscribe_when_not_subscribed():
    """Unsubscribing from a channel one is not on says so and changes nothing."""
    _, broker = make_broker()
    alice, bob = RecordingSubscriber("alice"), RecordingSubscriber("bob")
    assert broker.unsubscribe("nowhere", alice) is False
    broker.subscribe("a", bob)
    assert broker.unsubscribe("a", alice) is False
    assert list(broker.channels["a"].subscribers) == [bob]


def test_unsubscribing_last_subscriber_of_channel_without_history_forgets_it():
    """A channel with no subscribers and no history is forgotten."""
    _, broker = make_broker()
    alice = RecordingSubscriber("alice")
    broker.subscribe("a", alice)
    assert list(broker.channel_names()) == ["a"]
    broker.unsubscribe("a", alice)
    assert list(broker.channel_names()) == []


def test_subscribing_twice_delivers_once():
    """Subscribing to the same channel twice still delivers each message once."""
    _, broker = make_broker()
    alice = RecordingSubscriber("alice")
    broker.subscribe("a", alice)
    broker.subscribe("a", alice)
    broker.publish(["a"], b"1")
    assert len(alice.frames) == 1


def test_remove_session_unsubscribes_everywhere():
    """Removing a session forgets it and its subscriptions."""
    _, broker = make_broker()
    alice = RecordingSubscriber("alice")
    broker.add_session(alice)
    broker.subscribe("a", alice)
    broker.subscribe("b", alice)
    broker.remove_session(alice, ["a", "b"])
    assert broker.sessions == {}
    broker.publish(["a", "b"], b"1")
    broker.broadcast(b"2")
    assert alice.frames == []


def test_remove_session_leaves_a_newer_session_with_the_same_id():
    """Removing a stale session object does not remove the live one of the same id."""
    _, broker = make_broker()
    old, new = RecordingSubscriber("s"), RecordingSubscriber("s")
    broker.add_session(new)
    broker.remove_session(old, [])
    assert broker.sessions == {"s": new}


# -- publishing ------------------------------------------------------------


def test_publish_to_several_channels():
    """A publish to several channels reaches each channel's subscribers with that channel's id."""
    _, broker = make_broker()
    alice, bob, carol = (RecordingSubscriber(n) for n in ("alice", "bob", "carol"))
    broker.subscribe("a", alice)
    broker.subscribe("b", bob)
    broker.subscribe("a", carol)
    broker.subscribe("b", carol)
    result = broker.publish(["a", "b"], b'"hi"')
    assert set(result.ids) == {"a", "b"}
    assert [(f["channel"], f["id"]) for f in alice.decoded] == [("a", result.ids["a"])]
    assert [(f["channel"], f["id"]) for f in bob.decoded] == [("b", result.ids["b"])]
    assert [f["channel"] for f in carol.decoded] == ["a", "b"]
    assert result.delivered == 4


def test_ids_increase():
    """Message ids increase with every publish, across channels and time."""
    clock, broker = make_broker()
    ids = []
    for i in range(5):
        ids += broker.publish(["a", "b"], b"1").ids.values()
        clock.advance(0.0005)
    assert [seq(i) for i in ids] == sorted(seq(i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert [MessageId.parse(i).seq for i in ids] == list(range(1, 11))


def test_id_carries_publish_time_in_ms():
    """An id is "<ms>-<seq>", the publish time in milliseconds and the counter."""
    clock, broker = make_broker(start=1700000000.25)
    assert broker.publish(["a"], b"1").ids["a"] == "1700000000250-1"
    assert broker.channels["a"].last_id == "1700000000250-1"


def test_one_encoded_frame_shared_by_all_subscribers():
    """A publish encodes the message once and hands every subscriber the same object."""
    _, broker = make_broker()
    subs = [RecordingSubscriber(f"s{i}") for i in range(10)]
    for s in subs:
        broker.subscribe("a", s)
    broker.publish(["a"], b"1")
    first = subs[0].frames[0]
    assert all(s.frames[0] is first for s in subs)


def test_exclude_skips_one_session():
    """exclude keeps the message from the named session only."""
    _, broker = make_broker()
    alice, bob = RecordingSubscriber("alice"), RecordingSubscriber("bob")
    broker.subscribe("a", alice)
    broker.subscribe("a", bob)
    result = broker.publish(["a"], b"1", exclude="alice")
    assert alice.frames == []
    assert len(bob.frames) == 1
    assert result.delivered == 1


def test_broadcast_reaches_every_session_with_null_channel():
    """A broadcast reaches every session, subscribed or not, with channel null."""
    _, broker = make_broker()
    alice, bob = RecordingSubscriber("alice"), RecordingSubscriber("bob")
    broker.add_session(alice)
    broker.add_session(bob)
    broker.subscribe("a", alice)
    result = broker.broadcast(b'"all"')
    for s in (alice, bob):
        assert s.decoded == [{"type": "message", "channel": None, "id": result.id, "data": "all"}]
    assert result.delivered == 2
    assert alice.frames[0] is bob.frames[0]


def test_broadcast_exclude():
    """A broadcast can skip one session."""
    _, broker = make_broker()
    alice, bob = RecordingSubscriber("alice"), RecordingSubscriber("bob")
    broker.add_session(alice)
    broker.add_session(bob)
    assert broker.broadcast(b"1", exclude="bob").delivered == 1
    assert bob.frames == []


def test_to_session_reaches_only_that_session():
    """A message to one session reaches it alone, with channel null."""
    _, broker = make_broker()
    alice, bob = RecordingSubscriber("alice"), RecordingSubscriber("bob")
    broker.add_session(alice)
    broker.add_session(bob)
    result = broker.to_session("bob", b"7")
    assert result is not None and result.delivered == 1
    assert bob.decoded == [{"type": "message", "channel": None, "id": result.id, "data": 7}]
    assert alice.frames == []


def test_to_unknown_session_is_none():
    """A message to a session that does not exist says so."""
    _, broker = make_broker()
    assert broker.to_session("ghost", b"1") is None


def test_broadcast_and_to_session_ids_continue_the_sequence():
    """Broadcast and one-session messages take ids from the same increasing counter."""
    _, broker = make_broker()
    broker.add_session(RecordingSubscriber("s"))
    ids = [broker.publish(["a"], b"1").ids["a"], broker.broadcast(b"1").id, broker.to_session("s", b"1").id]
    assert [seq(i) for i in ids] == [1, 2, 3]


def test_broken_subscriber_does_not_stop_the_others():
    """One subscriber whose delivery raises does not keep the message from the others; the failure is logged."""
    _, broker = make_broker()
    before, broken, after = RecordingSubscriber("a"), ExplodingSubscriber("broken"), RecordingSubscriber("z")
    for s in (before, broken, after):
        broker.subscribe("ch", s)
    with captured_log() as events:
        result = broker.publish(["ch"], b"1")
    assert len(before.frames) == len(after.frames) == 1
    assert result.delivered == 2
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 1
    assert failures[0]["log_failure"].check(RuntimeError)
    assert failures[0]["session"] == session_tag("broken")  # its tag: never a session id in a log


def test_broken_session_does_not_stop_a_broadcast():
    """A broadcast goes on past a session whose delivery raises."""
    _, broker = make_broker()
    broker.add_session(ExplodingSubscriber("broken"))
    ok = RecordingSubscriber("ok")
    broker.add_session(ok)
    with captured_log():
        assert broker.broadcast(b"1").delivered == 1
    assert len(ok.frames) == 1


def test_subscriber_unsubscribing_during_fan_out():
    """A subscriber removed during a fan-out (a slow consumer dropped) does not disturb it."""
    _, broker = make_broker()

    class Quitter(RecordingSubscriber):
        def deliver(self, frame):
            super().deliver(frame)
            broker.unsubscribe("a", self)

    subs = [Quitter("q1"), RecordingSubscriber("r"), Quitter("q2")]
    for s in subs:
        broker.subscribe("a", s)
    assert broker.publish(["a"], b"1").delivered == 3
    assert [len(s.frames) for s in subs] == [1, 1, 1]
    broker.publish(["a"], b"2")
    assert [len(s.frames) for s in subs] == [1, 2, 1]


# -- history ---------------------------------------------------------------


def test_channel_without_subscribers_keeps_history():
    """A publish to a channel nobody listens to is kept for a subscriber coming a moment later."""
    _, broker = make_broker()
    first = broker.publish(["a"], b"0").ids["a"]
    broker.publish(["a"], b"1")
    recovered, missed = broker.subscribe("a", RecordingSubscriber("late"), since=first)
    assert recovered is True
    assert data_of(missed) == [1]


def test_history_size_trims_oldest():
    """Only the newest history_size messages of a channel are kept."""
    _, broker = make_broker(history_size=3)
    ids = [broker.publish(["a"], json.dumps(i).encode()).ids["a"] for i in range(5)]
    assert [seq for seq, _, _ in broker.channels["a"].history] == [3, 4, 5]
    recovered, missed = broker.replay("a", ids[2])
    assert recovered is True
    assert data_of(missed) == [3, 4]


def test_since_older_than_history_is_not_recovered():
    """Resuming from before what is retained says recovered false and replays what is left."""
    _, broker = make_broker(history_size=3)
    ids = [broker.publish(["a"], json.dumps(i).encode()).ids["a"] for i in range(5)]
    recovered, missed = broker.replay("a", ids[0])
    assert recovered is False
    assert data_of(missed) == [2, 3, 4]


def test_since_just_before_the_oldest_kept_is_recovered():
    """Resuming from the last dropped message misses nothing and says so."""
    _, broker = make_broker(history_size=3)
    ids = [broker.publish(["a"], json.dumps(i).encode()).ids["a"] for i in range(5)]
    recovered, missed = broker.replay("a", ids[1])
    assert recovered is True
    assert data_of(missed) == [2, 3, 4]


def test_history_ttl_expiry():
    """Messages older than history_ttl are no longer replayed, and recovered turns false."""
    clock, broker = make_broker(history_ttl=60)
    first = broker.publish(["a"], b"0").ids["a"]
    clock.advance(30)
    broker.publish(["a"], b"1")
    clock.advance(29.9)
    recovered, missed = broker.replay("a", first)
    assert recovered is True
    assert data_of(missed) == [1]
    clock.advance(0.1)  # the first is 60 s old: gone, but it is not after `first`
    assert broker.replay("a", first)[0] is True
    clock.advance(30)  # the second is 60 s old: gone, and it was missed
    recovered, missed = broker.replay("a", first)
    assert (recovered, missed) == (False, [])


def test_zero_history_keeps_nothing():
    """With history_size 0 nothing is replayed and a resume across a publish is not recovered."""
    _, broker = make_broker(history_size=0)
    alice = RecordingSubscriber("alice")
    broker.subscribe("a", alice)
    first = broker.publish(["a"], b"0").ids["a"]
    broker.publish(["a"], b"1")
    assert len(broker.channels["a"].history) == 0
    assert broker.replay("a", first) == (False, [])


def test_replay_with_since_in_order_without_duplicates():
    """A resume replays every message after since, once each, in publish order."""
    _, broker = make_broker()
    ids = [broker.publish(["a"], json.dumps(i).encode()).ids["a"] for i in range(6)]
    broker.publish(["b"], b'"other"')
    recovered, missed = broker.subscribe("a", RecordingSubscriber("s"), since=ids[2])
    assert recovered is True
    assert data_of(missed) == [3, 4, 5]
    assert [f.id for f in missed] == ids[3:]


def test_replay_from_latest_is_empty_and_recovered():
    """Resuming from the last message seen replays nothing and is complete."""
    _, broker = make_broker()
    last = [broker.publish(["a"], b"1").ids["a"] for _ in range(3)][-1]
    assert broker.replay("a", last) == (True, [])


def test_replayed_frames_are_the_published_ones():
    """A replay hands out the same encoded frames that were published."""
    _, broker = make_broker()
    live = RecordingSubscriber("live")
    broker.subscribe("a", live)
    first = broker.publish(["a"], b"0").ids["a"]
    broker.publish(["a"], b"1")
    _, missed = broker.replay("a", first)
    assert missed[0] is live.frames[1]


def test_subscribe_without_since_replays_nothing():
    """Subscribing without since gets only new messages."""
    _, broker = make_broker()
    broker.publish(["a"], b"1")
    assert broker.subscribe("a", RecordingSubscriber("s")) == (True, [])


def test_since_from_a_previous_process_is_not_recovered():
    """An id from before this process started cannot be resumed exactly: recovered false, history replayed."""
    clock, broker = make_broker(start=1000)
    broker.publish(["a"], b'"kept"')
    recovered, missed = broker.subscribe("a", RecordingSubscriber("s"), since="999000-5")
    assert recovered is False
    assert data_of(missed) == ["kept"]


def test_since_from_the_future_is_not_recovered():
    """An id this process never gave out (a counter ahead of ours) is not recovered."""
    clock, broker = make_broker(start=1000)
    broker.publish(["a"], b"1")
    assert broker.replay("a", "1000000-99")[0] is False


@pytest.mark.parametrize("since", ["abc", "12", "-3", "1-", "a-1", "1-b", "1-2-3", "1" * 30 + "-" + "1" * 10, " 1-1"])
def test_malformed_since_is_not_recovered(since):
    """A since that is not one of our ids replays the history with recovered false."""
    _, broker = make_broker()
    broker.publish(["a"], b"1")
    recovered, missed = broker.subscribe("a", RecordingSubscriber("s"), since=since)
    assert recovered is False
    assert data_of(missed) == [1]


@pytest.mark.parametrize("since", ["\u00b2-1", "1-\u00b9", "\u2460-1"])
def test_since_with_non_ascii_digits_is_not_recovered(since):
    """A since with digit-like characters that are not 0-9 is malformed: recovered false, not a crash."""
    _, broker = make_broker()
    broker.publish(["a"], b"1")
    recovered, missed = broker.subscribe("a", RecordingSubscriber("s"), since=since)
    assert recovered is False


def test_absent_channel_with_recent_since_is_recovered():
    """Resuming a channel that has had nothing recently is complete: nothing can have been missed."""
    clock, broker = make_broker(start=100)
    cursor = broker.publish(["other"], b"1").ids["other"]
    clock.advance(10)
    assert broker.subscribe("quiet", RecordingSubscriber("s"), since=cursor) == (True, [])


def test_absent_channel_with_since_older_than_ttl_is_not_recovered():
    """Resuming a channel with no history from longer ago than history_ttl is not complete."""
    clock, broker = make_broker(history_ttl=60, start=100)
    cursor = broker.publish(["other"], b"1").ids["other"]
    broker.publish(["other"], b"2")
    clock.advance(61)
    assert broker.replay("quiet", cursor) == (False, [])


def test_absent_channel_with_nothing_published_since_is_recovered():
    """If nothing at all was published after since, however long ago, nothing was missed."""
    clock, broker = make_broker(history_ttl=60, start=100)
    cursor = broker.publish(["other"], b"1").ids["other"]
    clock.advance(61)
    assert broker.replay("quiet", cursor) == (True, [])


def test_resume_on_recreated_channel_after_expiry_is_not_recovered():
    """A browser resuming after messages it missed expired hears recovered false, even if the channel was swept and is in use again."""
    clock, broker = make_broker(history_ttl=300)
    since = broker.publish(["news"], b'"seen"').ids["news"]
    clock.advance(10)
    broker.publish(["news"], b'"missed"')
    clock.advance(301)
    broker.sweep()
    broker.subscribe("news", RecordingSubscriber("newcomer"))
    recovered, missed = broker.subscribe("news", RecordingSubscriber("returning"), since=since)
    assert missed == []
    assert recovered is False


def test_zero_history_unwatched_channel_resume_is_not_recovered():
    """With no history kept, a resume across a message nobody could keep says recovered false."""
    _, broker = make_broker(history_size=0)
    since = broker.publish(["a"], b"0").ids["a"]
    broker.publish(["a"], b'"lost"')
    assert broker.subscribe("a", RecordingSubscriber("s"), since=since)[0] is False


def test_replay_many_merges_in_publish_order():
    """Replaying several channels after one cursor gives their messages interleaved in publish order."""
    _, broker = make_broker()
    cursor = broker.publish(["a"], b'"a0"').ids["a"]
    broker.publish(["b"], b'"b1"')
    broker.publish(["a"], b'"a2"')
    broker.publish(["c"], b'"c3"')
    broker.publish(["b", "a"], b'"ba4"')
    recovered, missed = broker.replay_many(["a", "b"], cursor)
    assert recovered is True
    assert [(f.channel, json.loads(f.payload)["data"]) for f in missed] == [
        ("b", "b1"), ("a", "a2"), ("b", "ba4"), ("a", "ba4"),
    ]
    assert [seq(f.id) for f in missed] == sorted(seq(f.id) for f in missed)


def test_replay_many_not_recovered_if_any_channel_is_not():
    """One channel that cannot be resumed makes the merged replay recovered false."""
    _, broker = make_broker(history_size=1)
    cursor = broker.publish(["a"], b"0").ids["a"]
    broker.publish(["b"], b"1")
    broker.publish(["b"], b"2")  # b's "1" is dropped: it came after the cursor
    recovered, missed = broker.replay_many(["a", "b"], cursor)
    assert recovered is False
    assert data_of(missed) == [2]


# -- sweep -----------------------------------------------------------------


def test_sweep_forgets_idle_empty_channels():
    """A channel nobody listens to is forgotten once its history has expired."""
    clock, broker = make_broker(history_ttl=60)
    broker.publish(["idle"], b"1")
    broker.subscribe("busy", RecordingSubscriber("s"))
    broker.publish(["busy"], b"1")
    assert broker.sweep() == 0
    assert set(broker.channel_names()) == {"idle", "busy"}
    clock.advance(60)
    assert broker.sweep() == 1
    assert list(broker.channel_names()) == ["busy"]


def test_sweep_keeps_idle_channels_with_fresh_history():
    """An unwatched channel whose messages are still retained is kept."""
    clock, broker = make_broker(history_ttl=60)
    broker.publish(["idle"], b"1")
    clock.advance(59)
    assert broker.sweep() == 0
    assert list(broker.channel_names()) == ["idle"]


# -- message ids -----------------------------------------------------------


def test_message_id_round_trip():
    """An id parses to its time and counter and prints back the same."""
    mid = MessageId.parse("1732320000000-42")
    assert mid == MessageId(1732320000000, 42)
    assert str(mid) == "1732320000000-42"


@pytest.mark.parametrize("text", ["", "-", "1", "x-1", "1-x", "1-2-3", "1" * 40 + "-1"])
def test_message_id_parse_refuses_others(text):
    """Strings that are not our ids parse to None."""
    assert MessageId.parse(text) is None
