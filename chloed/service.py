"""``make_service``: the one place that wires Chloe's parts together.

Stopping runs in the reverse order of wiring: the listeners stop accepting
first, then every session is told ``shutting_down``, then the relay gets up
to ``upstream_timeout`` to hand the app what it still holds, and the
connection pool to the app closes last.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
from typing import Any, Callable, Sequence

from twisted.application import strports
from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet import defer, tcp
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from chloed import __version__
from chloed.backends import make_backend
from chloed.config import Config
from chloed.hub import Hub
from chloed.pusher.protocol import PusherProtocol
from chloed.pusher.webhooks import Webhooks
from chloed.metrics import Metrics
from chloed.relay import MAX_LANES_IN_FLIGHT, Relay
from chloed.spool.base import Spool
from chloed.spool.memory import MemorySpool
from chloed.web import make_site

log = Logger()

SWEEP_INTERVAL = 60.0
STATUS_INTERVAL = 1.0
# How long the drain waits for connections to write their last frames, and
# how often it looks.
LINGER = 5.0
FLUSH_CHECK = 0.01

# Descriptors chloed keeps out of max_connections, so that with every
# browser place taken the app's API and the relay still get theirs (at
# EMFILE Twisted resets every new connection, the app's with the rest):
#
#   headroom = PROCESS_FDS + listeners + 2 (Redis) + MAX_LANES_IN_FLIGHT (relay)
#              + API_FDS + open-file limit // 20
#
# PROCESS_FDS: stdio, log files, epoll, the reactor's waker, Twisted's own
# reserve descriptor and what the libraries keep open. Redis holds two
# connections (commands and pub/sub). The relay holds at most one connection
# to the app per lane in flight (its pool keeps no more idle ones). API_FDS:
# the app's own concurrent requests (/send, /status, /health, /channels).
# The 5 % are browser connections that are not (or not yet) sessions: a
# WebSocket handshake in progress, a request being answered 503 until the
# browser closes it, a half-open or slow client (cut off after 30 s), and
# the POST /session keep-alive an SSE or long-poll session sends frames on.
# Sessions stand in for browser descriptors: a held poll has one, a polling
# session between polls has none, so the count errs on the safe side.
PROCESS_FDS = 16
API_FDS = 64
SPARE_SHARE = 20  # one descriptor in 20


def reserved_fds(config: Config) -> int:
    """The part of the headroom that does not grow with the open-file limit."""
    fixed = PROCESS_FDS + len(config.listen) + API_FDS
    if config.backend != "memory":
        # Two connections to each Redis (commands, pub/sub): to each shard.
        fixed += 2 * (1 if isinstance(config.backend, str) else len(config.backend))
    if config.application_server_url is not None:
        fixed += MAX_LANES_IN_FLIGHT
    return fixed


def browser_limit(max_connections: int, nofile: int, reserved: int) -> int:
    """How many browsers ``nofile`` open files allow: ``max_connections``
    at most, at least 1 (a lower number would refuse everyone)."""
    return max(1, min(max_connections, nofile - reserved - nofile // SPARE_SHARE))


def files_needed(max_connections: int, reserved: int) -> int:
    """The smallest open-file limit under which :func:`browser_limit` is
    ``max_connections``: ``n - n // 20 >= k`` first holds at
    ``n = 20 (k - 1) // 19 + 1``."""
    k = max_connections + reserved
    return SPARE_SHARE * (k - 1) // (SPARE_SHARE - 1) + 1


