"""How a connection writes: straight to the socket, coalesced per reactor turn.

:func:`send_now` hands bytes to the kernel when the transport holds
nothing unsent (``transport.write`` would buffer them, register the socket
with epoll, and write and unregister it on the next reactor turn).

Messages published in one turn of the reactor (several ``/send`` read in
one epoll wake-up, or one batch) would otherwise cost one ``send`` system
call per message per subscriber. A connection's first frame of a turn is
written at once, so a message alone in its turn loses no time; the frames
that follow it in the same turn are held, and written together in one call
when the turn ends (a ``callLater(0)``, which runs once the reactor has
handled everything that one wake-up returned), or as soon as a
connection holds :data:`HOLD_BYTES`. A batch ``/send`` holds even the
first frames (:meth:`Turn.gather`) and writes them all once its last
message is published (:meth:`Turn.release`): one write per socket.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger()

#: What one connection may hold before it is written without waiting for
#: the end of the turn: a few dozen frames, far under outbound_buffer_bytes.
HOLD_BYTES = 65536


def send_now(transport: Any, sock: Any, data: bytes) -> bytes:
    """Send ``data`` on ``sock`` now if ``transport`` has nothing unsent
    (else the bytes would overtake it); returns what is left to write
    through the transport (empty when the kernel took it all).

    Errors are left for the transport to find on its own write, so a broken
    connection ends the usual way.
    """
    if (
        transport._tempDataLen
        or transport.offset != len(transport.dataBuffer)
        or transport.disconnecting
        or not transport.connected
    ):
        return data
    try:
        sent = sock.send(data)
    except OSError:
        return data
    return data[sent:] if sent < len(data) else b""


class Holder(Protocol):
    def flush_held(self) -> None:
        """Write what this connection held in the turn."""


class Turn:
    """The current reactor turn, shared by the connections of a resource.

    ``number`` changes when a turn in which something was written ends: a
    connection that wrote in turn ``number`` holds its next frames until
    then.
    """

    __slots__ = ("_clock", "number", "_held", "_end_call", "gathering")

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self.number = 0
        self._held: list[Holder] = []
        self._end_call: IDelayedCall | None = None
        #: Between :meth:`gather` and :meth:`release`: every frame is held,
        #: a connection's first of the turn too.
        self.gathering = False

    def gather(self) -> None:
        """Hold every connection's frames until :meth:`release`: a batch
        publish reaches each socket in one write."""
        self.gathering = True

    def release(self) -> None:
        """Write what was held, now (not at the end of the turn)."""
        self.gathering = False
        self._flush()

    def wrote(self) -> int:
        """A connection writes now; the number of this turn."""
        if self._end_call is None:
            self._end_call = self._clock.callLater(0, self._end)
        return self.number

    def hold(self, holder: Holder) -> None:
        """``holder`` has frames to write when the turn ends."""
        self._held.append(holder)

    def _end(self) -> None:
        self._end_call = None
        self.number += 1
        self._flush()

    def _flush(self) -> None:
        held, self._held = self._held, []
        for holder in held:
            try:
                holder.flush_held()
            except Exception:
                log.failure("writing held frames failed")

    def __repr__(self) -> str:
        return f"<Turn {self.number}: {len(self._held)} held>"
