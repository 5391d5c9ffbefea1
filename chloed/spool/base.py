"""The spool contract: what a relay needs of the place its messages wait in.

A :class:`Record` is one relayed POST's worth (a browser's message or a
lifecycle event) and also the relay's job for it, so a queued message is one
object. The spool persists four things about records: that one was added
(:meth:`Spool.append`), that it is done with (:meth:`Spool.done`), that it
became a dead letter (:meth:`Spool.bury`), and that a dead letter goes back
to the queue (:meth:`Spool.revive`). What is pending after a restart (or,
with Redis, what a dead node left) comes back through the ``recover``
callback given to :meth:`Spool.start`, in the order it was appended.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred

#: What a record is: a browser's ``send``, or a lifecycle event.
MESSAGE = "message"
EVENT = "event"


class SpoolError(Exception):
    """The spool could not take a record (or could not start): a full or
    unwritable disk, Redis gone. The browser hears ``upstream_failed``."""


class Record:
    """One message for the app, as spooled and as queued.

    ``key`` is the spool's name for it, unique within the spool and stable
    across restarts (the dead letter id); the spool sets it in
    :meth:`Spool.append`. ``token`` is the spool's own (a file offset, a
    stream entry); ``attempt`` and ``result`` are the relay's and are not
    persisted.
    """

    __slots__ = ("lane", "kind", "delivery", "arrived", "body", "key", "token", "attempt", "result", "accepted")

    def __init__(self, lane: str, kind: str, delivery: bytes, arrived: float, body: bytes) -> None:
        self.lane = lane
        self.kind = kind
        self.delivery = delivery
        self.arrived = arrived
        self.body = body
        self.key = ""
        self.token: Any = None
        self.attempt = 0
        self.result: Deferred[None] | None = None
        self.accepted: Deferred[None] | None = None

    def __repr__(self) -> str:
        return f"<Record {self.key or '?'} {self.kind} lane={self.lane[:6]}… {len(self.body)} B>"


class DeadLetter:
    """A record the relay gave up on, and why.

    :ivar reason: one line for a person (``relay_ttl passed: …``).
    :ivar status: the app's last HTTP status for it, None when it never
        answered.
    :ivar died: when it became a dead letter (seconds since the epoch).
    """

    __slots__ = ("record", "reason", "status", "died")

    def __init__(self, record: Record, reason: str, status: int | None, died: float) -> None:
        self.record = record
        self.reason = reason
        self.status = status
        self.died = died

    @property
    def id(self) -> str:
        return self.record.key


class Spool(Protocol):
    """Where records wait. Every method is called from the reactor thread.

    :ivar name: ``"memory"``, ``"disk"`` or ``"redis"``.
    :ivar durable: whether a record survives the process's death once
        :meth:`append` has fired (the browser is told ``accepted`` then).
    """

    name: str
    durable: bool

    def start(self, recover: Callable[[Record], None]) -> Deferred[None]:
        """Open the spool; ``recover`` gets each pending record found (now,
        in append order, and later ones another node left, with Redis).

        :raises SpoolError: (through the Deferred) when it cannot be used;
            chloed says so in one line and exits 1.
        """

    def append(self, record: Record) -> Deferred[None] | None:
        """Persist ``record`` (setting its ``key``): None when that is done
        at once (memory), else a Deferred firing once it is on stable
        storage, or failing with :class:`SpoolError`. Appends persist in
        the order they are made."""

    def done(self, record: Record) -> None:
        """The app took ``record`` (or it was dropped for good): forget it.
        Nothing waits on this; a crash before it persists means one more
        delivery of the same delivery id."""

    def bury(self, letter: DeadLetter) -> None:
        """``letter.record`` is a dead letter now: keep it, with why, out of
        the queue, until :meth:`revive` or :meth:`delete`."""

    def dead_letters(self, limit: int, after: str | None) -> Deferred[list[DeadLetter]]:
        """Up to ``limit`` dead letters, oldest first, after the one whose
        id is ``after`` (paging)."""

    def dead_count(self) -> int:
        """How many dead letters are kept (for ``/status``; with Redis, the
        count of the last look)."""

    def revive(self, ids: list[str] | None) -> Deferred[list[Record]]:
        """Move the dead letters ``ids`` (every one when None) back to the
        pending records, and fire with their records, which the relay
        queues again (in the order they first arrived). Unknown ids are
        left out."""

    def delete(self, id: str) -> Deferred[bool]:
        """Forget the dead letter ``id``; False when there is none."""

    def stop(self) -> Deferred[None]:
        """Flush what is written and close."""
