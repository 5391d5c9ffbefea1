"""Whether the pub/sub connection still delivers (:class:`Liveness`).

A connection to Redis can go half-dead: the socket looks open and nothing
comes through it (a NAT or a firewall forgot it, a partition with no reset,
a proxy in between stuck). The command connection finds out by itself, its
commands time out; the pub/sub connection only listens, and would wait for
ever while the node's browsers silently miss every message (socket.io#4845,
centrifuge#554).

So every :data:`PROBE_INTERVAL` seconds, while both connections are up, the
node ``PUBLISH``es a probe, ``"l <serial>"``, to its own pub/sub channel
(``chloe:<db>:n:<node>``) over the command connection, and expects it back
on the pub/sub connection within :data:`PROBE_TIMEOUT` of Redis answering
the ``PUBLISH`` (from then on the probe is Redis's to deliver: counting
from the send would take a command connection busy with thousands of
commands, as when tens of thousands of browsers connect at once, for a
dead pub/sub one). A ``PUBLISH`` that reached no subscriber, or not
answered within :data:`COMMAND_TIMEOUT`, is a miss too. A probe that does
not come back is a miss: the pub/sub connection is torn down, and the link
connects and subscribes again; each channel is then read again after the
last id the node delivered (:mod:`.channels`), so nothing is lost. From a
miss until a probe comes back on the new connection the node is
*degraded*: ``/health`` answers 503.

A probe whose ``PUBLISH`` fails (the command connection went), or in flight
when the pub/sub connection is lost the ordinary way, says nothing of
pub/sub and is dropped, not counted as a miss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from chloed.backends.base import BackendUnavailable

log = Logger(namespace="chloed.backends.redis")

#: Seconds between probes.
PROBE_INTERVAL = 2.0
#: Seconds a probe has to come back before the pub/sub connection is
#: taken for half-dead.
PROBE_TIMEOUT = 3.0
#: Seconds the ``PUBLISH`` of a probe may wait for its answer before the
#: probe counts as missed.
COMMAND_TIMEOUT = 30.0
#: The first two bytes of a probe on the node's own channel.
KIND = b"l "


@dataclass(slots=True)
class _Probe:
    """The probe in flight: its serial, when it went, and its deadline."""

    serial: int
    sent: float
    deadline: IDelayedCall


class Liveness:
    """Probes this node's pub/sub connection, and heals it when a probe is
    missed.

    :param clock: times the probes and their round trips.
    :param publish: ``PUBLISH``es a payload to this node's own channel on
        the command connection.
    :param up: whether both connections are up (the node's own channels
        subscribed): only then is a probe sent.
    :param heal: tears the pub/sub connection down, ``why`` being logged;
        it comes back by itself.

    :ivar probes: probes sent.
    :ivar failures: probes missed.
    :ivar heals: pub/sub connections torn down after a miss that answered
        a probe again (the node is no longer degraded).
    :ivar seconds: the last probe's round trip, None before the first.
    :ivar degraded: a probe was missed, and none has come back since.
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        publish: Callable[[bytes], Deferred[Any]],
        up: Callable[[], bool],
        heal: Callable[[str], None],
        interval: float = PROBE_INTERVAL,
        timeout: float = PROBE_TIMEOUT,
    ) -> None:
        self._clock = clock
        self._publish = publish
        self._up = up
        self._heal = heal
        self.interval = interval
        self.timeout = timeout
        self.probes = 0
        self.failures = 0
        self.heals = 0
        self.seconds: float | None = None
        self.degraded = False
        self._serial = 0
        self._pending: _Probe | None = None
        self._loop: LoopingCall | None = None

    def kinds(self) -> dict[bytes, Callable[[bytes], None]]:
        """What takes a probe on this node's own channel."""
        return {KIND: self.answered}

    def start(self) -> None:
        """Probe every ``interval`` seconds until :meth:`stop`."""
        if self._loop is not None:
            return
        self._loop = LoopingCall(self.probe)
        self._loop.clock = self._clock
        self._loop.start(self.interval, now=False).addErrback(
            lambda f: log.failure("redis: probing the pub/sub connection stopped", f)
        )

    def stop(self) -> None:
        """No more probes; the one in flight is forgotten."""
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        self._drop()

    def probe(self) -> None:
        """Send a probe, unless one is in flight or a connection is down."""
        if self._pending is not None or not self._up():
            return
        self._serial += 1
        serial = self._serial
        deadline = self._clock.callLater(COMMAND_TIMEOUT, self._expired, serial)
        self._pending = _Probe(serial, self._clock.seconds(), deadline)
        self.probes += 1
        self._publish(KIND + b"%d" % serial).addCallbacks(
            self._published, self._not_sent, callbackArgs=(serial,), errbackArgs=(serial,)
        )

    def _published(self, receivers: Any, serial: int) -> None:
        """Redis ran the ``PUBLISH``: the probe has ``timeout`` seconds to
        arrive (none at all if no pub/sub connection of this node is
        subscribed, as Redis sees it)."""
        pending = self._pending
        if pending is None or pending.serial != serial:
            return  # answered already, or given up
        if pending.deadline.active():
            pending.deadline.cancel()
        if receivers == 0:
            pending.deadline = self._clock.callLater(0, self._expired, serial)
        else:
            pending.deadline = self._clock.callLater(self.timeout, self._expired, serial)

    def answered(self, payload: bytes) -> None:
        """``"l <serial>"`` came back on the pub/sub connection."""
        pending = self._pending
        try:
            serial = int(payload[len(KIND):])
        except ValueError:
            log.warn("redis: a malformed probe came back: {payload!r}", payload=payload[:40])
            return
        if pending is None or pending.serial != serial:
            return  # late: its connection was given up already
        self._drop()
        self.seconds = self._clock.seconds() - pending.sent
        if self.degraded:
            self.degraded = False
            self.heals += 1
            log.info("redis: the pub/sub connection delivers again ({seconds:.3f} s round trip)",
                     seconds=self.seconds)

    def lost(self) -> None:
        """The pub/sub connection went the ordinary way (the link sees to
        it): the probe in flight says nothing."""
        self._drop()

    def _not_sent(self, failure: Failure, serial: int) -> None:
        if self._pending is not None and self._pending.serial == serial:
            self._drop()
        if not failure.check(BackendUnavailable):
            log.failure("redis: a probe could not be sent", failure)

    def _expired(self, serial: int) -> None:
        # One reactor turn more: after the reactor was busy for longer than
        # the timeout, timers run before sockets are read, and the probe may
        # be waiting, unread, on the pub/sub connection.
        self._clock.callLater(0, self._missed, serial)

    def _missed(self, serial: int) -> None:
        pending = self._pending
        if pending is None or pending.serial != serial:
            return
        self._pending = None
        self.failures += 1
        self.degraded = True
        self._heal(f"a probe through pub/sub did not come back within {self.timeout:g} s")

    def _drop(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and pending.deadline.active():
            pending.deadline.cancel()
