"""Nothing the page sends is lost when chloed goes away: chloe.js keeps
every unanswered send and sends it again, with the same ref, after it
reconnects; with ``outbox: 'persistent'`` that outlives a page reload."""

from __future__ import annotations

import time

import pytest
from pathlib import Path

from tests.browser.pages import serve_static
from tests.servers import AppServer, Chloed, free_port

PAGE = """<!doctype html><html><head><meta charset="utf-8">
<script src="/chloe.js"></script></head><body><script>
window.acked = []; window.errors = [];
var chloe = window.chloe = new Chloe({{host: '127.0.0.1', port: {port}, minDelay: 50, maxDelay: 300,
                                       transports: ['websocket'], outbox: 'persistent'}});
chloe.connect(function () {{ window.connected = true; }});
window.sendNumbers = function (from, to, every) {{
  var n = from;
  var timer = setInterval(function () {{
    var k = n;
    chloe.send(k, {{ack: function (err) {{ if (err) window.errors.push(err.code); else window.acked.push(k); }}}});
    if (++n > to) clearInterval(timer);
  }}, every);
}};
window.outboxSize = function () {{
  return new Promise(function (resolve) {{
    var open = indexedDB.open('chloe-outbox', 1);
    open.onupgradeneeded = function () {{ open.result.createObjectStore('sends', {{keyPath: 'key'}}); }};
    open.onsuccess = function () {{
      var req = open.result.transaction('sends', 'readonly').objectStore('sends').count();
      req.onsuccess = function () {{ resolve(req.result); open.result.close(); }};
    }};
    open.onerror = function () {{ resolve(-1); }};
  }});
}};
</script></body></html>"""


CHLOE_JS = (Path(__file__).parent.parent.parent / "chloed" / "static" / "chloe.js").read_bytes()


def serve(page: bytes):
    """The page, and chloe.js served by the app itself (so the page loads
    while chloed is down, as it would from an app that hosts its own copy)."""
    return serve_static({"/": ("text/html", page), "/chloe.js": ("application/javascript", CHLOE_JS)})


@pytest.fixture
def setup():
    port = free_port()
    app = AppServer().start()
    pages = serve(PAGE.format(port=port).encode())
    servers: list[Chloed] = []

    def start_chloed(*args: str) -> Chloed:
        server = Chloed("--app-url", app.url, *args, port=port)
        servers.append(server)
        return server

    yield start_chloed, app, pages
    for server in servers:
        server.stop()
    pages.shutdown()
    app.stop()


def received_numbers(app: AppServer) -> tuple[dict[int, set[str]], int]:
    """Every number the app got, with the delivery ids it came with."""
    seen: dict[int, set[str]] = {}
    count = 0
    while not app.received.empty():
        relayed = app.received.get()
        seen.setdefault(relayed.event["data"], set()).add(relayed.headers["X-Chloe-Delivery"])
        count += 1
    return seen, count


def test_chloed_killed_and_restarted_loses_no_send(setup, page):
    """chloed is SIGKILLed and restarted while the page sends 200 numbers: the app gets all 200."""
    start_chloed, app, pages = setup
    chloed = start_chloed()
    page.goto(f"http://127.0.0.1:{pages.server_port}/", wait_until="domcontentloaded")
    page.wait_for_function("window.connected === true")
    page.evaluate("window.sendNumbers(1, 200, 10)")
    page.wait_for_function("window.acked.length >= 50")
    chloed.process.kill()
    chloed.process.wait()
    time.sleep(0.3)  # the page keeps sending into the outage: that is the test
    start_chloed()
    page.wait_for_function("window.acked.length >= 200", timeout=30000)
    acked = page.evaluate("window.acked")
    assert sorted(acked) == list(range(1, 201))
    assert page.evaluate("window.errors") == []
    seen, _ = received_numbers(app)
    assert sorted(seen) == list(range(1, 201))
    assert all(len(ids) == 1 for ids in seen.values()), "a repeat came with a new delivery id"


def test_persistent_outbox_survives_a_page_reload(setup, page):
    """Sends made while chloed is down survive a page reload and reach the app once it is back."""
    start_chloed, app, pages = setup
    chloed = start_chloed()
    page.goto(f"http://127.0.0.1:{pages.server_port}/", wait_until="domcontentloaded")
    page.wait_for_function("window.connected === true")
    chloed.stop()
    page.evaluate("window.sendNumbers(1, 50, 2)")
    deadline = time.monotonic() + 15
    while page.evaluate("window.outboxSize()") < 50 and time.monotonic() < deadline:
        time.sleep(0.05)  # waiting for IndexedDB to commit, bounded
    assert page.evaluate("window.outboxSize()") == 50
    page.reload(wait_until="domcontentloaded")
    start_chloed()
    page.wait_for_function("window.connected === true", timeout=30000)
    deadline = time.monotonic() + 20
    got: dict[int, set[str]] = {}
    while len(got) < 50 and time.monotonic() < deadline:
        seen, _ = received_numbers(app)
        for number, ids in seen.items():
            got.setdefault(number, set()).update(ids)
        time.sleep(0.05)  # polling the app's record, bounded
    assert sorted(got) == list(range(1, 51))
    assert all(len(ids) == 1 for ids in got.values())
    deadline = time.monotonic() + 10
    while page.evaluate("window.outboxSize()") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert page.evaluate("window.outboxSize()") == 0


def test_a_burst_beyond_the_rate_limit_is_paced_not_refused(setup, page, tmp_path):
    """With rate_limit = 20 (burst 30), 150 sends made at once all reach the
    app in order and are acked: chloe.js keeps under the limit the server
    announced in `connected`, so nothing is refused."""
    start_chloed, app, pages = setup
    conf = tmp_path / "chloe.toml"
    conf.write_text("rate_limit = 20\nmax_subscriptions = 5\n")
    chloed = start_chloed("--config", str(conf))
    page.goto(f"http://127.0.0.1:{pages.server_port}/", wait_until="domcontentloaded")
    page.wait_for_function("window.connected === true")
    page.evaluate("for (var k = 1; k <= 150; k++) (function (k) { chloe.send(k, {ack: function (err) {"
                  " if (err) window.errors.push(err.code); else window.acked.push(k); }}); })(k);")
    page.wait_for_function("window.acked.length + window.errors.length >= 150", timeout=30000)
    assert page.evaluate("window.errors") == []
    assert page.evaluate("window.acked") == list(range(1, 151))
    order = []
    while not app.received.empty():
        order.append(app.received.get().event["data"])
    assert order == list(range(1, 151))
    assert "rate_limited" not in chloed.log()
