"""Unit tests of the hand-over between nodes as the browser transports see
it (``chloed.transports.longpoll``, ``inbound``, ``_reply``): polls another
node hands to this one, and polls and frames this node hands to others.

A real Hub on a Clock over the memory backend, with the other nodes played
by the test (:class:`OtherNodes`): no sockets, no Redis. DummyRequest stands
in for the browser; a disconnect is its ``processingFailed``.
"""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from chloed.backends.memory import MemoryBackend
from chloed.config import Config
from chloed.hub import Hub
from chloed.transports.inbound import SessionPostResource
from chloed.transports.longpoll import PollResource

ELSEWHERE = "held-by-another-node"  # a well-formed id no session here has


class OtherNodes(MemoryBackend):
    """The memory backend with other nodes behind it, as a shared backend
    would have: what this node hands over is recorded with a Deferred the
    test fires; what other nodes hand over, the test passes to
    :meth:`poll_from_another_node`."""

    def __init__(self, clock: Clock, config: Config) -> None:
        super().__init__(clock, config.history_size, config.history_ttl)
        self.forwarded: list[tuple[str, bytes, Deferred[bool]]] = []
        self.polls: list[tuple[str, int, float, Deferred[Any]]] = []

    def serve_handover(self, frames: Any, poll: Any) -> None:
        self._poll = poll

    def forward(self, session_id: str, body: bytes) -> Deferred[bool]:
        d: Deferred[bool] = Deferred()
        self.forwarded.append((session_id, body, d))
        return d

    def forward_poll(self, session_id: str, cursor: int, timeout: float) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.polls.append((session_id, cursor, timeout, d))
        return d

    def poll_from_another_node(self, session_id: str, cursor: int) -> list[tuple[int, Any]]:
        """A poll another node took for ``session_id``: the answers its
        replier was given, as (status, decoded JSON), as they come."""
        answers: list[tuple[int, Any]] = []
        self._poll(session_id, cursor, lambda status, body: answers.append((status, json.loads(body))))
        return answers


@pytest.fixture
def node():
    """One node: its hub, its backend, and its browser resources."""
    clock = Clock()
    config = Config(longpoll_timeout=5.0, session_grace=30.0)
    backend = OtherNodes(clock, config)
    hub = Hub(config, backend, clock, None)
    poll, jsonp = PollResource(hub, jsonp=False), PollResource(hub, jsonp=True)
    return hub, backend, {
        "poll": poll, "jsonp": jsonp, "jsonp/send": jsonp.children[b"send"], "session": SessionPostResource(hub),
    }


def render(resource: Any, args: dict[str, str] | None = None, post: bytes | None = None, path: bytes = b""):
    """Render ``resource`` for a DummyRequest as twisted.web would: what
    render returns is written and the request finished."""
    request = DummyRequest([path])
    request.args = {k.encode(): [v.encode()] for k, v in (args or {}).items()}
    if post is not None:
        request.method = b"POST"
        request.content = BytesIO(post)
    result = resource.render(request)
    request.rendered_later = result is NOT_DONE_YET
    if not request.rendered_later:
        request.write(result)
        request.finish()
    return request


def answer(request: DummyRequest) -> tuple[int, Any]:
    """The finished request's status and decoded JSON body."""
    assert request.finished == 1
    return request.responseCode or 200, json.loads(b"".join(request.written))


def jsonp_answer(request: DummyRequest) -> Any:
    """A JSONP answer's argument: always status 200."""
    assert request.finished == 1 and (request.responseCode or 200) == 200
    body = b"".join(request.written)
    assert body.startswith(b"cb(") and body.endswith(b");")
    return json.loads(body[3:-2])


def gone(request: DummyRequest) -> None:
    request.processingFailed(Failure(ConnectionDone()))


def opened(hub: Hub, transport: str):
    """A polling session whose ``connected`` the browser has read."""
    session = hub.open_session(transport)
    session.acknowledge(session.seq)
    return session


# -- polls another node hands over for this node's sessions ---------------


