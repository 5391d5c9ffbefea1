"""Chloe's own channels (``chloe.…``): nobody but chloed publishes there,
they keep no history, and the status feed is watched by whom ``/status``
answers (the status page hands its browser a token), or by anyone with
``public_status``."""

from __future__ import annotations

import json
import re

import pytest
from twisted.web.test.requesthelper import DummyRequest

from chloed import tokens
from chloed.backends.memory import Broker
from chloed.frames import STATUS_CHANNEL
from chloed.web import IndexPage
from tests.fakes import RecordingSubscriber
from tests.test_hub import SECRET, World
from tests.test_metrics import Server
from tests.test_ops import remote


def test_a_browser_cannot_publish_to_the_status_feed():
    """With client_publish, a browser send to chloe.status is forbidden:
    its watchers get nothing and nothing is kept."""
    world = World(client_publish=True, public_status=True)
    watcher, watched = world.connect()
    world.send(watcher, {"type": "subscribe", "channel": STATUS_CHANNEL})
    forger, sink = world.connect()
    world.send(forger, {"type": "send", "channel": STATUS_CHANNEL, "data": {"sessions": 0}, "ref": "f"})
    assert sink.frames == [{
        "type": "error", "code": "forbidden", "ref": "f", "channel": STATUS_CHANNEL,
        "message": "only Chloe publishes to chloe.* channels",
    }]
    assert watched.of_type("message") == []
    assert STATUS_CHANNEL not in world.broker.channels or not world.broker.channels[STATUS_CHANNEL].history
    # The same for any chloe.* name.
    world.send(forger, {"type": "send", "channel": "chloe.other", "data": 1, "ref": "g"})
    assert sink.frames[-1]["code"] == "forbidden"


def test_the_memory_broker_keeps_no_history_of_chloe_channels():
    """Even published, a chloe.* message is never kept for a replay."""
    broker = Broker(World().clock, 10, 60)
    broker.publish(["chloe.status"], b"1")
    assert broker.history_bytes == 0
    assert broker.replay("chloe.status", "0-0") == (False, [])


def test_the_status_feed_needs_the_operators_token():
    """Without public_status, subscribing to chloe.status needs a token:
    the one the status page hands out (signed with the secret, or with the
    process's own key when there is none) or one the app minted; other
    chloe.* channels do not exist."""
    for secret in ((SECRET,), ()):
        world = World(secret=secret)
        session, sink = world.connect()
        world.send(session, {"type": "subscribe", "channel": STATUS_CHANNEL, "ref": 1})
        assert (sink.frames[-1]["type"], sink.frames[-1]["code"]) == ("error", "forbidden")
        world.send(session, {"type": "subscribe", "channel": STATUS_CHANNEL, "token": "x.y.z"})
        assert sink.frames[-1]["code"] == "forbidden"
        good = tokens.feed_token(STATUS_CHANNEL, secret)
        world.send(session, {"type": "subscribe", "channel": STATUS_CHANNEL, "token": good})
        assert sink.frames[-1] == {"type": "subscribed", "channel": STATUS_CHANNEL, "recovered": True}
    world.send(session, {"type": "subscribe", "channel": "chloe.secrets", "token": good, "ref": 2})
    assert sink.frames[-1]["code"] == "forbidden" and sink.frames[-1]["ref"] == 2


def test_public_status_opens_the_feed_to_anyone():
    world = World(public_status=True)
    session, sink = world.connect()
    world.send(session, {"type": "subscribe", "channel": STATUS_CHANNEL})
    assert sink.frames[-1] == {"type": "subscribed", "channel": STATUS_CHANNEL, "recovered": True}


def _page(server: Server, request: DummyRequest) -> tuple[int, bytes]:
    request.path = b"/"
    body = IndexPage(server.hub, server.metrics).render_GET(request)
    return request.responseCode or 200, body


