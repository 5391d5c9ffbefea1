"""Unit tests of chloed.pusher.webhooks: Pusher's webhooks through Chloe's
relay, to a fake app over treq's StubTreq, on a Clock. The signature is
checked here with hmac, as the Pusher server libraries' validators do."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from chloed import config as chloe_config
from chloed.backends.memory import MemoryBackend
from chloed.errors import RelayUnavailable
from chloed.hub import Hub
from chloed.pusher.apps import PusherApp, parse
from chloed.pusher.protocol import PusherProtocol
from chloed.pusher.webhooks import WEBHOOK_BATCH, Webhooks, WebhookRelay
from chloed.service import make_service
from tests.fakes import captured_log
from tests.site_harness import SECRET as BEARER, answers
from tests.test_pusher_protocol import APP_ID, KEY, Client, PusherSink, app_entry, mac

URL = "https://app.example.com/pusher/webhooks"
NOW = 1_700_000_000.25
DELIVERY_RE = re.compile(r"[0-9a-f]{32}")
HOLD = "hold"


@dataclass
class Posted:
    headers: dict[bytes, bytes]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def events(self) -> list[dict[str, Any]]:
        events = self.json["events"]
        assert isinstance(events, list)
        return events

    def names(self) -> list[tuple[str, str]]:
        return [(e["name"], e["channel"]) for e in self.events]


class WebhookApp(Resource):
    """The app's webhook endpoint: answers each POST with the next of
    ``answers`` (a status, a ``(status, body)`` pair, or HOLD to leave it
    unanswered), then 200."""

    isLeaf = True

    def __init__(self, *answers: Any) -> None:
        super().__init__()
        self.answers = list(answers)
        self.posts: list[Posted] = []

    def render_POST(self, request: Request) -> Any:
        assert request.content is not None
        headers = {name.lower(): values[0] for name, values in request.requestHeaders.getAllRawHeaders()}
        self.posts.append(Posted(headers, request.content.read()))
        answer = self.answers.pop(0) if self.answers else 200
        if answer == HOLD:
            return NOT_DONE_YET
        status, body = answer if isinstance(answer, tuple) else (answer, b"")
        request.setResponseCode(status)
        return body

    def take(self) -> list[Posted]:
        posts, self.posts = self.posts, []
        return posts


def an_app(**options: Any) -> PusherApp:
    found = parse("pusher", {"apps": [app_entry(webhook_url=URL, **options)]})
    assert found is not None
    return found.apps[0]


class Harness:
    """Webhooks of one app (every event, unless said) to a WebhookApp."""

    def __init__(self, *answers: Any, retries: int = 3, queue: int = 100, timeout: float = 5.0,
                 **app: Any) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.endpoint = WebhookApp(*answers)
        self.stub = StubTreq(self.endpoint)
        self.app = an_app(**app)
        self.webhooks = Webhooks((self.app,), self.stub, self.clock, timeout, retries, queue)

    @property
    def relay(self) -> WebhookRelay:
        return self.webhooks.relays[APP_ID]

    def turn(self) -> None:
        """The reactor ends its turn: what became ready is posted and answered."""
        for _ in range(5):
            self.clock.advance(0)
            self.stub.flush()

    def wait(self, seconds: float) -> None:
        """Time passes (backoffs, timeouts), a second at a time."""
        for _ in range(int(seconds)):
            self.clock.advance(1)
            self.turn()

    def status(self) -> dict[str, Any]:
        status = self.webhooks.status()[APP_ID]
        assert isinstance(status, dict)
        return status


def verify(post: Posted, app: PusherApp) -> None:
    """What a Pusher library's webhook validator checks: the key, and the
    signature of the body as received."""
    assert post.headers[b"x-pusher-key"] == app.key.encode()
    expected = hmac.new(app.secret.encode(), post.body, hashlib.sha256).hexdigest().encode()
    assert hmac.compare_digest(post.headers[b"x-pusher-signature"], expected)


# -- the POST ---------------------------------------------------------------------


def test_a_webhook_is_pushers_body_signed_with_the_apps_secret() -> None:
    h = Harness()
    h.webhooks.occupied(h.app, "news")
    h.turn()
    [post] = h.endpoint.take()
    verify(post, h.app)
    assert post.headers[b"content-type"] == b"application/json"
    body = post.json
    assert set(body) == {"time_ms", "events"}
    assert body["time_ms"] == int(NOW * 1000)
    [event] = body["events"]
    assert event == {"name": "channel_occupied", "channel": "news", "delivery": event["delivery"]}
    assert DELIVERY_RE.fullmatch(event["delivery"])


def test_each_events_fields_are_pushers() -> None:
    h = Harness()
    h.webhooks.occupied(h.app, "c1")
    h.webhooks.vacated(h.app, "c2")
    h.webhooks.member(h.app, "presence-3", True, "ann")
    h.webhooks.member(h.app, "presence-4", False, "bob")
    h.webhooks.cache_miss(h.app, "cache-5")
    h.webhooks.client_event(h.app, "private-6", "client-typing", {"who": "ann"}, "1.2", None)
    h.webhooks.client_event(h.app, "presence-7", "client-typing", "as sent", "3.4", "cy")
    h.turn()
    [post] = h.endpoint.take()
    verify(post, h.app)
    without_ids = [{k: v for k, v in e.items() if k != "delivery"} for e in post.events]
    assert without_ids == [
        {"name": "channel_occupied", "channel": "c1"},
        {"name": "channel_vacated", "channel": "c2"},
        {"name": "member_added", "channel": "presence-3", "user_id": "ann"},
        {"name": "member_removed", "channel": "presence-4", "user_id": "bob"},
        {"name": "cache_miss", "channel": "cache-5"},
        # A client event's data is a string, as Pusher's: an object is JSON-encoded.
        {"name": "client_event", "channel": "private-6", "event": "client-typing", "data": '{"who":"ann"}',
         "socket_id": "1.2"},
        {"name": "client_event", "channel": "presence-7", "event": "client-typing", "data": "as sent",
         "socket_id": "3.4", "user_id": "cy"},
    ]
    assert len({e["delivery"] for e in post.events}) == 7


def test_the_events_of_one_reactor_turn_go_in_one_post() -> None:
    h = Harness()
    for i in range(10):
        h.webhooks.occupied(h.app, f"c{i}")
    assert h.endpoint.posts == []  # not before the turn ends
    h.turn()
    [post] = h.endpoint.take()
    assert post.names() == [("channel_occupied", f"c{i}") for i in range(10)]
    assert post.headers[b"x-chloe-batch"] == b"10"
    h.webhooks.vacated(h.app, "c0")
    h.turn()
    assert [p.names() for p in h.endpoint.take()] == [[("channel_vacated", "c0")]]


def test_a_post_holds_at_most_a_batch_of_events() -> None:
    h = Harness(queue=1000)
    for i in range(WEBHOOK_BATCH + 5):
        h.webhooks.occupied(h.app, f"c{i}")
    h.turn()
    assert [len(p.events) for p in h.endpoint.take()] == [WEBHOOK_BATCH, 5]


def test_only_the_events_the_app_asked_for_are_sent() -> None:
    h = Harness(webhook_events=["member_added"])
    h.webhooks.occupied(h.app, "c")
    h.webhooks.member(h.app, "presence-r", False, "ann")
    h.webhooks.member(h.app, "presence-r", True, "ann")
    h.turn()
    [post] = h.endpoint.take()
    assert post.names() == [("member_added", "presence-r")]
    assert h.webhooks.sent == 1


def test_an_app_without_a_webhook_url_hears_nothing() -> None:
    stub = StubTreq(WebhookApp())
    found = parse("pusher", {"apps": [app_entry(), app_entry(id="7", key="k7", secret="secret-7",
                                                             webhook_url=URL, webhook_events=[])]})
    assert found is not None
    webhooks = Webhooks(found.apps, stub, Clock(), 5, 3, 100)
    assert webhooks.relays == {}
    webhooks.occupied(found.apps[0], "c")
    webhooks.occupied(found.apps[1], "c")
    assert webhooks.sent == 0 and webhooks.status() == {}


def test_each_app_posts_to_its_own_url_signed_with_its_own_secret() -> None:
    clock = Clock()
    endpoint = WebhookApp()
    stub = StubTreq(endpoint)
    found = parse("pusher", {"apps": [
        app_entry(webhook_url=URL), app_entry(id="7", key="k7", secret="secret-seven", webhook_url=URL + "/7"),
    ]})
    assert found is not None
    webhooks = Webhooks(found.apps, stub, clock, 5, 3, 100)
    webhooks.occupied(found.apps[0], "mine")
    webhooks.occupied(found.apps[1], "theirs")
    clock.advance(0)
    stub.flush()
    by_key = {p.headers[b"x-pusher-key"]: p for p in endpoint.posts}
    assert set(by_key) == {KEY.encode(), b"k7"}
    verify(by_key[KEY.encode()], found.apps[0])
    verify(by_key[b"k7"], found.apps[1])
    assert by_key[b"k7"].names() == [("channel_occupied", "theirs")]


# -- retries, order, failures ---------------------------------------------------------


def test_a_retry_keeps_the_delivery_id_and_is_signed_anew() -> None:
    h = Harness(503)
    h.webhooks.occupied(h.app, "news")
    h.turn()
    [first] = h.endpoint.take()
    h.wait(2)
    [second] = h.endpoint.take()
    verify(second, h.app)
    assert second.events == first.events
    assert second.json["time_ms"] > first.json["time_ms"]
    assert h.status() == {"delivered": 1, "retries": 1, "failed": 0, "rejected": 0, "queued": 0}


def test_a_channels_events_reach_the_app_in_order_whatever_fails() -> None:
    """Per item answers: the first of ``a`` fails, ``b``'s goes; ``a``'s
    second waits until its first is in, whatever the retries."""
    h = Harness((200, b'{"results":[500,200]}'))
    h.webhooks.occupied(h.app, "a")
    h.webhooks.occupied(h.app, "b")
    h.webhooks.vacated(h.app, "a")
    h.turn()
    h.wait(3)
    posts = h.endpoint.take()
    assert [p.names() for p in posts] == [
        [("channel_occupied", "a"), ("channel_occupied", "b")],
        [("channel_occupied", "a")],
        [("channel_vacated", "a")],
    ]
    assert posts[0].events[0]["delivery"] == posts[1].events[0]["delivery"]
    assert h.status()["delivered"] == 3


def test_a_member_leaving_is_never_told_before_it_joined() -> None:
    """The presence channel's events, each in its own POST when the app is slow."""
    h = Harness(500, 500)
    h.webhooks.member(h.app, "presence-r", True, "ann")
    h.webhooks.member(h.app, "presence-r", False, "ann")
    h.turn()
    h.wait(5)
    names = [e["name"] for p in h.endpoint.take() for e in p.events]
    assert names == ["member_added", "member_added", "member_added", "member_removed"]


