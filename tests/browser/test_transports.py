"""chloe.js on each transport, forced in turn, in real Chromium against real
chloed processes: connect, subscribe, receive, send with ack; nothing lost
and nothing doubled while a proxy closes and kills the browser's connections
again and again; falling back when a transport is not served; a plain
EventSource resuming by Last-Event-ID; ``close()`` stopping every poll; and
JSONP refusing a callback that is not an identifier.

The page is served by a small local HTTP server and loads ``chloe.js`` from
chloed through a cutting TCP proxy (``tests/browser/proxy.py``), so
everything the browser says to chloed goes through connections the test can
cut."""

from __future__ import annotations

import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import Iterator

import pytest

from tests.browser.pages import serve_static
from tests.browser.proxy import CuttingProxy
from tests.servers import AppServer, Chloed

TRANSPORTS = ["websocket", "sse", "longpoll", "jsonp"]
STREAMING = {"websocket", "sse"}

CONFIG = "history_size = 2000\nheartbeat = 5\nlongpoll_timeout = 5\n"

CHLOE_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<script src="http://127.0.0.1:{port}/chloe.js"></script></head><body><script>
window.received = []; window.acks = []; window.errors = []; window.closes = 0; window.general = [];
var options = {{host: '127.0.0.1', port: {port}, minDelay: 50, maxDelay: 500}};
var transports = new URLSearchParams(location.search).get('transports');
if (transports) options.transports = transports.split(',');
var chloe = window.chloe = new Chloe(options);
chloe.onerror(function (e) {{ window.errors.push(e); }});
chloe.onclose(function () {{ window.closes++; }});
chloe.onmessage(function (data, meta) {{ window.general.push([data, meta.channel]); }});
chloe.connect(function () {{
  window.connected = chloe.transport;
  chloe.subscribe('count', function (data, meta) {{ window.received.push(data); }});
  chloe.subscribe('loose');  // no callback: its messages go to onmessage
  window.ref = chloe.send('hello', {{ack: function (err) {{ window.acks.push(err ? err.code : 'ok'); }}}});
}});
</script></body></html>"""

PLAIN_PAGE = b"<!doctype html><html><head><meta charset='utf-8'><title>plain</title></head><body></body></html>"


def serve_pages(chloe_port: int) -> ThreadingHTTPServer:
    """``/``: a page running chloe.js against ``chloe_port``; ``/plain``: an
    empty page (for a bare EventSource)."""
    html = "text/html; charset=utf-8"
    return serve_static({"/": (html, CHLOE_PAGE.format(port=chloe_port).encode()), "/plain": (html, PLAIN_PAGE)})


@dataclass
class Stack:
    chloed: Chloed
    proxy: CuttingProxy
    pages: ThreadingHTTPServer
    app: AppServer

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.pages.server_port}{path}"


@pytest.fixture
def stack(tmp_path) -> Iterator[Stack]:
    """chloed (relaying to a signature-checking app) behind a cutting proxy,
    and a page server whose page talks to chloed through the proxy."""
    conf = tmp_path / "chloe.toml"
    conf.write_text(CONFIG)
    app = AppServer().start()
    chloed = Chloed("--app-url", app.url, secret="test-secret", config=str(conf))
    proxy = CuttingProxy(chloed.port)
    pages = serve_pages(proxy.port)
    yield Stack(chloed, proxy, pages, app)
    pages.shutdown()
    proxy.close()
    chloed.stop()
    app.stop()


class Publisher(threading.Thread):
    """Publishes 1..total to channel ``count`` through chloed's ``/send``,
    one every few ms; at each of ``pauses`` it stops until ``resume()``, so
    the test cuts connections at known points and messages are published
    while the browser is reconnecting."""

    def __init__(self, chloed: Chloed, total: int, pauses: list[int]) -> None:
        super().__init__(daemon=True)
        self.chloed = chloed
        self.total = total
        self.pauses = set(pauses)
        self.published = 0
        self.failures: list[tuple[int, object]] = []
        self._state = threading.Condition()
        self._resumes = threading.Semaphore(0)
        self._no_more_pauses = False

    def run(self) -> None:
        for n in range(1, self.total + 1):
            status, answer = self.chloed.send(data=n, channel="count")
            if status != 202:
                self.failures.append((status, answer))
            with self._state:
                self.published = n
                self._state.notify_all()
            if n in self.pauses and not self._no_more_pauses:
                self._resumes.acquire(timeout=30)
            time.sleep(0.005)  # pacing of the publisher, not synchronisation

    def wait_published(self, n: int, timeout: float = 30.0) -> None:
        with self._state:
            assert self._state.wait_for(lambda: self.published >= n, timeout), f"published only {self.published}"

    def resume(self) -> None:
        self._resumes.release()

    def finish(self) -> None:
        """Publish the rest without pausing, and wait for the end."""
        self._no_more_pauses = True
        self._resumes.release()
        self.join(60)


def open_chloe_page(page, stack: Stack, transport: str | None) -> None:
    query = f"?transports={transport}" if transport else ""
    page.goto(stack.url("/" + query))
    page.wait_for_function("window.connected !== undefined")


def publish_through_cuts(page, stack, received: str, total: int, cuts: list[tuple[int, str]]) -> None:
    """Publish 1..total to "count" and cut the browser's connections at the
    given counts ("close" or "kill"), each cut only once the browser came
    back through the proxy and receives again (``received`` is the page's
    array of numbers)."""
    publisher = Publisher(stack.chloed, total, [at for at, _ in cuts])
    publisher.start()
    seen_at_cut, accepted_at_cut = 0, 0
    try:
        for at, how in cuts:
            publisher.wait_published(at)
            if accepted_at_cut:
                stack.proxy.wait_accepted(more_than=accepted_at_cut)
            page.wait_for_function(f"{received}.length > {seen_at_cut}")
            seen_at_cut = page.evaluate(f"{received}.length")
            accepted_at_cut = stack.proxy.accepted
            cut = stack.proxy.close_all() if how == "close" else stack.proxy.kill_all()
            assert cut >= 1, f"the cut at {at} found no connection to cut"
            publisher.resume()  # the next numbers go out while the browser reconnects
    finally:
        publisher.finish()
    assert publisher.failures == []


def finish_with_sentinel(page, stack: Stack, array: str, total: int) -> list[int]:
    """Publish total + 1 after everything and wait for it: whatever doubled
    or came out of order is in the array by then (delivery is in order)."""
    page.wait_for_function(f"{array}.length >= {total}", timeout=30000)
    status, _ = stack.chloed.send(data=total + 1, channel="count")
    assert status == 202
    page.wait_for_function(f"{array}.indexOf({total + 1}) >= 0", timeout=15000)
    return page.evaluate(array)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_each_transport_connects_subscribes_receives_and_acks(stack, page, transport):
    """Forced onto one transport, the page connects, its send reaches the app and is acked, and a push arrives."""
    open_chloe_page(page, stack, transport)
    assert page.evaluate("chloe.transport") == transport
    assert page.evaluate("typeof chloe.session === 'string' && chloe.session.length >= 22")
    page.wait_for_function("window.acks.length === 1")
    assert page.evaluate("window.acks") == ["ok"]
    relayed = stack.app.next().event
    assert relayed["data"] == "hello"
    assert relayed["session"] == page.evaluate("chloe.session")
    # No ref from the page: chloe.js made a 128-bit random one.
    assert re.fullmatch(r"[0-9a-f]{32}", relayed["ref"]) and relayed["ref"] == page.evaluate("window.ref")
    assert stack.app.bad_signatures == 0
    # The ack came after the subscribe on the same session: subscribed by now.
    status, _ = stack.chloed.send(data={"n": 42}, channel="count")
    assert status == 202
    page.wait_for_function("window.received.length === 1")
    assert page.evaluate("window.received") == [{"n": 42}]
    # A channel subscribed without a callback, and a message to everyone,
    # reach onmessage, with the channel in meta.
    assert stack.chloed.send(data="loose one", channel="loose")[0] == 202
    assert stack.chloed.send(data="to all")[0] == 202
    page.wait_for_function("window.general.length === 2")
    assert page.evaluate("window.general") == [["loose one", "loose"], ["to all", None]]
    assert page.evaluate("window.errors") == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_browser_sends_reach_the_app_in_order(stack, page, transport):
    """Sixty sends, a burst and then a trickle, reach the app in the order the page made them, each acked."""
    open_chloe_page(page, stack, transport)
    page.wait_for_function("window.acks.length === 1")
    assert stack.app.next().event["data"] == "hello"
    page.evaluate(
        """() => {
          window.sendAcks = [];
          function send(i) { chloe.send(i, {ack: function (err) { window.sendAcks.push(err ? err.code : i); }}); }
          for (var i = 1; i <= 30; i++) send(i);          // queued while the first request is in flight
          var n = 31, timer = setInterval(function () { send(n); if (++n > 60) clearInterval(timer); }, 2);
        }"""
    )
    page.wait_for_function("window.sendAcks.length === 60")
    assert page.evaluate("window.sendAcks") == list(range(1, 61))
    assert [stack.app.next().event["data"] for _ in range(60)] == list(range(1, 61))
    assert stack.app.received.empty()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cut_connections_lose_nothing_and_double_nothing(stack, page, transport):
    """While 300 numbers are published, the browser's connections are closed and killed 5 times; it ends with each number once, in order."""
    total = 300
    cuts = [(50, "close"), (100, "kill"), (150, "close"), (200, "kill"), (250, "close")]
    open_chloe_page(page, stack, transport)
    page.wait_for_function("window.acks.length === 1")  # subscribed to count by now
    publish_through_cuts(page, stack, "window.received", total, cuts)
    received = finish_with_sentinel(page, stack, "window.received", total)
    assert received == list(range(1, total + 2))
    assert stack.proxy.cuts == len(cuts)
    assert page.evaluate("chloe.transport") == transport
    assert page.evaluate("window.errors") == []
    if transport in STREAMING:
        # Every cut ended the stream and the client reconnected by itself.
        assert page.evaluate("window.closes") >= len(cuts)
    if transport == "jsonp":
        # Hundreds of polls later, only the poll held now has its <script>
        # and its global callback: the others were removed.
        page.wait_for_function(
            """document.querySelectorAll('script[src*="/jsonp"]').length === 1 &&
               Object.keys(window).filter(function (k) { return k.indexOf('__chloe_') === 0; }).length === 1"""
        )