@pytest.mark.parametrize("secret", [(SECRET,), ()])
def test_the_status_page_is_for_whom_status_answers(secret):
    """GET / from another machine without the bearer is refused as /status
    is (401, or 403 with no secret); with the bearer, or from loopback, the
    page carries a feed token that opens chloe.status."""
    server = Server(secret=secret)
    code, body = _page(server, remote("/"))
    assert code == (401 if secret else 403)
    assert json.loads(body)["error"] == ("unauthorized" if secret else "forbidden")
    requests = [remote("/", b"Bearer " + SECRET.encode())] if secret else []
    loopback = DummyRequest([b""])  # DummyRequest's client is 127.0.0.1
    for request in requests + [loopback]:
        code, body = _page(server, request)
        assert code == 200
        token = json.loads(re.search(rb"var feedToken = (\"[^\"]*\");", body).group(1))
        assert tokens.verify(token, STATUS_CHANNEL, tokens.feed_keys(secret)).channels == {STATUS_CHANNEL}


def test_public_status_serves_the_page_to_anyone_without_a_token():
    server = Server(public_status=True)
    code, body = _page(server, remote("/"))
    assert code == 200
    assert b'var feedToken = "";' in body


def test_send_refuses_chloe_channels(chloed):
    """/send to a chloe.* channel is a 400, in JSON as in a form."""
    status, answer = chloed.send(channel="chloe.status", data={"sessions": 0})
    assert status == 400 and answer["error"] == "invalid_channel"
    status, _, body = chloed.request("POST", "/send", b"channel=chloe.x&data=1", auth=True)
    assert status == 400 and json.loads(body)["error"] == "invalid_channel"


def test_the_history_of_all_channels_has_a_memory_budget():
    """Past history_memory, the channel published to least recently loses
    its oldest messages first; a resume that needed them says
    recovered: false, one that did not is still whole."""
    world = World()
    cost = 3 * len(b'{"type":"message","channel":"a","id":"0-1","data":"xxxxxxxxxx"}') + 256
    broker = Broker(world.clock, 100, 300, history_memory=4 * cost)
    first = broker.publish(["a"], b'"xxxxxxxxxx"').ids["a"]
    broker.publish(["a"], b'"xxxxxxxxxx"')
    broker.publish(["b"], b'"xxxxxxxxxx"')
    broker.publish(["b"], b'"xxxxxxxxxx"')
    assert broker.history_bytes == 4 * cost
    broker.publish(["b"], b'"xxxxxxxxxx"')  # over budget: a, the least recent, pays
    assert broker.history_bytes <= 4 * cost
    assert len(broker.channels["a"].history) == 1 and len(broker.channels["b"].history) == 3
    assert broker.replay("a", "0-0")[0] is False
    assert broker.replay("a", first) == (True, [broker.channels["a"].history[0][2]])
    # A channel whose whole history went and that was forgotten does not
    # claim a complete replay either.
    broker.publish(["b"], b'"xxxxxxxxxx"')
    assert "a" not in broker._holding
    broker.sweep()
    assert "a" not in broker.channels
    assert broker.replay("a", first)[0] is False


def test_a_message_larger_than_the_budget_is_not_kept():
    world = World()
    broker = Broker(world.clock, 100, 300, history_memory=100)
    broker.publish(["a"], b'"' + b"x" * 200 + b'"')
    assert broker.history_bytes == 0 and broker.replay("a", "0-0")[0] is False


def test_history_memory_0_keeps_no_history():
    """history_memory = 0, as conf/chloe.toml says, keeps nothing: a resume
    says recovered: false, and live delivery is unaffected."""
    world = World()
    broker = Broker(world.clock, 100, 300, history_memory=0)
    subscriber = RecordingSubscriber("s")
    broker.subscribe("a", subscriber)
    first = broker.publish(["a"], b"1").ids["a"]
    broker.publish(["a"], b"2")
    assert broker.history_bytes == 0 and not broker.channels["a"].history
    assert broker.replay("a", first) == (False, [])
    assert [f.id for f in subscriber.frames] == [first, broker.channels["a"].last_id]
