"""Answering a browser request once, now or later, and handing a browser's
frames to the node that holds its session.

Both browser-frame endpoints (``POST /session/<id>``, ``GET /jsonp/send``)
and both polling ones (``/poll``, ``/jsonp``) may answer after their
``render_*`` returned: a held poll, a poll or frames another node answers
through the shared backend, a session the backend is still counting. By
then the browser may have gone; a :class:`BrowserReply` knows it from
``notifyFinish()``'s errback, Twisted's documented way, so no transport
reads the request's private state.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.web.server import NOT_DONE_YET

from chloed import frames
from chloed.backends.base import Reply
from chloed.hub import Hub

UNKNOWN_SESSION = frames.dumps({"error": "unknown_session", "message": "no such session: start a new one"})
BACKEND_UNAVAILABLE = frames.dumps(
    {"error": "backend_unavailable", "message": "cannot reach the node holding this session"}
)


class BrowserReply:
    """The one answer of a browser request, given as ``reply(status, body)``
    while ``render_*`` runs or later.

    Given while it runs, the answer is what ``render_*`` returns (so
    twisted.web sets ``content-length``); given later, it is written and
    the request finished, unless the browser went away first.

    :param render: sets the status and headers and returns the bytes to
        send: plain JSON, or a JSONP call.
    """

    def __init__(self, request: Any, render: Callable[[int, bytes], bytes]) -> None:
        self._request = request
        self._render = render
        self._rendering = True
        self._now: bytes | None = None
        self._gone = False

    def __call__(self, status: int, body: bytes) -> None:
        if self._gone:
            return
        data = self._render(status, body)
        if self._rendering:
            self._now = data
            return
        self._request.write(data)
        self._request.finish()

    def rendered(self, cancel: Callable[[], None] | None = None) -> bytes | int:
        """What ``render_*`` returns: the answer given meanwhile, or
        ``NOT_DONE_YET``, and then ``cancel()`` if the browser goes away
        before the answer (so a held poll stops holding)."""
        self._rendering = False
        if self._now is not None:
            return self._now

        def went_away(_: Any) -> None:
            self._gone = True
            if cancel is not None:
                cancel()

        self._request.notifyFinish().addErrback(went_away)
        return NOT_DONE_YET


def batch_limit(hub: Hub) -> int:
    """The largest body of browser frames sent at once: a few frames' worth."""
    return hub.config.max_message_bytes * 4


def forward_frames(hub: Hub, session_id: str, body: bytes, reply: Reply, taken: tuple[int, bytes]) -> bool:
    """Hand browser frames for a session this node does not hold to the node
    that does, through the shared backend. Answered ``reply(*taken)`` once
    that node took them, 404 ``unknown_session`` when no node did, 503
    ``backend_unavailable`` when the backend could not be asked.

    :return: whether another node was asked. False when this node holds the
        session (under another transport), the body is over
        :func:`batch_limit`, or there is no other node: the caller answers.
    """
    if hub.find(session_id) is not None or len(body) > batch_limit(hub):
        return False
    forwarded = hub.forward(session_id, body)
    if forwarded is None:
        return False

    def done(took: bool) -> None:
        if took:
            reply(*taken)
        else:
            reply(404, UNKNOWN_SESSION)

    def failed(_: Any) -> None:
        reply(503, BACKEND_UNAVAILABLE)

    forwarded.addCallbacks(done, failed)
    return True
