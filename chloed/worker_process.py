"""One worker of several (``workers > 1``): a whole chloed on sockets the
supervisor opened.

A worker is ``twistd chloe`` started by the supervisor with
``CHLOE_WORKER`` in its environment (:mod:`chloed.workers`). It builds
exactly the server one chloed is (:func:`chloed.service.make_service`),
except that it adopts the supervisor's listening sockets instead of
opening its own, and that it talks to the supervisor (:class:`WorkerLink`):
it reports its numbers and answers ``/status`` and ``/metrics`` with the
whole server's. ``/health`` stays its own: a load balancer probing it wants
to know whether this server answers.

It drains on SIGTERM as chloed does, and when the supervisor is gone
(end of file on its stdin). It ignores SIGINT: a terminal's Ctrl-C reaches
every process of the group, and the supervisor, which gets it too, stops
the workers in order.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import sys
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import unix
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, ITransport
from twisted.internet.protocol import Protocol
from twisted.internet.stdio import StandardIO
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, Logger, textFileLogObserver
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from chloed import logs
from chloed.config import Config
from chloed.metrics import Metrics
from chloed.service import ChloeService, make_service
from chloed.worker_status import families
from chloed.workers import SPEC_ENV, TO_SUPERVISOR_FD, TO_WORKER_FD, Lines, WorkerSpec, encode, spec_from

log = Logger()

#: The whole server's numbers are answered while they are at most this
#: old (the supervisor sends them every second); older, the worker answers
#: its own, as the supervisor may be stuck.
WHOLE_FRESH = 5.0
#: Seconds between a worker's looks at whether it is full.
FULL_CHECK = 0.1


class _SharedUNIXPort(unix.Port):
    """A UNIX socket the supervisor listens on, shared by every worker.

    Twisted's own port would change the socket file's mode and, when it
    stops, shut the socket down and unlink its path: that would end it for
    every worker and the supervisor. This one only closes its copy.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Its startListening calls listen() again: with the largest backlog
        # the kernel allows rather than Twisted's 50, so that no worker
        # shrinks the queue the supervisor opened.
        self.backlog = socket.SOMAXCONN
        self._shouldShutdown = False

    @classmethod
    def adopt(cls, reactor: Any, fd: int, factory: IProtocolFactory) -> "_SharedUNIXPort":
        port = cls._fromListeningDescriptor(reactor, fd, factory)
        path = port._bindPath
        if path and path[:1] not in ("\0", b"\0"):
            # startListening chmods the file: to the mode it has.
            port.mode = stat.S_IMODE(os.stat(path).st_mode)
        port.startListening()
        return port

    def connectionLost(self, reason: Failure) -> None:
        self._shouldShutdown = False
        # tcp.Port's: stop reading and close, without unix.Port's unlink.
        super(unix.Port, self).connectionLost(reason)


def _family(fd: int) -> int:
    probe = socket.socket(fileno=fd)
    try:
        return int(probe.family)
    finally:
        probe.detach()


def adopter(reactor: Any, fd: int, description: str) -> Callable[[IProtocolFactory], IListeningPort]:
    """How the worker listens on the supervisor's socket ``fd``, opened
    from ``description``: adopted with the site, in TLS for an ``ssl:``
    endpoint (its certificate read here again, from the same string).
    The worker's inherited descriptor is closed once adopted (the port has
    a copy of its own)."""
    tls = None
    if description.startswith("ssl:"):
        endpoint = serverFromString(reactor, description)
        assert isinstance(endpoint, SSL4ServerEndpoint)
        tls = endpoint._sslContextFactory

    def listen(factory: IProtocolFactory) -> IListeningPort:
        if tls is not None:
            factory = TLSMemoryBIOFactory(tls, False, factory)
        port: IListeningPort
        family = _family(fd)
        if family == socket.AF_UNIX:
            port = _SharedUNIXPort.adopt(reactor, fd, factory)
        else:
            port = reactor.adoptStreamPort(fd, family, factory)
        os.close(fd)
        return port

    return listen


class _Pipe(Protocol):
    """The worker's end of the pipes, as a protocol on stdin / fd 3."""

    def __init__(self, link: "WorkerLink") -> None:
        self._link = link
        self._lines = Lines()

    def dataReceived(self, data: bytes) -> None:
        for line in self._lines.feed(data):
            # An error here would close the pipe, which says the
            # supervisor is gone: logged instead.
            try:
                self._link.received(json.loads(line))
            except Exception:
                log.failure("a message from the supervisor failed")

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._link.lost()


def _stdio(protocol: Protocol, reactor: Any) -> ITransport:
    # (mypy reads the Windows StandardIO, which has no stdin and stdout)
    return StandardIO(protocol, stdin=TO_WORKER_FD, stdout=TO_SUPERVISOR_FD, reactor=reactor)  # type: ignore[call-arg]