def test_an_event_the_app_never_takes_is_counted_failed_and_logged() -> None:
    h = Harness(500, 500, 500, retries=2)
    with captured_log() as log:
        h.webhooks.occupied(h.app, "news")
        h.turn()
        h.wait(5)
    assert len(h.endpoint.take()) == 3
    assert h.status() == {"delivered": 0, "retries": 2, "failed": 1, "rejected": 0, "queued": 0}
    [warned] = [e for e in log if "webhook of app" in str(e.get("log_format", ""))]
    assert (warned["name"], warned["app"]) == ("channel_occupied", APP_ID)


def test_a_4xx_is_rejected_not_retried() -> None:
    h = Harness(403)
    h.webhooks.occupied(h.app, "news")
    h.turn()
    h.wait(5)
    assert len(h.endpoint.take()) == 1
    assert h.status() == {"delivered": 0, "retries": 0, "failed": 0, "rejected": 1, "queued": 0}


def test_an_app_that_does_not_answer_is_retried_after_the_timeout() -> None:
    h = Harness(HOLD, timeout=2.0)
    h.webhooks.occupied(h.app, "news")
    h.turn()
    h.wait(1)
    assert len(h.endpoint.posts) == 1
    h.wait(3)
    first, second = h.endpoint.take()
    assert first.events == second.events
    assert h.status()["delivered"] == 1 and h.status()["retries"] == 1


