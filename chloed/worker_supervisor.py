"""The supervisor of ``workers > 1``: the twistd process, holding the
listening sockets and keeping N workers running on them.

It serves no browser itself. It opens every ``listen`` socket once
(:class:`SharedSockets`, before twistd drops privileges, as a single chloed
does), stops accepting on them, and starts the workers with the sockets as
descriptors 4, 5, … (:mod:`chloed.workers`; why not ``SO_REUSEPORT`` is
said there).

:class:`Supervisor` restarts a worker that exits or is killed, after 0.5 s,
doubling for each quick death up to 10 s, back to 0.5 s once one ran
30 s; each death is one log line with its exit status. Meanwhile its
browsers reconnect (``chloe.js`` does) through the shared socket to the
other workers, and resume from the backend's history: nothing is lost.

SIGTERM (or SIGINT) stops it: no more restarts, SIGTERM to every worker,
each of which drains as chloed does (``shutting_down`` to its browsers,
the relay handed to the app), and the supervisor exits 0 once all have.
A worker still running after its drain's own bounds (``upstream_timeout``
and 5 s for the last frames) plus 10 s, or at a second signal, is killed.

Once a second it asks every worker for its numbers and sends them all the
whole server's (:mod:`chloed.worker_status`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable

from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector
from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet import defer, error
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from chloed import __version__
from chloed.config import Config
from chloed.metrics import process_stats
from chloed.service import LINGER, InOrder
from chloed.worker_status import WorkerRow, combine_metrics, combine_status, families, worker_row
from chloed.workers import FIRST_LISTEN_FD, SPEC_ENV, TO_SUPERVISOR_FD, TO_WORKER_FD, Lines, WorkerSpec, encode

log = Logger()

#: Seconds before a dead worker is started again: the first wait, the
#: longest, and how long a worker has to have run for the next death to
#: wait the first again.
RESTART_FIRST = 0.5
RESTART_MAX = 10.0
RESTART_RESET = 30.0
#: Seconds past a worker's own drain bounds before it is killed.
STOP_SPARE = 10.0
#: Seconds between the rounds of reports, and the longest a round waits
#: for the workers' answers before combining what it has.
REPORT_INTERVAL = 1.0
REPORT_WAIT = 0.5
#: A worker whose last report is older than this counts as not up.
REPORT_STALE = 3.0
#: What systemd's socket activation sets for the supervisor; a worker
#: gets its sockets another way, and must not take them for its own.
SYSTEMD_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
#: How a worker is run: twistd, on this interpreter (whatever started the
#: supervisor, ``twistd`` or ``twist``).
TWISTD = "from twisted.scripts.twistd import run; run()"


def _synchronously(d: defer.Deferred[Any]) -> Any:
    """The result of a Deferred that has fired (an endpoint's ``listen``
    on TCP, UNIX or an inherited socket does so at once), or its error
    raised: a busy port stops start-up."""
    results: list[Any] = []
    d.addBoth(results.append)
    if not results:
        raise RuntimeError("the endpoint did not listen at once")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


class _NoAccept(Factory):
    """The supervisor's sockets' factory: it never accepts (the workers do)."""

    noisy = False


class SharedSockets(Service):
    """The listening sockets of ``listen``, opened once, in the supervisor.

    Opened as a single chloed opens them (any endpoint string: ``tcp:``,
    ``unix:``, ``ssl:``, ``systemd:``), then taken out of the supervisor's
    reactor, so only the workers accept; closed when the server has
    stopped.
    """

    def __init__(self, reactor: Any, descriptions: tuple[str, ...]) -> None:
        self._reactor = reactor
        self._descriptions = descriptions
        #: Twisted's TCP or UNIX ports: an IListeningPort with a descriptor.
        self.ports: list[Any] = []

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._open()

    def startService(self) -> None:
        super().startService()
        self._open()

    def _open(self) -> None:
        if self.ports:
            return
        for description in self._descriptions:
            port = _synchronously(serverFromString(self._reactor, description).listen(_NoAccept()))
            port.stopReading()
            self.ports.append(port)

    def fds(self) -> list[int]:
        """The sockets' descriptors, in ``listen``'s order."""
        return [port.fileno() for port in self.ports]

    def stopService(self) -> Any:
        super().stopService()
        ports, self.ports = self.ports, []
        return defer.gatherResults([defer.maybeDeferred(port.stopListening) for port in ports])


class WorkerProtocol(ProcessProtocol):
    """The supervisor's end of one worker's pipes.

    :param received: called with each message the worker sends.
    :param ended: called with the reason once the worker has exited.
    """

    def __init__(self, received: Callable[[dict[str, Any]], None], ended: Callable[[Failure], None]) -> None:
        self._received = received
        self._ended = ended
        self._lines = Lines()

    @property
    def pid(self) -> int | None:
        return None if self.transport is None else self.transport.pid

    def send(self, message: dict[str, Any]) -> None:
        if self.transport is None:
            return
        try:
            self.transport.writeToChild(TO_WORKER_FD, encode(message))
        except KeyError:
            pass  # its stdin is closed: it is ending, and processEnded follows

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != TO_SUPERVISOR_FD:
            return
        for line in self._lines.feed(data):
            # An error here would close the pipe, which tells the worker
            # its supervisor is gone: logged instead.
            try:
                self._received(json.loads(line))
            except Exception:
                log.failure("a message from worker {pid} failed", pid=self.pid)

    def processEnded(self, reason: Failure) -> None:
        self._ended(reason)


#: Starts worker ``index`` with ``protocol`` (``reactor.spawnProcess``);
#: returns its process.
Spawn = Callable[[int, ProcessProtocol], IProcessTransport]


def how_it_ended(reason: Failure) -> str:
    """A worker's end in words: its exit status or its signal."""
    value = reason.value
    number = getattr(value, "signal", None)
    if number:
        try:
            return f"was killed by {signal.Signals(number).name}"
        except ValueError:
            return f"was killed by signal {number}"
    return f"exited with status {getattr(value, 'exitCode', None)}"