@pytest.mark.parametrize("transport", ["longpoll", "jsonp"])
def test_a_handed_over_poll_with_frames_pending_is_answered_at_once(node, transport):
    """A poll that reached another node for a session here (of either
    polling transport: that node cannot tell) gets the frames after its
    cursor at once, as a browser's poll here would."""
    hub, backend, _ = node
    session = hub.open_session(transport)
    answers = backend.poll_from_another_node(session.id, 0)
    assert [(s, [f["type"] for f in a["frames"]]) for s, a in answers] == [(200, ["connected"])]
    assert answers[0][1]["cursor"] == session.seq and "session" not in answers[0][1]


def test_a_handed_over_poll_is_held_until_frames_arrive(node):
    """With nothing pending, the poll is held, counted as a connection,
    and answered when a frame arrives (at the end of the reactor turn)."""
    hub, backend, _ = node
    session = opened(hub, "longpoll")
    answers = backend.poll_from_another_node(session.id, session.seq)
    assert answers == [] and hub.connections["longpoll"] == 1
    hub.receive(session, b'{"type":"ping"}')
    assert answers == []
    hub.clock.advance(0)
    assert [(s, [f["type"] for f in a["frames"]]) for s, a in answers] == [(200, ["pong"])]
    assert hub.connections["longpoll"] == 0


def test_a_held_handed_over_poll_is_answered_empty_at_the_timeout(node):
    """A held poll with nothing to say answers empty after longpoll_timeout,
    and the session is still there for the next poll."""
    hub, backend, _ = node
    session = opened(hub, "jsonp")
    answers = backend.poll_from_another_node(session.id, session.seq)
    hub.clock.advance(hub.config.longpoll_timeout)
    assert answers == [(200, {"cursor": session.seq, "frames": []})]
    assert hub.find(session.id) is session


def test_a_newer_poll_answers_the_older_one_empty_whichever_node_took_them(node):
    """One poll per session: a handed-over poll replaces a browser's held
    poll here, and a browser's poll here replaces a handed-over one; the
    older is answered empty, the newer gets what comes next."""
    hub, backend, resources = node
    session = opened(hub, "longpoll")
    here = render(resources["poll"], {"session": session.id, "cursor": str(session.seq)})
    assert here.rendered_later and not here.finished
    there = backend.poll_from_another_node(session.id, session.seq)
    hub.clock.advance(0)
    assert answer(here) == (200, {"cursor": session.seq, "frames": []})
    assert there == []

    again = render(resources["poll"], {"session": session.id, "cursor": str(session.seq)})
    hub.clock.advance(0)
    assert there == [(200, {"cursor": session.seq, "frames": []})]
    hub.receive(session, b'{"type":"ping"}')
    hub.clock.advance(0)
    assert [f["type"] for f in answer(again)[1]["frames"]] == ["pong"]
    assert hub.connections["longpoll"] == 0


@pytest.mark.parametrize("transport", ["longpoll", "jsonp"])
def test_a_handed_over_poll_hears_the_last_words_of_either_polling_transport(node, transport):
    """A polling session ended with no poll open tells the next poll why,
    even handed over; the one after is 404."""
    hub, backend, _ = node
    session = opened(hub, transport)
    hub.slow(session)
    answers = backend.poll_from_another_node(session.id, session.seq)
    assert [(s, [(f["type"], f["code"]) for f in a["frames"]]) for s, a in answers] == [
        (200, [("error", "slow_consumer")])
    ]
    assert backend.poll_from_another_node(session.id, session.seq)[0][0] == 404


def test_a_handed_over_poll_of_no_polling_session_here_is_404(node):
    """Unknown sessions, and sessions of a streaming transport, are 404 to
    a handed-over poll: it is never handed on again."""
    hub, backend, _ = node
    sse = hub.open_session("sse")
    for session_id in ["no-such-session", sse.id]:
        assert backend.poll_from_another_node(session_id, 0) == [
            (404, {"error": "unknown_session", "message": "no such session: start a new one"})
        ]
    assert backend.polls == []


