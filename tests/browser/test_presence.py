"""The chat demo in real Chromium: a real chloed, the real chat app, real
chloe.js. People in a presence room see each other come and go, talk with
their names on what they say, get the room's history when they join, and
someone not on the staff list is refused the staff room."""

from __future__ import annotations

import re
from typing import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from examples import chat_app
from tests.servers import Chloed, free_port

SECRET = "chat-secret-of-at-least-thirty-two-bytes"
GRACE = 1  # session_grace: how long after a page closes its member leaves


@pytest.fixture
def chat(tmp_path) -> Iterator[str]:
    """chloed with a short grace and the chat app (staff: alice); the app's URL."""
    conf = tmp_path / "chloe.toml"
    conf.write_text(f"session_grace = {GRACE}\n")
    port = free_port()
    app = chat_app.serve(0, chat_app.Chat(f"http://127.0.0.1:{port}", SECRET, staff=frozenset({"alice"})))
    chloed = Chloed("--app-url", f"http://127.0.0.1:{app.server_port}/updates",
                    secret=SECRET, config=str(conf), port=port)
    yield f"http://127.0.0.1:{app.server_port}/"
    chloed.stop()
    app.shutdown()
    app.server_close()


@pytest.fixture
def people(chromium: Browser) -> Iterator:
    """``person()`` opens a page in a browser context of its own (its own
    cookies and storage: another person)."""
    contexts = []

    def person() -> Page:
        context = chromium.new_context()
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15000)
        return page

    yield person
    for context in contexts:
        context.close()


def join(page: Page, url: str, name: str, room: str = "lobby", transport: str = "websocket") -> None:
    page.goto(url + "?transport=" + transport)
    expect(page.locator("#status")).to_have_text("connected over " + transport)
    page.fill("#name", name)
    page.fill("#room", room)
    page.click("#join button")
    expect(page.locator("#chat")).to_be_visible()


def say(page: Page, text: str, field: str = "#text") -> None:
    page.fill(field, text)
    page.press(field, "Enter")


def said(page: Page, selector: str = "#messages") -> list[str]:
    return page.locator(f"{selector} li:not(.notice)").evaluate_all(
        "items => items.map(li => li.querySelector('.name').textContent + ': ' + li.querySelector('.text').textContent)"
    )


def test_people_see_each_other_join_talk_and_leave(chat, people):
    """Alice is alone in the lobby and asks if anyone is there; Bob joins,
    gets her question as history, both see each other in the member list,
    Bob's answer reaches Alice with his name, and when Bob closes his page
    Alice sees him leave."""
    alice = people()
    join(alice, chat, "alice")
    expect(alice.locator("#members li")).to_have_text(["alice"])
    say(alice, "anyone here?")
    expect(alice.locator("#messages li .text")).to_have_text(["anyone here?"])

    bob = people()
    join(bob, chat, "bob")
    expect(bob.locator("#members li")).to_have_text(["alice", "bob"])
    expect(alice.locator("#members li")).to_have_text(["alice", "bob"])
    expect(alice.locator("#messages li.notice")).to_have_text(["bob joined"])
    expect(bob.locator("#messages li .text")).to_have_text(["anyone here?"])
    assert said(bob) == ["alice: anyone here?"]

    say(bob, "hi alice")
    expect(alice.locator("#messages li .text")).to_have_text(["anyone here?", "hi alice"])
    assert said(alice) == ["alice: anyone here?", "bob: hi alice"]
    expect(bob.locator("#messages li .text")).to_have_text(["anyone here?", "hi alice"])

    # A reload comes back as the same member: no leave, no second join.
    ids = alice.locator("#members li").evaluate_all("items => items.map(li => li.dataset.id)")
    bob.reload()
    expect(bob.locator("#messages li .text")).to_have_text(["anyone here?", "hi alice"])
    expect(bob.locator("#members li")).to_have_text(["alice", "bob"])
    assert bob.locator("#members li").evaluate_all("items => items.map(li => li.dataset.id)") == ids

    bob.close()
    expect(alice.locator("#members li")).to_have_text(["alice"], timeout=GRACE * 1000 + 10000)
    # The reload's grace ran out before the close's did: it would show here.
    expect(alice.locator("#messages li.notice")).to_have_text(["bob joined", "bob left"])