def test_events_that_find_the_queue_full_fail_at_once_and_are_counted() -> None:
    h = Harness(HOLD, HOLD, queue=2, timeout=60.0)
    results: list[Any] = []
    with captured_log() as log:
        for channel in ("a", "b", "c"):
            h.webhooks.occupied(h.app, channel)
        h.relay.submit("d", b'{"name":"channel_occupied","channel":"d"}').addErrback(results.append)
    assert h.status() == {"delivered": 0, "retries": 0, "failed": 2, "rejected": 0, "queued": 2}
    assert len(results) == 1 and isinstance(results[0], Failure) and results[0].check(RelayUnavailable)
    assert [e for e in log if "not delivered" in str(e.get("log_format", ""))]
    h.turn()
    [post] = h.endpoint.take()
    assert post.names() == [("channel_occupied", "a"), ("channel_occupied", "b")]


def test_when_idle_fires_once_every_webhook_is_in() -> None:
    h = Harness(503)
    h.webhooks.occupied(h.app, "news")
    fired: list[Any] = []
    h.webhooks.when_idle().addCallback(fired.append)
    h.turn()
    assert fired == [] and h.status()["queued"] == 1
    h.wait(2)
    assert len(fired) == 1 and h.status()["queued"] == 0


# -- from the protocol to the app ------------------------------------------------------