def test_a_handed_over_poll_with_a_cursor_ahead_of_the_session_is_400(node):
    """A cursor no answer gave is 400 ``bad_request``, and nothing is dropped."""
    hub, backend, _ = node
    session = hub.open_session("longpoll")
    answers = backend.poll_from_another_node(session.id, session.seq + 1)
    assert [(s, a["error"]) for s, a in answers] == [(400, "bad_request")]
    assert session.pending


# -- polls this node hands to the node holding the session --------------


@pytest.mark.parametrize("resource,cursor", [("poll", "3"), ("jsonp", "0")])
def test_a_poll_of_a_session_held_elsewhere_is_asked_of_that_node(node, resource, cursor):
    """A poll of a session not here is asked of the other nodes, with a
    timeout past the longpoll_timeout, and their answer is the browser's
    (plain JSON with its status, or the JSONP call)."""
    hub, backend, resources = node
    request = render(resources[resource], {"session": ELSEWHERE, "cursor": cursor, "callback": "cb"})
    assert request.rendered_later and not request.finished
    [(session_id, asked_cursor, timeout, d)] = backend.polls
    assert (session_id, asked_cursor, timeout) == (ELSEWHERE, int(cursor), hub.config.longpoll_timeout + 10)
    d.callback((200, b'{"cursor":4,"frames":[]}'))
    if resource == "poll":
        assert answer(request) == (200, {"cursor": 4, "frames": []})
    else:
        assert jsonp_answer(request) == {"cursor": 4, "frames": []}


@pytest.mark.parametrize(
    "outcome,status,code",
    [(None, 404, "unknown_session"), ((400, b'{"error":"bad_request"}'), 400, "bad_request"),
     (Failure(ConnectionDone()), 503, "backend_unavailable")],
)
def test_what_the_other_node_or_the_backend_says_reaches_the_browser(node, outcome, status, code):
    """No node holds the session: 404; the holder's own error: its status;
    the backend failed: 503 ``backend_unavailable``."""
    hub, backend, resources = node
    request = render(resources["poll"], {"session": ELSEWHERE, "cursor": "0"})
    d = backend.polls[0][3]
    if isinstance(outcome, Failure):
        d.errback(outcome)
    else:
        d.callback(outcome)
    got_status, got = answer(request)
    assert (got_status, got["error"]) == (status, code)


def test_a_browser_gone_before_the_other_node_answered_is_not_written_to(node):
    """The browser went away: the late answer is dropped, not written."""
    hub, backend, resources = node
    request = render(resources["poll"], {"session": ELSEWHERE, "cursor": "0"})
    gone(request)
    backend.polls[0][3].callback((200, b'{"cursor":0,"frames":[]}'))
    assert request.written == [] and request.finished == 0 and request.responseCode is None


@pytest.mark.parametrize("args", [
    {"session": ELSEWHERE, "cursor": "x"},  # no cursor to hand on
    {"session": "not/an id", "cursor": "0"},  # no session of any node
])
def test_a_poll_no_node_could_answer_is_404_without_asking(node, args):
    """A poll with a bad cursor or an id no node makes is 404 here."""
    hub, backend, resources = node
    assert answer(render(resources["poll"], args))[0] == 404
    assert backend.polls == []


def test_a_poll_of_a_session_here_under_another_transport_is_404_without_asking(node):
    """/poll of a JSONP (or SSE) session of this node is 404: it is here,
    so no other node is asked."""
    hub, backend, resources = node
    for transport in ["jsonp", "sse"]:
        session = hub.open_session(transport)
        assert answer(render(resources["poll"], {"session": session.id, "cursor": "1"}))[0] == 404
    assert backend.polls == []


def test_a_browser_gone_from_a_held_poll_ends_the_hold(node):
    """A held browser poll whose browser went away stops holding: the
    connection is no longer counted, the session's grace runs again, and
    a frame then is kept for the next poll, not written to the dead
    request."""
    hub, backend, resources = node
    session = opened(hub, "longpoll")
    request = render(resources["poll"], {"session": session.id, "cursor": str(session.seq)})
    assert hub.connections["longpoll"] == 1 and session.grace is None
    gone(request)
    assert hub.connections["longpoll"] == 0 and session.grace is not None and session.waiter is None
    hub.receive(session, b'{"type":"ping"}')
    hub.clock.advance(hub.config.longpoll_timeout)
    assert request.written == [] and session.pending


