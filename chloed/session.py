"""One browser session, whatever transport carries it.

A session is what the broker delivers to. A transport attaches a *sink* to
it: a WebSocket or SSE connection stays attached and gets every frame as it
comes; a long-poll request is not a sink at all, it takes what is pending
and waits for more. While nothing is attached the session holds frames in a
buffer bounded by ``outbound_buffer_bytes``: past the bound it is a slow
consumer and the hub ends it.

For polling transports each frame gets a per-session sequence number. A poll
carries the last number the browser received (its *cursor*), which both
acknowledges and drops everything up to it and asks for what follows, so a
response lost in flight is simply sent again by the next poll.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

from chloed.frames import Encoded
from chloed.redact import session_tag

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall


class Sink(Protocol):
    """A streaming connection the session writes frames to."""

    def write(self, frame: Encoded) -> None: ...

    def close(self, last: Encoded | None) -> None:
        """Close the connection, after writing ``last`` if given."""


class Session:
    """A browser's session: subscriptions, sink, pending frames.

    :param id: unguessable (the hub makes it from 144 random bits).
    :param transport: the name of the transport that opened it.
    :param limit: ``outbound_buffer_bytes``.
    :param on_overflow: called once when the pending bytes pass ``limit``.
    """

    __slots__ = (
        "id", "transport", "channels", "user", "sink", "pending", "pending_bytes",
        "seq", "limit", "waiter", "closed", "_on_overflow", "grace", "presence",
        "tat", "event_tat", "granted", "lane", "auth", "expiries", "ip", "origin", "__weakref__",
    )

    def __init__(
        self, id: str, transport: str, limit: int, on_overflow: Callable[["Session"], None]
    ) -> None:
        self.id = id
        self.transport = transport
        self.channels: set[str] = set()
        self.user: object = None
        self.sink: Sink | None = None
        # A list, not a deque: most sessions stream and never hold anything,
        # and an empty list costs 56 bytes where a deque costs 600.
        self.pending: list[tuple[int, Encoded]] = []
        self.pending_bytes = 0
        self.seq = 0
        self.limit = limit
        self.waiter: Callable[[], None] | None = None
        self.closed = False
        # The hub's timer for a polling session between two polls.
        self.grace: IDelayedCall | None = None
        # presence channel -> the token user this session is there as
        self.presence: dict[str, dict] | None = None
        # The rate limit: when the session's allowance is whole again (see
        # admit); one float, as every session has it.
        self.tat = 0.0
        # A second allowance, for what a protocol limits apart from frames
        # (a Pusher socket's client events).
        self.event_tat = 0.0
        # Token channels it may publish to (``client_publish``), from the
        # tokens it subscribed with; None (not an empty frozenset, 216 bytes
        # a session) while it has none.
        self.granted: frozenset[str] | None = None
        # The relay lane of its messages and events, when not its id: a
        # resumed session goes on with the lane of the one it resumed.
        self.lane: str | None = None
        # Its connection token's identity (chloed.tokens.Identity), once
        # checked; its channel tokens (channel -> (exp, jti)), while
        # it has any; the address counted by max_connections_per_ip (None
        # when exempt) and the page's Origin (for namespaces' origins).
        self.auth: Any = None
        self.expiries: dict[str, tuple[float, str | None]] | None = None
        self.ip: str | None = None
        self.origin: str | None = None
        self._on_overflow = on_overflow

    def __repr__(self) -> str:
        return f"<Session {self.tag} {self.transport}>"

    @property
    def tag(self) -> str:
        """How logs name this session (:func:`chloed.redact.session_tag`)."""
        return session_tag(self.id)

    def deliver(self, frame: Encoded) -> bool:
        """Write ``frame`` to the sink, or hold it until a poll takes it.

        :returns: True when it is held (for ``queued`` in ``/send`` answers).
        """
        sink = self.sink
        if sink is not None:
            sink.write(frame)
            return False
        if self.closed:
            return False
        self.seq += 1
        self.pending.append((self.seq, frame))
        self.pending_bytes += frame.size
        if self.pending_bytes > self.limit:
            self._on_overflow(self)
            return False
        waiter = self.waiter
        if waiter is None:
            return True
        # A poll is waiting: it answers with this frame at once.
        self.waiter = None
        waiter()
        return False

    def admit(self, now: float, interval: float, tolerance: float) -> bool:
        """Whether one more frame from the browser is within the rate limit.

        A token bucket kept as one number (the generic cell rate
        algorithm): frames are due ``interval`` seconds apart, and may come
        up to ``tolerance`` seconds early, which is a burst of
        ``tolerance / interval + 1`` frames.
        """
        tat = _allowed(self.tat, now, interval, tolerance)
        if tat is None:
            return False
        self.tat = tat
        return True

    def admit_event(self, now: float, interval: float, tolerance: float) -> bool:
        """:meth:`admit` on the second allowance (``event_tat``)."""
        tat = _allowed(self.event_tat, now, interval, tolerance)
        if tat is None:
            return False
        self.event_tat = tat
        return True

    def attach(self, sink: Sink) -> None:
        """Stream from now on to ``sink``, starting with what is pending."""
        self.sink = sink
        pending, self.pending, self.pending_bytes = self.pending, [], 0
        for _, frame in pending:
            sink.write(frame)

    def detach(self) -> None:
        self.sink = None

    def acknowledge(self, cursor: int) -> None:
        """Drop pending frames the browser says it has (``seq <= cursor``)."""
        pending = self.pending
        done = 0
        while done < len(pending) and pending[done][0] <= cursor:
            self.pending_bytes -= pending[done][1].size
            done += 1
        del pending[:done]

    def replace_pending(self, last: Encoded) -> None:
        """Drop what is pending; ``last`` is all the next poll will get."""
        self.seq += 1
        self.pending = [(self.seq, last)]
        self.pending_bytes = last.size

    def take(self) -> tuple[int, list[Encoded]]:
        """What is pending, without dropping it, and the cursor after it."""
        return self.seq, [frame for _, frame in self.pending]


def _allowed(tat: float, now: float, interval: float, tolerance: float) -> float | None:
    """The generic cell rate algorithm's step: the new theoretical arrival
    time after one more event, or None when it is over the limit."""
    if tat < now:
        tat = now
    if tat - now > tolerance:
        return None
    return tat + interval
