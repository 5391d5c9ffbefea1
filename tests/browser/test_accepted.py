"""chloe.js with a durable relay spool and with session resume, in real
Chromium against a real chloed (``relay_spool = "disk"`` in a tmp dir) and a
real app server.

- A send the spool holds is answered ``accepted`` first: ``accepted(frame)``
  is called, the send leaves the outbox (also the persistent one) and is not
  sent again after a reconnect; its ``ack`` (or error) still follows.
- With the memory spool there is no ``accepted``.
- A reconnect names the previous session (``?resume=``), so the app hears
  ``resume`` instead of ``disconnect`` + ``connect``.

The page talks to chloed through a cutting TCP proxy (tests/browser/proxy.py)
so that the test can drop its connection from the server's side.
"""

from __future__ import annotations

import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Page, WebSocket

from tests.browser.pages import serve_static
from tests.browser.proxy import CuttingProxy
from tests.servers import AppServer, Chloed, Relayed

CHLOE_JS = (Path(__file__).parent.parent.parent / "chloed" / "static" / "chloe.js").read_bytes()

PAGE = """<!doctype html><html><head><meta charset="utf-8">
<script src="/chloe.js"></script></head><body><script>
var params = new URLSearchParams(location.search);
window.log = []; window.errors = [];
var options = {{host: '127.0.0.1', port: {port}, minDelay: 50, maxDelay: 300,
               transports: [params.get('transport') || 'websocket']}};
if (params.get('persistent')) options.outbox = 'persistent';
var chloe = window.chloe = new Chloe(options);
chloe.onerror(function (e) {{ window.errors.push(e); }});
chloe.connect(function () {{ window.connected = true; }});
window.send = function (data) {{
  return chloe.send(data, {{
    accepted: function (f) {{ window.log.push(['accepted', f.ref]); }},
    ack: function (err, f) {{ window.log.push(err ? ['error', err.code, err.ref] : ['ack', f.ref]); }}
  }});
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


@dataclass
class App:
    """The app server: answers ``respond(relayed)`` (settable per test) and
    records what it answered to each POST, in order: (delivery id, status,
    event)."""

    server: AppServer
    respond: Callable[[Relayed], int] = lambda relayed: 200
    answers: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)

    def start(self) -> "App":
        def answer(relayed: Relayed) -> int:
            status = self.respond(relayed)
            self.answers.append((relayed.headers["X-Chloe-Delivery"], status, relayed.event))
            return status

        self.server.respond = answer
        self.server.start()
        return self

    def messages(self) -> list[tuple[str, int, dict[str, Any]]]:
        return [a for a in list(self.answers) if a[2].get("type") == "message"]

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [a[2] for a in list(self.answers) if a[2].get("type") == kind]

    def wait(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out; the app answered {self.answers}"
            time.sleep(0.02)  # polling the app's record, bounded


def only_messages(status: Callable[[], int]) -> Callable[[Relayed], int]:
    """Answer ``status()`` to browser messages and 200 to lifecycle events
    (an event refused would hold its session's lane, the message behind it)."""
    return lambda relayed: status() if relayed.event.get("type") == "message" else 200


@dataclass
class Stack:
    chloed: Chloed
    proxy: CuttingProxy
    pages: ThreadingHTTPServer
    app: App

    def url(self, **query: str) -> str:
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return f"http://127.0.0.1:{self.pages.server_port}/" + (f"?{q}" if q else "")


@contextmanager
def running(config: str) -> Iterator[Stack]:
    """chloed with ``config`` (relaying to the app) behind a cutting proxy,
    and a page server whose page (and chloe.js, the working copy) talks to
    chloed through the proxy."""
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "chloe.toml"
        conf.write_text(config.replace("SPOOL", str(Path(tmp) / "spool")))
        app = App(AppServer()).start()
        chloed = Chloed("--app-url", app.server.url, config=str(conf))
        proxy = CuttingProxy(chloed.port)
        page_html = PAGE.format(port=proxy.port).encode()
        pages = serve_static({"/": ("text/html", page_html), "/chloe.js": ("application/javascript", CHLOE_JS)})
        try:
            yield Stack(chloed, proxy, pages, app)
        finally:
            pages.shutdown()
            proxy.close()
            chloed.stop()
            app.server.stop()


# One chloed per configuration for the whole module: starting one costs
# more than a test. Each test gets the app answering 200 and a fresh record.
DURABLE = ('relay_spool = "disk"\nrelay_spool_path = "SPOOL"\n'
           'events = ["connect", "disconnect", "resume", "message"]\n')
# session_grace 1: a polling session expires in a short outage.
VOLATILE = "session_grace = 1\nlongpoll_timeout = 5\n"


@pytest.fixture(scope="module")
def durable_stack() -> Iterator[Stack]:
    with running(DURABLE) as stack:
        yield stack


@pytest.fixture(scope="module")
def volatile_stack() -> Iterator[Stack]:
    with running(VOLATILE) as stack:
        yield stack


def fresh(stack: Stack) -> Stack:
    """The shared stack, its app answering 200 again, its record emptied."""
    stack.app.respond = lambda relayed: 200
    stack.app.answers.clear()
    return stack


@pytest.fixture
def durable(durable_stack: Stack) -> Stack:
    """chloed with the disk spool and "resume" in events."""
    return fresh(durable_stack)


@pytest.fixture
def volatile(volatile_stack: Stack) -> Stack:
    """chloed with the memory spool (the default)."""
    return fresh(volatile_stack)


def open_page(page: Page, stack: Stack, **query: str) -> str:
    """Load the page, wait until connected; its session id."""
    page.goto(stack.url(**query))
    page.wait_for_function("window.connected === true")
    return page.evaluate("chloe.session")


def test_accepted_comes_first_then_ack(durable: Stack, page: Page) -> None:
    """With the disk spool and an app that holds the POST, accepted(frame) is
    called while the app has not answered yet, the persistent outbox is
    empty by then, and ack follows once the app answers 200."""
    release = threading.Event()

    def respond(relayed: Relayed) -> int:
        if relayed.event.get("type") == "message":
            release.wait(10)  # the app answers only once the test has seen `accepted`
        return 200

    durable.app.respond = respond
    try:
        open_page(page, durable, persistent="1")
        ref = page.evaluate("window.send('durable')")
        page.wait_for_function("window.log.length >= 1")
        assert page.evaluate("window.log") == [["accepted", ref]]
        assert durable.app.messages() == []  # accepted before the app answered
        deadline = time.monotonic() + 5
        while page.evaluate("window.outboxSize()") != 0 and time.monotonic() < deadline:
            time.sleep(0.02)  # IndexedDB removes it asynchronously; bounded
        assert page.evaluate("window.outboxSize()") == 0
    finally:
        release.set()
    page.wait_for_function("window.log.length >= 2")
    assert page.evaluate("window.log") == [["accepted", ref], ["ack", ref]]
    assert [(status, event["data"]) for _, status, event in durable.app.messages()] == [(200, "durable")]
    assert page.evaluate("window.errors") == []


def test_accepted_send_is_not_sent_again_after_a_reconnect(durable: Stack, page: Page) -> None:
    """With the app down (503), the send is accepted; the connection is then
    cut and the page reconnects: the new connection does not carry the send
    again, the persistent outbox is empty, and once the app is back it gets
    the message exactly once (one 2xx for its delivery id, every attempt
    from the first session)."""
    up = threading.Event()
    durable.app.respond = only_messages(lambda: 200 if up.is_set() else 503)
    sockets: list[list[str | bytes]] = []  # the frames the page sent, per WebSocket

    def on_websocket(ws: WebSocket) -> None:
        sent: list[str | bytes] = []
        # (a lambda: Playwright cannot take a builtin method as a listener)
        ws.on("framesent", lambda payload: sent.append(payload))
        sockets.append(sent)

    page.on("websocket", on_websocket)
    first = open_page(page, durable, persistent="1")
    ref = page.evaluate("window.send('kept')")
    page.wait_for_function("window.log.length >= 1")
    assert page.evaluate("window.log") == [["accepted", ref]]
    durable.app.wait(lambda: len(durable.app.messages()) >= 1)  # refused once at least: a retry is due
    assert durable.proxy.close_all() >= 1
    page.wait_for_function(f"chloe.session && chloe.session !== {first!r} && chloe.transport === 'websocket'")
    # `connected` was handled: whatever the outbox held went on this socket.
    assert len(sockets) == 2
    assert any(ref in payload for payload in sockets[0])  # (the recording sees sends)
    assert not any(ref in payload for payload in sockets[1]), sockets[1]
    assert page.evaluate("window.outboxSize()") == 0
    up.set()
    durable.app.wait(lambda: any(status == 200 for _, status, _ in durable.app.messages()))
    messages = durable.app.messages()
    assert [status for _, status, _ in messages if status == 200] == [200]
    assert {delivery for delivery, _, _ in messages} == {messages[0][0]}
    assert {event["session"] for _, _, event in messages} == {first}
    assert {event["ref"] for _, _, event in messages} == {ref}
    # The ack goes to the first connection, which is gone: it may never come.
    log = page.evaluate("window.log")
    assert log[0] == ["accepted", ref] and all(entry == ["ack", ref] for entry in log[1:])


def test_dead_letter_after_accepted_reaches_the_ack_callback(durable: Stack, page: Page) -> None:
    """An accepted send the app then refuses (400) calls ack with the
    upstream_rejected error frame, not the page's onerror."""
    durable.app.respond = only_messages(lambda: 400)
    open_page(page, durable)
    ref = page.evaluate("window.send('refused')")
    page.wait_for_function("window.log.length >= 2")
    assert page.evaluate("window.log") == [["accepted", ref], ["error", "upstream_rejected", ref]]
    assert page.evaluate("window.errors") == []


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_memory_spool_never_calls_accepted(volatile: Stack, page: Page, transport: str) -> None:
    """With the memory spool (the default) there is no `accepted`: only ack is called."""
    open_page(page, volatile, transport=transport)
    ref = page.evaluate("window.send('volatile')")
    page.wait_for_function("window.log.length >= 1")
    # `accepted` would have come before the ack, on the same connection.
    assert page.evaluate("window.log") == [["ack", ref]]
    assert [(status, event["data"]) for _, status, event in volatile.app.messages()] == [(200, "volatile")]


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_a_dropped_stream_resumes_its_session(durable: Stack, page: Page, transport: str) -> None:
    """With "resume" in events, a page whose connection is cut from the
    server's side reconnects with ?resume=<first session>: the app hears
    `resume` naming the first session as `previous`, and no `disconnect`."""
    app = durable.app
    urls: list[str] = []
    page.on("websocket", lambda ws: urls.append(ws.url))
    page.on("request", lambda request: urls.append(request.url) if urlsplit(request.url).path == "/sse" else None)
    first = open_page(page, durable, transport=transport)

    def of(kind: str, session: str, key: str = "session") -> list[dict[str, Any]]:
        return [e for e in app.events(kind) if e.get(key) == session]

    app.wait(lambda: of("connect", first) != [])
    assert durable.proxy.close_all() >= 1
    page.wait_for_function(f"chloe.session && chloe.session !== {first!r} && chloe.transport === {transport!r}")
    second = page.evaluate("chloe.session")
    assert len(urls) == 2
    assert "resume" not in parse_qs(urlsplit(urls[0]).query)
    assert parse_qs(urlsplit(urls[1]).query)["resume"] == [first]
    app.wait(lambda: of("resume", first, "previous") != [])
    assert [e["session"] for e in of("resume", first, "previous")] == [second]
    # A disconnect of the first session would be on its lane, before the resume.
    assert of("disconnect", first) == []
    assert of("connect", second) == []
    # The resumed session relays as before.
    ref = page.evaluate("window.send('after')")
    page.wait_for_function("window.log.length >= 2")
    assert page.evaluate("window.log") == [["accepted", ref], ["ack", ref]]


@pytest.mark.parametrize("transport", ["longpoll", "jsonp"])
def test_a_new_polling_session_names_the_previous_one(volatile: Stack, page: Page, transport: str) -> None:
    """A polling page whose session expired in an outage opens the new one
    with a first poll carrying resume=<previous session> (the server reads
    it only on WebSocket and SSE today: it is harmless here)."""
    path = "/poll" if transport == "longpoll" else "/jsonp"
    polls: list[str] = []
    page.on("request", lambda request: polls.append(request.url) if urlsplit(request.url).path == path else None)
    first = open_page(page, volatile, transport=transport)
    volatile.proxy.refusing = True
    try:
        assert volatile.proxy.kill_all() >= 1
        # Longer than session_grace, shorter than the client's poll retries:
        # the next retry finds the session gone and the page opens a new one.
        time.sleep(1.2)
    finally:
        volatile.proxy.refusing = False
    page.wait_for_function(f"chloe.session && chloe.session !== {first!r} && chloe.transport === {transport!r}")
    opening = [q for q in (parse_qs(urlsplit(url).query) for url in polls) if "session" not in q]
    assert len(opening) >= 2
    assert "resume" not in opening[0]
    assert [q.get("resume") for q in opening[1:]] == [[first]] * (len(opening) - 1)