# -- browser frames this node hands to the node holding the session ------


@pytest.mark.parametrize("taken", [True, False])
def test_frames_posted_for_a_session_held_elsewhere_are_handed_to_it(node, taken):
    """POST /session/<id> of a session not here: handed over as they came;
    204 once a node took them, 404 ``unknown_session`` when none did."""
    hub, backend, resources = node
    body = b'[{"type":"ping"}]'
    request = render(resources["session"], post=body, path=ELSEWHERE.encode())
    [(session_id, handed, d)] = backend.forwarded
    assert (session_id, handed) == (ELSEWHERE, body) and not request.finished
    d.callback(taken)
    if taken:
        assert request.finished == 1 and request.responseCode == 204 and request.written in ([], [b""])
        assert request.responseHeaders.getRawHeaders(b"content-type") is None
    else:
        assert answer(request) == (404, {"error": "unknown_session", "message": "no such session: start a new one"})
        assert request.responseHeaders.getRawHeaders(b"content-type") == [b"application/json"]


@pytest.mark.parametrize("taken", [True, False])
def test_jsonp_frames_for_a_session_held_elsewhere_are_handed_to_it(node, taken):
    """GET /jsonp/send of a session not here: handed over; the answer is
    the JSONP call ``{"ok": true}`` or the ``unknown_session`` error."""
    hub, backend, resources = node
    request = render(resources["jsonp/send"], {"session": ELSEWHERE, "frames": '[{"type":"ping"}]', "callback": "cb"})
    [(session_id, handed, d)] = backend.forwarded
    assert (session_id, handed) == (ELSEWHERE, b'[{"type":"ping"}]')
    d.callback(taken)
    assert jsonp_answer(request) == ({"ok": True} if taken else {
        "error": "unknown_session", "message": "no such session: start a new one"})


def test_frames_the_backend_could_not_hand_over_are_503_in_each_format(node):
    """The backend failed: 503 ``backend_unavailable`` (JSONP: status 200,
    the error as the callback's argument)."""
    hub, backend, resources = node
    post = render(resources["session"], post=b'{"type":"ping"}', path=ELSEWHERE.encode())
    send = render(resources["jsonp/send"], {"session": ELSEWHERE, "frames": '{"type":"ping"}', "callback": "cb"})
    for _, _, d in backend.forwarded:
        d.errback(Failure(ConnectionDone()))
    assert answer(post)[0] == 503 and answer(post)[1]["error"] == "backend_unavailable"
    assert jsonp_answer(send)["error"] == "backend_unavailable"


def test_frames_for_a_browser_that_went_away_get_no_answer(node):
    """The browser went away before the node holding the session took its
    frames: nothing is written, whatever the outcome."""
    hub, backend, resources = node
    post = render(resources["session"], post=b'{"type":"ping"}', path=ELSEWHERE.encode())
    send = render(resources["jsonp/send"], {"session": ELSEWHERE, "frames": '{"type":"ping"}', "callback": "cb"})
    gone(post)
    gone(send)
    backend.forwarded[0][2].callback(True)
    backend.forwarded[1][2].errback(Failure(ConnectionDone()))
    for request in (post, send):
        assert request.written == [] and request.finished == 0 and request.responseCode is None


def test_frames_not_handed_over_when_too_large_or_the_session_is_here(node):
    """A body over the batch limit, or a session this node holds under
    another transport, is 404 here: no node is asked."""
    hub, backend, resources = node
    too_large = b" " * (hub.config.max_message_bytes * 4 + 1)
    assert answer(render(resources["session"], post=too_large, path=ELSEWHERE.encode()))[0] == 404
    jsonp = hub.open_session("jsonp")
    assert answer(render(resources["session"], post=b"{}", path=jsonp.id.encode()))[0] == 404
    longpoll = hub.open_session("longpoll")
    assert jsonp_answer(render(resources["jsonp/send"], {"session": longpoll.id, "frames": "{}", "callback": "cb"}))[
        "error"] == "unknown_session"
    assert backend.forwarded == []
