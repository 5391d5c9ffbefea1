"""Unit tests of ``workers = N``: the supervisor's restarts, backoff and
stop on a Clock with fake processes; the rounds of reports; how the
workers' /status and /metrics combine into the whole server's; the
worker's end of the pipes; the ``workers`` option. The real processes are
tests/test_integration_workers.py's."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent
from twisted.python.failure import Failure
from twisted.python import usage

from chloed import config, tap
from chloed.config import Config
from chloed.errors import ConfigError
from chloed.service import make_service
from chloed.worker_process import FULL_CHECK, Admission, WorkerLink, make_worker
from chloed.worker_status import WorkerRow, combine_metrics, combine_status, families, worker_row
from chloed.worker_supervisor import (
    REPORT_WAIT,
    RESTART_FIRST,
    RESTART_MAX,
    RESTART_RESET,
    Supervisor,
    how_it_ended,
)
from chloed.workers import SPEC_ENV, Lines, WorkerSpec, encode, spec_from
from tests.fakes import captured_log

LOOPBACK = ("tcp:0:interface=127.0.0.1",)
REDIS = "redis://127.0.0.1:6379/0"


# -- fakes ----------------------------------------------------------------


class FakeProcess:
    """A worker process: records signals and what it is sent; ends when
    the test says."""

    def __init__(self, pid: int, index: int, protocol: ProcessProtocol) -> None:
        self.pid: int | None = pid
        self.index = index
        self.protocol = protocol
        self.signals: list[str] = []
        self.sent: list[dict[str, Any]] = []
        self.ended = False
        protocol.makeConnection(self)  # type: ignore[arg-type]

    def signalProcess(self, name: str) -> None:
        if self.ended:
            raise ProcessExitedAlready()
        self.signals.append(name)

    def writeToChild(self, fd: int, data: bytes) -> None:
        assert fd == 0
        self.sent.extend(json.loads(line) for line in data.splitlines())

    def end(self, code: int = 0, sig: int | None = None) -> None:
        self.ended, self.pid = True, None
        reason = ProcessDone(0) if code == 0 and sig is None else ProcessTerminated(code, sig)
        self.protocol.processEnded(Failure(reason))

    def report(self, sessions: int = 0) -> None:
        """The worker answers a report request."""
        status = {"sessions": sessions, "connections": {"websocket": sessions}, "process": {"open_fds": 9}}
        message = {"type": "report", "status": status, "public": {"sessions": sessions},
                   "metrics": [], "node": f"node-{self.index}"}
        self.protocol.childDataReceived(3, encode(message))


class Spawner:
    """Starts fake processes, numbering pids from 100; can be told to fail."""

    def __init__(self) -> None:
        self.processes: list[FakeProcess] = []
        self.failing = False

    def __call__(self, index: int, protocol: ProcessProtocol) -> FakeProcess:
        if self.failing:
            raise OSError("fork failed")
        process = FakeProcess(100 + len(self.processes), index, protocol)
        self.processes.append(process)
        return process

    def of(self, index: int) -> FakeProcess:
        """The newest process of worker ``index``."""
        return [p for p in self.processes if p.index == index][-1]


def supervisor(count: int = 2, stop_timeout: float = 20.0) -> tuple[Supervisor, Spawner, Clock]:
    clock, spawner = Clock(), Spawner()
    sup = Supervisor(count, spawner, clock, stop_timeout, own=lambda: (None, []))
    sup.startService()
    return sup, spawner, clock


def messages(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events]


# -- supervision ------------------------------------------------------------


def test_the_supervisor_starts_every_worker():
    """Starting the server starts one process per worker, each its index."""
    sup, spawner, _ = supervisor(3)
    assert [p.index for p in spawner.processes] == [0, 1, 2]
    assert [slot.pid for slot in sup.slots] == [100, 101, 102]


def test_a_dead_worker_is_started_again_after_a_backoff_that_doubles_to_10s():
    """A worker that keeps dying at once is started again after 0.5 s, then
    1, 2, 4, 8, and 10 s at most; each death is one line with its status."""
    sup, spawner, clock = supervisor(1)
    waits = []
    with captured_log() as events:
        for _ in range(7):
            spawner.of(0).end(code=3)
            slot = sup.slots[0]
            assert slot.pid is None and slot.pending is not None
            wait = slot.pending.getTime() - clock.seconds()
            waits.append(wait)
            clock.advance(wait - 0.01)
            assert len(spawner.processes) == len(waits)  # not yet
            clock.advance(0.01)
            assert len(spawner.processes) == len(waits) + 1
    assert waits == pytest.approx([RESTART_FIRST, 1.0, 2.0, 4.0, 8.0, RESTART_MAX, RESTART_MAX])
    assert sup.slots[0].restarts == 7
    lines = [m for m in messages(events) if "starting it again" in m]
    assert len(lines) == 7
    assert lines[0] == "worker 0 (pid 100) exited with status 3 after 0.0s: starting it again in 0.5s"


def test_the_backoff_is_reset_by_a_worker_that_ran_30s():
    """After a worker ran 30 s its death waits 0.5 s again, however long
    the waits before it were."""
    sup, spawner, clock = supervisor(1)
    for _ in range(4):
        spawner.of(0).end(code=1)
        clock.advance(RESTART_MAX)
    clock.advance(RESTART_RESET)
    with captured_log() as events:
        spawner.of(0).end(sig=9)
    assert sup.slots[0].pending.getTime() - clock.seconds() == RESTART_FIRST
    assert any("was killed by SIGKILL after" in m for m in messages(events))


def test_a_worker_that_cannot_be_started_is_tried_again():
    """A failed spawn (no memory, no process slot) is logged and retried
    with the same backoff, without stopping the other workers."""
    sup, spawner, clock = supervisor(1)
    spawner.of(0).end(code=1)
    spawner.failing = True
    with captured_log() as events:
        clock.advance(RESTART_FIRST)
    assert any("worker 0 could not be started" in m for m in messages(events))
    assert sup.slots[0].protocol is None
    spawner.failing = False
    clock.advance(1.0)
    assert sup.slots[0].pid == 101


def test_stopping_sends_sigterm_to_every_worker_and_waits_for_all():
    """Stopping the server: SIGTERM to each worker, no restart of one that
    ends, and the stop finishes once the last has exited."""
    sup, spawner, clock = supervisor(2)
    stopped = sup.stopService()
    assert [p.signals for p in spawner.processes] == [["TERM"], ["TERM"]]
    spawner.of(0).end()
    clock.advance(RESTART_MAX)
    assert len(spawner.processes) == 2  # not started again
    assert not stopped.called
    spawner.of(1).end()
    assert stopped.called


def test_stopping_cancels_a_pending_restart():
    """A worker waiting for its restart when the server stops is not
    started again, and the stop does not wait for it."""
    sup, spawner, clock = supervisor(2)
    spawner.of(1).end(code=1)
    stopped = sup.stopService()
    spawner.of(0).end()
    assert stopped.called
    clock.advance(RESTART_MAX)
    assert len(spawner.processes) == 2


def test_a_worker_still_draining_after_the_bound_is_killed():
    """A worker still running ``stop_timeout`` seconds after SIGTERM gets
    SIGKILL; the stop then finishes when it ends."""
    sup, spawner, clock = supervisor(2, stop_timeout=20.0)
    stopped = sup.stopService()
    spawner.of(0).end()
    clock.advance(19.9)
    assert spawner.of(1).signals == ["TERM"]
    with captured_log() as events:
        clock.advance(0.1)
    assert spawner.of(1).signals == ["TERM", "KILL"]
    assert any("still running 20.0s after SIGTERM: killing them" in m for m in messages(events))
    spawner.of(1).end(sig=9)
    assert stopped.called


def test_kill_sends_sigkill_to_every_worker_at_once():
    """A second SIGTERM kills every worker there and then; one that has
    just exited is passed over."""
    sup, spawner, _ = supervisor(2)
    spawner.of(0).ended = True
    sup.kill()
    assert spawner.of(1).signals == ["KILL"] and spawner.of(0).signals == []


def test_how_a_worker_ended_is_said_in_words():
    assert how_it_ended(Failure(ProcessDone(0))) == "exited with status 0"
    assert how_it_ended(Failure(ProcessTerminated(2, None))) == "exited with status 2"
    assert how_it_ended(Failure(ProcessTerminated(None, 15))) == "was killed by SIGTERM"


# -- rounds of reports --------------------------------------------------------


def test_each_round_asks_every_worker_and_sends_all_the_whole_server():
    """Once a second each worker is asked for its numbers; once all have
    answered, each is sent the whole server's, with a row per worker."""
    sup, spawner, clock = supervisor(2)
    a, b = spawner.processes
    assert a.sent == [{"type": "report"}] and b.sent == [{"type": "report"}]
    a.report(sessions=2)
    assert len(a.sent) == 1  # waiting for b
    b.report(sessions=3)
    whole = a.sent[-1]
    assert whole == b.sent[-1] and whole["type"] == "whole"
    assert whole["status"]["sessions"] == 5
    rows = whole["status"]["workers"]
    assert [(r["index"], r["pid"], r["node"], r["sessions"], r["up"]) for r in rows] == [
        (0, 100, "node-0", 2, True), (1, 101, "node-1", 3, True)
    ]
    clock.advance(1.0)
    assert a.sent[-1] == {"type": "report"}


