"""A batch ``POST /send``: a JSON array or NDJSON of messages, each
validated and published on its own, in order, with one result per item;
its limits (``send_batch_items``, ``send_batch_bytes``, and
``max_message_bytes`` per item)."""

from __future__ import annotations

import json

import pytest

from tests.fakes import RecordingSubscriber
from tests.site_harness import SiteHarness, body_json, send_request

JSON = b"application/json"
NDJSON = b"application/x-ndjson"


def batch(items: list, ctype: bytes = JSON) -> bytes:
    if ctype == NDJSON:
        return send_request(b"\n".join(json.dumps(i).encode() for i in items) + b"\n", NDJSON)
    return send_request(json.dumps(items).encode(), JSON)


def subscribed(site: SiteHarness, channel: str, id: str = "s1") -> RecordingSubscriber:
    subscriber = RecordingSubscriber(id)
    site.hub.broker.subscribe(channel, subscriber)
    return subscriber


@pytest.mark.parametrize("ctype", [JSON, NDJSON], ids=["array", "ndjson"])
def test_a_batch_is_published_in_order_with_a_receipt_per_item(ctype):
    site = SiteHarness()
    news = subscribed(site, "news")
    [answer] = site.feed(batch([{"channel": "news", "data": n} for n in range(5)], ctype))
    assert answer[0] == 202
    got = body_json(answer)
    assert got["sent"] == 5 and got["failed"] == 0
    assert [r["delivered"] for r in got["results"]] == [1] * 5
    ids = [r["ids"]["news"] for r in got["results"]]
    assert [f["id"] for f in news.decoded] == ids
    assert [f["data"] for f in news.decoded] == [0, 1, 2, 3, 4]


def test_each_item_has_its_own_targets():
    """Channels, a session, everyone, and exclude, item by item."""
    site = SiteHarness()
    a, b = subscribed(site, "a", "s1"), subscribed(site, "b", "s2")
    [answer] = site.feed(batch([
        {"channel": ["a", "b"], "data": "both"},
        {"channel": "a", "data": "a only", "exclude": "s1"},
        {"data": "everyone"},
    ]))
    results = body_json(answer)["results"]
    assert set(results[0]["ids"]) == {"a", "b"}
    assert results[1]["delivered"] == 0
    assert "id" in results[2] and results[2]["ids"] == {}
    assert [f["data"] for f in a.decoded] == ["both"]
    assert [f["data"] for f in b.decoded] == ["both"]


def test_a_bad_item_is_reported_by_index_and_the_others_go():
    site = SiteHarness(max_message_bytes=100)
    news = subscribed(site, "news")
    [answer] = site.feed(batch([
        {"channel": "news", "data": 1},
        {"channel": "no spaces", "data": 2},
        "not an object",
        {"session": "nobody", "data": 3},
        {"channel": "news", "data": "x" * 200},
        {"channel": "news", "data": 4, "chanel": "typo"},
        {"channel": "chloe.status", "data": 5},
        {"channel": "news", "data": 6},
    ]))
    assert answer[0] == 202
    got = body_json(answer)
    assert got["sent"] == 2 and got["failed"] == 6
    errors = {r["index"]: (r["status"], r["error"]) for r in got["results"] if "error" in r}
    assert errors == {
        1: (400, "invalid_channel"),
        2: (400, "bad_request"),
        3: (404, "unknown_session"),
        4: (413, "too_large"),
        5: (400, "bad_request"),
        6: (400, "invalid_channel"),
    }
    assert [f["data"] for f in news.decoded] == [1, 6]


def test_an_ndjson_line_that_is_not_json_is_that_items_error():
    site = SiteHarness()
    body = b'{"channel":"a","data":1}\n{oops\n\n{"channel":"a","data":2}\n'
    [answer] = site.feed(send_request(body, NDJSON))
    results = body_json(answer)["results"]
    assert len(results) == 3
    assert results[1] == {"index": 1, "status": 400, "error": "bad_request", "message": "the line is not valid JSON"}
    assert "ids" in results[0] and "ids" in results[2]


