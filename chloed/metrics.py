"""What ``/status``, ``/metrics`` and the status page report.

Nothing here is on the path of a message: the hub, the broker and the relay
keep plain integer counters, and this module reads them when someone asks
(a scrape, a ``/status``, the status page's once-a-second tick). The only
things recorded as they happen are two latency histograms, each observed
once per publish or once per POST to the app: :class:`Histogram` is a
bisect and two additions, with no lock (the reactor thread is the only
writer).

``/metrics`` is produced by prometheus-client: :class:`ChloeCollector`
turns the counters into metric families at scrape time, in a registry of
this server's own (so several servers in one process, as in tests, never
share a metric), next to prometheus-client's ``ProcessCollector`` for the
process's memory, CPU and file descriptors.
"""

from __future__ import annotations

import heapq
import os
from bisect import bisect_left
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from twisted.internet.interfaces import IReactorTime

from chloed import __version__, frames, tokens
from chloed.lograte import ClientErrors
from chloed.pusher.names import is_pusher

if TYPE_CHECKING:
    from chloed.backends.redis.liveness import Liveness
    from chloed.hub import Hub

#: Where the status page listens; the server publishes a snapshot there once
#: a second while anyone is subscribed (and never otherwise).
STATUS_CHANNEL = frames.STATUS_CHANNEL

#: Seconds to fan one publish out: from a few microseconds (one subscriber)
#: to most of a second (a hundred thousand).
FANOUT_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)
#: Seconds one POST to the app took, as treq saw it.
RELAY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: Seconds from a relayed message's arrival to the app's 2xx for it: from a
#: millisecond to relay_ttl's day.
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0, 21600.0, 86400.0)

#: How many channels the status page and ``/status`` list by name.
TOP_CHANNELS = 8


