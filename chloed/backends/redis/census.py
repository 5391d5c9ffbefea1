"""How many subscribers each node has, kept in Redis so that a publish on
any node answers ``/send`` with a receipt for the whole cluster.

``chloe:nodes``
    node → ``"<expires ms> <streaming sessions> <polling sessions>"``, set
    every :data:`BEAT` seconds by each node (expiry on Redis's clock), so a
    node that died stops counting :data:`NODE_TTL_MS` later.
``chloe:r:<channel>``
    node → ``"<streaming> <polling>"`` subscribers of the channel there,
    written shortly after they change (changes within :data:`REPORT_DELAY`
    are one write), dropped when the node has none left.

Streaming sessions (WebSocket, SSE) count as ``delivered``, polling ones
(long-poll, JSONP) as ``queued``: what the memory broker tells apart by
whether a poll is waiting, a node tells apart by transport.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from chloed.backends.redis.keys import COUNTS_PREFIX, NODES_KEY
from chloed.backends.redis.scripts import NODE_SCRIPT

if TYPE_CHECKING:
    from chloed.backends.redis.broker import RedisBroker

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


class Census:
    """This node's share of the cluster's subscriber counts.

    :param broker: whose channels and sessions are counted.
    :param node_ttl_ms: how long after its last beat a node stops counting.
    """

    def __init__(self, broker: "RedisBroker", clock: IReactorTime, node_ttl_ms: int = NODE_TTL_MS) -> None:
        self._broker = broker
        self._clock = clock
        self.node_ttl_ms = node_ttl_ms
        self.streaming_sessions = 0
        self.polling_sessions = 0
        self._dirty: set[str] = set()
        self._report: Any = None
        self._beats = 0
        self._loop: LoopingCall | None = None

    def start(self) -> None:
        self._loop = LoopingCall(self.beat)
        self._loop.clock = self._clock
        self._loop.start(min(BEAT, self.node_ttl_ms / 3000), now=False).addErrback(
            lambda f: log.failure("the subscriber census stopped", f)
        )

    def stop(self) -> Deferred[Any]:
        """Stop beating and leave the census (a node shutting down stops
        counting at once, not ``node_ttl_ms`` later)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._report is not None and self._report.active():
            self._report.cancel()
        self._report = None
        return self._broker._call("eval", NODE_SCRIPT, [NODES_KEY], [self._broker.node, "", "", ""]).addErrback(
            self._broker._ignore
        )

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

    def changed(self, name: str) -> None:
        """Channel ``name``'s subscribers here changed: report it soon."""
        self._dirty.add(name)
        if self._report is None:
            self._report = self._clock.callLater(REPORT_DELAY, self.report)

    def everything_changed(self) -> None:
        """Report every channel again (Redis came back, or an hour passed)."""
        for name in self._broker.channels:
            self.changed(name)

    # -- telling Redis ----------------------------------------------------

    def report(self) -> Deferred[Any]:
        """Write the counts of the channels that changed; fires when Redis
        has them (tests wait on it; the server does not)."""
        if self._report is not None and self._report.active():
            self._report.cancel()
        self._report = None
        dirty, self._dirty = self._dirty, set()
        return gatherResults([self._write(name) for name in dirty])

    def _write(self, name: str) -> Deferred[Any]:
        broker = self._broker
        channel = broker.channels.get(name)
        key = COUNTS_PREFIX + name
        if channel is None or not channel.subscribers:
            d = broker._call("hdel", key, broker.node)
        else:
            streaming = len(channel.subscribers) - channel.polling
            d = broker._call("hset", key, broker.node, f"{streaming} {channel.polling}")
            d.addCallback(lambda _: broker._call("expire", key, COUNTS_TTL))
        # Redis away: everything is reported again when it is back.
        return d.addErrback(broker._ignore)

    def beat(self) -> Deferred[Any]:
        """Say this node is alive, with its session counts; report every
        channel again when Redis had given the node up (or each hour)."""
        self._beats += 1
        if self._beats % FULL_REPORT_BEATS == 0:
            self.everything_changed()
        args = [self._broker.node, self.node_ttl_ms, self.streaming_sessions, self.polling_sessions]
        d = self._broker._call("eval", NODE_SCRIPT, [NODES_KEY], args)

        def answered(fresh: Any) -> None:
            if not fresh:
                self.everything_changed()

        return d.addCallbacks(answered, self._broker._ignore)
