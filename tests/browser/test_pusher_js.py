"""The real pusher-js (tests/js, from npm) in Chromium against a real chloed
serving a Pusher app, with the official ``pusher`` Python library as the
app's server side (``tests/browser/pusher_app.py``): it triggers events
through chloed's HTTP API and signs the auth answers pusher-js asks the app
for. Public, private and presence channels, client events, cache channels,
user sign-in with events sent to a user, and a connection cut on the way
that pusher-js comes back from by itself.

One chloed for the module (each test uses channels of its own); the
reconnecting page talks to chloed through a cutting TCP proxy
(``tests/browser/proxy.py``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pytest
from playwright.sync_api import Browser, Page

from tests.browser.proxy import CuttingProxy
from tests.browser.pusher_app import APP_KEY, PusherApp, chloed_config
from tests.servers import Chloed

PRESENCE_TIMEOUT = 20000  # ms: a closed page's member leaves well within this


@dataclass
class Stack:
    chloed: Chloed
    proxy: CuttingProxy
    app: PusherApp


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    """chloed serving the Pusher app, a cutting proxy in front of it, and
    the app (pages, libraries, auth endpoints, the pusher library)."""
    conf = chloed_config(tmp_path_factory.mktemp("pusher-js") / "chloe.toml")
    chloed = Chloed(config=conf)
    proxy = CuttingProxy(chloed.port)
    app = PusherApp(chloed.port)
    yield Stack(chloed, proxy, app)
    app.stop()
    proxy.close()
    chloed.stop()


@pytest.fixture
def open_page(chromium: Browser, stack: Stack) -> Iterator[Callable[..., Page]]:
    """``open_page(user, via_proxy=False)``: the pusher-js page as ``user``,
    in a browser context of its own, once pusher-js is connected."""
    contexts = []

    def open_(user: str = "anonymous", via_proxy: bool = False) -> Page:
        context = chromium.new_context()
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15000)
        query: dict[str, Any] = {"user": user}
        if via_proxy:
            query["port"] = stack.proxy.port
        page.goto(stack.app.url("/", **query))
        page.wait_for_function("pusher.connection.state === 'connected'")
        return page

    yield open_
    for context in contexts:
        context.close()


def subscribe(page: Page, channel: str) -> None:
    """``sub(channel)`` on the page, and wait for its subscription to succeed."""
    page.evaluate("name => { sub(name); }", channel)
    wait_heard(page, channel, "pusher:subscription_succeeded")


def wait_heard(page: Page, channel: str, event: str, count: int = 1, timeout: float | None = None) -> list[Any]:
    """Wait until ``event`` came ``count`` times on ``channel``; their data."""
    page.wait_for_function("([c, e, n]) => heard(c, e).length >= n", arg=[channel, event, count], timeout=timeout)
    return [g["data"] for g in page.evaluate("([c, e]) => heard(c, e)", [channel, event])]


def events_of(page: Page, channel: str) -> list[str]:
    return page.evaluate("c => got.filter(g => g.channel === c).map(g => g.event)", channel)


def socket_id(page: Page) -> str:
    return page.evaluate("pusher.connection.socket_id")


def test_a_public_channel_gets_what_the_python_library_triggers(open_page, stack):
    """The page connects with a Pusher socket id, subscribes without any
    auth request, and gets events triggered through chloed's HTTP API: JSON
    data as the object, a plain string as the string, in order."""
    page = open_page()
    assert re.fullmatch(r"\d+\.\d+", socket_id(page))
    subscribe(page, "news")
    assert stack.app.auth_requests_for("/pusher/auth") == []
    stack.app.pusher.trigger("news", "headline", {"title": "Chloe speaks Pusher", "n": 1})
    stack.app.pusher.trigger("news", "plain", "just a string")
    stack.app.pusher.trigger(["news", "sport"], "headline", {"title": "to two channels", "n": 2})
    assert wait_heard(page, "news", "headline", 2) == [{"title": "Chloe speaks Pusher", "n": 1},
                                                       {"title": "to two channels", "n": 2}]
    assert wait_heard(page, "news", "plain") == ["just a string"]
    assert events_of(page, "news") == ["pusher:subscription_succeeded", "headline", "plain", "headline"]
    assert page.evaluate("errors") == []


def test_the_triggering_answer_is_what_the_library_expects(stack):
    """``trigger`` answers 200 with a JSON object (the library raises on
    anything else), for one channel and for several."""
    assert isinstance(stack.app.pusher.trigger("answers", "ev", {"a": 1}), dict)
    assert isinstance(stack.app.pusher.trigger(["answers", "answers-2"], "ev", "x"), dict)


def test_a_socket_id_given_to_trigger_is_left_out(open_page, stack):
    """Triggered with a page's socket id, an event reaches the other
    subscriber and not that page."""
    alice, bob = open_page("alice"), open_page("bob")
    for page in (alice, bob):
        subscribe(page, "excluding")
    stack.app.pusher.trigger("excluding", "ev", {"n": 1}, socket_id=socket_id(alice))
    stack.app.pusher.trigger("excluding", "ev", {"n": 2})
    assert wait_heard(bob, "excluding", "ev", 2) == [{"n": 1}, {"n": 2}]
    # Delivery is in order: once the second is there, the first would be too.
    assert wait_heard(alice, "excluding", "ev") == [{"n": 2}]


def test_a_private_channel_through_the_auth_endpoint(open_page, stack):
    """pusher-js asks the app's endpoint for the page's socket id and the
    channel, sends what the library signed, and chloed subscribes it;
    triggered events arrive. A channel the app refuses fails with its 403
    and never subscribes."""
    page = open_page("alice")
    subscribe(page, "private-orders")
    asked = [form for form in stack.app.auth_requests_for("/pusher/auth") if form["channel_name"] == "private-orders"]
    assert asked == [{"socket_id": socket_id(page), "channel_name": "private-orders"}]
    stack.app.pusher.trigger("private-orders", "shipped", {"order": 17})
    assert wait_heard(page, "private-orders", "shipped") == [{"order": 17}]

    page.evaluate("() => { sub('private-forbidden'); }")
    [error] = wait_heard(page, "private-forbidden", "pusher:subscription_error")
    assert error["type"] == "AuthError" and error["status"] == 403
    assert events_of(page, "private-forbidden") == ["pusher:subscription_error"]


def test_chloed_refuses_a_private_channel_signed_with_another_secret(open_page, stack):
    """An auth signed with a secret that is not the app's: chloed refuses
    the subscription (a ``pusher:error`` or the channel's
    ``pusher:subscription_error``), keeps the connection, and the channel
    gets nothing triggered to it."""
    page = open_page("mallory")
    page.evaluate("() => { sub('private-forged'); }")
    page.wait_for_function("errors.length > 0 || heard('private-forged', 'pusher:subscription_error').length > 0")
    # Same connection, later subscription: once it succeeded, the forged one
    # would have too.
    subscribe(page, "after-forged")
    stack.app.pusher.trigger("private-forged", "secret", {"leak": True})
    stack.app.pusher.trigger("after-forged", "ev", {"n": 1})
    wait_heard(page, "after-forged", "ev")
    assert "pusher:subscription_succeeded" not in events_of(page, "private-forged")
    assert "secret" not in events_of(page, "private-forged")
    assert page.evaluate("pusher.connection.state") == "connected"
    assert len(page.evaluate("socketIds")) == 1


def test_presence_members_see_each_other_come_and_go(open_page, stack):
    """Alice alone is the only member, as herself; Bob joining sees both
    and Alice gets ``member_added`` with his info; when Bob's page closes
    Alice gets ``member_removed``."""
    alice = open_page("alice")
    subscribe(alice, "presence-room")
    [succeeded] = wait_heard(alice, "presence-room", "pusher:subscription_succeeded")
    assert succeeded == {"members": {"alice": {"name": "Alice"}}, "count": 1,
                         "me": {"id": "alice", "info": {"name": "Alice"}}}

    bob = open_page("bob")
    subscribe(bob, "presence-room")
    [succeeded] = wait_heard(bob, "presence-room", "pusher:subscription_succeeded")
    assert succeeded == {"members": {"alice": {"name": "Alice"}, "bob": {"name": "Bob"}}, "count": 2,
                         "me": {"id": "bob", "info": {"name": "Bob"}}}
    assert wait_heard(alice, "presence-room", "pusher:member_added") == [{"id": "bob", "info": {"name": "Bob"}}]
    assert alice.evaluate("pusher.channel('presence-room').members.count") == 2

    bob.close()
    removed = wait_heard(alice, "presence-room", "pusher:member_removed", timeout=PRESENCE_TIMEOUT)
    assert removed == [{"id": "bob", "info": {"name": "Bob"}}]
    assert alice.evaluate("pusher.channel('presence-room').members.count") == 1
    assert events_of(alice, "presence-room") == [
        "pusher:subscription_succeeded", "pusher:member_added", "pusher:member_removed"]


def test_a_second_connection_of_a_member_is_not_a_second_member(open_page, stack):
    """Alice on two pages is one member: Bob sees her added once, and
    removed only when her last page closes."""
    bob = open_page("bob")
    subscribe(bob, "presence-twice")
    alice_1, alice_2 = open_page("alice"), open_page("alice")
    subscribe(alice_1, "presence-twice")
    subscribe(alice_2, "presence-twice")
    [succeeded] = wait_heard(alice_2, "presence-twice", "pusher:subscription_succeeded")
    assert succeeded["count"] == 2 and set(succeeded["members"]) == {"alice", "bob"}
    assert wait_heard(bob, "presence-twice", "pusher:member_added") == [{"id": "alice", "info": {"name": "Alice"}}]
    alice_1.close()
    # Published after the close: once it is on Bob's page, a removal the
    # first close made would be there too.
    stack.app.pusher.trigger("presence-twice", "mark", {})
    wait_heard(bob, "presence-twice", "mark")
    assert "pusher:member_removed" not in events_of(bob, "presence-twice")
    alice_2.close()
    assert wait_heard(bob, "presence-twice", "pusher:member_removed", timeout=PRESENCE_TIMEOUT) == [
        {"id": "alice", "info": {"name": "Alice"}}]


def bind_client_event(page: Page, channel: str, event: str) -> None:
    """Record ``event`` on ``channel`` with its metadata in ``window.client``."""
    page.evaluate("""([c, e]) => {
      window.client = window.client || [];
      pusher.channel(c).bind(e, (data, meta) => window.client.push({data: data, meta: meta || null}));
    }""", [channel, event])


def wait_client(page: Page, count: int) -> list[dict[str, Any]]:
    page.wait_for_function("n => (window.client || []).length >= n", arg=count)
    return page.evaluate("window.client")


def test_client_events_on_presence_reach_the_others_with_the_user_id(open_page, stack):
    """``channel.trigger('client-...')`` reaches the other member, with the
    sender's user id in the metadata, and not the sender."""
    alice, bob = open_page("alice"), open_page("bob")
    for page in (alice, bob):
        subscribe(page, "presence-chat")
        bind_client_event(page, "presence-chat", "client-typing")
    assert alice.evaluate("pusher.channel('presence-chat').trigger('client-typing', {who: 'alice', typing: true})")
    assert wait_client(bob, 1) == [{"data": {"who": "alice", "typing": True}, "meta": {"user_id": "alice"}}]
    # Bob answers after Alice's reached him: Alice's own, had chloed sent it
    # back to her, would be on her page before Bob's.
    bob.evaluate("pusher.channel('presence-chat').trigger('client-typing', {who: 'bob', typing: false})")
    assert wait_client(alice, 1) == [{"data": {"who": "bob", "typing": False}, "meta": {"user_id": "bob"}}]
    assert len(bob.evaluate("window.client")) == 1