def test_leaving_the_room(chat, people):
    """Leave takes Bob out of the member list and the join form is back."""
    alice, bob = people(), people()
    join(alice, chat, "alice")
    join(bob, chat, "bob")
    expect(alice.locator("#members li")).to_have_text(["alice", "bob"])
    bob.click("#leave")
    expect(bob.locator("#join")).to_be_visible()
    expect(alice.locator("#members li")).to_have_text(["alice"], timeout=GRACE * 1000 + 10000)
    expect(alice.locator("#messages li.notice")).to_have_text(["bob joined", "bob left"])


@pytest.mark.parametrize("transport", ["sse", "longpoll", "jsonp"])
def test_presence_over_http_transports(chat, people, transport):
    """Joining, talking and leaving work the same when the pages hold no
    WebSocket: a page gone quiet leaves once chloed gave up on it."""
    alice, bob = people(), people()
    join(alice, chat, "alice", transport=transport)
    join(bob, chat, "bob", transport=transport)
    expect(alice.locator("#members li")).to_have_text(["alice", "bob"])
    expect(bob.locator("#members li")).to_have_text(["alice", "bob"])
    say(bob, "over " + transport)
    expect(alice.locator("#messages li .text")).to_have_text(["over " + transport])
    assert said(alice) == ["bob: over " + transport]
    bob.close()
    expect(alice.locator("#members li")).to_have_text(["alice"], timeout=2 * GRACE * 1000 + 10000)
    expect(alice.locator("#messages li.notice")).to_have_text(["bob joined", "bob left"])


def test_rooms_are_apart(chat, people):
    """What is said in one room is not heard in another, and its members
    are not listed there."""
    alice, bob = people(), people()
    join(alice, chat, "alice", "kitchen")
    join(bob, chat, "bob", "garden")
    say(alice, "in the kitchen")
    say(bob, "in the garden")
    expect(alice.locator("#messages li .text")).to_have_text(["in the kitchen"])
    expect(bob.locator("#messages li .text")).to_have_text(["in the garden"])
    expect(alice.locator("#members li")).to_have_text(["alice"])
    expect(bob.locator("#members li")).to_have_text(["bob"])


def test_only_staff_read_the_staff_room(chat, people):
    """Alice is staff: her token opens private-staff and she talks there.
    Mallory is not: chloed refuses her the staff room (forbidden, shown on
    her page), she receives nothing said there, and the app rejects her
    attempt to write there anyway."""
    alice, mallory = people(), people()
    join(alice, chat, "alice")
    join(mallory, chat, "mallory")
    expect(alice.locator("#staff-status")).to_have_text("you are in the staff room")
    expect(mallory.locator("#staff-status")).to_have_text(re.compile(r"^refused: forbidden: .*private-staff"))
    expect(mallory.locator("#staff-say")).to_be_hidden()

    say(alice, "staff only: the cake is a lie", "#staff-text")
    expect(alice.locator("#staff-messages li .text")).to_have_text(["staff only: the cake is a lie"])
    # Published after the staff message, through the same chloed: once it
    # is on Mallory's page, anything of the staff room would be too.
    say(alice, "hello everyone")
    expect(mallory.locator("#messages li .text")).to_have_text(["hello everyone"])
    expect(mallory.locator("#staff-messages li")).to_have_count(0)
    assert "cake" not in mallory.content()

    # Writing to the staff room by hand: chloed relays it, the app refuses.
    mallory.evaluate("window.chloe.send({text: 'let me in'}, {channel: 'private-staff'})")
    expect(mallory.locator("#errors li")).to_have_text([re.compile(r"^error: upstream_rejected")])
    expect(alice.locator("#staff-messages li .text")).to_have_text(["staff only: the cake is a lie"])


def test_names_and_messages_are_text_not_html(chat, people):
    """A name or message full of markup shows as the characters typed and
    runs nothing."""
    evil = '<img src=x onerror="window.pwned=1">'
    eve, bob = people(), people()
    join(eve, chat, evil)
    join(bob, chat, "bob")
    say(eve, "<b>bold</b><script>window.pwned=2</script>")
    expect(bob.locator("#messages li .text")).to_have_text(["<b>bold</b><script>window.pwned=2</script>"])
    expect(bob.locator("#members li")).to_have_text(sorted([evil, "bob"]))
    assert said(bob) == [evil + ": <b>bold</b><script>window.pwned=2</script>"]
    assert bob.locator("#chat img, #chat b, #chat script").count() == 0
    assert bob.evaluate("window.pwned") is None
    assert eve.evaluate("window.pwned") is None