@dataclass
class Slot:
    """One worker's place: the process in it now, and what its index has
    been through."""

    index: int
    protocol: WorkerProtocol | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = RESTART_FIRST
    pending: IDelayedCall | None = None
    report: dict[str, Any] | None = None
    reported: float = 0.0
    pid: int | None = None


def _own() -> tuple[dict[str, int] | None, list[Any]]:
    """The supervisor's own memory, descriptors and ``process_*`` metrics,
    counted with the workers'."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return process_stats(), families(registry)


class Supervisor(Service):
    """Keeps ``count`` workers running, stops them in order, and passes
    the whole server's numbers around.

    :param spawn: starts one worker (a fake in tests).
    :param clock: the reactor's time, for restarts, rounds and the stop's
        bound.
    :param stop_timeout: seconds the workers get to drain after SIGTERM.
    :param own: the supervisor's own process numbers (:func:`_own`).
    """

    def __init__(self, count: int, spawn: Spawn, clock: Any, stop_timeout: float,
                 own: Callable[[], tuple[dict[str, int] | None, list[Any]]] = _own) -> None:
        self.slots = [Slot(index) for index in range(count)]
        self._spawn = spawn
        self._clock = clock
        self.stop_timeout = stop_timeout
        self._own = own
        self.started = clock.seconds()
        self.stopping = False
        self._stopped: defer.Deferred[None] | None = None
        self._overdue: IDelayedCall | None = None
        self._waiting: set[int] = set()
        self._round: IDelayedCall | None = None
        self._last: dict[str, Any] | None = None
        self._rounds = TimerService(REPORT_INTERVAL, self.ask)
        self._rounds.clock = clock

    # -- running ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.started = self._clock.seconds()
        for slot in self.slots:
            self._start(slot)
        self._rounds.startService()

    def live(self) -> list[Slot]:
        return [slot for slot in self.slots if slot.protocol is not None]

    def _start(self, slot: Slot) -> None:
        slot.pending = None
        protocol = WorkerProtocol(partial(self._received, slot), partial(self._ended, slot))
        slot.started = self._clock.seconds()
        try:
            process = self._spawn(slot.index, protocol)
        except Exception:
            log.failure("worker {index} could not be started", index=slot.index)
            self._again(slot)
            return
        slot.protocol, slot.pid = protocol, process.pid
        if self._last is not None:
            # What it answers until the next round: the whole server's,
            # not its own alone.
            protocol.send(self._last)

    def _ended(self, slot: Slot, reason: Failure) -> None:
        pid, slot.protocol, slot.pid, slot.report = slot.pid, None, None, None
        how = how_it_ended(reason)
        if self.stopping:
            log.info("worker {index} (pid {pid}) {how}", index=slot.index, pid=pid, how=how)
            if self._stopped is not None and not self.live():
                if self._overdue is not None and self._overdue.active():
                    self._overdue.cancel()
                stopped = self._stopped
                self._stopped = None
                stopped.callback(None)
            return
        ran = self._clock.seconds() - slot.started
        delay = self._again(slot, ran)
        log.warn(
            "worker {index} (pid {pid}) {how} after {ran:.1f}s: starting it again in {delay}s",
            index=slot.index, pid=pid, how=how, ran=ran, delay=delay,
        )

    def _again(self, slot: Slot, ran: float = 0.0) -> float:
        """Start ``slot`` again after its backoff; returns the wait."""
        if ran >= RESTART_RESET:
            slot.backoff = RESTART_FIRST
        delay, slot.backoff = slot.backoff, min(slot.backoff * 2, RESTART_MAX)
        slot.pending = self._clock.callLater(delay, self._restart, slot)
        return delay

    def _restart(self, slot: Slot) -> None:
        slot.restarts += 1
        self._start(slot)

    # -- stopping --------------------------------------------------------

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self.stopping = True
        if self._rounds.running:
            self._rounds.stopService()
        for slot in self.slots:
            if slot.pending is not None and slot.pending.active():
                slot.pending.cancel()
            slot.pending = None
        live = self.live()
        if not live:
            return defer.succeed(None)
        log.info("stopping {n} workers, each draining", n=len(live))
        self._stopped = defer.Deferred()
        self._overdue = self._clock.callLater(self.stop_timeout, self._too_slow)
        self._signal("TERM")
        return self._stopped

    def _too_slow(self) -> None:
        log.warn("{n} workers still running {t}s after SIGTERM: killing them", n=len(self.live()), t=self.stop_timeout)
        self.kill()

    def kill(self) -> None:
        """SIGKILL to every worker, at once."""
        self._signal("KILL")

    def _signal(self, name: str) -> None:
        for slot in self.live():
            assert slot.protocol is not None and slot.protocol.transport is not None
            with contextlib.suppress(error.ProcessExitedAlready):
                slot.protocol.transport.signalProcess(name)

    # -- the numbers -----------------------------------------------------

    def ask(self) -> None:
        """A round: ask every worker for its numbers; combine them once all
        answered, or after :data:`REPORT_WAIT` seconds."""
        if self._round is not None and self._round.active():
            self._round.cancel()
        live = self.live()
        self._waiting = {slot.index for slot in live}
        for slot in live:
            assert slot.protocol is not None
            slot.protocol.send({"type": "report"})
        self._round = self._clock.callLater(REPORT_WAIT, self._finish)

    def _received(self, slot: Slot, message: dict[str, Any]) -> None:
        if message.get("type") != "report":
            return
        slot.report, slot.reported = message, self._clock.seconds()
        self._waiting.discard(slot.index)
        if not self._waiting and self._round is not None and self._round.active():
            self._round.cancel()
            self._finish()

    def _finish(self) -> None:
        self._round = None
        whole = self._last = self.whole()
        for slot in self.live():
            if slot.index not in self._waiting:  # a worker not reading would pile them up
                assert slot.protocol is not None
                slot.protocol.send(whole)

    def rows(self) -> list[WorkerRow]:
        """The per-worker breakdown."""
        now = self._clock.seconds()
        return [
            worker_row(
                slot.index, slot.pid, slot.restarts, now - slot.started if slot.protocol is not None else None,
                slot.report if self._fresh(slot, now) else None,
            )
            for slot in self.slots
        ]

    def _fresh(self, slot: Slot, now: float) -> bool:
        return slot.protocol is not None and slot.report is not None and now - slot.reported <= REPORT_STALE

    def whole(self) -> dict[str, Any]:
        """The whole server's numbers, as a message to the workers."""
        now = self._clock.seconds()
        reports = [slot.report for slot in self.slots if slot.report is not None and self._fresh(slot, now)]
        uptime = now - self.started
        rows = self.rows()
        process, own_families = self._own()
        return {
            "type": "whole",
            "status": combine_status([r["status"] for r in reports], now=now, uptime=uptime, process=process,
                                     rows=rows),
            "public": combine_status([r["public"] for r in reports], now=now, uptime=uptime),
            "metrics": combine_metrics([r["metrics"] for r in reports], uptime=uptime, own=own_families,
                                       rows=rows).decode("utf-8"),
        }


