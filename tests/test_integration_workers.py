"""``workers = 2``, for real: one twistd supervising two worker processes on
one port and one real Redis. Browsers land on both workers; a publish
reaches all of them; a worker killed with SIGKILL is replaced and its
browsers resume elsewhere with nothing lost; SIGTERM drains every worker
and the server exits 0; ``/status`` answers for the whole server."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import stat
import time
import urllib.request
from typing import Any, Iterator

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.redis_server import redis_server  # noqa: F401 (a fixture)
from tests.servers import Chloed, free_port
from tests.test_integration_tls import self_signed
from tests.test_multinode import Browser, wait_until

#: Browsers opened at most to get one on each worker (the kernel picks).
MAX_TRIES = 60
EXIT_TIMEOUT = 30


def status(server: Chloed) -> dict[str, Any]:
    """The whole server's ``/status`` (a worker started a moment ago may
    answer its own before it has heard from the supervisor: asked again)."""
    answer: dict[str, Any] = {}

    def whole() -> bool:
        code, _, body = server.request("GET", "/status")
        assert code == 200, body
        answer.update(json.loads(body))
        return "workers" in answer

    wait_until(whole, timeout=10)
    return answer


def workers_up(server: Chloed, count: int = 2) -> bool:
    rows = status(server).get("workers", [])
    return len(rows) == count and all(row["up"] for row in rows)


def send(server: Chloed, **fields: Any) -> dict[str, Any]:
    """``POST /send``, again while it answers 503 (a worker just started,
    not yet connected to Redis, may have taken it): bounded."""
    answer: Any = None

    def accepted() -> bool:
        nonlocal answer
        code, answer = server.send(**fields)
        assert code in (202, 503), answer
        return code == 202

    wait_until(accepted, timeout=10)
    return answer


def node_of(server: Chloed, browser: Browser) -> str:
    """The node (worker) holding ``browser``'s session, from ``/sessions``
    (which lists it once its node has told Redis: a moment after
    ``connected``)."""
    found: list[str] = []

    def listed() -> bool:
        code, _, body = server.request("GET", "/sessions?limit=1000")
        assert code == 200, body
        nodes = {s["id"]: s["node"] for s in json.loads(body)["sessions"]}
        found[:] = [nodes[browser.connected["session"]]] if browser.connected["session"] in nodes else []
        return bool(found)

    wait_until(listed, timeout=10)
    return found[0]


@pytest.fixture
def server(redis_server, tmp_path) -> Iterator[Chloed]:  # noqa: F811
    """chloed with two workers on the test's Redis, both up."""
    conf = tmp_path / "chloe.toml"
    conf.write_text(f'backend = "{redis_server.url}"\nworkers = 2\nhistory_size = 1000\nsession_grace = 10\n')
    chloed = Chloed(config=str(conf))
    try:
        wait_until(lambda: workers_up(chloed))
        yield chloed
    finally:
        chloed.stop()


@pytest.fixture
def browsers() -> Iterator[list[Browser]]:
    """Browsers to close after the test, whatever happened."""
    opened: list[Browser] = []
    yield opened
    for browser in opened:
        with contextlib.suppress(Exception):  # (closing what may be broken already)
            browser.close()


def on_both(server: Chloed, browsers: list[Browser], channel: str) -> dict[str, list[Browser]]:
    """Browsers subscribed to ``channel``, opened until each worker holds
    at least one; returns them by node."""
    by_node: dict[str, list[Browser]] = {}
    for _ in range(MAX_TRIES):
        browser = Browser(server)
        browsers.append(browser)
        browser.subscribe(channel)
        by_node.setdefault(node_of(server, browser), []).append(browser)
        if len(by_node) == 2:
            return by_node
    raise AssertionError(f"{MAX_TRIES} browsers all landed on one worker")


def test_workers_share_one_port_and_a_publish_reaches_every_worker(server, browsers):
    """Browsers on the one port end up on both workers (each a node of its
    own); a /send reaches every one of them; /status's totals are the sum
    of its per-worker breakdown, which counts them all."""
    by_node = on_both(server, browsers, "news")
    nodes = {row["node"] for row in status(server)["workers"]}
    assert set(by_node) == nodes
    answer = send(server, channel="news", data="hello")
    assert answer["delivered"] == len(browsers)
    for browser in browsers:
        assert browser.message()["data"] == "hello"

    def counted() -> bool:
        whole = status(server)
        rows = whole["workers"]
        return sum(row["connections"] for row in rows) == len(browsers)

    wait_until(counted)
    whole = status(server)
    rows = whole["workers"]
    assert whole["sessions"] == sum(row["sessions"] for row in rows) == len(browsers)
    assert sum(whole["connections"].values()) == sum(row["connections"] for row in rows)
    for row in rows:
        assert row["sessions"] == len(by_node[row["node"]])
        assert row["pid"] and row["restarts"] == 0 and row["uptime"] > 0
    metrics = server.request("GET", "/metrics")[2].decode()
    assert f"chloe_sessions {float(len(browsers))}" in metrics
    assert 'chloe_worker_up{worker="0"} 1.0' in metrics and 'chloe_worker_up{worker="1"} 1.0' in metrics


