"""What the contract tests share: recording subscribers, a bounded wait on
the real reactor, and a node (a backend and its presence).

Every wait here fires on a condition, checked on the reactor, never after a
fixed sleep: with the memory backend the condition already holds, with Redis
it holds once Redis has answered and its pub/sub has delivered.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

import pytest
from twisted.internet import defer, reactor, task

from chloed.backends.base import Backend, Presence
from chloed.frames import Encoded
from tests.fakes import RecordingSubscriber

#: The longest a condition is waited for before the test fails.
TIMEOUT = 10.0
#: ``session_grace`` of every node's presence: short, so a Redis member's
#: hold expires within the test.
GRACE = 0.5
#: ``<ms>-<seq>``: how every message id looks, on either backend.
ID = re.compile(r"([0-9]+)-([0-9]+)")

#: Cases that need two nodes sharing a backend: only Redis has them.
REDIS_ONLY = pytest.mark.parametrize("kind", ["redis"])
#: Cases asserting what one process answers where Redis has another node.
MEMORY_ONLY = pytest.mark.parametrize("kind", ["memory"])


class Recorder(RecordingSubscriber):
    """A streaming subscriber (WebSocket, SSE): takes each frame now."""

    def messages(self) -> list[dict[str, Any]]:
        """The ``message`` frames delivered, decoded."""
        return [f for f in self.decoded if f["type"] == "message"]

    def data(self) -> list[Any]:
        """The ``data`` of each message delivered."""
        return [m["data"] for m in self.messages()]

    def presence(self) -> list[dict[str, Any]]:
        """The ``presence`` frames delivered, decoded."""
        return [f for f in self.decoded if f["type"] == "presence"]


class Poller(Recorder):
    """A polling subscriber (long-poll, JSONP): holds each frame for its next
    poll, which a receipt counts as ``queued``."""

    transport = "longpoll"

    def deliver(self, frame: Encoded) -> bool:  # type: ignore[override]
        super().deliver(frame)
        return True


def data_of(replayed: list[Encoded]) -> list[Any]:
    """The ``data`` of replayed message frames."""
    return [json.loads(f.payload)["data"] for f in replayed]


def seq(id: str) -> int:
    """The counter of a message id (ids order by it)."""
    match = ID.fullmatch(id)
    assert match is not None, id
    return int(match[2])


def until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> defer.Deferred[None]:
    """Fires once ``predicate()`` holds, checking it every 10 ms on the
    reactor (a bounded wait for a state change, not a sleep); fails after
    ``timeout``."""
    deadline = reactor.seconds() + timeout

    @defer.inlineCallbacks
    def check() -> Any:
        while not predicate():
            if reactor.seconds() > deadline:
                raise AssertionError("timed out waiting for a condition")
            yield task.deferLater(reactor, 0.01, lambda: None)

    return check()


def received(subscriber: Recorder, count: int) -> defer.Deferred[None]:
    """Fires once ``subscriber`` has ``count`` messages."""
    return until(lambda: len(subscriber.messages()) >= count)


@dataclass
class Node:
    """One server's backend and the presence the hub would make of it."""

    kind: str
    backend: Backend
    presence: Presence