def open_file_limit(wanted: int) -> int:
    """This process's open-file limit, its soft limit raised first toward
    ``wanted`` (never above the hard limit), as systemd expects of a server
    that needs many: its default soft limit stays 1024 for select()'s sake.

    :returns: the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target <= soft:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warn("could not raise the open-file limit from {soft} to {target}: {why}", soft=soft, target=target, why=exc)
        return soft
    log.info(
        "raised the open-file limit from {soft} to {target} (hard limit {hard}) for max_connections",
        soft=soft, target=target, hard="unlimited" if hard == resource.RLIM_INFINITY else hard,
    )
    return target


def cap_connections(config: Config, open_files: Callable[[int], int]) -> Config:
    """``config`` with ``max_connections`` lowered to what the open-file
    limit allows (see the headroom above), saying so when it is lowered.

    :param open_files: given the limit wanted, returns the limit there is.
    """
    reserved = reserved_fds(config)
    nofile = open_files(files_needed(config.max_connections, reserved))
    effective = browser_limit(config.max_connections, nofile, reserved)
    if effective >= config.max_connections:
        return config
    # Info, not a warning: with the default max_connections this is most
    # machines, and the limit in force is what /status says.
    log.info(
        "max_connections {configured} is above what {nofile} open files allow: browsers are capped at "
        "{effective} (raise LimitNOFILE= or ulimit -n)",
        configured=config.max_connections, nofile=nofile, effective=effective,
    )
    return config.replace(max_connections=effective)


def make_http_client(reactor: Any) -> Any:
    """The relay's client (:class:`AppClient`, treq's ``post`` without
    treq) and its pool, which keeps connections to the app open."""
    from twisted.web.client import HTTPConnectionPool

    from chloed.relay import AppClient

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = MAX_LANES_IN_FLIGHT
    pool.cachedConnectionTimeout = 120
    # Only for idempotent requests without a body: never a relayed POST.
    pool.retryAutomatically = False
    return AppClient(reactor, pool), pool


def _writing(reactor: Any) -> list[Any]:
    """The accepted connections that still hold bytes the kernel has not
    taken (a transport with unsent data is registered for writing)."""
    get_writers = getattr(reactor, "getWriters", None)
    if get_writers is None:
        return []
    return [w for w in get_writers() if isinstance(w, tcp.Server)]


def flushed(reactor: Any, linger: float) -> defer.Deferred[None]:
    """Fires once every accepted connection has written what it holds, or
    after ``linger`` seconds, whichever is first.

    When the reactor stops it drops every connection without writing what
    is still buffered, so the last answers (``shutting_down`` on a held
    poll, an SSE stream, a WebSocket) would be lost; this is the wait for
    them, bounded, as a reader that does not read holds its bytes.
    """
    done: defer.Deferred[None] = defer.Deferred()
    deadline = reactor.seconds() + linger

    def check() -> None:
        left = _writing(reactor)
        if not left:
            done.callback(None)
        elif reactor.seconds() >= deadline:
            log.info("{n} connections did not take their last bytes in time", n=len(left))
            done.callback(None)
        else:
            reactor.callLater(FLUSH_CHECK, check)

    check()
    return done


class _Sessions(Service):
    """Ends every session (``shutting_down``) when the server stops, and
    waits (at most ``LINGER`` seconds) until their connections have written
    it."""

    def __init__(self, hub: Hub, reactor: Any) -> None:
        self.hub = hub
        self.reactor = reactor

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self.hub.shutdown()
        return flushed(self.reactor, LINGER)


#: Seconds between tries to start a Redis spool while Redis is away.
SPOOL_RETRY = 5.0

#: Retries of a Pusher webhook when ``upstream_retries`` is not set (its
#: relay has no spool and no ``relay_ttl``).
WEBHOOK_RETRIES = 5


def make_spool(config: Config, reactor: Any, broker: Any) -> Spool:
    """The relay's spool that ``relay_spool`` (or the backend) names."""
    kind = config.spool
    if kind == "disk":
        from chloed.spool.disk import DiskSpool

        assert config.relay_spool_path is not None  # (Config.check)
        return DiskSpool(config.relay_spool_path, reactor)
    if kind == "redis":
        from chloed.spool.redis import RedisSpool

        return RedisSpool(broker.link.call, broker.node, reactor)
    return MemorySpool()


