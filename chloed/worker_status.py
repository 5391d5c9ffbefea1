"""The whole server's ``/status`` and ``/metrics`` out of its workers'.

With ``workers > 1`` each worker reports its own numbers to the supervisor
once a second (:mod:`chloed.workers`); the supervisor combines them here
and sends the result back to every worker, which answers it. So whichever
worker a request lands on, it answers for the whole server, at most about a
second old, with a per-worker breakdown.

The rule for combining a number is what it means: counts and totals
(connections, sessions, messages, memory, descriptors) are summed; a bound
of one process (``limits``' settings, ``process_max_fds``), a worst case
(an age, a percentile's bucket, a probe's round trip) or a flag
(``chloe_draining``, ``chloe_backend_up``) is the largest; the version, the
time and the uptime are the server's, i.e. the supervisor's. A few sums
count a thing once per worker that holds it: a channel with subscribers on
two workers is two of ``channels``, a user with sessions on both is two of
``users``. ``top_channels`` adds up the workers' own top lists, so a
channel just outside them can be missing.
"""

from __future__ import annotations

import heapq
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily, CounterMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from chloed import __version__
from chloed.metrics import TOP_CHANNELS

#: A metric family as it travels on the pipe: name, type, help, and its
#: samples as ``[sample name, labels, value]``.
Family = list[Any]


@dataclass(frozen=True)
class WorkerRow:
    """One worker in ``/status``'s ``workers``.

    :param up: it runs and has reported; a worker being restarted is listed
        with ``up`` false, its pid None and zeros.
    :param restarts: how often a worker of this index was started again.
    """

    index: int
    pid: int | None
    node: str | None
    up: bool
    sessions: int
    connections: int
    uptime: float | None
    restarts: int
    rss_bytes: int | None
    open_fds: int | None


def worker_row(index: int, pid: int | None, restarts: int, uptime: float | None,
               report: Mapping[str, Any] | None) -> WorkerRow:
    """A worker's row from its last report (None: it has not reported)."""
    if report is None:
        return WorkerRow(index, pid, None, False, 0, 0, uptime, restarts, None, None)
    status = report["status"]
    process = status.get("process") or {}
    return WorkerRow(
        index, pid, report.get("node"), True, status["sessions"], sum(status["connections"].values()), uptime,
        restarts, process.get("rss_bytes"), process.get("open_fds"),
    )


# -- /status --------------------------------------------------------------


