"""The dead-letter API (chloed.deadletters) on the wire: GET /relay/dead,
POST /relay/dead/replay, DELETE /relay/dead/{id}, over a whole Site on a
StringTransport."""

from __future__ import annotations

import json

from chloed.spool.base import DeadLetter, Record
from tests.site_harness import SECRET, SiteHarness, body_json


def request(method: bytes, path: bytes, body: bytes = b"", auth: bool = True) -> bytes:
    head = method + b" " + path + b" HTTP/1.1\r\nHost: x\r\n"
    if auth:
        head += b"Authorization: Bearer " + SECRET.encode() + b"\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def harness(letters: int = 3) -> SiteHarness:
    h = SiteHarness(application_server_url="http://127.0.0.1:9/app")
    spool = h.hub.relay.spool
    for n in range(letters):
        record = Record(f"session-{n}", "message", b"delivery-%d" % n, 1000.0 + n,
                        b'{"type":"message","session":"session-%d","data":%d}' % (n, n))
        spool.append(record)
        record.attempt = 2
        spool.bury(DeadLetter(record, "the application answered 422", 422, 2000.0 + n))
    return h


def test_list_pages_dead_letters_with_their_body():
    """GET /relay/dead pages oldest first, with the relayed body parsed and
    the reason, status and attempts of each."""
    h = harness()
    [answer] = h.feed(request(b"GET", b"/relay/dead?limit=2"))
    assert answer[0] == 200
    page = body_json(answer)
    assert page["count"] == 3
    first = page["dead_letters"][0]
    assert first == {
        "id": first["id"], "delivery": "delivery-0", "kind": "message", "session": "session-0",
        "arrived": 1000.0, "died": 2000.0, "attempts": 3, "status": 422,
        "reason": "the application answered 422",
        "body": {"type": "message", "session": "session-0", "data": 0},
    }
    [answer] = h.feed(request(b"GET", b"/relay/dead?limit=2&after=" + page["next"].encode()))
    rest = body_json(answer)
    assert [d["delivery"] for d in rest["dead_letters"]] == ["delivery-2"]
    assert rest["next"] is None


def test_replay_queues_them_again():
    """POST /relay/dead/replay with ids puts those back in the queue."""
    h = harness()
    [answer] = h.feed(request(b"GET", b"/relay/dead"))
    ids = [d["id"] for d in body_json(answer)["dead_letters"]]
    [answer] = h.feed(request(b"POST", b"/relay/dead/replay", json.dumps({"ids": ids[:2] + ["nope"]}).encode()))
    assert answer[0] == 200 and body_json(answer) == {"replayed": 2, "ids": ids[:2]}
    assert h.hub.relay.queued == 2
    [answer] = h.feed(request(b"POST", b"/relay/dead/replay", b'{"all": true}'))
    assert body_json(answer)["replayed"] == 1
    assert h.hub.relay.spool.dead_count() == 0


def test_delete_then_404():
    """DELETE /relay/dead/{id} answers 204, then 404 for the same id."""
    h = harness(1)
    [answer] = h.feed(request(b"GET", b"/relay/dead"))
    [letter] = body_json(answer)["dead_letters"]
    [answer] = h.feed(request(b"DELETE", b"/relay/dead/" + letter["id"].encode()))
    assert answer[0] == 204
    [answer] = h.feed(request(b"DELETE", b"/relay/dead/" + letter["id"].encode()))
    assert answer[0] == 404 and body_json(answer)["error"] == "not_found"


def test_bad_requests_are_400():
    """A bad limit or a replay body that is neither ids nor all is a 400."""
    h = harness()
    for path in (b"/relay/dead?limit=0", b"/relay/dead?limit=1001", b"/relay/dead?limit=x"):
        [answer] = h.feed(request(b"GET", path))
        assert answer[0] == 400 and body_json(answer)["error"] == "invalid_request"
    for body in (b"[]", b"{}", b'{"ids": [1]}', b'{"all": false}', b"not json", b'{"ids": [], "all": true}'):
        [answer] = h.feed(request(b"POST", b"/relay/dead/replay", body))
        assert answer[0] == 400, body


def test_oversized_or_repeated_input_is_refused():
    """A replay body over its bound is a 413, and an after= given twice a
    400; nothing is replayed."""
    from chloed.deadletters import REPLAY_BODY_MAX

    h = harness()
    body = json.dumps({"ids": ["x" * 100] * (REPLAY_BODY_MAX // 100)}).encode()
    [answer] = h.feed(request(b"POST", b"/relay/dead/replay", body))
    assert answer[0] == 413 and body_json(answer)["error"] == "too_large"
    [answer] = h.feed(request(b"GET", b"/relay/dead?after=a&after=b"))
    assert answer[0] == 400 and "more than once" in body_json(answer)["message"]
    assert h.hub.relay.spool.dead_count() == 3 and h.hub.relay.queued == 0


def test_needs_the_secret():
    """Without the bearer secret the dead letters are not shown."""
    h = harness()
    [answer] = h.feed(request(b"GET", b"/relay/dead", auth=False))
    assert answer[0] == 401


def test_without_an_application_it_says_so():
    """A chloed with no application_server_url has no relay: 404 no_application."""
    h = SiteHarness()
    [answer] = h.feed(request(b"GET", b"/relay/dead"))
    assert answer[0] == 404 and body_json(answer)["error"] == "no_application"