@pytest.mark.parametrize("body, ctype, status, error", [
    (b"[]", JSON, 400, "bad_request"),
    (b"\n\n", NDJSON, 400, "bad_request"),
    (b"[1, 2", JSON, 400, "bad_request"),
], ids=["empty array", "empty ndjson", "array not JSON"])
def test_a_batch_refused_whole(body, ctype, status, error):
    site = SiteHarness()
    [answer] = site.feed(send_request(body, ctype))
    assert (answer[0], body_json(answer)["error"]) == (status, error)


def test_a_batch_holds_at_most_send_batch_items():
    site = SiteHarness(send_batch_items=3)
    news = subscribed(site, "news")
    [answer] = site.feed(batch([{"channel": "news", "data": n} for n in range(4)]))
    assert answer[0] == 413 and body_json(answer)["error"] == "too_large"
    assert "at most 3 messages" in body_json(answer)["message"]
    assert news.frames == []
    [fits] = site.feed(batch([{"channel": "news", "data": n} for n in range(3)]))
    assert fits[0] == 202


@pytest.mark.parametrize("ctype", [JSON, NDJSON], ids=["array", "ndjson"])
def test_a_batch_body_is_held_to_send_batch_bytes(ctype):
    """Over ``send_batch_bytes`` (but under what the site reads): 413, and
    nothing is published; a batch over ``max_message_bytes`` in all but
    under the batch bound goes.

    (max_message_bytes is above the batch bound so that the site reads
    the body, and /send is the one to refuse it.)"""
    site = SiteHarness(send_batch_bytes=4096, max_message_bytes=8192)
    news = subscribed(site, "news")
    items = [{"channel": "news", "data": "x" * 500} for _ in range(10)]
    [answer] = site.feed(batch(items, ctype))
    assert answer[0] == 413 and body_json(answer)["error"] == "too_large"
    assert news.frames == []
    [fits] = site.feed(batch(items[:6], ctype))
    assert fits[0] == 202 and body_json(fits)["sent"] == 6


def test_the_site_reads_a_batch_as_large_as_send_batch_bytes():
    """The connection guard's body bound grows with ``send_batch_bytes``."""
    site = SiteHarness(send_batch_bytes=4 * 1024 * 1024, send_batch_items=3000)
    assert site.service.site.max_body_bytes == 4 * 1024 * 1024
    items = [{"channel": "news", "data": "y" * 1000} for _ in range(3000)]
    [answer] = site.feed(batch(items))
    assert answer[0] == 202 and body_json(answer)["sent"] == 3000


def test_a_batch_the_backend_answers_later_keeps_item_order():
    """With a backend that answers later (Redis), the 202 waits for every
    item, and the results are in item order whatever order they come in."""
    from twisted.internet.defer import Deferred

    from chloed.backends.base import BackendUnavailable, PublishResult

    site = SiteHarness()
    waiting: list[Deferred] = []

    def publish(names, data, exclude=None):
        d: Deferred = Deferred()
        waiting.append(d)
        return d

    site.hub.broker.publish = publish  # type: ignore[method-assign]
    got = site.feed(batch([{"channel": "a", "data": n} for n in range(3)]))
    assert got == [] and len(waiting) == 3
    waiting[2].callback(PublishResult(ids={"a": "1-3"}))
    waiting[0].callback(PublishResult(ids={"a": "1-1"}))
    assert site.take() == []
    waiting[1].errback(BackendUnavailable("redis is away"))
    [answer] = site.take()
    results = body_json(answer)["results"]
    assert results[0]["ids"] == {"a": "1-1"} and results[2]["ids"] == {"a": "1-3"}
    assert results[1]["index"] == 1 and results[1]["status"] == 503
    assert results[1]["error"] == "backend_unavailable"


def test_a_batch_without_the_secret_is_refused_whole():
    """No bearer: 401, and not one item of the batch is published."""
    site = SiteHarness()
    news = subscribed(site, "news")
    body = json.dumps([{"channel": "news", "data": n} for n in range(3)]).encode()
    [answer] = site.feed(send_request(body, JSON, auth=False))
    assert answer[0] == 401 and body_json(answer)["error"] == "unauthorized"
    assert news.frames == []