def test_a_worker_that_does_not_answer_is_left_out_of_the_round():
    """After half a second the round is combined without a silent worker,
    which is not sent the result (it would pile up in a pipe nobody
    reads); a worker whose report is stale is not up."""
    sup, spawner, clock = supervisor(2)
    a, b = spawner.processes
    a.report(sessions=1)
    b.report(sessions=1)
    clock.advance(1.0)
    a.report(sessions=4)
    clock.advance(REPORT_WAIT)
    assert a.sent[-1]["status"]["sessions"] == 5  # b's last report is recent enough
    assert b.sent[-1] == {"type": "report"}
    for _ in range(3):
        clock.advance(1.0 - REPORT_WAIT)
        a.report(sessions=4)
        clock.advance(REPORT_WAIT)
    whole = a.sent[-1]["status"]
    assert whole["sessions"] == 4
    assert [r["up"] for r in whole["workers"]] == [True, False]


def test_a_dead_worker_counts_for_nothing_and_a_new_one_hears_the_whole_server_first():
    """A worker that died is a row with up false and no pid until it is
    back; its replacement is sent the last whole server's numbers at once,
    so it never answers its own alone as the server's."""
    sup, spawner, clock = supervisor(2)
    a, b = spawner.processes
    a.report(sessions=2)
    b.report(sessions=3)
    a.end(sig=9)
    row = sup.rows()[0]
    assert (row.up, row.pid, row.sessions) == (False, None, 0)
    clock.advance(RESTART_FIRST)
    replacement = spawner.of(0)
    assert replacement.sent[0]["type"] == "whole"
    assert replacement.sent[0]["status"]["sessions"] == 5
    assert sup.slots[0].restarts == 1