def test_client_events_on_a_private_channel(open_page, stack):
    """On a private channel too, a client event reaches the other
    subscriber and not the sender."""
    alice, bob = open_page("alice"), open_page("bob")
    for page in (alice, bob):
        subscribe(page, "private-pair")
        bind_client_event(page, "private-pair", "client-ping")
    alice.evaluate("pusher.channel('private-pair').trigger('client-ping', {n: 1})")
    assert [c["data"] for c in wait_client(bob, 1)] == [{"n": 1}]
    bob.evaluate("pusher.channel('private-pair').trigger('client-ping', {n: 2})")
    assert [c["data"] for c in wait_client(alice, 1)] == [{"n": 2}]
    assert len(bob.evaluate("window.client")) == 1


def test_client_events_on_a_public_channel_reach_nobody(open_page, stack):
    """Pusher takes client events on private and presence channels only:
    one sent on a public channel reaches no other subscriber."""
    alice, bob = open_page("alice"), open_page("bob")
    for page in (alice, bob):
        subscribe(page, "public-chat")
    bind_client_event(bob, "public-chat", "client-shout")
    alice.evaluate("pusher.channel('public-chat').trigger('client-shout', {n: 1})")
    # Refused or dropped, it is not relayed. An event Alice's connection
    # causes afterwards: chloed has handled her client event by then.
    alice.evaluate("() => { sub('public-chat-after'); }")
    wait_heard(alice, "public-chat-after", "pusher:subscription_succeeded")
    stack.app.pusher.trigger("public-chat", "mark", {})
    wait_heard(bob, "public-chat", "mark")
    assert bob.evaluate("window.client || []") == []
    assert events_of(bob, "public-chat") == ["pusher:subscription_succeeded", "mark"]


