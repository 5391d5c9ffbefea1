"""Presence through the contract: ``make_presence(clock, grace)`` on each
backend, announced to the channel's subscribers through the backend."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor

from tests.backends.support import GRACE, Recorder, until

ANN = {"id": 7, "info": {"name": "Ann"}}
MEMBER = {"id": "7", "info": {"name": "Ann"}}


@pytest_twisted.inlineCallbacks
def test_a_join_is_announced_to_the_others_and_listed(node):
    """A member joining a presence channel is announced to the channel's
    other subscribers (not to its own session), with its id as a string,
    and listed by ``members``; a second session of the same user joins no
    second time."""
    watcher, member = Recorder("watcher"), Recorder("member")
    yield node.backend.subscribe("presence-room", watcher, None)
    yield node.backend.subscribe("presence-room", member, None)
    node.presence.join("presence-room", "member", ANN)
    yield until(lambda: bool(watcher.presence()))
    assert watcher.presence() == [
        {"type": "presence", "channel": "presence-room", "event": "join", "member": MEMBER}
    ]
    assert member.presence() == []  # not told of itself
    assert node.presence.members("presence-room") == [MEMBER]

    tab = Recorder("tab")
    yield node.backend.subscribe("presence-room", tab, None)
    node.presence.join("presence-room", "tab", ANN)
    assert node.presence.members("presence-room") == [MEMBER]
    yield node.backend.publish(["presence-room"], b'"after"')
    yield until(lambda: watcher.data() == ["after"])  # what came after the join
    assert len(watcher.presence()) == 1


@pytest_twisted.inlineCallbacks
def test_a_member_away_leaves(node, kind):
    """A member's last session parting ``away`` (gone for the grace
    already) leaves and is announced: at once on one node; with Redis once
    its hold in Redis has expired, about the grace after it was last held
    (here at the join)."""
    watcher, member = Recorder("watcher"), Recorder("member")
    yield node.backend.subscribe("presence-room", watcher, None)
    yield node.backend.subscribe("presence-room", member, None)
    joined = reactor.seconds()
    node.presence.join("presence-room", "member", ANN)
    yield until(lambda: len(watcher.presence()) == 1)
    node.presence.part("presence-room", "member", ANN, away=True)
    if kind == "memory":
        assert len(watcher.presence()) == 2  # at once
    else:
        assert len(watcher.presence()) == 1
        yield until(lambda: len(watcher.presence()) == 2)
        assert reactor.seconds() - joined >= GRACE * 0.8
    assert watcher.presence()[1] == {
        "type": "presence", "channel": "presence-room", "event": "leave", "member": MEMBER
    }
    assert node.presence.members("presence-room") == []