def _drain_until_closed(browser: Browser) -> list[Any]:
    """The messages still on their way to a browser whose worker died,
    until its connection ends."""
    got = []
    try:
        while True:
            frame = browser.recv()
            if frame["type"] == "message":
                browser.last[frame["channel"]] = frame["id"]
                got.append(frame["data"])
    except (ConnectionClosed, OSError):
        return got


def test_a_killed_worker_is_replaced_and_its_browsers_resume(server, browsers):
    """A worker killed with SIGKILL is started again (a new pid in
    /status, one restart); its browsers reconnect through the same port to
    whichever worker takes them and, subscribing with the last id they
    saw, get what was published while they were away, nothing lost or
    repeated; the other worker's browsers never noticed."""
    by_node = on_both(server, browsers, "feed")
    send(server, channel="feed", data=0)
    for browser in browsers:
        assert browser.message()["data"] == 0
    rows = status(server)["workers"]
    victim = next(row for row in rows if row["index"] == 0)
    orphans = by_node[victim["node"]]
    survivors = [b for node, group in by_node.items() if node != victim["node"] for b in group]

    os.kill(victim["pid"], signal.SIGKILL)
    seen = {id(b): _drain_until_closed(b) for b in orphans}
    for n in (1, 2, 3):  # while the orphans are away
        send(server, channel="feed", data=n)
    for orphan in orphans:
        moved = Browser(server)
        browsers.append(moved)
        assert moved.subscribe("feed", since=orphan.last["feed"])["recovered"] is True
        got = seen[id(orphan)]
        while len(got) < 3:
            got.append(moved.message()["data"])
        assert got == [1, 2, 3]
    for survivor in survivors:
        assert [survivor.message()["data"] for _ in range(3)] == [1, 2, 3]

    def replaced() -> bool:
        row = next(r for r in status(server)["workers"] if r["index"] == 0)
        return row["up"] and row["pid"] != victim["pid"]

    wait_until(replaced)
    row = next(r for r in status(server)["workers"] if r["index"] == 0)
    assert row["restarts"] == 1 and row["node"] != victim["node"]
    assert "worker 0 (pid %d) was killed by SIGKILL" % victim["pid"] in server.log()


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_sigterm_drains_every_worker_and_exits_0(server, browsers):
    """SIGTERM to the supervisor: the browsers on both workers hear
    shutting_down, every worker exits, and so does the server, with 0,
    within a bound."""
    on_both(server, browsers, "bye")
    pids = [row["pid"] for row in status(server)["workers"]]
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    for browser in browsers:
        last = browser.recv()
        assert (last["type"], last["code"]) == ("error", "shutting_down")
    assert server.process.wait(EXIT_TIMEOUT) == 0
    assert time.monotonic() - started < EXIT_TIMEOUT
    wait_until(lambda: all(_gone(pid) for pid in pids), timeout=10)
    log = server.log()
    assert "SIGTERM: stopping the workers" in log and "Traceback" not in log
    assert log.count("exited with status 0") == 2


def test_a_worker_count_above_one_with_the_memory_backend_stops_start_up(tmp_path):
    """workers = 2 without a shared backend: one line naming the option,
    exit status 1."""
    conf = tmp_path / "chloe.toml"
    conf.write_text("workers = 2\n")
    with pytest.raises(RuntimeError) as info:
        Chloed(config=str(conf))
    assert "exited with 1" in str(info.value)
    assert 'chloe: workers: more than one needs a shared backend: backend = "redis://…"' in str(info.value)


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a UNIX socket."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self._path)


def unix_health(path: str) -> int:
    connection = UnixHTTPConnection(path)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().status
    finally:
        connection.close()


def test_tls_and_unix_sockets_are_shared_too(redis_server, tmp_path):  # noqa: F811
    """Workers serve an ssl: endpoint (TLS in each worker, over the
    supervisor's socket) and a unix: one; a worker that drains and is
    started again (SIGTERM to it alone) leaves the UNIX socket's file and
    mode as they were, still served."""
    key, cert = self_signed(tmp_path)
    port, path = free_port(), str(tmp_path / "chloe.sock")
    conf = tmp_path / "chloe.toml"
    conf.write_text(f'backend = "{redis_server.url}"\nworkers = 2\n')
    server = Chloed("--listen", f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
                    "--listen", f"unix:{path}:mode=600", config=str(conf))
    try:
        wait_until(lambda: workers_up(server))
        context = ssl.create_default_context(cafile=cert)
        with urllib.request.urlopen(f"https://localhost:{port}/health", context=context, timeout=10) as response:
            assert json.loads(response.read())["status"] == "ok"
        with connect(f"wss://localhost:{port}/ws", ssl=context, open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "connected"
        assert unix_health(path) == 200
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        victim = status(server)["workers"][1]
        os.kill(victim["pid"], signal.SIGTERM)

        def replaced() -> bool:
            row = status(server)["workers"][1]
            return row["up"] and row["pid"] != victim["pid"]

        wait_until(replaced)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        for _ in range(10):  # whichever worker takes each
            assert unix_health(path) == 200
        assert "worker 1 (pid %d) exited with status 0" % victim["pid"] in server.log()
    finally:
        server.stop()
    assert not os.path.exists(path)  # the supervisor's own, removed at the end