def test_a_cache_channel_gives_a_late_subscriber_the_last_event(open_page, stack):
    """Triggered on a ``cache-`` channel nobody is on, the last event goes
    to a page subscribing afterwards, right after its subscription
    succeeded; a cache channel with nothing in it says
    ``pusher:cache_miss``."""
    stack.app.pusher.trigger("cache-weather", "forecast", {"sky": "grey"})
    stack.app.pusher.trigger("cache-weather", "forecast", {"sky": "blue"})
    page = open_page()
    subscribe(page, "cache-weather")
    assert wait_heard(page, "cache-weather", "forecast") == [{"sky": "blue"}]
    assert events_of(page, "cache-weather") == ["pusher:subscription_succeeded", "forecast"]

    subscribe(page, "cache-nothing-yet")
    wait_heard(page, "cache-nothing-yet", "pusher:cache_miss")
    assert events_of(page, "cache-nothing-yet") == ["pusher:subscription_succeeded", "pusher:cache_miss"]
    stack.app.pusher.trigger("cache-nothing-yet", "forecast", {"sky": "red"})
    assert wait_heard(page, "cache-nothing-yet", "forecast") == [{"sky": "red"}]


def signin(page: Page) -> None:
    """``pusher.signin()``, and wait until pusher-js is signed in and on
    its server-to-user channel (pusher-js's own state: it says no event)."""
    page.evaluate("pusher.signin()")
    page.wait_for_function("pusher.user.user_data !== null && pusher.user.serverToUserChannel !== null"
                           " && pusher.user.serverToUserChannel.subscribed")