# -- combining /status ----------------------------------------------------------


def worker_server(**options: Any) -> Any:
    return make_service(Config(listen=LOOPBACK, **options), MemoryReactorClock(), open_files=lambda wanted: wanted)


def test_the_whole_status_sums_counts_and_keeps_bounds_and_flags():
    """Sessions, connections and messages are summed; a setting of each
    process (limits) and a worst case (p99, a backend down) are not; the
    version, time and uptime are the server's."""
    first, second = worker_server(), worker_server(max_connections_per_ip=5)
    for server, sessions in ((first, 2), (second, 3)):
        for _ in range(sessions):
            server.hub.open_session("longpoll")
    statuses = [first.metrics.status(local=True), second.metrics.status(local=True)]
    statuses[0]["messages"]["published"], statuses[1]["messages"]["published"] = 2, 3
    statuses[0]["fanout_seconds"]["p99"] = 0.001
    statuses[1]["fanout_seconds"]["p99"] = 0.25
    statuses[1]["backend"]["state"] = "down"
    statuses[0]["draining"] = True
    rows = [WorkerRow(0, 10, "a", True, 2, 0, 5.0, 0, 1, 1), WorkerRow(1, 11, "b", True, 3, 0, 5.0, 1, 1, 1)]
    whole = combine_status(statuses, now=1000.0, uptime=60.0, process={"rss_bytes": 7, "open_fds": 4}, rows=rows)
    assert whole["sessions"] == 5 and whole["messages"]["published"] == 5
    assert whole["connections"] == {name: 0 for name in Config().transports}
    assert whole["max_connections"] == 2 * Config().max_connections
    assert whole["limits"]["max_connections_per_ip"] == 5
    assert whole["limits"]["history_memory"] == Config().history_memory
    assert whole["fanout_seconds"]["p99"] == 0.25
    assert whole["backend"] == {"kind": "memory", "state": "down"}
    assert whole["draining"] is True
    assert (whole["time"], whole["uptime"]) == (1000.0, 60.0)
    own = [s["process"] for s in statuses]
    assert whole["process"]["open_fds"] == own[0]["open_fds"] + own[1]["open_fds"] + 4
    assert [w["index"] for w in whole["workers"]] == [0, 1]
    assert set(whole) == set(statuses[0]) | {"workers"}


