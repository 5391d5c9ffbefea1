"""What channels hold, through the contract: history after an id, one
channel's subscribers and last id, the list of active channels, and frames
that are not messages (``announce``)."""

from __future__ import annotations

import pytest_twisted

from chloed import frames
from chloed.backends.base import ChannelInfo
from tests.backends.support import REDIS_ONLY, Recorder, data_of, received, until


@pytest_twisted.inlineCallbacks
def test_history_answers_what_is_kept_after_an_id(backend):
    """``history(name, since)`` answers the messages kept after ``since``
    in order and that they are all; after the newest, nothing; after an id
    that is not one, all that is kept and ``False``. Nobody need be
    subscribed."""
    ids = []
    for n in range(3):
        ids.append((yield backend.publish(["h"], str(n).encode())).ids["h"])
    recovered, kept = yield backend.history("h", ids[0])
    assert (recovered, data_of(kept)) == (True, [1, 2])
    assert [f.id for f in kept] == ids[1:]
    assert (yield backend.history("h", ids[-1])) == (True, [])
    recovered, kept = yield backend.history("h", "not-an-id")
    assert (recovered, data_of(kept)) == (False, [0, 1, 2])


@pytest_twisted.inlineCallbacks
def test_history_that_no_longer_reaches_back_is_not_recovered(make_node):
    """``history`` after an id older than what is kept (``history_size``
    2): the messages kept, and ``False``."""
    node = yield make_node(history_size=2)
    ids = []
    for n in range(4):
        ids.append((yield node.backend.publish(["short"], str(n).encode())).ids["short"])
    recovered, kept = yield node.backend.history("short", ids[0])
    assert (recovered, data_of(kept)) == (False, [2, 3])


@pytest_twisted.inlineCallbacks
def test_channel_info_counts_subscribers_and_the_last_id(backend, kind):
    """``channel_info`` says a channel's subscribers and its last message
    id, and how many messages its history holds where the backend keeps it
    in this process (memory), None where it lives elsewhere (Redis); a
    channel nobody uses has none of them."""
    one, two = Recorder("one"), Recorder("two")
    yield backend.subscribe("info", one, None)
    yield backend.subscribe("info", two, None)
    yield backend.publish(["info"], b"1")
    last = (yield backend.publish(["info"], b"2")).ids["info"]
    yield received(one, 2)
    info = yield backend.channel_info("info")
    assert info == ChannelInfo("info", 2, last, {"memory": 2, "redis": None}[kind])
    assert (yield backend.channel_info("nowhere")) == ChannelInfo("nowhere", 0, None, None)


@pytest_twisted.inlineCallbacks
def test_channel_list_says_whose_channels_it_lists(backend, kind):
    """``channel_list`` lists the active channels with their subscribers
    and last id. One process lists everyone's (``scope: "cluster"``),
    channels with only history too; a Redis node lists its own subscribers'
    channels (``scope: "node"``), not one with only history in Redis."""
    sub = Recorder("lister")
    yield backend.subscribe("listed", sub, None)
    last = (yield backend.publish(["listed"], b"1")).ids["listed"]
    kept = (yield backend.publish(["kept"], b"1")).ids["kept"]
    yield received(sub, 1)
    listing = yield backend.channel_list()
    if kind == "memory":
        assert listing.scope == "cluster"
        assert listing.channels == {
            "listed": ChannelInfo("listed", 1, last, 1),
            "kept": ChannelInfo("kept", 0, kept, 1),
        }
    else:
        assert listing.scope == "node"
        assert listing.channels == {"listed": ChannelInfo("listed", 1, last, None)}


@REDIS_ONLY
@pytest_twisted.inlineCallbacks
def test_channel_info_counts_every_node_and_the_listing_this_one(two_nodes):
    """With two nodes, ``channel_info`` counts the subscribers of both;
    ``channel_list`` on a node counts its own (``scope: "node"``)."""
    a, b = two_nodes
    on_a, on_b = Recorder("on-a"), Recorder("on-b")
    yield a.subscribe("shared", on_a, None)
    yield b.subscribe("shared", on_b, None)
    yield b.publish(["shared"], b"1")
    yield received(on_a, 1)
    assert (yield a.channel_info("shared")).subscribers == 2
    listing = yield a.channel_list()
    assert (listing.scope, listing.channels["shared"].subscribers) == ("node", 1)


@pytest_twisted.inlineCallbacks
def test_announce_delivers_a_frame_that_is_not_a_message(backend):
    """``announce`` hands a frame (presence, the status feed) to this
    process's subscribers of a channel, but the one excluded, at once;
    says how many took it; keeps it in no history."""
    me, other = Recorder("me"), Recorder("other")
    yield backend.subscribe("feed", me, None)
    yield backend.subscribe("feed", other, None)
    start = (yield backend.publish(["feed"], b"0")).ids["feed"]
    yield until(lambda: len(me.messages()) == len(other.messages()) == 1)
    frame = frames.encode({"type": "status", "channel": "feed"})
    assert backend.announce("feed", frame, "me") == 1
    assert other.frames[-1] is frame and me.frames[-1] is not frame
    assert backend.announce("nobody-here", frame, None) == 0
    assert (yield backend.history("feed", start)) == (True, [])
