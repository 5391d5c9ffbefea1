"""Unit tests of chloed.service's open-file budget: max_connections is
capped below the open-file limit, with headroom for the app's API, the
relay, Redis and the process itself."""

from __future__ import annotations

import os
import resource

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent

from chloed.config import Config
from chloed.relay import MAX_LANES_IN_FLIGHT
from chloed.service import (
    API_FDS,
    PROCESS_FDS,
    browser_limit,
    cap_connections,
    files_needed,
    make_service,
    open_file_limit,
    reserved_fds,
)
from tests.fakes import captured_log

LOOPBACK = ("tcp:0:interface=127.0.0.1",)


def messages(events) -> list[str]:
    return [formatEvent(e) for e in events]


def test_the_reserve_counts_what_the_configuration_opens():
    """Each listener, Redis's two connections and the relay's lanes are kept
    out of the browsers' share, on top of the process's own and the API's."""
    base = PROCESS_FDS + API_FDS
    assert reserved_fds(Config(listen=LOOPBACK)) == base + 1
    full = Config(
        listen=LOOPBACK * 2, backend="redis://127.0.0.1:6379/0", application_server_url="http://app.example/chloe"
    )
    assert reserved_fds(full) == base + 2 + 2 + MAX_LANES_IN_FLIGHT


def test_browsers_get_the_limit_less_the_headroom():
    """With 1024 open files and 96 reserved, browsers get 1024 - 96 - 51; a
    max_connections under that is kept; a limit below the reserve still
    admits one browser."""
    assert browser_limit(100000, 1024, 96) == 1024 - 96 - 1024 // 20
    assert browser_limit(500, 1024, 96) == 500
    assert browser_limit(100000, 1048576, 145) == 100000
    assert browser_limit(100000, 64, 145) == 1


@pytest.mark.parametrize("reserved", [1, 81, 145])
def test_files_needed_is_the_smallest_limit_that_keeps_max_connections(reserved):
    """Asking for files_needed open files is enough for max_connections
    browsers, and one file fewer is not (before the floor of one browser)."""
    for wanted in [1, 2, 19, 20, 21, 100, 827, 1000, 99999, 100000]:
        needed = files_needed(wanted, reserved)
        assert browser_limit(wanted, needed, reserved) == wanted
        fewer = needed - 1
        assert fewer - reserved - fewer // 20 < wanted


def test_a_low_limit_caps_the_hub_and_says_so():
    """Under 1024 open files the hub refuses the 893rd browser of a
    max_connections of 100000, and one line says where the cap comes from."""
    asked = []

    def open_files(wanted: int) -> int:
        asked.append(wanted)
        return 1024

    with captured_log() as events:
        service = make_service(Config(listen=LOOPBACK), MemoryReactorClock(), open_files=open_files)
    hub = service.hub
    assert asked == [files_needed(100000, PROCESS_FDS + API_FDS + 1)]
    assert hub.config.max_connections == 892
    for _ in range(892):
        assert hub.accepting()
        hub.open_session("longpoll")
    assert not hub.accepting()
    assert service.metrics.status()["max_connections"] == 892
    assert (
        "max_connections 100000 is above what 1024 open files allow: browsers are capped at 892 "
        "(raise LimitNOFILE= or ulimit -n)"
    ) in messages(events)


def test_enough_files_leave_max_connections_alone():
    """When the limit allows max_connections, it stays as configured and
    nothing is logged about it."""
    config = Config(listen=LOOPBACK, max_connections=1000)
    with captured_log() as events:
        assert cap_connections(config, lambda wanted: wanted) is config
    assert not any("max_connections" in m for m in messages(events))


@pytest.fixture
def soft_limit():
    """A soft limit lowered for the test, and put back after it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = len(os.listdir("/proc/self/fd")) + 64 if os.path.isdir("/proc/self/fd") else 256
    if hard != resource.RLIM_INFINITY and hard < low + 100:
        pytest.skip(f"the hard limit ({hard}) leaves no room to raise the soft one")
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    yield low, hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_soft_limit_is_raised_as_far_as_needed(soft_limit):
    """The process's soft limit is raised to what is wanted (and logged),
    never lowered, and never past the hard limit."""
    low, hard = soft_limit
    assert open_file_limit(low - 10) == low
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == low
    with captured_log() as events:
        assert open_file_limit(low + 50) == low + 50
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == low + 50
    assert any(m.startswith(f"raised the open-file limit from {low} to {low + 50}") for m in messages(events))
    if hard != resource.RLIM_INFINITY:
        assert open_file_limit(hard + 1000) == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)


def test_a_workers_listeners_replace_its_own_ports_and_stop_first():
    """Given listeners (a worker's, on the supervisor's sockets), the
    server binds none of ``listen`` itself, starts each with its site, and
    closes them before any session is told ``shutting_down``."""
    started, events = [], []

    class Port:
        def stopListening(self) -> None:
            events.append(("port closed", len(service.hub.broker.sessions)))

    def listen(factory):
        started.append(factory)
        return Port()

    reactor = MemoryReactorClock()
    service = make_service(Config(listen=LOOPBACK), reactor, open_files=lambda wanted: wanted, listeners=[listen])
    service.startService()
    assert started == [service.site] and reactor.tcpServers == []
    service.hub.open_session("longpoll")
    service.stopService()
    assert events == [("port closed", 1)]


def test_drain_is_done_once():
    """The drain (SIGTERM's, or a worker's whose supervisor is gone) marks
    the hub draining and stops the reactor once, however often it is asked."""
    reactor = MemoryReactorClock()
    service = make_service(Config(listen=LOOPBACK), reactor, open_files=lambda wanted: wanted)
    stops = []
    reactor.callFromThread = lambda f, *args: stops.append(args)  # type: ignore[method-assign]
    service.drain("why")
    service.drain("again")
    assert service.hub.draining and stops == [("why",)]
