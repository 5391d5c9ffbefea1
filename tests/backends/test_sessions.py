"""The session registry and the handover of sessions between nodes,
through the contract."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred

from tests.backends.support import MEMORY_ONLY, REDIS_ONLY, Poller, Recorder, received


@pytest_twisted.inlineCallbacks
def test_the_registry_holds_a_session_until_it_is_removed(backend):
    """``add_session`` answers a Deferred that fires once the session is
    registered: ``sessions`` holds it and ``to_session`` reaches it.
    ``remove_session`` forgets it and its subscriptions: nothing reaches it
    any more, and a message to it is None."""
    session, other = Recorder("sess-1"), Recorder("other")
    registered = backend.add_session(session)
    assert isinstance(registered, Deferred)
    assert (yield registered) is None
    assert backend.sessions["sess-1"] is session
    yield backend.subscribe("reg", session, None)
    yield backend.subscribe("reg", other, None)
    yield backend.to_session("sess-1", b'"hi"')
    yield received(session, 1)

    backend.remove_session(session, ["reg"])
    assert "sess-1" not in backend.sessions
    assert (yield backend.to_session("sess-1", b'"gone"')) is None
    yield backend.publish(["reg"], b'"room"')
    yield backend.broadcast(b'"all"')
    yield received(other, 1)
    assert session.data() == ["hi"]


@pytest_twisted.inlineCallbacks
def test_registering_a_session_again_answers_a_deferred(backend):
    """A session registered again (the hub does on a resume) is answered a
    Deferred too, which fires; it is still registered once."""
    session = Recorder("again")
    yield backend.add_session(session)
    again = backend.add_session(session)
    assert isinstance(again, Deferred)
    yield again
    assert backend.sessions == {"again": session}


@REDIS_ONLY
@pytest_twisted.inlineCallbacks
def test_a_message_to_a_session_of_another_node(two_nodes):
    """``to_session`` on node A reaches a session node B holds, once B's
    ``add_session`` has fired."""
    a, b = two_nodes
    session = Poller("on-b")
    yield b.add_session(session)
    result = yield a.to_session("on-b", b'"over there"')
    assert result is not None and result.id
    yield received(session, 1)
    assert session.data() == ["over there"]
    assert "on-b" not in a.sessions


@REDIS_ONLY
@pytest_twisted.inlineCallbacks
def test_frames_and_polls_are_handed_to_the_node_holding_the_session(two_nodes):
    """Node B serves the handover: frames node A's ``forward`` takes for
    B's session reach B's ``frames`` (A is told True), and a poll A's
    ``forward_poll`` takes is answered by B's ``poll`` through ``reply``.
    For a session no node holds, ``forward`` is False and ``forward_poll``
    None."""
    a, b = two_nodes
    frames: list[tuple[str, bytes]] = []
    polls: list[tuple[str, int]] = []

    def poll(session_id: str, cursor: int, reply: Any) -> None:
        polls.append((session_id, cursor))
        reply(200, b'{"messages":[]}')

    b.serve_handover(lambda session_id, body: frames.append((session_id, body)), poll)
    a.serve_handover(lambda session_id, body: None, lambda session_id, cursor, reply: None)
    yield b.add_session(Poller("held"))
    assert (yield a.forward("held", b'{"type":"ping"}')) is True
    assert (yield a.forward_poll("held", 3, 5.0)) == (200, b'{"messages":[]}')
    assert polls == [("held", 3)]
    assert frames == [("held", b'{"type":"ping"}')]  # sent before the poll, on the same path

    assert (yield a.forward("nobody", b"{}")) is False
    assert (yield a.forward_poll("nobody", 0, 5.0)) is None


@MEMORY_ONLY
def test_one_process_has_no_other_node_to_hand_over_to(backend):
    """In one process every session is here: ``forward`` and
    ``forward_poll`` answer None (no other node), whatever the session;
    serving the handover is accepted and never called."""
    called: list[Any] = []
    backend.serve_handover(lambda *args: called.append(args), lambda *args: called.append(args))
    backend.add_session(Recorder("here"))
    assert backend.forward("here", b"{}") is None
    assert backend.forward("nobody", b"{}") is None
    assert backend.forward_poll("here", 0, 5.0) is None
    assert called == []
