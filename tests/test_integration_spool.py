"""The relay's durable spools with real processes (issue 18, point 8): a
chloed that dies (SIGKILL) with messages it accepted, a spool directory it
cannot use, a write that fails at run time, a spool file cut mid-record, a
flood of lifecycle events to a slow app, dead letters through the HTTP API,
and a node that never comes back (Redis)."""

from __future__ import annotations

import json
import os
import queue
import resource
import signal
import subprocess
import threading
import time
from typing import Any, Callable

from chloed.relay import delivery_id
from tests.rawws import upgrade_request
from tests.redis_server import redis_server  # noqa: F401 (a fixture)
from tests.servers import TWISTD, AppServer, Chloed, Relayed, free_port
from tests.test_integration import Browser
from tests.test_integration_relay import relay_conf

SPOOL_LOG = "relay.log"
TIMEOUT = 20.0


def kill(server: Chloed) -> None:
    """SIGKILL ``server`` by its PID (a crash: nothing is flushed or
    drained) and wait for it to be gone."""
    os.kill(server.process.pid, signal.SIGKILL)
    assert server.process.wait(timeout=10) == -signal.SIGKILL


def dead_app_url() -> str:
    """An app URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}/updates"


def status(server: Chloed) -> Any:
    """``GET /status`` (bearer)."""
    code, _, body = server.request("GET", "/status")
    assert code == 200, body
    return json.loads(body)


def api(server: Chloed, method: str, path: str, value: Any = None) -> tuple[int, Any]:
    """One bearer request of the HTTP API with a JSON body; the status and
    the JSON answer (None when there is no body)."""
    body = None if value is None else json.dumps(value).encode()
    code, _, answer = server.request(method, path, body, {"Content-Type": "application/json"})
    return code, (json.loads(answer) if answer else None)


def receive(app: AppServer, done: Callable[[list[Relayed]], bool], timeout: float = TIMEOUT) -> list[Relayed]:
    """What ``app`` receives, POST after POST, until ``done(all so far)``;
    fails if that takes longer than ``timeout`` seconds in all."""
    seen: list[Relayed] = []
    deadline = time.monotonic() + timeout
    while not done(seen):
        left = deadline - time.monotonic()
        try:
            seen.append(app.next(timeout=max(0.0, left)))
        except queue.Empty:
            raise AssertionError(f"the app got {len(seen)} POSTs in {timeout}s, not what was expected") from None
    return seen


def twistd(*args: str, config: str) -> subprocess.CompletedProcess[str]:
    """``twistd -n chloe`` run to its end (for a start-up that must fail),
    stdout and stderr apart."""
    command = [TWISTD, "-n", "--pidfile=", "chloe", "--listen", f"tcp:{free_port()}:interface=127.0.0.1",
               "--secret", "test-secret", "--config", config, *args]
    environment = {k: v for k, v in os.environ.items() if k != "CHLOE_SECRET"}
    return subprocess.run(command, capture_output=True, text=True, timeout=30, env=environment)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def frames_by_ref(browser: Browser, count: int) -> dict[Any, list[Any]]:
    """The next ``count`` frames ``browser`` gets, grouped by their ref, in
    the order they came."""
    grouped: dict[Any, list[Any]] = {}
    for _ in range(count):
        frame = browser.recv()
        grouped.setdefault(frame.get("ref"), []).append(frame)
    return grouped


# -- 1. accepted survives SIGKILL ---------------------------------------------


def test_accepted_messages_survive_sigkill(chloed_factory, app_server, tmp_path):
    """With the app down and the disk spool, 20 sessions send 25 messages each and every one is ``accepted``;
    chloed is SIGKILLed, and a new chloed on the same spool directory, with the app up, delivers all 500: each
    session's in the order sent, every copy with the delivery id its ref gives."""
    spool = str(tmp_path / "spool")
    first = chloed_factory(
        "--app-url", dead_app_url(),
        config=relay_conf(tmp_path, relay_spool="disk", relay_spool_path=spool, upstream_timeout=2),
    )
    browsers = [Browser(first) for _ in range(20)]
    refs: dict[str, list[str]] = {}
    try:
        for n in range(25):
            for browser in browsers:
                ref = f"{browser.session}-{n:04d}-spooled"
                refs.setdefault(browser.session, []).append(ref)
                browser.send({"type": "send", "data": [browser.session, n], "ref": ref})
        for browser in browsers:
            answers = [browser.recv() for _ in range(25)]
            assert answers == [{"type": "accepted", "ref": ref} for ref in refs[browser.session]]
        kill(first)
    finally:
        for browser in browsers:
            browser.close()

    second = chloed_factory(
        "--app-url", app_server.url,
        config=relay_conf(tmp_path, relay_spool="disk", relay_spool_path=spool),
    )
    every = {(session, n) for session in refs for n in range(25)}
    seen = receive(app_server, lambda got: {tuple(r.event["data"]) for r in got} >= every, timeout=30)
    assert {tuple(r.event["data"]) for r in seen} == every
    first_copy: dict[tuple[str, int], str] = {}
    order: dict[str, list[int]] = {}
    for relayed in seen:
        session, n = relayed.event["data"]
        assert relayed.event["session"] == session  # the old process's session id
        assert relayed.event["ref"] == refs[session][n]
        delivery = relayed.headers["X-Chloe-Delivery"]
        assert delivery == delivery_id(refs[session][n])
        if (session, n) in first_copy:
            assert first_copy[session, n] == delivery  # a repeat carries its first copy's id
        else:
            first_copy[session, n] = delivery
            order.setdefault(session, []).append(n)
    assert all(numbers == list(range(25)) for numbers in order.values())
    assert app_server.bad_signatures == 0
    assert status(second)["relay"]["recovered"] == 500


