"""chloe.js on each transport, forced in turn, in real Chromium: connect,
subscribe, receive, send with ack; and nothing lost, nothing doubled,
while the connection is cut again and again."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.browser.proxy import CuttingProxy
from tests.servers import AppServer, Chloed

TRANSPORTS = ["websocket", "sse", "longpoll", "jsonp"]

PAGE = """<!doctype html><html><head><meta charset="utf-8">
<script src="http://127.0.0.1:{port}/chloe.js"></script></head><body><script>
window.received = []; window.acks = []; window.errors = [];
var options = {{host: '127.0.0.1', port: {port}, minDelay: 50, maxDelay: 500}};
var transports = new URLSearchParams(location.search).get('transports');
if (transports) options.transports = transports.split(',');
var chloe = window.chloe = new Chloe(options);
chloe.onerror(function (e) {{ window.errors.push(e); }});
chloe.connect(function () {{
  window.connected = chloe.transport;
  chloe.subscribe('count', function (data, meta) {{ window.received.push(data); }});
  chloe.send('hello', {{ack: function (err) {{ window.acks.push(err ? err.code : 'ok'); }}}});
}});
</script></body></html>"""


def serve_page(chloe_port: int) -> ThreadingHTTPServer:
    body = PAGE.format(port=chloe_port).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def stack(tmp_path):
    """chloed behind a cutting proxy, an app server, and a page server."""
    conf = tmp_path / "chloe.toml"
    conf.write_text("history_size = 5000\nheartbeat = 5\nlongpoll_timeout = 5\n")
    app = AppServer().start()
    chloed = Chloed("--app-url", app.url, config=str(conf))
    proxy = CuttingProxy(chloed.port)
    pages = serve_page(proxy.port)
    yield chloed, proxy, pages, app
    pages.shutdown()
    proxy.close()
    chloed.stop()
    app.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_each_transport_connects_subscribes_receives_and_acks(stack, page, transport):
    """Forced onto one transport, the page connects, gets a push on its channel and an ack for its send."""
    chloed, proxy, pages, app = stack
    page.goto(f"http://127.0.0.1:{pages.server_port}/?transports={transport}", wait_until="domcontentloaded")
    page.wait_for_function("window.connected !== undefined")
    assert page.evaluate("chloe.transport") == transport
    page.wait_for_function("window.acks.length === 1")
    assert page.evaluate("window.acks") == ["ok"]
    assert app.next().event["data"] == "hello"
    # The ack came after the subscribe on the same session: subscribed by now.
    chloed.send(data=42, channel="count")
    page.wait_for_function("window.received.length === 1")
    assert page.evaluate("window.received") == [42]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cut_connections_lose_nothing_and_double_nothing(stack, page, transport):
    """While numbers are published every few ms, connections are closed and killed; the page ends with each once, in order."""
    chloed, proxy, pages, app = stack
    page.goto(f"http://127.0.0.1:{pages.server_port}/?transports={transport}", wait_until="domcontentloaded")
    page.wait_for_function("window.acks.length === 1")
    done = threading.Event()
    published = []

    def publish() -> None:
        n = 0
        while not done.is_set() and n < 5000:
            n += 1
            chloed.send(data=n, channel="count")
            published.append(n)
            time.sleep(0.005)

    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        page.wait_for_function("window.received.length >= 20")
        for kill in (False, True, False, True):
            seen = page.evaluate("window.received.length")
            proxy.cut(kill=kill)
            # The page reconnects and receives again before the next cut.
            page.wait_for_function(f"window.received.length > {seen + 20}")
    finally:
        done.set()
        publisher.join()
    total = len(published)
    page.wait_for_function(f"window.received.length >= {total}", timeout=30000)
    received = page.evaluate("window.received")
    assert received == list(range(1, total + 1))
    assert proxy.cuts == 4
    assert page.evaluate("chloe.transport") == transport


def test_websocket_refused_falls_back_to_sse(tmp_path, page):
    """When the WebSocket upgrade fails the client falls back to SSE by itself."""
    conf = tmp_path / "chloe.toml"
    conf.write_text('transports = ["sse", "longpoll", "jsonp"]\n')
    app = AppServer().start()
    chloed = Chloed("--app-url", app.url, config=str(conf))
    pages = serve_page(chloed.port)
    try:
        page.goto(f"http://127.0.0.1:{pages.server_port}/", wait_until="domcontentloaded")
        page.wait_for_function("window.connected !== undefined")
        assert page.evaluate("chloe.transport") == "sse"
        page.wait_for_function("window.acks.length === 1")
    finally:
        pages.shutdown()
        chloed.stop()
        app.stop()


def test_plain_eventsource_resumes_with_last_event_id(stack, page):
    """A plain EventSource (no chloe.js) reconnects by itself after a killed connection and misses nothing."""
    chloed, proxy, pages, app = stack
    page.goto(f"http://127.0.0.1:{pages.server_port}/?transports=longpoll", wait_until="domcontentloaded")
    page.evaluate(
        """port => { window.plain = [];
          var es = new EventSource('http://127.0.0.1:' + port + '/sse?channel=count');
          es.addEventListener('message', function (e) { window.plain.push(JSON.parse(e.data).data); });
          window.plainOpen = false;
          es.addEventListener('subscribed', function () { window.plainOpen = true; }); }""",
        proxy.port,
    )
    page.wait_for_function("window.plainOpen")
    total = 200

    def publish() -> None:
        for n in range(1, total + 1):
            chloed.send(data=n, channel="count")
            time.sleep(0.005)

    publisher = threading.Thread(target=publish)
    publisher.start()
    page.wait_for_function("window.plain.length >= 20")
    proxy.cut(kill=True)
    publisher.join()
    page.wait_for_function(f"window.plain.length >= {total}", timeout=30000)
    assert page.evaluate("window.plain") == list(range(1, total + 1))