def _largest(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _state(values: list[Any]) -> Any:
    """The backend's state: ``up`` only when every worker's is."""
    order = {"up": 0, "degraded": 1, "down": 2}
    return max(values, key=lambda v: order.get(v, 1))


def _top(values: list[Any]) -> dict[str, Any]:
    """``top_channels``: every worker's top list added up by name."""
    subscribers: dict[str, int] = {}
    for top in values:
        for entry in top["top"]:
            subscribers[entry["name"]] = subscribers.get(entry["name"], 0) + entry["subscribers"]
    best = heapq.nlargest(TOP_CHANNELS, subscribers.items(), key=lambda item: item[1])
    return {
        "top": [{"name": name, "subscribers": n} for name, n in best],
        "hidden": combine([top["hidden"] for top in values]),
    }


#: How a value is combined when its path (keys from the top, joined by
#: ``.``) or its own key says so; everything else is :func:`combine` d.
BY_PATH: dict[str, Callable[[list[Any]], Any]] = {
    "backend.state": _state,
    "top_channels": _top,
    "relay.durable": all,
    # Cluster-wide already (the Redis spool's), so each worker says the same.
    "relay.dead_letters": _largest,
    "limits.max_connections_per_user": _largest,
    "limits.max_connections_per_ip": _largest,
    "limits.history_memory": _largest,
}
BY_KEY: dict[str, Callable[[list[Any]], Any]] = {
    "p50": _largest,
    "p99": _largest,
    "oldest_seconds": _largest,
    "probe_seconds": _largest,
}


def combine(values: list[Any], path: str = "") -> Any:
    """One value out of the workers' ``values`` of the same place in their
    status: numbers summed, flags or'ed, mappings combined key by key, any
    other value (a name, a kind) the first worker's; :data:`BY_PATH` and
    :data:`BY_KEY` name the exceptions. None (a part a worker does not
    have) counts as absent."""
    rule = BY_PATH.get(path) or BY_KEY.get(path.rpartition(".")[2])
    present = [v for v in values if v is not None]
    if rule is not None:
        return rule(present) if present else None
    if not present:
        return None
    first = present[0]
    if isinstance(first, bool):
        return any(present)
    if isinstance(first, (int, float)):
        return sum(present)
    if isinstance(first, dict):
        keys: dict[str, None] = {}
        for value in present:
            keys.update(dict.fromkeys(value))
        return {key: combine([v.get(key) for v in present], f"{path}.{key}" if path else key) for key in keys}
    return first


def combine_status(statuses: Sequence[Mapping[str, Any]], *, now: float, uptime: float,
                   process: Mapping[str, int] | None = None, rows: Sequence[WorkerRow] | None = None) -> dict[str, Any]:
    """The whole server's ``/status`` out of its workers' (the public one
    too: then leave out ``process`` and ``rows``).

    :param now: the supervisor's time; ``time`` in the answer.
    :param uptime: the server's uptime, since the supervisor started.
    :param process: the supervisor's own memory and descriptors, added to
        the workers' in ``process``.
    :param rows: the per-worker breakdown, ``workers`` in the answer.
    """
    whole: dict[str, Any] = combine(list(statuses)) if statuses else {}
    whole["version"], whole["time"], whole["uptime"] = __version__, now, uptime
    if process is not None:
        whole["process"] = combine([whole.get("process"), dict(process)], "process")
    if rows is not None:
        whole["workers"] = [asdict(row) for row in rows]
    return whole


# -- /metrics -------------------------------------------------------------


def families(collector: Collector | CollectorRegistry) -> list[Family]:
    """What ``collector`` exposes, in the form the pipe carries."""
    return [
        [m.name, m.type, m.documentation, [[s.name, s.labels, s.value] for s in m.samples]]
        for m in collector.collect()
    ]


#: Families whose samples are the workers' largest rather than their sum.
LARGEST = frozenset({
    "chloe_info", "chloe_draining", "chloe_backend_up", "chloe_relay_oldest_seconds",
    "chloe_relay_dead_letters", "chloe_history_memory_bytes", "chloe_redis_probe_seconds", "process_max_fds",
})
#: Families whose samples are the workers' smallest.
SMALLEST = frozenset({"process_start_time_seconds"})
#: The server's own, not the workers': the supervisor's.
SERVER = frozenset({"chloe_uptime_seconds"})


class _Families(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self._metrics)


def _worker_gauges(rows: Sequence[WorkerRow]) -> Iterator[Metric]:
    def family(name: str, doc: str, value: Callable[[WorkerRow], float | None],
               kind: type = GaugeMetricFamily) -> Metric:
        metric = kind(name, doc, labels=["worker"])
        for row in rows:
            number = value(row)
            if number is not None:
                metric.add_metric([str(row.index)], number)
        return metric

    yield family("chloe_worker_up", "1 while the worker runs and reports, else 0.", lambda r: 1 if r.up else 0)
    yield family("chloe_worker_sessions", "The worker's browser sessions.", lambda r: r.sessions)
    yield family("chloe_worker_connections", "The worker's open browser connections.", lambda r: r.connections)
    yield family("chloe_worker_open_fds", "The worker's open file descriptors (its limit: process_max_fds).",
                 lambda r: r.open_fds)
    yield family("chloe_worker_uptime_seconds", "Seconds since the worker (re)started.", lambda r: r.uptime)
    yield family("chloe_worker_restarts", "Times a worker of this index was started again after it ended.",
                 lambda r: r.restarts, CounterMetricFamily)


def combine_metrics(per_worker: Iterable[list[Family]], *, uptime: float, own: list[Family] | None = None,
                    rows: Sequence[WorkerRow] = ()) -> bytes:
    """The whole server's ``/metrics`` (Prometheus text) out of the
    workers' families: each sample (a name and its labels) combined across
    workers, by :data:`LARGEST`, :data:`SMALLEST` and :data:`SERVER`, or
    summed; then ``chloe_worker_*{worker}`` per worker.

    :param own: the supervisor's own families (its ``process_*``), added
        as a worker's are, so that memory and CPU are the whole tree's.
    """
    kinds: dict[str, tuple[str, str]] = {}
    samples: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]] = {}
    for worker_families in [*per_worker, *([own] if own else [])]:
        for name, kind, doc, family_samples in worker_families:
            kinds.setdefault(name, (kind, doc))
            by_sample = samples.setdefault(name, {})
            for sample, labels, value in family_samples:
                by_sample.setdefault((sample, tuple(sorted(labels.items()))), []).append(value)
    out: list[Metric] = []
    for name, (kind, doc) in kinds.items():
        metric = Metric(name, doc, kind)
        for (sample, labels), values in samples[name].items():
            if name in SERVER:
                value = float(uptime)
            elif name in LARGEST:
                value = max(values)
            elif name in SMALLEST:
                value = min(values)
            else:
                value = sum(values)
            metric.add_sample(sample, dict(labels), value)
        out.append(metric)
    out.extend(_worker_gauges(rows))
    return generate_latest(_Families(out))