# -- 2, 3. a spool that cannot be used -----------------------------------------


def test_impossible_spool_directory_stops_startup(tmp_path):
    """relay_spool_path under a regular file: chloed exits with status 1 and one line on stderr naming
    relay_spool_path."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    conf = relay_conf(tmp_path, relay_spool="disk", relay_spool_path=str(blocker / "spool"))
    result = twistd("--app-url", dead_app_url(), config=conf)
    assert result.returncode == 1, result
    assert len(lines(result.stderr)) == 1, result.stderr
    assert "relay_spool_path" in result.stderr and str(blocker / "spool") in result.stderr


def test_spool_directory_in_use_stops_a_second_chloed(chloed_factory, tmp_path):
    """A second chloed on a spool directory another chloed holds exits with status 1 and one line on stderr
    saying relay_spool_path is in use; the first goes on."""
    spool = str(tmp_path / "spool")
    conf = relay_conf(tmp_path, relay_spool="disk", relay_spool_path=spool)
    first = chloed_factory("--app-url", dead_app_url(), config=conf)
    result = twistd("--app-url", dead_app_url(), config=conf)
    assert result.returncode == 1, result
    assert len(lines(result.stderr)) == 1, result.stderr
    assert "relay_spool_path" in result.stderr and "in use" in result.stderr
    assert first.process.poll() is None
    assert status(first)["relay"]["spool"] == "disk"


def test_a_failing_spool_write_is_upstream_failed_never_accepted(app_server, chloed_factory, tmp_path):
    """At run time, a spool write that fails (the file may not grow: RLIMIT_FSIZE set on the running chloed,
    as a full disk would) answers that browser upstream_failed, never accepted, and the app never gets it;
    messages before and after it (once it fits again) are accepted and acked."""
    spool = tmp_path / "spool"
    server = chloed_factory(
        "--app-url", app_server.url,
        config=relay_conf(tmp_path, relay_spool="disk", relay_spool_path=str(spool), max_message_bytes=262144),
    )
    browser = Browser(server)
    try:
        # chloed's own log is a file too, and stays far below the limit.
        limit = 250_000
        resource.prlimit(server.process.pid, resource.RLIMIT_FSIZE, (limit, limit))
        big = "x" * 100_000
        for ref in ("first-big", "second-big"):
            browser.send({"type": "send", "data": big, "ref": ref})
            assert [browser.recv(), browser.recv()] == [{"type": "accepted", "ref": ref}, {"type": "ack", "ref": ref}]
        # The third would take the file past the limit.
        answer = browser.ask({"type": "send", "data": big, "ref": "third-big"})
        assert answer["type"] == "error" and answer["code"] == "upstream_failed" and answer["ref"] == "third-big"
        assert "could not spool it" in answer["message"]
        # A small one still fits: the failed write left nothing behind.
        browser.send({"type": "send", "data": "small", "ref": "small"})
        assert [browser.recv(), browser.recv()] == [{"type": "accepted", "ref": "small"},
                                                    {"type": "ack", "ref": "small"}]
        got = [app_server.next().event["ref"] for _ in range(3)]
        assert got == ["first-big", "second-big", "small"] and app_server.received.empty()
        assert os.path.getsize(spool / SPOOL_LOG) < limit
        relay = status(server)["relay"]
        assert relay["spool_failures"] == 1 and relay["delivered"] == 3
        assert "cannot write: File too large" in server.log()
    finally:
        browser.close()


# -- 4. a spool file cut mid-record --------------------------------------------


def test_spool_cut_mid_record_delivers_the_whole_records(chloed_factory, app_server, tmp_path):
    """Five accepted messages, SIGKILL, relay.log cut by 3 bytes (the last record torn): the next chloed
    delivers the first four, in order, and logs exactly one warning about the cut file."""
    spool = tmp_path / "spool"
    first = chloed_factory(
        "--app-url", dead_app_url(),
        config=relay_conf(tmp_path, relay_spool="disk", relay_spool_path=str(spool), upstream_timeout=2),
    )
    browser = Browser(first)
    try:
        refs = [f"{browser.session}-{n:04d}-torn" for n in range(5)]
        for n, ref in enumerate(refs):
            browser.send({"type": "send", "data": n, "ref": ref})
        assert [browser.recv() for _ in refs] == [{"type": "accepted", "ref": ref} for ref in refs]
        kill(first)
    finally:
        browser.close()
    log_file = spool / SPOOL_LOG
    os.truncate(log_file, os.path.getsize(log_file) - 3)

    second = chloed_factory(
        "--app-url", app_server.url, config=relay_conf(tmp_path, relay_spool="disk", relay_spool_path=str(spool)),
    )
    seen = receive(app_server, lambda got: len(got) == 4)
    assert [r.event["data"] for r in seen] == [0, 1, 2, 3]
    assert [r.headers["X-Chloe-Delivery"] for r in seen] == [delivery_id(ref) for ref in refs[:4]]
    # Recovery queues everything it read before the first POST leaves: four, not five.
    assert status(second)["relay"]["recovered"] == 4
    warnings = [line for line in second.log().splitlines() if "cut short or damaged" in line]
    assert len(warnings) == 1 and str(log_file) in warnings[0], second.log()


# -- 5. a flood of lifecycle events ---------------------------------------------


CONNECTIONS = 1200
FLOOD_THREADS = 4
MESSAGES = 20


def test_event_flood_to_a_slow_app_never_fails_a_browser_send(app_server, chloed_factory, tmp_path):
    """1,200 short-lived WebSockets (2,400 connect and disconnect events) against an app that takes 0.3 s per
    event and an events_queue of 100: most events overflow, and are counted in /status and /metrics, while a
    browser's 20 sends, made during the flood, are all acked."""
    app_server.respond = lambda relayed: (relayed.event["type"] != "message" and time.sleep(0.3)) or 200
    server = chloed_factory(
        "--app-url", app_server.url,
        config=relay_conf(tmp_path, events=["message", "connect", "disconnect"], events_queue=100),
    )
    browser = Browser(server)
    progress = threading.Condition()
    made = [0]
    errors: list[BaseException] = []
    request = upgrade_request()

    def flood() -> None:
        import socket

        try:
            for _ in range(CONNECTIONS // FLOOD_THREADS):
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
                    s.sendall(request)
                    head = b""
                    while b"\r\n\r\n" not in head:
                        chunk = s.recv(4096)
                        assert chunk, head
                        head += chunk
                    assert head.startswith(b"HTTP/1.1 101"), head
                with progress:
                    made[0] += 1
                    progress.notify_all()
        except BaseException as e:  # (told to the test thread)
            errors.append(e)
            with progress:
                progress.notify_all()

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(FLOOD_THREADS)]
    try:
        for thread in threads:
            thread.start()
        step = CONNECTIONS // (MESSAGES + 1)
        refs = [f"flood-{n:04d}-xxxxxxxxxxxxxxxx" for n in range(MESSAGES)]
        for n, ref in enumerate(refs):
            with progress:
                assert progress.wait_for(lambda: errors or made[0] >= (n + 1) * step, timeout=TIMEOUT)
            assert not errors, errors
            if n == MESSAGES // 2:
                assert status(server)["relay"]["events"]["overflows"] > 0  # the rest go while events overflow
            browser.send({"type": "send", "data": n, "ref": ref})
        for thread in threads:
            thread.join(timeout=TIMEOUT)
            assert not thread.is_alive()
        assert not errors, errors
        assert [browser.recv() for _ in refs] == [{"type": "ack", "ref": ref} for ref in refs]
        relay = status(server)["relay"]
        assert relay["overflows"] == 0
        events = relay["events"]
        # The app takes at most 64 / 0.3 s = 213 events a second: of the 2,400 a large share overflows (more
        # the faster the flood went).
        assert events["overflows"] >= CONNECTIONS // 2
        assert events["queue_size"] == 100
        code, _, metrics = server.request("GET", "/metrics")
        assert code == 200
        counted = [line for line in metrics.decode().splitlines()
                   if line.startswith("chloe_relay_event_overflows_total")]
        assert len(counted) == 1 and float(counted[0].split()[-1]) >= events["overflows"]
    finally:
        app_server.respond = lambda relayed: 200  # (so the drain at the end is quick)
        browser.close()