def test_the_whole_top_channels_add_up_the_workers_lists():
    """A channel on two workers is listed once, with both workers'
    subscribers; hidden ones are summed."""
    tops = [
        {"top": [{"name": "a", "subscribers": 5}, {"name": "b", "subscribers": 1}],
         "hidden": {"channels": 1, "subscribers": 2}},
        {"top": [{"name": "b", "subscribers": 7}], "hidden": {"channels": 0, "subscribers": 0}},
    ]
    whole = combine_status([{"top_channels": t} for t in tops], now=0.0, uptime=0.0)
    assert whole["top_channels"] == {
        "top": [{"name": "b", "subscribers": 8}, {"name": "a", "subscribers": 5}],
        "hidden": {"channels": 1, "subscribers": 2},
    }


def test_the_relay_of_the_whole_server():
    """Queues and counts summed, the oldest record and the cluster-wide
    dead letters the largest, no relay when no worker has one."""
    relays = [
        {"queued": 2, "oldest_seconds": 4.0, "dead_letters": 3, "spool": "redis", "durable": True},
        {"queued": 1, "oldest_seconds": None, "dead_letters": 3, "spool": "redis", "durable": True},
    ]
    whole = combine_status([{"relay": r} for r in relays], now=0.0, uptime=0.0)["relay"]
    assert whole == {"queued": 3, "oldest_seconds": 4.0, "dead_letters": 3, "spool": "redis", "durable": True}
    assert combine_status([{"relay": None}, {"relay": None}], now=0.0, uptime=0.0)["relay"] is None


def test_a_worker_row_from_its_report():
    """The breakdown: sessions, connections summed over transports, its
    node, memory and descriptors; none of it before the first report."""
    report = {"status": {"sessions": 3, "connections": {"websocket": 2, "sse": 1},
                         "process": {"rss_bytes": 50, "open_fds": 9}}, "node": "n1"}
    assert worker_row(1, 42, 2, 9.5, report) == WorkerRow(1, 42, "n1", True, 3, 3, 9.5, 2, 50, 9)
    assert worker_row(1, None, 2, None, None) == WorkerRow(1, None, None, False, 0, 0, None, 2, None, None)


# -- combining /metrics -----------------------------------------------------------


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_the_whole_metrics_sum_samples_of_the_same_name_and_labels():
    """Each series is summed across workers (histogram buckets too);
    chloe_info, chloe_draining and process_max_fds are the largest, the
    uptime the server's; chloe_worker_* give each worker's."""
    first, second = worker_server(), worker_server()
    first.hub.open_session("longpoll")
    for _ in range(2):
        second.hub.open_session("longpoll")
    first.metrics.fanout.observe(0.001)
    second.metrics.fanout.observe(0.001)
    rows = [WorkerRow(0, 10, "a", True, 1, 1, 5.0, 0, 1, 12), WorkerRow(1, None, None, False, 0, 0, None, 3, None, None)]
    text = combine_metrics([families(first.metrics.registry), families(second.metrics.registry)],
                           uptime=77.0, rows=rows)
    got = samples(text)
    assert got[("chloe_sessions", ())] == 3
    assert got[("chloe_info", (("version", "0.1.0"),))] == 1
    assert got[("chloe_uptime_seconds", ())] == 77.0
    assert got[("chloe_fanout_seconds_bucket", (("le", "0.001"),))] == 2
    assert got[("chloe_fanout_seconds_count", ())] == 2
    assert got[("process_max_fds", ())] == samples(first.metrics.exposition(local=True))[("process_max_fds", ())]
    assert got[("chloe_worker_up", (("worker", "0"),))] == 1 and got[("chloe_worker_up", (("worker", "1"),))] == 0
    assert got[("chloe_worker_sessions", (("worker", "0"),))] == 1
    assert got[("chloe_worker_restarts_total", (("worker", "1"),))] == 3
    assert got[("chloe_worker_open_fds", (("worker", "0"),))] == 12
    assert ("chloe_worker_open_fds", (("worker", "1"),)) not in got
    assert b"# TYPE chloe_messages_published_total counter" in text


