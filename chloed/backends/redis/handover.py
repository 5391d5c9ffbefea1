"""Frames and polls for a session another node holds (:class:`Handover`).

A browser's frames POSTed to a node that does not hold its session, and its
polls, go to the node that does, on that node's own pub/sub channel
``chloe:<db>:n:<node>``; :data:`FORWARD_SCRIPT` finds the node (``chloe:s:<session>``)
and publishes there in one step:

``"f <session> <body>"``
    frames for the session; the node holding it takes them.
``"q <session> <request> <node> <cursor>"``
    a poll: the node holding the session answers its next poll after
    ``cursor``, to ``node``'s channel,
``"r <request> <status> <body>"``
    with the poll's HTTP status and JSON body.
"""

from __future__ import annotations

import secrets
from typing import Any, Callable

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from chloed.backends.base import Reply
from chloed.backends.redis.keys import SESSION_PREFIX
from chloed.backends.redis.link import Call, Ignore
from chloed.backends.redis.scripts import FORWARD_SCRIPT

LOOKUP_AGAIN = 0.2


class Handover:
    """This node's side of the handover: it hands requests over to the
    node holding a session, and takes those handed over to it.

    :param reactor: times the look-up again and the poll's timeout.
    :param call: sends a command to Redis.
    :param ignore: the errback of commands sent without waiting.
    :param pubsub: the prefix of the pub/sub channels (``chloe:<db>:``).
    :param node: this node's name.
    """

    def __init__(self, reactor: Any, *, call: Call, ignore: Ignore, pubsub: str, node: str) -> None:
        self._reactor = reactor
        self._call = call
        self._ignore = ignore
        self._pubsub = pubsub
        self._node = node
        # Take frames POSTed on another node for one of this node's sessions.
        self.on_forward: Callable[[str, bytes], None] | None = None
        # Answers a poll of one of this node's sessions that reached
        # another node, through the reply it is given.
        self.on_poll: Callable[[str, int, Reply], None] | None = None
        self._polls: dict[str, Deferred[tuple[int, bytes] | None]] = {}

    def serve(self, frames: Callable[[str, bytes], None], poll: Callable[[str, int, Reply], None]) -> None:
        """Where requests handed over to this node go (see
        :meth:`chloed.backends.redis.RedisBroker.serve_handover`)."""
        self.on_forward, self.on_poll = frames, poll

    # -- handing over -----------------------------------------------------

    def forward(self, session_id: str, body: bytes) -> Deferred[bool]:
        """Hand browser frames POSTed here to the node holding
        ``session_id``; fires with whether one does."""
        return self._hand_over(session_id, "f", body)

    def _hand_over(self, session_id: str, kind: str, body: bytes | str, again: bool = True) -> Deferred[bool]:
        """Publish a request to the node holding ``session_id``; fires with
        whether one took it. A session is registered without waiting for
        Redis, so a request following its opening at once may come first:
        a session not found is looked up once more a moment later."""
        args = [self._pubsub, session_id, body, kind]
        found = self._call("eval", FORWARD_SCRIPT, [SESSION_PREFIX + session_id], args).addCallback(bool)
        if not again:
            return found

        def retry(taken: bool) -> Any:
            if taken:
                return True
            return task.deferLater(self._reactor, LOOKUP_AGAIN, self._hand_over, session_id, kind, body, False)

        return found.addCallback(retry)

    def forward_poll(self, session_id: str, cursor: int, timeout: float) -> Deferred[tuple[int, bytes] | None]:
        """Ask the node holding ``session_id`` for its next poll answer
        after ``cursor``; fires with ``(status, JSON body)``, or None when no
        node holds the session (or it did not answer within ``timeout``)."""
        request_id = secrets.token_hex(8)
        answer: Deferred[tuple[int, bytes] | None] = Deferred()
        self._polls[request_id] = answer
        timer = self._reactor.callLater(timeout, self._poll_answered, request_id, None)
        body = f"{request_id} {self._node} {cursor}"
        asked = self._hand_over(session_id, "q", body)

        def sent(reached: Any) -> None:
            if not reached:
                self._poll_answered(request_id, None)

        def failed(failure: Failure) -> None:
            if timer.active():
                timer.cancel()
            self._polls.pop(request_id, None)
            if not answer.called:
                answer.errback(failure)

        asked.addCallbacks(sent, failed)
        return answer.addBoth(self._poll_done, timer)

    @staticmethod
    def _poll_done(result: Any, timer: Any) -> Any:
        if timer.active():
            timer.cancel()
        return result

    def _poll_answered(self, request_id: str, answer: tuple[int, bytes] | None) -> None:
        waiting = self._polls.pop(request_id, None)
        if waiting is not None and not waiting.called:
            waiting.callback(answer)

    def answer_poll(self, node: str, request_id: str, status: int, body: bytes) -> None:
        """Send a poll's answer back to the node that forwarded it."""
        payload = b"r %s %d %s" % (request_id.encode("ascii"), status, body)
        self._call("publish", self._pubsub + "n:" + node, payload).addErrback(self._ignore)

    def _poll_replier(self, node: str, request_id: str) -> Reply:
        def reply(status: int, body: bytes) -> None:
            self.answer_poll(node, request_id, status, body)

        return reply

    # -- taking over: the messages on this node's channel ------------------

    def kinds(self) -> dict[bytes, Callable[[bytes], None]]:
        """What takes each kind of message on this node's channel, by its
        first two bytes."""
        return {b"f ": self._frames, b"q ": self._poll, b"r ": self._answer}

    def _frames(self, payload: bytes) -> None:
        _, session_id, body = payload.split(b" ", 2)
        if self.on_forward is not None:
            self.on_forward(session_id.decode("ascii"), body)

    def _poll(self, payload: bytes) -> None:
        _, session_id, request_id, node, cursor = payload.split(b" ", 4)
        if self.on_poll is not None:
            self.on_poll(session_id.decode("ascii"), int(cursor), self._poll_replier(
                node.decode("ascii"), request_id.decode("ascii")))

    def _answer(self, payload: bytes) -> None:
        _, request_id, status, body = payload.split(b" ", 3)
        self._poll_answered(request_id.decode("ascii"), (int(status), body))