# -- 6. dead letters through the API --------------------------------------------


def test_dead_letters_listed_replayed_and_deleted(chloed_factory, app_server, tmp_path):
    """The app answers 422 to "bad": those messages are upstream_rejected and listed by GET /relay/dead with
    status 422 and the body as POSTed; once the app takes them, POST /relay/dead/replay delivers two of them
    again with their delivery ids, and DELETE forgets the third (204, then 404, and gone from the listing)."""
    strict = threading.Event()
    strict.set()
    app_server.respond = lambda relayed: 422 if strict.is_set() and relayed.event["data"] == "bad" else 200
    server = chloed_factory(
        "--app-url", app_server.url,
        config=relay_conf(tmp_path, relay_spool="disk", relay_spool_path=str(tmp_path / "spool")),
    )
    browser = Browser(server)
    try:
        refs = [f"{browser.session}-{n:04d}-dead" for n in range(4)]
        datas = ["bad", "good", "bad", "bad"]
        for ref, data in zip(refs, datas):
            browser.send({"type": "send", "data": data, "ref": ref})
        frames = frames_by_ref(browser, 8)  # accepted, then the outcome, for each
        for ref, data in zip(refs, datas):
            accepted, outcome = frames[ref]
            assert accepted == {"type": "accepted", "ref": ref}
            if data == "good":
                assert outcome == {"type": "ack", "ref": ref}
            else:
                assert outcome["type"] == "error" and outcome["code"] == "upstream_rejected", outcome
        posted = {r.event["ref"]: r for r in receive(app_server, lambda got: len(got) == 4)}

        code, page = api(server, "GET", "/relay/dead")
        assert code == 200 and page["count"] == 3 and page["next"] is None
        letters = page["dead_letters"]
        dead_refs = [refs[0], refs[2], refs[3]]
        assert [letter["body"]["ref"] for letter in letters] == dead_refs
        for letter in letters:
            relayed = posted[letter["body"]["ref"]]
            assert letter["status"] == 422 and "422" in letter["reason"]
            assert letter["kind"] == "message" and letter["session"] == browser.session
            assert letter["attempts"] == 1
            assert letter["body"] == relayed.event
            assert letter["delivery"] == relayed.headers["X-Chloe-Delivery"] == delivery_id(letter["body"]["ref"])

        strict.clear()  # the app changes its mind
        replay = [letters[0]["id"], letters[1]["id"]]
        code, answer = api(server, "POST", "/relay/dead/replay", {"ids": replay})
        assert code == 200 and answer == {"replayed": 2, "ids": replay}
        again = receive(app_server, lambda got: len(got) == 2)
        assert [r.event for r in again] == [letters[0]["body"], letters[1]["body"]]
        assert [r.headers["X-Chloe-Delivery"] for r in again] == [letters[0]["delivery"], letters[1]["delivery"]]

        code, _, body = server.request("DELETE", f"/relay/dead/{letters[2]['id']}")
        assert code == 204 and body == b""
        code, page = api(server, "GET", "/relay/dead")
        assert code == 200 and page == {"dead_letters": [], "next": None, "count": 0}
        code, _, _ = server.request("DELETE", f"/relay/dead/{letters[2]['id']}")
        assert code == 404
        assert app_server.received.empty()
    finally:
        browser.close()


