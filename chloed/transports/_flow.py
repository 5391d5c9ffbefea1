"""Back-pressure for streaming connections (WebSocket, SSE).

Registered as the connection's push producer, :class:`OutboundFlow` hears
from the transport when the kernel stops taking bytes. What is written while
paused stays in the process; once that passes ``outbound_buffer_bytes`` the
reader is a slow consumer and is cut off, so one stalled browser can never
grow the server's memory without bound.
"""

from __future__ import annotations

from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer


@implementer(IPushProducer)
class OutboundFlow:
    """Counts bytes written while the transport is paused.

    :param limit: ``outbound_buffer_bytes``.
    """

    __slots__ = ("limit", "paused", "backlog")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.paused = False
        self.backlog = 0

    def admit(self, size: int) -> bool:
        """Whether ``size`` more bytes may be written; False: slow consumer."""
        if not self.paused:
            return True
        self.backlog += size
        return self.backlog <= self.limit

    def pauseProducing(self) -> None:
        # The transport asks again on every write while its buffer is full:
        # only the first call starts the count.
        if not self.paused:
            self.paused = True
            self.backlog = 0

    def resumeProducing(self) -> None:
        self.paused = False
        self.backlog = 0

    def stopProducing(self) -> None:
        self.paused = True