class Signals(Service):
    """SIGTERM and SIGINT stop the server (the workers drain) and exit 0;
    a second one kills the workers and ends the supervisor by the signal.

    Twisted's own SIGTERM handler would end twistd by the signal (status
    143), which systemd reports as a failure (as chloed's own drain says).
    """

    def __init__(self, reactor: Any, supervisor: Supervisor) -> None:
        self._reactor = reactor
        self._supervisor = supervisor
        self.signals = 0

    def startService(self) -> None:
        super().startService()
        self._reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)

    def on_signal(self, signum: int, frame: Any = None) -> None:
        self.signals += 1
        if self.signals > 1:
            self._supervisor.kill()
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self._reactor.callFromThread(self._stop, signal.Signals(signum).name)

    def _stop(self, name: str) -> None:
        log.info("{signal}: stopping the workers (a second {signal} kills them)", signal=name)
        self._reactor.stop()


def spawner(reactor: Any, sockets: SharedSockets, template: WorkerSpec, log_format: str) -> Spawn:
    """How the supervisor starts a worker: ``twistd chloe`` on this
    interpreter, with the shared sockets and the two pipes as its only
    descriptors besides stdout and stderr (the supervisor's: the journal,
    under systemd), and ``CHLOE_WORKER`` saying which worker it is."""

    def spawn(index: int, protocol: ProcessProtocol) -> IProcessTransport:
        fds = sockets.fds()
        child_fds: dict[int, Any] = {TO_WORKER_FD: "w", 1: 1, 2: 2, TO_SUPERVISOR_FD: "r"}
        child_fds.update({FIRST_LISTEN_FD + n: fd for n, fd in enumerate(fds)})
        spec = replace(template, index=index, listen=tuple(range(FIRST_LISTEN_FD, FIRST_LISTEN_FD + len(fds))))
        env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_VARIABLES}
        env[SPEC_ENV] = spec.encode()
        args = [sys.executable, "-c", TWISTD, "--nodaemon", "--pidfile=", "chloe", "--log-format", log_format]
        return reactor.spawnProcess(protocol, sys.executable, args, env=env, childFDs=child_fds)

    return spawn


def make_supervisor(config: Config, reactor: Any, template: WorkerSpec, log_format: str = "text") -> InOrder:
    """The supervisor of ``config.workers`` workers.

    :param template: what every worker is told (its index and sockets are
        filled in for each).
    :param log_format: the workers' ``--log-format``, the supervisor's.
    """
    service = InOrder()
    sockets = SharedSockets(reactor, config.listen)
    sockets.setServiceParent(service)
    stop_timeout = config.upstream_timeout + LINGER + STOP_SPARE
    supervisor = Supervisor(config.workers, spawner(reactor, sockets, template, log_format), reactor, stop_timeout)
    supervisor.setServiceParent(service)
    Signals(reactor, supervisor).setServiceParent(service)
    log.info(
        "chloe {version}: {n} workers on {listen}",
        version=__version__, n=config.workers, listen=", ".join(config.listen),
    )
    return service