@pytest.mark.parametrize("transport", ["longpoll", "jsonp"])
def test_polling_session_expired_in_an_outage_is_replaced_and_resumed(tmp_path, page, transport):
    """After an outage longer than the session grace, a polling page gets a new session and still misses nothing."""
    conf = tmp_path / "chloe.toml"
    conf.write_text(CONFIG + "session_grace = 1\n")
    app = AppServer().start()
    chloed = Chloed("--app-url", app.url, config=str(conf))
    proxy = CuttingProxy(chloed.port)
    pages = serve_pages(proxy.port)
    stack = Stack(chloed, proxy, pages, app)
    statuses: list[int] = []
    page.on("response", lambda response: statuses.append(response.status) if "/poll" in response.url else None)
    total = 150
    try:
        open_chloe_page(page, stack, transport)
        page.wait_for_function("window.acks.length === 1")
        first_session = page.evaluate("chloe.session")
        publisher = Publisher(chloed, total, [50])
        publisher.start()
        try:
            publisher.wait_published(50)
            page.wait_for_function("window.received.length > 0")
            proxy.refusing = True
            assert proxy.kill_all() >= 1
            publisher.resume()  # published while the page cannot reach chloed
            # The outage: longer than session_grace (1 s), shorter than the
            # client's poll retries (0.25 + 0.5 + 0.75 s, then 1 s more), so
            # the next retry reaches chloed after the session has expired.
            time.sleep(1.2)
            proxy.refusing = False
        finally:
            publisher.finish()
        assert publisher.failures == []
        page.wait_for_function(f"chloe.session !== {first_session!r}")
        received = finish_with_sentinel(page, stack, "window.received", total)
        assert received == list(range(1, total + 2))
        assert page.evaluate("chloe.transport") == transport
        if transport == "longpoll":
            assert 404 in statuses  # the old session was answered unknown_session
    finally:
        pages.shutdown()
        proxy.close()
        chloed.stop()
        app.stop()


