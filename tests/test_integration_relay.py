"""The relay to a real app server: retries, order, delivery ids, failures
and lifecycle events, against a real chloed."""

from __future__ import annotations

import json
import threading
import time

from tests.servers import AppServer
from tests.test_integration import Browser


def relay_conf(tmp_path, **options) -> str:
    conf = tmp_path / "chloe.toml"
    conf.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in options.items()))
    return str(conf)


def test_retries_keep_the_delivery_id_and_the_order(chloed_factory, app_server, tmp_path):
    """A 503 is retried with the same X-Chloe-Delivery; later messages wait their turn; all are acked in order."""
    failures = {"left": 2}
    lock = threading.Lock()

    def respond(relayed):
        with lock:
            if relayed.event["data"] == 1 and failures["left"]:
                failures["left"] -= 1
                return 503
        return 200

    app_server.respond = respond
    server = chloed_factory("--app-url", app_server.url, config=relay_conf(tmp_path, upstream_timeout=5))
    browser = Browser(server)
    try:
        for n in (1, 2, 3):
            browser.send({"type": "send", "data": n, "ref": f"ref-{n}"})
        seen = [app_server.next(timeout=20) for _ in range(5)]
        assert [r.event["data"] for r in seen] == [1, 1, 1, 2, 3]
        assert len({r.headers["X-Chloe-Delivery"] for r in seen[:3]}) == 1
        assert seen[3].headers["X-Chloe-Delivery"] != seen[0].headers["X-Chloe-Delivery"]
        assert [browser.recv() for _ in range(3)] == [{"type": "ack", "ref": f"ref-{n}"} for n in (1, 2, 3)]
    finally:
        browser.close()


def test_gives_up_with_upstream_failed(chloed_factory, app_server, tmp_path):
    """An app that keeps failing gets upstream_retries retries, then the browser hears upstream_failed."""
    app_server.respond = lambda relayed: 500
    server = chloed_factory("--app-url", app_server.url, config=relay_conf(tmp_path, upstream_retries=1))
    browser = Browser(server)
    try:
        browser.send({"type": "send", "data": "x", "ref": "f"})
        answer = browser.recv()
        assert answer["type"] == "error" and answer["code"] == "upstream_failed" and answer["ref"] == "f"
        assert app_server.received.qsize() == 2
    finally:
        browser.close()


def test_app_down_is_upstream_failed(chloed_factory, tmp_path):
    """With no app listening, the browser hears upstream_failed after the retries."""
    app = AppServer().start()
    url = app.url
    app.stop()
    server = chloed_factory("--app-url", url, config=relay_conf(tmp_path, upstream_retries=0))
    browser = Browser(server)
    try:
        assert browser.ask({"type": "send", "data": "x", "ref": "d"})["code"] == "upstream_failed"
    finally:
        browser.close()


def test_lifecycle_events_are_posted(chloed_factory, app_server, tmp_path):
    """connect, subscribe, unsubscribe and disconnect reach the app when listed in events."""
    server = chloed_factory(
        "--app-url", app_server.url,
        config=relay_conf(tmp_path, events=["message", "connect", "disconnect", "subscribe", "unsubscribe"]),
    )
    browser = Browser(server)
    browser.subscribe("room")
    browser.ask({"type": "unsubscribe", "channel": "room"})
    browser.close()
    kinds = [(e.event["type"], e.event["channel"], e.event["session"]) for e in (app_server.next() for _ in range(4))]
    session = browser.session
    assert kinds == [("connect", None, session), ("subscribe", "room", session),
                     ("unsubscribe", "room", session), ("disconnect", None, session)]


def test_full_queue_answers_at_once(chloed_factory, app_server, tmp_path):
    """With the relay queue full, a new send gets upstream_failed at once instead of waiting."""
    release = threading.Event()
    app_server.respond = lambda relayed: release.wait(20) and 200
    server = chloed_factory("--app-url", app_server.url, config=relay_conf(tmp_path, upstream_queue=1))
    browser = Browser(server)
    try:
        browser.send({"type": "send", "data": "first", "ref": "1"})
        app_server.next()  # the first is at the app, holding the only place
        answer = browser.ask({"type": "send", "data": "second", "ref": "2"})
        assert answer["code"] == "upstream_failed" and answer["ref"] == "2"
        release.set()
        assert browser.recv() == {"type": "ack", "ref": "1"}
    finally:
        release.set()
        browser.close()


def test_app_down_ten_seconds_loses_nothing(chloed_factory, tmp_path):
    """50 sessions send 1,000 messages while the app is down for ten seconds: each reaches it, in order, one ack each."""
    from tests.servers import free_port

    port = free_port()
    server = chloed_factory(
        "--app-url", f"http://127.0.0.1:{port}/updates",
        config=relay_conf(tmp_path, upstream_retries=10, upstream_timeout=2),
    )
    browsers = [Browser(server) for _ in range(50)]
    app = None
    try:
        for n in range(20):
            for b, browser in enumerate(browsers):
                browser.send({"type": "send", "data": [b, n], "ref": f"{browser.session}-{n:04d}-xxxxxxxx"})
        time.sleep(10)  # the outage being tested
        app = AppServer().start(port)
        acks = {b: [browser.recv() for _ in range(20)] for b, browser in enumerate(browsers)}
        for b, answers in acks.items():
            assert answers == [{"type": "ack", "ref": f"{browsers[b].session}-{n:04d}-xxxxxxxx"} for n in range(20)]
        seen: dict[int, list[int]] = {}
        ids: dict[tuple[int, int], set[str]] = {}
        while not app.received.empty():
            relayed = app.received.get()
            b, n = relayed.event["data"]
            seen.setdefault(b, []).append(n)
            ids.setdefault((b, n), set()).add(relayed.headers["X-Chloe-Delivery"])
        for b in range(50):
            ordered = list(dict.fromkeys(seen[b]))
            assert ordered == list(range(20)), b
            assert sorted(seen[b]) == seen[b]  # duplicates, if any, come in order too
        assert all(len(delivery) == 1 for delivery in ids.values())
        assert len(ids) == 1000
    finally:
        for browser in browsers:
            browser.close()
        if app is not None:
            app.stop()