# -- the worker's end ------------------------------------------------------------


def linked(**options: Any) -> tuple[Any, WorkerLink, StringTransport, list[str]]:
    server = worker_server(**options)
    drained: list[str] = []
    transport = StringTransport()
    reactor = server.hub.clock

    def connect(protocol: Any, _: Any) -> StringTransport:
        protocol.makeConnection(transport)
        link.pipe = protocol
        return transport

    link = WorkerLink(1, server.metrics, drained.append, "node-1", reactor, connect=connect)
    link.setServiceParent(server)
    server.metrics.whole = link
    link.startService()
    return server, link, transport, drained


def test_a_worker_reports_its_own_numbers_when_asked():
    """A report request on stdin is answered on the pipe with this
    worker's /status, public status, metric families and node."""
    server, link, transport, _ = linked()
    server.hub.open_session("longpoll")
    link.pipe.dataReceived(encode({"type": "report"}))
    (line,) = transport.value().splitlines()
    report = json.loads(line)
    assert report["type"] == "report" and report["node"] == "node-1"
    assert report["status"]["sessions"] == 1 and "process" not in report["public"]
    assert ["chloe_sessions", "gauge"] == report["metrics"][[f[0] for f in report["metrics"]].index("chloe_sessions")][:2]


def test_a_worker_answers_the_whole_server_while_it_is_fresh():
    """/status, the public status and /metrics answer what the supervisor
    sent, split across reads; once it is 5 s old, the worker's own."""
    server, link, _, _ = linked()
    whole = encode({"type": "whole", "status": {"sessions": 9}, "public": {"sessions": 8}, "metrics": "m 1\n"})
    link.pipe.dataReceived(whole[:10])
    assert "workers" not in server.metrics.status() and server.metrics.status()["sessions"] == 0
    link.pipe.dataReceived(whole[10:])
    assert server.metrics.status() == {"sessions": 9}
    assert server.metrics.status(public=True) == {"sessions": 8}
    assert server.metrics.exposition() == b"m 1\n"
    assert server.metrics.status(local=True)["sessions"] == 0
    server.hub.clock.advance(5.1)
    assert server.metrics.status()["sessions"] == 0
    assert server.metrics.exposition().startswith(b"# HELP")


def test_a_worker_drains_when_the_supervisor_is_gone():
    """End of file from the supervisor drains the worker; not when the
    worker is stopping anyway (which closes the pipe too)."""
    _, link, _, drained = linked()
    link.pipe.connectionLost(None)
    assert drained == ["the supervisor is gone: draining"]
    link.stopService()
    link.pipe.connectionLost(None)
    assert len(drained) == 1


def test_a_worker_adopts_the_supervisors_sockets():
    """make_worker listens on no port of its own: it adopts the
    descriptors it was given, with its site, when it starts, and closes
    its inherited copy."""
    shared = socket.socket()
    shared.bind(("127.0.0.1", 0))
    shared.listen()
    inherited = os.dup(shared.fileno())
    reactor = MemoryReactorClock()
    cfg = Config(listen=LOOPBACK, backend=REDIS, workers=2)
    server = make_worker(cfg, reactor, WorkerSpec(0, (inherited,), None, {}))
    assert reactor.tcpServers == []
    for service in server:
        if not isinstance(service, WorkerLink):
            service.startService()  # (the link would open the real stdin)
    ((fd, family, factory),) = reactor.adoptedPorts
    assert (fd, family, factory) == (inherited, socket.AF_INET, server.site)
    with pytest.raises(OSError):
        os.fstat(inherited)
    assert server.metrics.whole is not None
    shared.close()


class FakePort:
    def __init__(self) -> None:
        self.reading = True

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