# -- 7. Redis: a node that never comes back ------------------------------------


def test_redis_spool_node_killed_for_good_is_delivered_by_another(
    chloed_factory, app_server, redis_server, tmp_path,  # noqa: F811 (redis_server: a fixture)
):
    """Two nodes on one Redis (relay_spool "redis", the default with a Redis backend): node A, its app down,
    accepts ten messages and is SIGKILLed, never to come back; node B, its app up, takes A's stream over once
    A's liveness key has expired (15 s, seen at B's next 5 s beat) and delivers all ten, in order, with their
    delivery ids."""
    from chloed.spool.redis import BEAT, TTL_MS

    a_conf, b_conf = tmp_path / "a", tmp_path / "b"
    a_conf.mkdir()
    b_conf.mkdir()
    # A first: B, started after it, beats later in each 5 s period, so one of its beats comes soon after A's
    # liveness key (set when A started) has expired.
    node_a = chloed_factory(
        "--app-url", dead_app_url(), config=relay_conf(a_conf, backend=redis_server.url, upstream_timeout=2),
    )
    node_b = chloed_factory(
        "--app-url", app_server.url, config=relay_conf(b_conf, backend=redis_server.url),
    )
    assert status(node_a)["relay"]["spool"] == status(node_b)["relay"]["spool"] == "redis"
    browser = Browser(node_a)
    try:
        refs = [f"{browser.session}-{n:04d}-redis" for n in range(10)]
        for n, ref in enumerate(refs):
            browser.send({"type": "send", "data": n, "ref": ref})
        assert [browser.recv() for _ in refs] == [{"type": "accepted", "ref": ref} for ref in refs]
        kill(node_a)
    finally:
        browser.close()
    killed = time.monotonic()
    seen = receive(app_server, lambda got: {r.event["data"] for r in got} >= set(range(10)),
                   timeout=TTL_MS / 1000 + 2 * BEAT + 5)
    taken = time.monotonic() - killed
    first: dict[int, str] = {}
    for relayed in seen:
        n = relayed.event["data"]
        assert relayed.headers["X-Chloe-Delivery"] == delivery_id(refs[n])
        first.setdefault(n, relayed.event["session"])
    assert list(first) == list(range(10))  # first copies in the order sent
    assert set(first.values()) == {browser.session}
    assert taken <= TTL_MS / 1000 + BEAT + 2, taken
    assert status(node_b)["relay"]["recovered"] == 10
