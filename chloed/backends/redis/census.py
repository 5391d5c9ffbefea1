"""How many subscribers each node has, kept in Redis so that a publish on
any node answers ``/send`` with a receipt for the whole cluster.

``chloe:nodes``
    node → ``"<expires ms> <streaming sessions> <polling sessions>
    <partial>"``, set every :data:`BEAT` seconds by each node (expiry on
    Redis's clock), so a node that died stops counting :data:`NODE_TTL_MS`
    later; ``partial`` is 1 while the node writes all its channel counts
    again. Field ``""``: until when the census may lack nodes (one that had
    been counted found itself forgotten).
``chloe:r:<channel>``
    node → ``"<streaming> <polling>"`` subscribers of the channel there,
    dropped when the node has none left.

The rule receipts keep: a subscriber answered ``subscribed`` (a session
answered ``connected``) is counted by every publish after it, on any node,
until it leaves. So what adds to a count is in Redis before the browser
hears of it: a join writes its channels' counts in the script that reads
their history, and the browser is answered when it has run; a session
opening writes the node's sessions in the script that registers it, sent
before ``connected`` (which does not wait for it). What takes away from a
count may lag: changes within :data:`REPORT_DELAY` are one write, so one
who left may still be counted that long. Where the rule cannot hold (a
node writing everything again after it reconnected or was forgotten), the
census says so and receipts are a lower bound.

Streaming sessions (WebSocket, SSE) count as ``delivered``, polling ones
(long-poll, JSONP) as ``queued``: what the memory broker tells apart by
whether a poll is waiting, a node tells apart by transport.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from chloed.backends.redis.keys import COUNTS_PREFIX, NODES_KEY, SESSION_PREFIX, SESSION_TTL
from chloed.backends.redis.link import Call, Ignore
from chloed.backends.redis.scripts import NODE_SCRIPT, SESSION_SCRIPT

log = Logger()

POLLING = frozenset({"longpoll", "jsonp"})
BEAT = 5.0
NODE_TTL_MS = 15_000
REPORT_DELAY = 0.05
# A channel's counts expire a day after they were last written; every node
# writes all of its channels again each hour (and when Redis comes back).
COUNTS_TTL = 86_400
FULL_REPORT_BEATS = int(3600 / BEAT)


def polling(subscriber: Any) -> bool:
    """Whether ``subscriber`` takes its messages by polling (``queued``)."""
    return getattr(subscriber, "transport", None) in POLLING


class Counted(Protocol):
    """A channel as the census counts it."""

    def counts(self) -> tuple[int, int]:
        """``(streaming, polling)`` subscribers of the channel here."""


class Census:
    """This node's share of the cluster's subscriber counts.

    :param call: sends a command to Redis.
    :param ignore: the errback of commands sent without waiting.
    :param node: this node's name.
    :param channels: this node's channels now (their counts are written).
    :param connected: whether the command connection is up now.
    :param node_ttl_ms: how long after its last beat a node stops counting.
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        call: Call,
        ignore: Ignore,
        node: str,
        channels: Callable[[], Mapping[str, Counted]],
        connected: Callable[[], bool],
        node_ttl_ms: int = NODE_TTL_MS,
    ) -> None:
        self._call = call
        self._ignore = ignore
        self._node = node
        self._channels = channels
        self._connected = connected
        self._clock = clock
        self.node_ttl_ms = node_ttl_ms
        self.streaming_sessions = 0
        self.polling_sessions = 0
        self._dirty: set[str] = set()
        self._sessions_dirty = False
        self._report: Any = None
        self._beats = 0
        self._loop: LoopingCall | None = None
        self._stopped = False
        # Whether a recount of this node has completed (a later one that
        # finds the node forgotten means Redis lost it, not a new node).
        self._counted = False
        self._recounts = 0
        # A write that may have lost a count failed: the next beat recounts.
        self._recount_due = False
        # Called on each beat: what else the node keeps alive with it (its
        # roster of sessions).
        self.on_beat: Callable[[], object] | None = None
        # Called on each recount, once the node's entry is on its way: what
        # else counts only while the node is alive, and may have been
        # dropped while Redis had given it up (its users' sessions).
        self.on_recount: Callable[[], object] | None = None

    def start(self) -> None:
        self._stopped = False
        self._loop = LoopingCall(self.beat)
        self._loop.clock = self._clock
        self._loop.start(min(BEAT, self.node_ttl_ms / 3000), now=False).addErrback(
            lambda f: log.failure("the subscriber census stopped", f)
        )

    def stop(self) -> Deferred[Any]:
        """Stop beating and leave the census (a node shutting down stops
        counting at once, not ``node_ttl_ms`` later)."""
        self._stopped = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._report is not None and self._report.active():
            self._report.cancel()
        self._report = None
        return self._call("eval", NODE_SCRIPT, [NODES_KEY], [self._node, "", "", ""]).addErrback(self._ignore)

    # -- what changed -----------------------------------------------------

    def session_added(self, session: Any) -> None:
        if polling(session):
            self.polling_sessions += 1
        else:
            self.streaming_sessions += 1

    def session_removed(self, session: Any) -> None:
        if polling(session):
            self.polling_sessions -= 1
        else:
            self.streaming_sessions -= 1
        self._sessions_dirty = True
        self._soon()

    def changed(self, name: str) -> None:
        """Channel ``name``'s subscribers here changed: report it soon."""
        self._dirty.add(name)
        self._soon()

    @property
    def counting(self) -> bool:
        """Whether this node is in the census (not once it is leaving)."""
        return not self._stopped

    def _soon(self) -> None:
        if self._report is None and not self._stopped:
            self._report = self._clock.callLater(REPORT_DELAY, self.report)

    def report_now(self, name: str) -> None:
        """Write channel ``name``'s count now if it changed, not with the
        next report: a channel whose changes are seldom batched with
        others' (a user's own), when something sent after it must find
        Redis counting it so (a user's session leaving)."""
        if name in self._dirty:
            self._dirty.discard(name)
            self._write(name)

    def everything_changed(self) -> None:
        """Report every channel again (an hour passed)."""
        for name in self._channels():
            self.changed(name)

    # -- telling Redis ----------------------------------------------------

    def entry(self) -> list[Any]:
        """This node's entry for a script that enlists it: node, ttl ms,
        streaming and polling sessions."""
        return [self._node, self.node_ttl_ms, self.streaming_sessions, self.polling_sessions]

    def count(self, name: str) -> str:
        """Channel ``name``'s count here as Redis keeps it (``""``: none)."""
        channel = self._channels().get(name)
        if channel is None:
            return ""
        streaming, polling = channel.counts()
        return f"{streaming} {polling}" if streaming or polling else ""

    def session_opened(self, session_id: str) -> Deferred[Any] | None:
        """Register a new session and the node's sessions with it, in one
        script sent now, on the connection every later command of this node
        follows; returns its Deferred, which the hub waits on before the
        browser is answered ``connected``. None, sending nothing, once the
        node has left the census or while Redis is away: the caller then
        registers the session by itself (once Redis is back the node
        recounts; /send answers 503 meanwhile)."""
        if self._stopped or not self._connected():
            return None
        keys = [NODES_KEY, SESSION_PREFIX + session_id]
        d = self._call("eval", SESSION_SCRIPT, keys, self.entry() + [SESSION_TTL])
        return d.addCallbacks(self.told, self._lost_count)

    def told(self, fresh: Any) -> None:
        """Redis answered a script that enlisted this node: when it had
        forgotten the node, write every count again."""
        if not fresh:
            self.recount()

    def _lost_count(self, failure: Any) -> bool:
        """A write that may have added to a count failed: recount at the
        next beat (or when Redis is back)."""
        self._recount_due = True
        self._ignore(failure)
        return False

    def report(self) -> Deferred[Any]:
        """Write the counts of the channels that changed (and the node's
        sessions, if some left); fires when Redis has them (tests wait on
        it; the server does not)."""
        if self._report is not None and self._report.active():
            self._report.cancel()
        self._report = None
        dirty, self._dirty = self._dirty, set()
        writes: list[Deferred[Any]] = [self._write(name) for name in dirty]
        if self._sessions_dirty and not self._stopped:
            self._sessions_dirty = False
            writes.append(self._enlist("").addCallbacks(self.told, self._ignore))
        return gatherResults(writes)

    def _write(self, name: str) -> Deferred[bool]:
        """Write one channel's count; fires with whether Redis took it."""
        call = self._call
        key = COUNTS_PREFIX + name
        value = self.count(name)
        if not value:
            d = call("hdel", key, self._node)
        else:
            d = call("hset", key, self._node, value)
            d.addCallback(lambda _: call("expire", key, COUNTS_TTL))

        def failed(failure: Any) -> bool:
            # Redis away: everything is reported again when it is back.
            self._dirty.add(name)
            self._ignore(failure)
            return False

        return d.addCallbacks(lambda _: True, failed)

    def _enlist(self, state: str) -> Deferred[Any]:
        args = self.entry() + ([state] if state else [])
        return self._call("eval", NODE_SCRIPT, [NODES_KEY], args)

    def beat(self) -> Deferred[Any]:
        """Say this node is alive, with its session counts; write every
        count again when Redis had given the node up (and each hour every
        channel's, so that none expires)."""
        self._beats += 1
        if self.on_beat is not None:
            self.on_beat()
        if self._recount_due:
            return self.recount()
        if self._beats % FULL_REPORT_BEATS == 0:
            self.everything_changed()
        return self._enlist("").addCallbacks(self.told, self._ignore)

    def recount(self) -> Deferred[Any]:
        """Write this node's entry and every channel's count again (the node
        just connected, or Redis had forgotten it): marked partial first, so
        that receipts meanwhile say they are a lower bound, and complete
        once Redis has taken every count. Fires when done (tests wait)."""
        if self._stopped:
            return succeed(None)
        if self._report is not None and self._report.active():
            self._report.cancel()
        self._report = None
        self._recounts += 1
        self._recount_due = False
        recount = self._recounts
        names = set(self._channels()) | self._dirty
        self._dirty = set()
        self._sessions_dirty = False
        begun = self._enlist("again" if self._counted else "begin").addCallbacks(lambda _: True, self._lost_count)
        if self.on_recount is not None:
            self.on_recount()
        writes = [begun] + [self._write(name) for name in names]

        def written(results: list[bool]) -> Any:
            # A later recount finishes instead; so does the next beat's when
            # a write failed (the node stays partial until then).
            if recount != self._recounts or self._stopped:
                return None
            if not all(results):
                self._recount_due = True
                return None
            return self._enlist("done").addCallbacks(self._done, self._ignore)

        return gatherResults(writes).addCallback(written)

    def _done(self, fresh: Any) -> None:
        if fresh:
            self._counted = True