def test_a_full_worker_leaves_new_connections_to_workers_with_room():
    """A worker at its max_connections stops accepting while the whole
    server has room, and accepts again once a session of its own ended;
    when every worker is full it goes on accepting (and answers 503)."""
    server = worker_server(max_connections=2)
    hub, clock, port = server.hub, server.hub.clock, FakePort()
    whole: dict[str, Any] = {"sessions": 2, "max_connections": 4}
    admission = Admission(hub, [port], lambda: whole, clock)
    admission.startService()
    sessions = [hub.open_session("longpoll") for _ in range(2)]
    clock.advance(FULL_CHECK)
    assert not port.reading and admission.paused
    whole = {"sessions": 4, "max_connections": 4}
    clock.advance(FULL_CHECK)
    assert port.reading
    whole = {"sessions": 3, "max_connections": 4}
    clock.advance(FULL_CHECK)
    assert not port.reading
    hub.close_session(sessions[0])
    clock.advance(FULL_CHECK)
    assert port.reading and not admission.paused
    admission.stopService()


# -- the pipe's framing, and the spec ----------------------------------------------


def test_lines_are_split_across_reads_and_an_overlong_one_is_dropped():
    lines = Lines(limit=8)
    assert lines.feed(b"ab") == []
    assert lines.feed(b"c\nde\n\nf") == [b"abc", b"de"]
    assert lines.feed(b"0123456789") == []  # past the limit: dropped
    assert lines.feed(b"more\nok\n") == [b"ok"]
    assert lines.dropped == 1


def test_a_spec_round_trips_through_the_environment():
    spec = WorkerSpec(3, (4, 5), 'backend = "redis://x:1/0"\n', {"secret": "s", "listen": ["tcp:1"]})
    assert spec_from({SPEC_ENV: spec.encode()}) == spec
    assert spec_from({}) is None


# -- the option --------------------------------------------------------------------


def test_workers_defaults_to_1_and_auto_is_the_cores_this_process_may_use():
    assert Config().workers == 1
    assert config.from_mapping({"workers": 4}).workers == 4
    assert config.from_mapping({"workers": "auto"}).workers == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("value", [0, -1, 1.5, "many", True, 1025, [2]])
def test_a_bad_workers_value_is_refused(value):
    with pytest.raises(ConfigError) as info:
        config.from_mapping({"workers": value})
    assert str(info.value).startswith("workers: ")


def test_more_than_one_worker_needs_a_shared_backend():
    """workers > 1 with the memory backend is one line naming workers;
    with Redis it is fine; a disk spool, one process's, is refused."""
    with pytest.raises(ConfigError) as info:
        Config(workers=2).check()
    assert str(info.value) == 'workers: more than one needs a shared backend: backend = "redis://…"'
    Config(workers=2, backend=REDIS).check()
    Config(workers=1, relay_spool="disk", relay_spool_path="/tmp/x").check()
    with pytest.raises(ConfigError) as info:
        Config(workers=2, backend=REDIS, relay_spool="disk", relay_spool_path="/tmp/x").check()
    assert str(info.value).startswith("relay_spool: ")


def test_twistd_chloe_with_workers_refuses_the_memory_backend(tmp_path):
    path = tmp_path / "chloe.toml"
    path.write_text("workers = 3\n")
    with pytest.raises(usage.UsageError) as info:
        tap.Options().parseOptions(["--config", str(path)])
    assert "workers: more than one needs a shared backend" in str(info.value)


def test_the_supervisor_tells_workers_the_file_as_it_read_it_and_the_flags(tmp_path, monkeypatch):
    """With workers, the options remember the file's text and the flags
    (listen as opened); a worker started later runs that, not the file
    edited since."""
    monkeypatch.delenv("CHLOE_SECRET", raising=False)
    monkeypatch.delenv(SPEC_ENV, raising=False)
    path = tmp_path / "chloe.toml"
    text = f'backend = "{REDIS}"\nworkers = 2\nheartbeat = 7\n'
    path.write_text(text)
    options = tap.Options()
    options.parseOptions(["--config", str(path), "--secret", "s", "--listen", "tcp:9999"])
    template = options["template"]
    assert template.config == text
    assert template.flags == {"secret": "s", "listen": ["tcp:9999"]}
    path.write_text("heartbeat = 1\n")
    monkeypatch.setenv(SPEC_ENV, WorkerSpec(1, (4,), template.config, template.flags).encode())
    worker = tap.Options()
    worker.parseOptions([])
    assert worker["worker"].index == 1
    assert worker["chloe"] == Config(backend=REDIS, workers=2, heartbeat=7.0, secret=("s",), listen=("tcp:9999",))