class Histogram:
    """Observations counted into fixed buckets (upper bounds, seconds).

    :param bounds: increasing upper bounds; everything above the last one
        lands in the ``+Inf`` bucket.
    """

    __slots__ = ("bounds", "counts", "count", "sum")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, count of observations <= le)`` pairs, ``+Inf`` last, as
        Prometheus wants them."""
        out, running = [], 0
        for bound, n in zip(self.bounds + (float("inf"),), self.counts):
            running += n
            out.append((floatToGoString(bound), float(running)))
        return out

    def quantile(self, q: float) -> float | None:
        """An upper bound of the ``q`` quantile (the bucket it falls in);
        None with no observations, the last bound when it is beyond."""
        if not self.count:
            return None
        rank = q * self.count
        running = 0
        for bound, n in zip(self.bounds, self.counts):
            running += n
            if running >= rank:
                return bound
        return self.bounds[-1]

    def summary(self) -> dict[str, Any]:
        """Count, sum and the bucket bounds of the median and the 99th
        percentile, for JSON."""
        return {"count": self.count, "sum": self.sum, "p50": self.quantile(0.5), "p99": self.quantile(0.99)}


def process_stats(proc: str = "/proc/self") -> dict[str, int] | None:
    """Resident memory (bytes) and open file descriptors of this process,
    read from ``statm`` and ``fd`` under ``proc``; None where there is no
    such thing (not Linux)."""
    try:
        with open(os.path.join(proc, "statm"), "rb") as f:
            resident_pages = int(f.read().split()[1])
        fds = len(os.listdir(os.path.join(proc, "fd")))
    except (OSError, ValueError, IndexError):
        return None
    return {"rss_bytes": resident_pages * os.sysconf("SC_PAGE_SIZE"), "open_fds": fds}


@dataclass(frozen=True, slots=True)
class Probes:
    """The probes of the pub/sub connections: of the one Redis, or summed
    over the shards (``seconds``: the slowest last round trip)."""

    probes: int
    failures: int
    heals: int
    seconds: float | None


def _liveness(broker: Any) -> Probes | None:
    """The Redis backend's probes of its pub/sub connection(s)
    (:mod:`chloed.backends.redis.liveness`); None with the memory backend,
    which has no connection to probe."""
    if broker.backend != "redis":
        return None
    shards = getattr(broker, "shards", None) or [broker]
    each: list[Liveness] = [s.liveness for s in shards if getattr(s, "liveness", None) is not None]
    if not each:
        return None
    times = [p.seconds for p in each if p.seconds is not None]
    return Probes(
        sum(p.probes for p in each), sum(p.failures for p in each), sum(p.heals for p in each),
        max(times) if times else None,
    )


def backend_status(broker: Any) -> dict[str, Any]:
    """``/status``'s ``backend``: its kind and state and, with Redis, the
    probes of its pub/sub connection (sent, missed, heals, last round trip)."""
    status: dict[str, Any] = {"kind": broker.backend, "state": broker.backend_state}
    liveness = _liveness(broker)
    if liveness is not None:
        status.update(
            probes=liveness.probes, probe_failures=liveness.failures, heals=liveness.heals,
            probe_seconds=liveness.seconds,
        )
    return status


def channel_counts(channels: Any) -> tuple[int, int]:
    """The channels and their subscriptions, users' own channels (``#u:…``,
    one per authenticated session) left out: they are no channel anyone
    subscribed to."""
    count = subscriptions = 0
    for name, channel in channels.items():
        if name[:1] != "#":
            count += 1
            subscriptions += len(channel.subscribers)
    return count, subscriptions


def _age(since: float | None, clock: IReactorTime) -> float | None:
    return None if since is None else max(0.0, clock.seconds() - since)


class WholeServer(Protocol):
    """The whole server's ``/status`` and ``/metrics`` when this process
    is one of its workers (:mod:`chloed.worker_process`): what the
    supervisor last combined (:mod:`chloed.worker_status`), or None when
    there is nothing recent enough."""

    def status(self, public: bool) -> dict[str, Any] | None: ...

    def exposition(self) -> bytes | None: ...


class Metrics:
    """The histograms, the start time and the registry of one server.

    Built before the pieces it watches (the relay takes
    ``relay_latency.observe`` when it is made), then :meth:`attach` ed to
    the hub.

    :param clock: the reactor's time, for the uptime.
    :param proc: where this process's ``/proc`` entries are.
    """

    def __init__(self, clock: IReactorTime, proc: str = "/proc/self") -> None:
        self.clock = clock
        self.started = clock.seconds()
        self.proc = proc
        self.fanout = Histogram(FANOUT_BUCKETS)
        self.relay_latency = Histogram(RELAY_BUCKETS)
        self.relay_lag = Histogram(LAG_BUCKETS)
        self.hub: Hub | None = None
        self.registry = CollectorRegistry()
        #: With workers, the whole server's numbers, answered in place of
        #: this process's own (None: one process, or none received yet).
        self.whole: WholeServer | None = None

    def attach(self, hub: Hub) -> "Metrics":
        """Watch ``hub`` (its broker and relay): time the broker's fan-outs,
        and register the collectors."""
        self.hub = hub
        hub.broker.observe_fanout = self.fanout.observe
        self.registry.register(ChloeCollector(self))
        ProcessCollector(registry=self.registry)
        return self

    @property
    def client_errors(self) -> ClientErrors:
        """What clients got wrong: the hub counts it (its own, and its
        transports')."""
        assert self.hub is not None, "Metrics.attach(hub) first"
        return self.hub.client_errors

    def exposition(self, local: bool = False) -> bytes:
        """The Prometheus text exposition of everything: the whole
        server's with workers (:attr:`whole`), unless ``local``."""
        if self.whole is not None and not local:
            whole = self.whole.exposition()
            if whole is not None:
                return whole
        return generate_latest(self.registry)

    # -- snapshots ----------------------------------------------------------

    def status(self, public: bool = False, local: bool = False) -> dict[str, Any]:
        """Everything ``/status`` answers, as JSON-able values: the whole
        server's with workers (:attr:`whole`), unless ``local``.

        :param public: what the public status page may see: channels that
            need a token (``private-``, ``presence-``) are counted but never
            named, and nothing about the process or the host is included.
        """
        if self.whole is not None and not local:
            whole = self.whole.status(public)
            if whole is not None:
                return whole
        hub = self.hub
        assert hub is not None, "Metrics.attach(hub) first"
        broker = hub.broker
        relay = hub.relay
        channel_count, subscription_count = channel_counts(broker.channels)
        now = self.clock.seconds()
        state: dict[str, Any] = {
            "version": __version__,
            "time": now,
            "uptime": now - self.started,
            "draining": hub.draining,
            "backend": backend_status(broker),
            "connections": self.connections(),
            "sessions": len(broker.sessions),
            "channels": channel_count,
            "subscriptions": subscription_count,
            "messages": {
                "published": broker.published,
                "delivered": broker.delivered,
                "from_browsers": hub.sent_by_browsers,
                "frames_received": hub.frames_received,
            },
            "slow_consumers": hub.slow_consumers,
            "rate_limited": hub.rate_limited,
            "client_errors": dict(self.client_errors.counts),
            "fanout_seconds": self.fanout.summary(),
            "relay": None,
            "top_channels": self.top_channels(public),
        }
        if relay is not None:
            stats = relay.stats
            state["relay"] = {
                "queued": relay.queued,
                "in_flight": relay.in_flight,
                "queue_size": relay.queue_size,
                "delivered": stats.delivered,
                "retries": stats.retries,
                "failures": stats.failures,
                "rejections": stats.rejections,
                "overflows": stats.overflows,
                "latency_seconds": self.relay_latency.summary(),
                "lag_seconds": self.relay_lag.summary(),
                "spool": relay.spool.name,
                "durable": relay.spool.durable,
                "depth": relay.queued,
                "bytes": relay.queued_bytes,
                "oldest_seconds": _age(relay.oldest(), self.clock),
                "dead_letters": relay.spool.dead_count(),
                "dead_lettered": stats.dead,
                "spool_failures": stats.spool_failures,
                "recovered": stats.recovered,
                "events": {
                    "queued": relay.queued_events,
                    "queue_size": relay.events_queue,
                    "failures": stats.event_failures,
                    "overflows": stats.event_overflows,
                },
            }
        if hub.pusher is not None and not public:
            state["pusher"] = hub.pusher.status()
        if not public:
            # The limit in force: max_connections, capped below the open-file limit.
            state["max_connections"] = hub.config.max_connections
            state["users"] = len(hub.auth.users)
            state["limits"] = self.limits()
            state["process"] = process_stats(self.proc)
        return state

    def limits(self) -> dict[str, Any]:
        """Each limit of users, addresses and history, and its refusals:
        ``history_bytes`` is what this process's history holds (None with
        Redis, which holds it)."""
        hub = self.hub
        assert hub is not None
        config, refused = hub.config, hub.auth.refused
        return {
            "max_connections_per_user": config.max_connections_per_user,
            "refused_per_user": refused["user"],
            "max_connections_per_ip": config.max_connections_per_ip,
            "refused_per_ip": refused["ip"],
            "tokens_refused": refused["token"],
            "history_memory": config.history_memory,
            "history_bytes": getattr(hub.broker, "history_bytes", None) if hub.broker.backend == "memory" else None,
        }

    def connections(self) -> dict[str, int]:
        """Open connections per transport, every served transport named."""
        hub = self.hub
        assert hub is not None
        counts = {name: 0 for name in hub.config.transports}
        for name, n in hub.connections.items():
            counts[name] = n
        return counts

    def top_channels(self, public: bool) -> dict[str, Any]:
        """The channels with the most subscribers, and what is not listed.

        :param public: leave out the names of channels that need a token;
            they are only counted under ``hidden``.
        """
        hub = self.hub
        assert hub is not None
        listed, hidden, hidden_subscribers = [], 0, 0
        for channel in hub.broker.channels.values():
            if frames.is_user_channel(channel.name) or (
                public and (tokens.needs_token(channel.name) or is_pusher(channel.name))
            ):
                hidden += 1
                hidden_subscribers += len(channel.subscribers)
            else:
                listed.append(channel)
        top = heapq.nlargest(TOP_CHANNELS, listed, key=lambda c: len(c.subscribers))
        return {
            "top": [{"name": c.name, "subscribers": len(c.subscribers)} for c in top],
            "hidden": {"channels": hidden, "subscribers": hidden_subscribers},
        }

    def announce(self) -> int:
        """Publish the public snapshot to :data:`STATUS_CHANNEL` if anyone
        is subscribed; kept in no history, counted as no message. Returns
        how many subscribers got it (0 costs one dict lookup)."""
        hub = self.hub
        assert hub is not None
        channel = hub.broker.channels.get(STATUS_CHANNEL)
        if channel is None or not channel.subscribers:
            return 0
        frame = frames.message(STATUS_CHANNEL, None, frames.dumps(self.status(public=True)))
        return hub.broker.announce(STATUS_CHANNEL, frame, None)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _histogram(name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=histogram.cumulative(), sum_value=histogram.sum)


class ChloeCollector(Collector):
    """Chloe's counters as Prometheus metric families, read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics
        hub = metrics.hub
        assert hub is not None
        broker = hub.broker
        info = GaugeMetricFamily("chloe_info", "Chloe's version; always 1.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield _gauge("chloe_uptime_seconds", "Seconds since this server started.",
                     metrics.clock.seconds() - metrics.started)
        yield _gauge("chloe_draining", "1 while the server is shutting down, else 0.", 1 if hub.draining else 0)
        backend = GaugeMetricFamily(
            "chloe_backend_up", "1 when the backend holding channels is up, else 0.", labels=["backend", "state"]
        )
        backend.add_metric([broker.backend, broker.backend_state], 1 if broker.backend_state == "up" else 0)
        yield backend
        yield from _liveness_metrics(_liveness(broker))
        connections = GaugeMetricFamily(
            "chloe_connections", "Open browser connections (polls being held, for long-poll and JSONP).",
            labels=["transport"],
        )
        for transport, n in metrics.connections().items():
            connections.add_metric([transport], n)
        yield connections
        yield _gauge("chloe_sessions", "Browser sessions, connected or within their grace.", len(broker.sessions))
        channel_count, subscription_count = channel_counts(broker.channels)
        yield _gauge("chloe_channels", "Channels with subscribers or retained history.", channel_count)
        yield _gauge("chloe_subscriptions", "Subscriptions, summed over channels.", subscription_count)
        yield _counter("chloe_messages_published_total",
                       "Messages published (one per channel of a /send, one per broadcast or direct message).",
                       broker.published)
        yield _counter("chloe_messages_delivered_total",
                       "Messages handed to sessions (written, or held for their next poll).", broker.delivered)
        yield _counter("chloe_browser_messages_total", "send frames from browsers.", hub.sent_by_browsers)
        yield _counter("chloe_frames_received_total", "Frames received from browsers, of every type.",
                       hub.frames_received)
        yield _counter("chloe_slow_consumers_total",
                       "Sessions dropped because more than outbound_buffer_bytes waited for them.",
                       hub.slow_consumers)
        yield _counter("chloe_rate_limited_total", "Browser frames refused with rate_limited.", hub.rate_limited)
        limits = metrics.limits()
        yield _gauge("chloe_users", "Users with a session on this node (by their connection tokens).",
                     len(hub.auth.users))
        refused = CounterMetricFamily(
            "chloe_connections_refused_total",
            "Connections refused by max_connections_per_user or max_connections_per_ip.", labels=["limit"],
        )
        refused.add_metric(["user"], limits["refused_per_user"])
        refused.add_metric(["ip"], limits["refused_per_ip"])
        yield refused
        yield _counter("chloe_tokens_refused_total",
                       "Connection tokens refused: missing, invalid, expired, revoked.", limits["tokens_refused"])
        yield _gauge("chloe_history_memory_bytes", "history_memory: the bytes all channels' history may hold.",
                     limits["history_memory"])
        if limits["history_bytes"] is not None:
            yield _gauge("chloe_history_bytes", "Bytes the history of every channel holds (memory backend).",
                         limits["history_bytes"])
        client_errors = CounterMetricFamily(
            "chloe_client_errors_total",
            "Client mistakes by kind: WebSockets failed with 1002, 1007 or 1009; upgrades refused with a 4xx.",
            labels=["kind"],
        )
        for kind, n in sorted(metrics.client_errors.counts.items()):
            client_errors.add_metric([kind], n)
        yield client_errors
        yield _histogram("chloe_fanout_seconds", "Seconds spent fanning one publish out to its subscribers.",
                         metrics.fanout)
        if hub.pusher is not None:
            yield from _pusher_metrics(hub.pusher.status())
        relay = hub.relay
        if relay is None:
            return
        stats = relay.stats
        yield _gauge("chloe_relay_queued", "Messages for the app queued or in flight.", relay.queued)
        yield _gauge("chloe_relay_in_flight", "POSTs to the app awaiting an answer.", relay.in_flight)
        yield _gauge("chloe_relay_queue_size", "upstream_queue: the bound of chloe_relay_queued.", relay.queue_size)
        yield _counter("chloe_relay_delivered_total", "Messages the app accepted (2xx).", stats.delivered)
        yield _counter("chloe_relay_retries_total", "POSTs to the app tried again.", stats.retries)
        yield _counter("chloe_relay_failures_total",
                       "Messages given up on (retries exhausted or queue full): upstream_failed.", stats.failures)
        yield _counter("chloe_relay_rejections_total", "Messages the app refused with a 4xx: upstream_rejected.",
                       stats.rejections)
        yield _counter("chloe_relay_overflows_total", "Messages refused at once because the queue was full.",
                       stats.overflows)
        yield _histogram("chloe_relay_latency_seconds", "Seconds one accepted POST to the app took.",
                         metrics.relay_latency)
        yield _histogram("chloe_relay_lag_seconds",
                         "Seconds from a message's arrival to the app's 2xx for it, queue wait and retries included.",
                         metrics.relay_lag)
        yield _gauge("chloe_relay_spool_depth", "Records in the relay's spool: queued, spooling or in flight.",
                     relay.queued)
        yield _gauge("chloe_relay_spool_bytes", "Bytes of the bodies in chloe_relay_spool_depth.", relay.queued_bytes)
        yield _gauge("chloe_relay_oldest_seconds", "Age of the oldest record waiting for the app (0: none).",
                     _age(relay.oldest(), metrics.clock) or 0)
        yield _gauge("chloe_relay_dead_letters", "Dead letters kept (GET /relay/dead).", relay.spool.dead_count())
        yield _counter("chloe_relay_dead_lettered_total", "Records made dead letters.", stats.dead)
        yield _counter("chloe_relay_spool_failures_total",
                       "Messages the spool could not take (the browser heard upstream_failed).",
                       stats.spool_failures)
        yield _gauge("chloe_relay_events_queued", "Lifecycle events queued or in flight.", relay.queued_events)
        yield _counter("chloe_relay_event_failures_total",
                       "Lifecycle events not delivered (dead letters, or refused when events_queue was full).",
                       stats.event_failures)
        yield _counter("chloe_relay_event_overflows_total", "Lifecycle events refused because events_queue was full.",
                       stats.event_overflows)


def _liveness_metrics(liveness: Probes | None) -> Iterator[Metric]:
    """The probes of the Redis pub/sub connection (none with memory)."""
    if liveness is None:
        return
    yield _counter("chloe_redis_probes_total", "Probes sent through Redis pub/sub to this node's own channel.",
                   liveness.probes)
    yield _counter("chloe_redis_probe_failures_total",
                   "Probes not back within the timeout: the pub/sub connection was torn down.", liveness.failures)
    yield _counter("chloe_redis_heals_total",
                   "Pub/sub connections torn down after a missed probe whose replacement answered a probe.",
                   liveness.heals)
    if liveness.seconds is not None:
        yield _gauge("chloe_redis_probe_seconds", "Round trip of the last probe answered.", liveness.seconds)


def _pusher_metrics(status: dict[str, Any]) -> Iterator[Metric]:
    """The Pusher layer's counters (see ``/status``'s ``pusher``)."""
    sockets = GaugeMetricFamily("chloe_pusher_sockets", "Open Pusher sockets, per app.", labels=["app"])
    for app, n in status["sockets"].items():
        sockets.add_metric([app], n)
    yield sockets
    yield _counter("chloe_pusher_client_events_total", "Client events published.", status["client_events"])
    yield _counter("chloe_pusher_refused_frames_total",
                   "Frames of Pusher clients refused with pusher:error or pusher:subscription_error.",
                   status["refused_frames"])
    yield _counter("chloe_pusher_api_requests_total", "Requests to the Pusher HTTP API.", status["api_requests"])
    yield _counter("chloe_pusher_api_refused_total", "Requests to the Pusher HTTP API refused (4xx, 5xx).",
                   status["api_refused"])
    for field, doc in (
        ("delivered", "Webhook events the app accepted."),
        ("failed", "Webhook events not delivered: retries exhausted, or the queue full."),
        ("rejected", "Webhook events the app refused with a 4xx."),
    ):
        family = CounterMetricFamily(f"chloe_pusher_webhooks_{field}_total", doc, labels=["app"])
        for app, counts in status["webhooks"].items():
            family.add_metric([app], counts[field])
        yield family