def test_a_signed_in_user_gets_what_send_to_user_sends(open_page, stack):
    """After ``pusher.signin()`` through the user authentication endpoint,
    ``pusher.user.bind`` gets what the library's ``send_to_user`` sends to
    that user, on every page of that user, and no other user gets it."""
    alice, alice_too, bob = open_page("alice"), open_page("alice"), open_page("bob")
    for page in (alice, alice_too, bob):
        signin(page)
        page.evaluate("() => { window.mine = []; pusher.user.bind('notice', d => window.mine.push(d)); }")
    assert alice.evaluate("pusher.user.user_data") == {"id": "alice", "user_info": {"name": "Alice"}}
    asked = stack.app.auth_requests_for("/pusher/user-auth")
    assert {"socket_id": socket_id(alice)} in asked and {"socket_id": socket_id(bob)} in asked
    assert alice.evaluate("signins") == []

    stack.app.pusher.send_to_user("alice", "notice", {"text": "for alice"})
    stack.app.pusher.send_to_user("bob", "notice", {"text": "for bob"})
    stack.app.pusher.send_to_user("alice", "notice", {"text": "for alice again"})
    # Each page's last is sent after what it must not get: on the page by
    # then, had chloed sent it there.
    for page in (alice, alice_too):
        page.wait_for_function("window.mine.length >= 2")
        assert page.evaluate("window.mine") == [{"text": "for alice"}, {"text": "for alice again"}]
    bob.wait_for_function("window.mine.length >= 1")
    assert bob.evaluate("window.mine") == [{"text": "for bob"}]


@pytest.mark.parametrize("how", ["close", "kill"])
def test_a_cut_connection_comes_back_by_itself(open_page, stack, how):
    """The page's WebSocket is cut on the way (a clean close, or a reset):
    pusher-js reconnects by itself with a new socket id, subscribes its
    channels again, and receives what is triggered afterwards."""
    channel = f"comeback-{how}"
    page = open_page("alice", via_proxy=True)
    subscribe(page, channel)
    subscribe(page, "presence-comeback-" + how)
    stack.app.pusher.trigger(channel, "ev", {"n": 1})
    wait_heard(page, channel, "ev")
    accepted = stack.proxy.accepted
    cut = stack.proxy.close_all() if how == "close" else stack.proxy.kill_all()
    assert cut >= 1
    stack.proxy.wait_accepted(more_than=accepted)
    wait_heard(page, channel, "pusher:subscription_succeeded", 2)
    [_, again] = wait_heard(page, "presence-comeback-" + how, "pusher:subscription_succeeded", 2)
    assert again["members"] == {"alice": {"name": "Alice"}}
    ids = page.evaluate("socketIds")
    assert len(ids) == 2 and ids[0] != ids[1] and ids[1] == socket_id(page)
    states = page.evaluate("states")
    assert states[0] == "connecting" and states[-1] == "connected" and states.count("connected") == 2
    stack.app.pusher.trigger(channel, "ev", {"n": 2})
    assert wait_heard(page, channel, "ev", 2) == [{"n": 1}, {"n": 2}]


def test_the_page_connects_to_the_app_key_over_protocol_7(page, stack):
    """What pusher-js builds from the options is what chloed serves:
    ``/app/KEY?protocol=7&client=js&version=...``."""
    with page.expect_websocket() as opened:
        page.goto(stack.app.url("/"))
    url = opened.value.url
    assert re.fullmatch(rf"ws://127\.0\.0\.1:{stack.chloed.port}/app/{APP_KEY}\?protocol=7&client=js"
                        r"&version=8\.\d+\.\d+&flash=false", url), url
    page.wait_for_function("pusher.connection.state === 'connected'")
