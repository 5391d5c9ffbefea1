"""chloe.js never holds the page's ``load`` event: a page using it finishes
loading (its ``window.onload`` runs, and Playwright's default
``wait_until="load"`` returns) on every transport, JSONP included, whether
forced or reached by falling back; and what the page subscribed and sent
before ``load`` still goes out, and messages still arrive, afterwards.

A ``<script>`` being fetched delays ``load``, and a JSONP poll always has
the next one being fetched: started during the page's load, JSONP polling
kept the page loading for ever."""

from __future__ import annotations

from http.server import ThreadingHTTPServer
from typing import Iterator

import pytest
from playwright.sync_api import Page, Request, Route

from tests.browser.pages import serve_static
from tests.servers import AppServer, Chloed

LOAD_TIMEOUT = 10000  # ms: a page that loads at all loads in well under this

PAGE = """<!doctype html><html><head><meta charset="utf-8">
<script src="http://127.0.0.1:{port}/chloe.js"></script></head><body>{held}<script>
window.received = []; window.acks = []; window.errors = []; window.loaded = false;
var options = {{host: '127.0.0.1', port: {port}, minDelay: 50, maxDelay: 500}};
var query = new URLSearchParams(location.search), transports = query.get('transports');
if (transports) options.transports = transports.split(',');
var chloe = window.chloe = new Chloe(options);
chloe.onerror(function (e) {{ window.errors.push(e); }});
// Queued before "load" and before any connection: these must go out later.
chloe.subscribe('news', function (data) {{ window.received.push(data); }});
chloe.send('before load', {{ack: function (err) {{ window.acks.push(err ? err.code : 'ok'); }}}});
chloe.connect(function () {{ window.connected = chloe.transport; }});
if (query.get('close')) chloe.close();
window.onload = function () {{ window.loaded = true; }};
</script></body></html>"""

# An image answered only when the test says: it keeps the page loading
# while chloe.js goes through the transports it falls back from.
HELD_IMAGE = '<img src="/held.gif" alt="">'
GIF = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")


def serve_pages(chloe_port: int) -> ThreadingHTTPServer:
    """``/``: the page; ``/held``: the same with an image that holds its load."""
    html = "text/html; charset=utf-8"
    return serve_static({
        "/": (html, PAGE.format(port=chloe_port, held="").encode()),
        "/held": (html, PAGE.format(port=chloe_port, held=HELD_IMAGE).encode()),
    })


@pytest.fixture
def start(chloed_factory, app_server: AppServer, tmp_path) -> Iterator:
    """``start(config)``: chloed with that chloe.toml, and the pages using
    it; returns chloed and the page server's base URL."""
    servers: list[ThreadingHTTPServer] = []

    def start_stack(config: str) -> tuple[Chloed, str]:
        conf = tmp_path / "chloe.toml"
        conf.write_text(config)
        chloed = chloed_factory("--app-url", app_server.url, config=str(conf))
        pages = serve_pages(chloed.port)
        servers.append(pages)
        return chloed, f"http://127.0.0.1:{pages.server_port}"

    yield start_stack
    for pages in servers:
        pages.shutdown()


def assert_connects_and_receives(page: Page, chloed: Chloed, app: AppServer, transport: str) -> None:
    """The page connected over ``transport``; its send made before load
    reached the app and was acked; its subscribe made before load took
    effect: what is published to the channel arrives, all of it, in order."""
    page.wait_for_function("window.connected !== undefined")
    assert page.evaluate("chloe.transport") == transport
    page.wait_for_function("window.acks.length === 1")
    assert page.evaluate("window.acks") == ["ok"]
    assert app.next().event["data"] == "before load"
    for n in range(1, 6):
        assert chloed.send(data=n, channel="news")[0] == 202
    page.wait_for_function("window.received.length >= 5")
    assert page.evaluate("window.received") == [1, 2, 3, 4, 5]
    assert page.evaluate("window.errors") == []


def test_a_page_on_jsonp_finishes_loading_then_receives(start, page, app_server):
    """Forced onto JSONP, the page loads (its window.onload runs) and then
    connects, sends what it queued before load, and receives."""
    chloed, base = start("longpoll_timeout = 5\n")
    page.goto(base + "/?transports=jsonp", timeout=LOAD_TIMEOUT)  # wait_until="load"
    assert page.evaluate("window.loaded") is True
    assert_connects_and_receives(page, chloed, app_server, "jsonp")


def test_a_page_closing_jsonp_before_load_never_polls(start, page):
    """A page that calls chloe.close() before it has loaded makes no JSONP
    request when it has: the poll waiting for load was called off."""
    chloed, base = start("longpoll_timeout = 5\n")
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(base + "/?transports=jsonp&close=1", timeout=LOAD_TIMEOUT)
    assert page.evaluate("window.loaded") is True
    page.wait_for_timeout(1000)  # a window of silence is what is checked here
    assert [url for url in requests if "/jsonp" in url] == []
    assert page.evaluate("chloe.transport") is None


# For each set of transports chloed serves (never WebSocket), what chloe.js
# settles on with its default list, and the request after which the image
# holding the page's load is answered: once the page polls on the
# transport it settles on or, for JSONP, once long-poll was refused (so the
# page is still loading when chloe.js comes to JSONP; chloed's 404 has no
# CORS headers, so the browser reports a failed request).
FALLBACKS = [
    (["sse", "longpoll", "jsonp"], "sse", (("request",), "/sse")),
    (["longpoll", "jsonp"], "longpoll", (("request",), "/poll")),
    (["jsonp"], "jsonp", (("requestfinished", "requestfailed"), "/poll")),
]


@pytest.mark.parametrize("served, expected, release_on", FALLBACKS, ids=[f[1] for f in FALLBACKS])
def test_a_page_falling_back_from_websocket_finishes_loading_then_receives(
        start, page, app_server, served, expected, release_on):
    """With the default transports and WebSocket refused, chloe.js falls back
    while the page is still loading; the page loads all the same (its
    window.onload runs) and then receives on the transport it settled on."""
    config = "transports = [%s]\nlongpoll_timeout = 5\n" % ", ".join(f'"{t}"' for t in served)
    chloed, base = start(config)
    assert chloed.request("GET", "/ws", auth=False)[0] == 404
    held: list[Route] = []
    due: list[str] = []

    def answer_image() -> None:
        if held and due:
            held.pop().fulfill(status=200, content_type="image/gif", body=GIF)

    def hold(route: Route) -> None:
        held.append(route)
        answer_image()

    def release(request: Request) -> None:
        if release_on[1] in request.url:
            due.append(request.url)
            answer_image()

    page.route("**/held.gif", hold)
    for event in release_on[0]:
        page.on(event, release)
    page.goto(base + "/held", timeout=LOAD_TIMEOUT)  # wait_until="load"
    assert due and not held  # the page was loading while chloe.js fell back
    assert page.evaluate("window.loaded") is True
    assert_connects_and_receives(page, chloed, app_server, expected)