class _SpoolService(Service):
    """Opens the relay's spool (queueing what it kept) and closes it last.

    A spool that cannot be opened is no server to run: one line, and the
    process ends with status 1 (chloed's start-up check of the directory,
    :func:`chloed.tap`, catches most causes before this).
    """

    def __init__(self, relay: Relay, reactor: Any) -> None:
        self.relay = relay
        self.reactor = reactor

    def startService(self) -> None:
        super().startService()
        self._start()

    def _start(self) -> None:
        self.relay.start().addErrback(self._failed)

    def _failed(self, failure: Failure) -> None:
        if self.relay.spool.name != "disk":
            # Redis away: appends fail (upstream_failed) until it is back.
            log.warn("the relay spool cannot start yet, trying again in {delay}s: {why}",
                     delay=SPOOL_RETRY, why=failure.getErrorMessage())
            if self.running:
                self.reactor.callLater(SPOOL_RETRY, self._start)
            return
        log.critical("the relay spool cannot be used: {why}", why=failure.getErrorMessage())
        sys.stderr.write(f"chloe: relay_spool_path: {failure.getErrorMessage()}\n")
        sys.stderr.flush()
        os._exit(1)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        relay = self.relay
        if relay.queued:
            if relay.spool.durable:
                log.info("{n} relayed messages stay in the {spool} spool for later",
                         n=relay.queued, spool=relay.spool.name)
            else:
                log.warn("{n} relayed messages are lost: relay_spool is \"memory\"", n=relay.queued)
        return relay.spool.stop()


class _RelayDrain(Service):
    """Drains the relay within ``upstream_timeout``, then closes the pool."""

    def __init__(self, relay: Relay | None, pool: Any, clock: Any, timeout: float,
                 webhooks: Webhooks | None = None) -> None:
        self.relay = relay
        self.pool = pool
        self.clock = clock
        self.timeout = timeout
        self.webhooks = webhooks

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        waits: list[defer.Deferred[Any]] = []
        relay = self.relay
        if relay is not None and relay.queued:
            log.info("waiting for {queued} relayed messages", queued=relay.queued)
            waits.append(relay.when_idle().addErrback(lambda f: None))
        if self.webhooks is not None:
            waits.append(self.webhooks.when_idle().addErrback(lambda f: None))
        d: defer.Deferred[Any] = defer.gatherResults(waits) if waits else defer.succeed(None)
        if waits:
            d.addTimeout(self.timeout, self.clock)
            d.addErrback(lambda f: log.warn(
                "relay not drained in time: {n} left", n=relay.queued if relay is not None else 0
            ))
        if self.pool is not None:
            d.addBoth(lambda _: self.pool.closeCachedConnections())
        return d


class _Drain(Service):
    """SIGTERM drains and exits 0; a second SIGTERM exits at once.

    Twisted's own handler stops the reactor too, but then twistd ends the
    process with the signal (status 143), which systemd and supervisors
    report as a failure. This one stops the reactor plainly, so the other
    services' ``stopService`` (listeners, ``shutting_down``, the relay's
    flush) run and the exit status is 0.
    """

    def __init__(self, reactor: Any, hub: Hub) -> None:
        self.reactor = reactor
        self.hub = hub
        self.terms = 0

    def startService(self) -> None:
        super().startService()
        if hasattr(self.reactor, "callWhenRunning"):
            # After the reactor installed its own handlers, which it does
            # while starting up.
            self.reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        signal.signal(signal.SIGTERM, self.on_sigterm)

    def on_sigterm(self, signum: int, frame: Any = None) -> None:
        self.terms += 1
        if self.terms > 1:
            # Die by the signal, as an undrained stop should.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self.drain("SIGTERM: draining (a second SIGTERM stops at once)")

    def drain(self, why: str) -> None:
        """Drain and stop, as SIGTERM does; once (a worker whose supervisor
        is gone calls this too).

        :param why: the line logged.
        """
        if self.hub.draining:
            return
        self.hub.draining = True
        self.reactor.callFromThread(self._stop, why)

    def _stop(self, why: str) -> None:
        log.info(why)
        self.reactor.stop()


class _Listening(Service):
    """One listening socket of a worker: the supervisor's, adopted
    (:mod:`chloed.worker_process`); closed first when the server stops."""

    def __init__(self, listen: "Callable[[IProtocolFactory], IListeningPort]", site: Any) -> None:
        self._listen = listen
        self._site = site
        self._port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        self._port = self._listen(self._site)

    def stopService(self) -> Any:
        super().stopService()
        port, self._port = self._port, None
        return None if port is None else port.stopListening()


class InOrder(MultiService):
    """Services that stop one after the other, the last added first, each
    once the one before has finished (``MultiService`` stops them all at
    once)."""

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        Service.stopService(self)
        for service in reversed(list(self)):
            try:
                yield defer.maybeDeferred(service.stopService)
            except Exception:
                log.failure("stopping {service} failed", service=service)


