"""Small fakes shared by the unit tests: no sockets, no real time.

- :class:`RecordingSubscriber`: what the broker delivers to, recording frames.
- :class:`RecordingSink`: a streaming connection a session writes to.
- :class:`FakeApp`: a ``twisted.web`` resource standing in for the
  application behind ``application_server_url``, for ``treq.testing.StubTreq``.
- :func:`captured_log`: the ``twisted.logger`` events emitted in a block.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from twisted.logger import globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from chloed.frames import Encoded


class RecordingSubscriber:
    """A broker subscriber that keeps every frame delivered to it."""

    def __init__(self, id: str) -> None:
        self.id = id
        self.frames: list[Encoded] = []

    def deliver(self, frame: Encoded) -> None:
        self.frames.append(frame)

    @property
    def decoded(self) -> list[dict[str, Any]]:
        """The delivered frames, as JSON objects."""
        return [json.loads(f.payload) for f in self.frames]

    def __repr__(self) -> str:
        return f"<RecordingSubscriber {self.id}>"


class ExplodingSubscriber(RecordingSubscriber):
    """A subscriber whose every delivery raises, like a broken connection."""

    def deliver(self, frame: Encoded) -> None:
        super().deliver(frame)
        raise RuntimeError("this connection is broken")


class RecordingSink:
    """A streaming connection: collects what a session writes to it.

    ``frames`` holds each written frame decoded from JSON; ``closed`` and
    ``last`` record :meth:`close` and the frame it was asked to write last.
    """

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.closed = False
        self.last: dict[str, Any] | None = None

    def write(self, frame: Encoded) -> None:
        assert not self.closed, "write after close"
        self.frames.append(json.loads(frame.payload))

    def close(self, last: Encoded | None) -> None:
        self.closed = True
        self.last = json.loads(last.payload) if last is not None else None

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        """The written frames whose ``type`` is ``kind``."""
        return [f for f in self.frames if f.get("type") == kind]


HOLD = object()
"""A :class:`FakeApp` answer: keep the request open (never answer)."""


@dataclass
class Recorded:
    """One POST the fake app received."""

    headers: dict[bytes, bytes]
    body: bytes
    request: Request

    def header(self, name: bytes) -> bytes | None:
        return self.headers.get(name.lower())

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class FakeApp(Resource):
    """The application behind ``application_server_url``.

    Answers each POST with the next of ``answers``: a status code, a
    ``(status, {header: value})`` pair, or :data:`HOLD` to leave the request
    unanswered; once they run out it answers ``default``.
    """

    isLeaf = True

    def __init__(self, *answers: Any, default: int = 200) -> None:
        super().__init__()
        self.answers = list(answers)
        self.default = default
        self.requests: list[Recorded] = []

    @property
    def bodies(self) -> list[bytes]:
        return [r.body for r in self.requests]

    def render_POST(self, request: Request) -> Any:
        headers = {
            name.lower(): values[0] for name, values in request.requestHeaders.getAllRawHeaders()
        }
        assert request.content is not None
        self.requests.append(Recorded(headers, request.content.read(), request))
        answer = self.answers.pop(0) if self.answers else self.default
        if answer is HOLD:
            return NOT_DONE_YET
        code, extra = answer if isinstance(answer, tuple) else (answer, {})
        request.setResponseCode(code)
        for name, value in extra.items():
            request.setHeader(name, value)
        return b"{}"


@contextmanager
def captured_log() -> Iterator[list[dict[str, Any]]]:
    """Collect the ``twisted.logger`` events emitted inside the block."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)
