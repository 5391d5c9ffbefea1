"""Many timers on one heap: tokens' expiries and the wait for a first
``auth`` frame.

Tens of thousands of sessions may each have a token expiring; an
``IDelayedCall`` each would cost every one of them a reactor timer, and a
refresh would cancel and make one again. Here each deadline is a heap entry
and only the earliest has a reactor timer. A deadline is never cancelled:
whoever set it checks, when it comes, whether it still holds (the token was
refreshed, the session ended), which keeps a refresh one heap push. So that
those no longer holding do not pile up (sessions come and go far more often
than hour-long tokens run out), :meth:`prune` drops them, when the owner
finds the heap much bigger than what it watches.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger()


class Deadlines:
    """Calls made at given times (``clock.seconds()``), in time order."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._order = itertools.count()
        self._timer: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def at(self, when: float, call: Callable[..., None], *args: Any) -> None:
        """Call ``call(*args)`` at ``when`` (at once, in the next turn, if past)."""
        heapq.heappush(self._heap, (when, next(self._order), call, args))
        if self._heap[0][0] == when and (self._timer is None or self._timer.getTime() > when):
            self._schedule()

    def _schedule(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._heap:
            delay = max(0.0, self._heap[0][0] - self._clock.seconds())
            self._timer = self._clock.callLater(delay, self._due)

    def _due(self) -> None:
        self._timer = None
        now = self._clock.seconds()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, call, args = heapq.heappop(heap)
            try:
                call(*args)
            except Exception:
                log.failure("a deadline's call failed")
        self._schedule()

    def prune(self, holds: Callable[..., bool]) -> int:
        """Drop the deadlines for which ``holds(*args)`` is false (their
        call would do nothing); how many went."""
        before = len(self._heap)
        self._heap = [entry for entry in self._heap if holds(*entry[3])]
        heapq.heapify(self._heap)
        if before != len(self._heap):
            self._schedule()
        return before - len(self._heap)

    def stop(self) -> None:
        """Forget every deadline (the server is stopping)."""
        self._heap.clear()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
