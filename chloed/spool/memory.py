"""The spool of ``relay_spool = "memory"``: records live only in the
relay's queue, so a restart loses them. Dead letters are kept here, up to
a bound, for the app to read and replay."""

from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger

from chloed.spool.base import DeadLetter, Record

log = Logger()

#: Dead letters kept by the memory and disk spools; past it the oldest goes
#: (logged and counted in ``dead_dropped``).
DEAD_LETTERS_MAX = 10000


class DeadLetters:
    """Dead letters in arrival order, bounded: shared by the memory and the
    disk spool (which also logs each change)."""

    def __init__(self, limit: int = DEAD_LETTERS_MAX) -> None:
        self.limit = limit
        self.letters: OrderedDict[str, DeadLetter] = OrderedDict()
        self.dropped = 0

    def add(self, letter: DeadLetter) -> DeadLetter | None:
        """Keep ``letter``; the oldest it pushed out, if any (``letter``
        itself with a bound of 0: nothing is kept, as for Pusher webhooks,
        whose failures are logged where they are made)."""
        if not self.limit:
            self.dropped += 1
            return letter
        self.letters[letter.id] = letter
        if len(self.letters) <= self.limit:
            return None
        _, oldest = self.letters.popitem(last=False)
        self.dropped += 1
        log.warn(
            "more than {limit} dead letters: the oldest, {id}, is dropped",
            limit=self.limit, id=oldest.id,
        )
        return oldest

    def page(self, limit: int, after: str | None) -> list[DeadLetter]:
        letters = iter(self.letters.values())
        if after is not None:
            if after not in self.letters:
                return []
            for letter in letters:
                if letter.id == after:
                    break
        return list(itertools.islice(letters, limit))

    def take(self, ids: list[str] | None) -> list[DeadLetter]:
        if ids is None:
            found = list(self.letters.values())
            self.letters.clear()
        else:
            found = [self.letters.pop(i) for i in dict.fromkeys(ids) if i in self.letters]
        found.sort(key=lambda letter: letter.record.arrived)
        return found


class MemorySpool:
    """Records kept by the relay alone: nothing to write, nothing to recover."""

    name = "memory"
    durable = False

    def __init__(self, dead_limit: int = DEAD_LETTERS_MAX) -> None:
        self._keys = itertools.count(1)
        self.dead = DeadLetters(dead_limit)

    def start(self, recover: Callable[[Record], None]) -> defer.Deferred[None]:
        return defer.succeed(None)

    def append(self, record: Record) -> None:
        record.key = "m%d" % next(self._keys)

    def done(self, record: Record) -> None:
        """Nothing to forget: the relay's queue was the only place it was."""

    def bury(self, letter: DeadLetter) -> None:
        self.dead.add(letter)

    def dead_letters(self, limit: int, after: str | None) -> defer.Deferred[list[DeadLetter]]:
        return defer.succeed(self.dead.page(limit, after))

    def dead_count(self) -> int:
        return len(self.dead.letters)

    def revive(self, ids: list[str] | None) -> defer.Deferred[list[Record]]:
        return defer.succeed([letter.record for letter in self.dead.take(ids)])

    def delete(self, id: str) -> defer.Deferred[bool]:
        return defer.succeed(self.dead.letters.pop(id, None) is not None)

    def stop(self) -> defer.Deferred[None]:
        return defer.succeed(None)