@pytest.mark.parametrize(
    "served, expected",
    [
        (["sse", "longpoll", "jsonp"], "sse"),
        (["longpoll", "jsonp"], "longpoll"),
        (["jsonp"], "jsonp"),
    ],
)
def test_transport_not_served_falls_back_to_the_next(tmp_path, page, served, expected):
    """With default options, a page whose WebSocket (and more) is refused settles on the first transport the server offers."""
    conf = tmp_path / "chloe.toml"
    conf.write_text("transports = [%s]\n" % ", ".join(f'"{t}"' for t in served))
    app = AppServer().start()
    chloed = Chloed("--app-url", app.url, config=str(conf))
    status, _, _ = chloed.request("GET", "/ws", auth=False)
    assert status == 404
    pages = serve_pages(chloed.port)
    try:
        page.goto(f"http://127.0.0.1:{pages.server_port}/")
        page.wait_for_function("window.connected !== undefined")
        assert page.evaluate("chloe.transport") == expected
        page.wait_for_function("window.acks.length === 1")
        assert page.evaluate("window.acks") == ["ok"]
    finally:
        pages.shutdown()
        chloed.stop()
        app.stop()


def test_plain_eventsource_resumes_with_last_event_id(stack, page):
    """A bare EventSource (no chloe.js) on /sse?channel=count reconnects by itself after cuts and misses nothing."""
    total = 200
    cuts = [(40, "kill"), (90, "close"), (140, "kill")]
    page.goto(stack.url("/plain"), wait_until="domcontentloaded")
    page.evaluate(
        """port => {
          window.plain = []; window.opens = 0; window.subscribed = 0;
          var es = window.es = new EventSource('http://127.0.0.1:' + port + '/sse?channel=count');
          es.addEventListener('open', function () { window.opens++; });
          es.addEventListener('subscribed', function () { window.subscribed++; });
          es.addEventListener('message', function (e) { window.plain.push(JSON.parse(e.data).data); });
        }""",
        stack.proxy.port,
    )
    page.wait_for_function("window.subscribed === 1")
    publish_through_cuts(page, stack, "window.plain", total, cuts)
    received = finish_with_sentinel(page, stack, "window.plain", total)
    assert received == list(range(1, total + 2))
    # It reconnected by itself after every cut, each time resubscribed by the URL.
    assert page.evaluate("window.opens") == len(cuts) + 1
    assert page.evaluate("window.subscribed") == len(cuts) + 1
    page.evaluate("window.es.close()")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_close_stops_every_request(stack, page, transport):
    """After chloe.close() the page makes no more requests to chloed, even when a message is published."""
    open_chloe_page(page, stack, transport)
    page.wait_for_function("window.acks.length === 1")
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.evaluate("chloe.close()")
    assert page.evaluate("chloe.transport") is None
    # A held poll answers now; a client still polling would poll again at once.
    stack.chloed.send(data=1, channel="count")
    page.wait_for_timeout(1500)  # a window of silence is what is checked here
    polls = [url for url in requests if re.search(r"/(poll|jsonp|sse|ws|session)\b", url)]
    assert polls == []
    assert page.evaluate("window.received") == []


def jsonp_get(chloed: Chloed, query: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(f"{chloed.url}/jsonp?{query}", timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_jsonp_refuses_a_callback_that_is_not_an_identifier(chloed):
    """A JSONP request whose callback is script, not a name, gets 400 and nothing executable."""
    status, headers, body = jsonp_get(chloed, "callback=" + urllib.parse.quote("alert(1)//"))
    assert status == 400
    assert "javascript" not in headers.get("Content-Type", "")
    assert b"alert(1)" not in body
    # A dotted name is fine: the answer calls it, as JavaScript, not sniffable.
    status, headers, body = jsonp_get(chloed, "callback=app.chloe.cb_1")
    assert status == 200
    assert headers["Content-Type"].startswith("application/javascript")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert body.startswith(b"app.chloe.cb_1({") and body.endswith(b");")