class WorkerLink(Service):
    """Reports this worker's numbers to the supervisor when asked, and
    keeps the whole server's it sends back (:class:`chloed.metrics.WholeServer`).

    :param drain: drains and stops the server (``ChloeService.drain``).
    :param node: this worker's node id in the backend.
    :param connect: opens the pipes given the protocol (stdin and fd 3).
    """

    def __init__(self, index: int, metrics: Metrics, drain: Callable[[str], None], node: str | None,
                 reactor: Any, connect: Callable[[Protocol, Any], ITransport] = _stdio) -> None:
        self.index = index
        self._metrics = metrics
        self._drain = drain
        self._node = node
        self._reactor = reactor
        self._connect = connect
        self._transport: ITransport | None = None
        self._whole: dict[str, Any] | None = None
        self._whole_at = 0.0

    def startService(self) -> None:
        super().startService()
        self._transport = self._connect(_Pipe(self), self._reactor)
        self._reactor.callWhenRunning(signal.signal, signal.SIGINT, signal.SIG_IGN)

    def received(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "report" and self._transport is not None:
            self._transport.write(encode(self.report()))
        elif kind == "whole":
            self._whole, self._whole_at = message, self._reactor.seconds()

    def report(self) -> dict[str, Any]:
        """This worker's numbers, for the supervisor to combine."""
        metrics = self._metrics
        return {
            "type": "report",
            "status": metrics.status(local=True),
            "public": metrics.status(public=True, local=True),
            "metrics": families(metrics.registry),
            "node": self._node,
        }

    def lost(self) -> None:
        """The pipe from the supervisor closed: it is gone (unless this
        worker is stopping anyway, which closes it too)."""
        self._transport = None
        if self.running:
            self._drain("the supervisor is gone: draining")

    def _fresh(self) -> dict[str, Any] | None:
        if self._whole is None or self._reactor.seconds() - self._whole_at > WHOLE_FRESH:
            return None
        return self._whole

    def status(self, public: bool) -> dict[str, Any] | None:
        whole = self._fresh()
        return None if whole is None else whole["public" if public else "status"]

    def exposition(self) -> bytes | None:
        whole = self._fresh()
        return None if whole is None else whole["metrics"].encode("utf-8")


class Admission(Service):
    """A full worker leaves new connections to the others.

    ``max_connections`` is each worker's (below its own open-file limit).
    A worker that has that many sessions stops accepting on the shared
    sockets while the whole server has room elsewhere, so the kernel hands
    new browsers to a worker that can take them rather than to one that
    could only answer 503 (Twisted accepts many connections per wake-up: a
    burst can land on one worker). When every worker is full, each goes on
    accepting and answers 503, as one chloed does.

    :param ports: the worker's listening ports (filled as they open).
    :param whole: the whole server's ``/status`` (None: not known).
    """

    def __init__(self, hub: Any, ports: list[Any], whole: Callable[[], dict[str, Any] | None], clock: Any) -> None:
        self._hub = hub
        self._ports = ports
        self._whole = whole
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock
        self.paused = False

    def startService(self) -> None:
        super().startService()
        self._loop.start(FULL_CHECK, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def check(self) -> None:
        pause = self._full() and self._room_elsewhere()
        if pause == self.paused:
            return
        self.paused = pause
        for port in self._ports:
            if pause:
                port.stopReading()
            else:
                port.startReading()
        # (debug: near the limit this may turn at every session)
        log.debug("{what}: {sessions} sessions", sessions=len(self._hub.broker.sessions),
                 what="full, leaving new connections to the other workers" if pause else "accepting again")

    def _full(self) -> bool:
        return len(self._hub.broker.sessions) >= self._hub.config.max_connections

    def _room_elsewhere(self) -> bool:
        whole = self._whole()
        return whole is not None and whole["sessions"] < whole["max_connections"]


def make_worker(config: Config, reactor: Any, spec: WorkerSpec) -> ChloeService:
    """The server of worker ``spec.index``: chloed on the supervisor's
    sockets, linked to the supervisor."""
    ports: list[Any] = []

    def kept(listen: Callable[[IProtocolFactory], IListeningPort]) -> Callable[[IProtocolFactory], IListeningPort]:
        def keep(factory: IProtocolFactory) -> IListeningPort:
            port = listen(factory)
            ports.append(port)
            return port

        return keep

    listeners = [kept(adopter(reactor, fd, description)) for fd, description in zip(spec.listen, config.listen)]
    service = make_service(config, reactor, listeners=listeners)
    # The memory backend has no node id (and is refused with workers).
    node = getattr(service.hub.broker, "node", None)
    link = WorkerLink(spec.index, service.metrics, service.drain, node, reactor)
    link.setServiceParent(service)
    service.metrics.whole = link
    # Stopped before the listeners: none is read again once they close.
    Admission(service.hub, ports, lambda: link.status(public=False), reactor).setServiceParent(service)
    log.info("worker {index}, node {node}", index=spec.index, node=node)
    return service


@implementer(ILogObserver)
class _Tagged:
    """``observer``, each event tagged with this worker's index: a
    ``worker`` field (in JSON logs), and ``worker N`` in the text log's
    ``[system]``."""

    def __init__(self, observer: ILogObserver) -> None:
        spec = spec_from(os.environ)
        self._index = -1 if spec is None else spec.index
        self._observer = observer

    def __call__(self, event: dict[str, Any]) -> None:
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{getattr(level, 'name', '-')}"
        self._observer({**event, "worker": self._index, "log_system": f"worker {self._index} {system}"})


def text_observer() -> ILogObserver:
    """twistd's ``--logger`` for a worker's text log, on stdout."""
    return _Tagged(textFileLogObserver(sys.stdout))


def json_observer() -> ILogObserver:
    """twistd's ``--logger`` for a worker's JSON log, on stdout."""
    return _Tagged(logs.json_observer())


__all__ = ["SPEC_ENV", "WorkerLink", "adopter", "json_observer", "make_worker", "text_observer"]