class ChloeService(InOrder):
    """The running server; ``hub`` and ``site`` are there for tests.

    Its parts stop in order: the listening sockets are closed before any
    browser is told ``shutting_down``, so a reconnect cannot land on this
    process again.
    """

    hub: Hub
    site: Any
    metrics: Metrics
    #: Drains and stops the server, as SIGTERM does.
    drain: Callable[[str], None]


def make_service(
    config: Config, reactor: Any, http: Any = None, open_files: Callable[[int], int] = open_file_limit,
    listeners: Sequence[Callable[[IProtocolFactory], IListeningPort]] | None = None,
) -> ChloeService:
    """Build the whole server from ``config``.

    :param reactor: the reactor (a ``MemoryReactorClock`` in tests).
    :param http: a treq-like client for the relay; made from ``reactor``
        when None.
    :param open_files: given the open-file limit wanted, returns the one
        there is (:func:`open_file_limit` raises this process's); browsers
        are capped below it.
    :param listeners: a worker's: each starts listening with the site it
        is given, on a socket the supervisor opened; None listens on
        ``config.listen`` itself.
    """
    config = cap_connections(config, open_files)
    service = ChloeService()
    metrics = Metrics(reactor)
    broker = make_backend(
        config.backend, reactor, config.history_size, config.history_ttl, config.history_memory, config.policy
    )
    relay, pool = None, None
    if config.application_server_url is not None:
        if http is None:
            http, pool = make_http_client(reactor)
        relay = Relay(
            http,
            config.application_server_url,
            config.secret,
            reactor,
            config.upstream_timeout,
            config.upstream_retries,
            config.upstream_queue,
            observe=metrics.relay_latency.observe,
            batch=config.relay_batch,
            spool=make_spool(config, reactor, broker),
            ttl=config.relay_ttl,
            events_queue=config.events_queue,
            signature=config.relay_signature,
            observe_lag=metrics.relay_lag.observe,
        )
    hub = Hub(config, broker, reactor, relay)
    metrics.attach(hub)
    pusher, webhooks = None, None
    if config.pusher is not None:
        if http is None:
            http, pool = make_http_client(reactor)
        webhooks = Webhooks(
            config.pusher.apps, http, reactor, config.upstream_timeout,
            WEBHOOK_RETRIES if config.upstream_retries is None else config.upstream_retries, config.upstream_queue,
        )
        pusher = PusherProtocol(hub, config.pusher, webhooks)
    site = make_site(hub, metrics, pusher)
    service.hub, service.site, service.metrics = hub, site, metrics

    connector = broker.service()
    if connector is not None:
        # First in, last out: Redis stays connected while sessions end.
        connector.setServiceParent(service)
    if relay is not None:
        # Before the drains, so stopped after them: what they could not hand
        # the app is written before the spool closes.
        _SpoolService(relay, reactor).setServiceParent(service)
    drain = _Drain(reactor, hub)
    drain.setServiceParent(service)
    service.drain = drain.drain
    _RelayDrain(relay, pool, reactor, config.upstream_timeout, webhooks).setServiceParent(service)
    _Sessions(hub, reactor).setServiceParent(service)
    sweeper = TimerService(min(SWEEP_INTERVAL, max(config.history_ttl, 1.0)), broker.sweep)
    sweeper.clock = reactor
    sweeper.setServiceParent(service)
    # The status page's live numbers: a dict lookup a second while nobody looks.
    status_feed = TimerService(STATUS_INTERVAL, metrics.announce)
    status_feed.clock = reactor
    status_feed.setServiceParent(service)
    if listeners is None:
        for description in config.listen:
            strports.service(description, site, reactor=reactor).setServiceParent(service)
    else:
        for listen in listeners:
            _Listening(listen, site).setServiceParent(service)

    if not config.secret:
        log.warn(
            "no secret is configured: the HTTP API answers loopback clients only, "
            "relayed messages are unsigned and private channels are closed"
        )
    log.info(
        "chloe {version} on {listen}, relaying to {app}",
        version=__version__, listen=", ".join(config.listen),
        app=config.application_server_url or "no application",
    )
    return service
