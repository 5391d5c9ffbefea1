"""``make_service``: the one place that wires Chloe's parts together.

Stopping runs in the reverse order of wiring: the listeners stop accepting
first, then every session is told ``shutting_down``, then the relay gets up
to ``upstream_timeout`` to hand the app what it still holds, and the
connection pool to the app closes last.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.application import strports
from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.logger import Logger

from chloed import __version__
from chloed.backends import make_broker
from chloed.config import Config
from chloed.hub import Hub
from chloed.metrics import Metrics
from chloed.upstream import MAX_LANES_IN_FLIGHT, Relay
from chloed.web import make_site

log = Logger()

SWEEP_INTERVAL = 60.0
STATUS_INTERVAL = 1.0


def make_http_client(reactor: Any) -> Any:
    """A treq client whose pool keeps connections to the app open."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = MAX_LANES_IN_FLIGHT
    pool.cachedConnectionTimeout = 120
    return HTTPClient(Agent(reactor, pool=pool)), pool


class _Sessions(Service):
    """Ends every session (``shutting_down``) when the server stops."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def stopService(self) -> None:
        super().stopService()
        self.hub.shutdown()


class _Upstream(Service):
    """Drains the relay within ``upstream_timeout``, then closes the pool."""

    def __init__(self, relay: Relay | None, pool: Any, clock: Any, timeout: float) -> None:
        self.relay = relay
        self.pool = pool
        self.clock = clock
        self.timeout = timeout

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        d: defer.Deferred[Any] = defer.succeed(None)
        if self.relay is not None and self.relay.queued:
            log.info("waiting for {queued} relayed messages", queued=self.relay.queued)
            d = self.relay.when_idle()
            d.addTimeout(self.timeout, self.clock)
            d.addErrback(lambda f: log.warn("relay not drained in time: {n} left", n=self.relay.queued))
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
        self.hub.draining = True
        self.reactor.callFromThread(self._stop)

    def _stop(self) -> None:
        log.info("SIGTERM: draining (a second SIGTERM stops at once)")
        self.reactor.stop()


class ChloeService(MultiService):
    """The running server; ``hub`` and ``site`` are there for tests.

    Its parts stop one after the other, each once the one before has
    finished (``MultiService`` would start them all at once): the listening
    sockets are closed before any browser is told ``shutting_down``, so a
    reconnect cannot land on this process again.
    """

    hub: Hub
    site: Any
    metrics: Metrics

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        Service.stopService(self)
        for service in reversed(list(self)):
            try:
                yield defer.maybeDeferred(service.stopService)
            except Exception:
                log.failure("stopping {service} failed", service=service)


def make_service(config: Config, reactor: Any, http: Any = None) -> ChloeService:
    """Build the whole server from ``config``.

    :param reactor: the reactor (a ``MemoryReactorClock`` in tests).
    :param http: a treq-like client for the relay; made from ``reactor``
        when None.
    """
    service = ChloeService()
    metrics = Metrics(reactor)
    broker = make_broker(config.backend, reactor, config.history_size, config.history_ttl)
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
        )
    hub = Hub(config, broker, reactor, relay)
    metrics.attach(hub)
    site = make_site(hub, metrics)
    service.hub, service.site, service.metrics = hub, site, metrics

    connector = getattr(broker, "service", None)
    if connector is not None:
        # First in, last out: Redis stays connected while sessions end.
        connector().setServiceParent(service)
    _Drain(reactor, hub).setServiceParent(service)
    _Upstream(relay, pool, reactor, config.upstream_timeout).setServiceParent(service)
    _Sessions(hub).setServiceParent(service)
    sweeper = TimerService(min(SWEEP_INTERVAL, max(config.history_ttl, 1.0)), broker.sweep)
    sweeper.clock = reactor
    sweeper.setServiceParent(service)
    # The status page's live numbers: a dict lookup a second while nobody looks.
    status_feed = TimerService(STATUS_INTERVAL, metrics.announce)
    status_feed.clock = reactor
    status_feed.setServiceParent(service)
    for description in config.listen:
        strports.service(description, site, reactor=reactor).setServiceParent(service)

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