def test_what_sockets_do_reaches_the_app_in_order() -> None:
    """PusherProtocol with the real Webhooks: a member joining, speaking and
    leaving a presence channel is, in the channel's order, occupied,
    member_added, client_event, member_removed, vacated."""
    clock = Clock()
    clock.advance(NOW)
    endpoint = WebhookApp()
    stub = StubTreq(endpoint)
    config = chloe_config.from_mapping({"pusher": {"apps": [app_entry(webhook_url=URL)]}})
    assert config.pusher is not None
    hub = Hub(config, MemoryBackend(clock, 100, 300), clock, relay=None)
    webhooks = Webhooks(config.pusher.apps, stub, clock, 5, 3, 100)
    pusher = PusherProtocol(hub, config.pusher, webhooks)
    app = config.pusher.apps[0]

    class Auth:
        def __init__(self) -> None:
            self.pusher = pusher

        def auth(self, client: Client, channel: str, channel_data: str | None = None) -> str:
            text = f"{client.id}:{channel}" if channel_data is None else f"{client.id}:{channel}:{channel_data}"
            return f"{app.key}:{mac(app.secret, text)}"

    signer: Any = Auth()
    sink = PusherSink()
    ann = Client(signer, app, pusher.opened(app, sink), sink)
    ann.join("presence-room", "ann")
    ann.trigger("presence-room", "client-hi", {"x": 1})
    ann.close()
    for _ in range(10):
        clock.advance(0)
        stub.flush()
    events = [e for p in endpoint.posts for e in p.events]
    for post in endpoint.posts:
        verify(post, app)
    assert [(e["name"], e.get("user_id")) for e in events] == [
        ("channel_occupied", None), ("member_added", "ann"), ("client_event", "ann"),
        ("member_removed", "ann"), ("channel_vacated", None),
    ]
    assert events[2]["socket_id"] == ann.id and events[2]["data"] == '{"x":1}'
    assert pusher.status()["webhooks"] == {
        APP_ID: {"delivered": 5, "retries": 0, "failed": 0, "rejected": 0, "queued": 0},
    }


def test_status_reports_the_webhooks_per_app() -> None:
    """``GET /status`` (the operator's, with the secret): pusher.webhooks."""
    reactor = MemoryReactorClock()
    endpoint = WebhookApp(500)
    pusher_config = parse("pusher", {"apps": [app_entry(webhook_url=URL)]})
    config = chloe_config.Config(secret=(BEARER,), pusher=pusher_config, upstream_retries=0)
    service = make_service(config, reactor, http=StubTreq(endpoint), open_files=lambda n: n)
    pusher = service.hub.pusher
    assert isinstance(pusher, PusherProtocol)
    pusher.webhooks.occupied(pusher.config.apps[0], "news")
    pusher.webhooks.occupied(pusher.config.apps[0], "sport")
    reactor.advance(0)
    peer = IPv4Address("TCP", "127.0.0.1", 40000)
    protocol = service.site.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET /status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + BEARER.encode() + b"\r\n\r\n")
    [(status, _, body)] = answers(transport.value())
    assert status == 200
    assert json.loads(body)["pusher"]["webhooks"] == {
        APP_ID: {"delivered": 0, "retries": 0, "failed": 2, "rejected": 0, "queued": 0},
    }


@pytest.mark.parametrize("events", [["client_event"], ["cache_miss", "channel_vacated"]])
def test_the_relay_is_made_for_the_apps_events(events: list[str]) -> None:
    h = Harness(webhook_events=events)
    assert h.app.webhook_events == tuple(events)
    assert isinstance(h.relay, WebhookRelay) and h.relay.app is h.app
    assert h.relay.url == URL and h.relay.batch == WEBHOOK_BATCH