def test_slow_app_is_retried_then_upstream_failed(chloed_factory, app_server, tmp_path):
    """An app that answers only after upstream_timeout is retried, then the browser hears upstream_failed."""
    app_server.respond = lambda relayed: time.sleep(1.5) or 200
    server = chloed_factory(
        "--app-url", app_server.url, config=relay_conf(tmp_path, upstream_timeout=0.5, upstream_retries=1)
    )
    browser = Browser(server)
    try:
        answer = browser.ask({"type": "send", "data": "slow", "ref": "s"})
        assert answer["code"] == "upstream_failed" and answer["ref"] == "s"
        first, second = app_server.next(), app_server.next()
        assert first.headers["X-Chloe-Delivery"] == second.headers["X-Chloe-Delivery"]
    finally:
        browser.close()


def test_app_400_is_not_retried(chloed, app_server):
    """A 400 from the app is upstream_rejected at once, with no second attempt."""
    app_server.respond = lambda relayed: 400
    browser = Browser(chloed)
    try:
        assert browser.ask({"type": "send", "data": 1, "ref": "r"})["code"] == "upstream_rejected"
        assert browser.ask({"type": "ping"}) == {"type": "pong"}
        assert app_server.received.qsize() == 1
    finally:
        browser.close()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_dead_app_with_full_queue_keeps_memory_flat(chloed_factory, tmp_path):
    """With a queue of 10 and a dead app, the 11th send fails at once, and thousands more do not grow memory."""
    from tests.servers import free_port

    server = chloed_factory(
        "--app-url", f"http://127.0.0.1:{free_port()}/updates",
        # rate_limit off: this floods on purpose, to fill the relay queue.
        config=relay_conf(tmp_path, upstream_queue=10, upstream_retries=1000, upstream_timeout=1, rate_limit=0),
    )
    browser = Browser(server)
    try:
        for n in range(10):
            browser.send({"type": "send", "data": n, "ref": n})
        answer = browser.ask({"type": "send", "data": 10, "ref": 10})
        assert answer["code"] == "upstream_failed" and answer["ref"] == 10
        before = rss_kib(server.process.pid)
        for n in range(11, 3011):
            browser.send({"type": "send", "data": "x" * 1000, "ref": n})
        codes = [browser.recv()["code"] for _ in range(3000)]
        assert set(codes) == {"upstream_failed"}
        assert rss_kib(server.process.pid) - before < 4096
    finally:
        browser.close()


class BatchApp:
    """A real app server for the batched relay: checks the signature, records
    each POST's headers and items, and answers ``{"results": [...]}`` with
    ``status(item)`` for each item."""

    def __init__(self, status) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from chloed.client import verify

        app = self
        self.posts: list[tuple[dict[str, str], list]] = []
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                verify("test-secret", self.headers, body)
                items = json.loads(body)
                with app.lock:
                    app.posts.append((dict(self.headers), items))
                answer = json.dumps({"results": [status(item) for item in items]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/updates"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_batched_relay_with_per_item_results(chloed_factory, tmp_path):
    """With relay_batch = 4, six browsers' messages reach the app as signed arrays of at most 4; the item the app
    answers 400 in its results is upstream_rejected for its browser alone, every other message is acked in order."""
    from chloed.relay import delivery_id

    app = BatchApp(lambda item: 400 if item["data"] == "refuse" else 200)
    server = chloed_factory("--app-url", app.url, config=relay_conf(tmp_path, relay_batch=4))
    browsers = [Browser(server) for _ in range(6)]
    try:
        refs = {}
        for n in range(3):
            for b, browser in enumerate(browsers):
                data = "refuse" if (b, n) == (2, 1) else [b, n]
                refs[b, n] = f"{browser.session}-{n:04d}-xxxxxxxx"
                browser.send({"type": "send", "data": data, "ref": refs[b, n]})
        for b, browser in enumerate(browsers):
            answers = [browser.recv() for _ in range(3)]
            for n, answer in enumerate(answers):
                if (b, n) == (2, 1):
                    assert answer["type"] == "error" and answer["code"] == "upstream_rejected"
                    assert answer["ref"] == refs[b, n]
                else:
                    assert answer == {"type": "ack", "ref": refs[b, n]}
        with app.lock:
            posts = list(app.posts)
        items = [item for _, batch in posts for item in batch]
        assert len(items) == 18
        for headers, batch in posts:
            assert 1 <= len(batch) <= 4 and headers["X-Chloe-Batch"] == str(len(batch))
            assert "X-Chloe-Delivery" not in headers
            assert len({item["session"] for item in batch}) == len(batch)  # one message per session per POST
        for b, browser in enumerate(browsers):
            mine = [item for item in items if item["session"] == browser.session]
            assert [item["ref"] for item in mine] == [refs[b, n] for n in range(3)]
            assert [item["delivery"] for item in mine] == [delivery_id(refs[b, n]) for n in range(3)]
    finally:
        for browser in browsers:
            browser.close()
        app.stop()
