"""The lean path of ``POST /send`` (chloed.transports._lean): a whole
request at the start of an idle connection's buffer is answered without
twisted.web's Request, the same as through it; everything else still goes
through twisted.web, and answers keep the order of the requests."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from chloed.backends.base import PublishResult
from tests.site_harness import SiteHarness, body_json, send_request

TWISTED = b"server"  # twisted.web names itself in a Server header; the lean path does not


def test_a_whole_send_is_answered_as_twisted_web_answers_it():
    """The same request, whole (lean) and cut in two (twisted.web): the
    same status, content type and receipt."""
    site = SiteHarness()
    request = send_request(b"channel=news&data=hello")
    [lean] = site.feed(request)
    site.feed(request[:20])
    [web] = site.feed(request[20:])
    assert TWISTED not in lean[1] and TWISTED in web[1]
    assert lean[0] == web[0] == 202
    assert lean[1][b"content-type"] == web[1][b"content-type"] == b"application/json"
    assert b"date" in lean[1]
    first, second = body_json(lean), body_json(web)
    assert first.keys() == second.keys() == {"ids", "delivered", "queued"}
    assert list(first["ids"]) == list(second["ids"]) == ["news"]


def test_pipelined_requests_are_answered_in_order_across_both_paths():
    """Two publishes, a GET, a third publish, in one write: four answers,
    in request order, the publishes' ids in publish order."""
    site = SiteHarness()
    got = site.feed(
        send_request(b'{"channel":"a","data":1}', b"application/json")
        + send_request(b"channel=a&data=2")
        + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        + send_request(b"channel=a&data=3")
    )
    assert [status for status, _, _ in got] == [202, 202, 200, 202]
    assert TWISTED in got[2][1]
    ids = [body_json(a)["ids"]["a"] for a in (got[0], got[1], got[3])]
    assert sorted(ids, key=lambda i: int(i.split("-")[1])) == ids


def test_refusals_on_the_lean_path_are_the_apis():
    """No bearer: 401 with the challenge; a bad channel: 400 by code; both
    on a connection that stays open."""
    site = SiteHarness()
    [refused] = site.feed(send_request(b"channel=a&data=1", auth=False))
    assert refused[0] == 401 and TWISTED not in refused[1]
    assert refused[1][b"www-authenticate"] == b'Bearer realm="chloe"'
    assert body_json(refused)["error"] == "unauthorized"
    [bad] = site.feed(send_request(b"channel=no%20spaces&data=1"))
    assert bad[0] == 400 and body_json(bad)["error"] == "invalid_channel"
    assert not site.transport.disconnecting


def test_query_arguments_count_as_on_twisted_web():
    """``/send?channel=…`` with the data in the body: both are read."""
    site = SiteHarness()
    [answer] = site.feed(send_request(b"data=1", path=b"/send?channel=q"))
    assert answer[0] == 202 and list(body_json(answer)["ids"]) == ["q"]


def test_what_the_lean_path_declines_goes_to_twisted_web():
    """A chunked body, ``Connection: close``, a path below /send, and
    ``Expect`` are twisted.web's, answered as before."""
    site = SiteHarness()
    chunked = (
        b"POST /send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer harness-secret\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"10\r\nchannel=c&data=1\r\n0\r\n\r\n"
    )
    [answer] = site.feed(chunked)
    assert answer[0] == 202 and TWISTED in answer[1]
    [below] = site.feed(send_request(b"data=1", path=b"/send/x"))
    assert below[0] == 404 and body_json(below)["error"] == "not_found"
    [closing] = site.feed(send_request(b"channel=c&data=1", extra=b"Connection: close\r\n"))
    assert closing[0] == 202 and TWISTED in closing[1]
    assert site.transport.disconnecting


def test_a_body_over_the_sites_limit_is_refused_by_the_guard():
    """The lean path takes no body the site would not: the guard's 413."""
    site = SiteHarness()
    [answer] = site.feed(send_request(b"data=" + b"x" * site.service.site.max_body_bytes))
    assert answer[0] == 413 and site.transport.disconnecting


class _SlowBackend:
    """Publishes answered only when the test says so (as Redis does)."""

    def __init__(self) -> None:
        self.waiting: list[Deferred[PublishResult]] = []

    def publish(self, names, data, exclude=None):
        d: Deferred[PublishResult] = Deferred()
        self.waiting.append(d)
        return d


def test_an_answer_the_backend_keeps_waiting_holds_the_next_request():
    """While the backend has not answered, the connection reads nothing
    more; once it has, that answer goes first, then the next request's."""
    site = SiteHarness()
    slow = _SlowBackend()
    site.hub.broker.publish = slow.publish  # type: ignore[method-assign]
    got = site.feed(send_request(b"channel=a&data=1") + send_request(b"channel=a&data=2"))
    assert got == [] and len(slow.waiting) == 1
    assert site.transport.producerState == "paused"
    slow.waiting[0].callback(PublishResult(ids={"a": "1-1"}, delivered=3))
    [first] = site.take()
    assert first[0] == 202 and body_json(first) == {"ids": {"a": "1-1"}, "delivered": 3, "queued": 0}
    # The second request, read at once, waits for the backend in turn.
    assert len(slow.waiting) == 2 and site.transport.producerState == "paused"
    slow.waiting[1].callback(PublishResult(ids={"a": "1-2"}))
    [second] = site.take()
    assert body_json(second)["ids"] == {"a": "1-2"}
    assert site.transport.producerState == "producing"


def test_a_connection_lost_while_the_backend_answers_is_not_written_to():
    site = SiteHarness()
    slow = _SlowBackend()
    site.hub.broker.publish = slow.publish  # type: ignore[method-assign]
    site.feed(send_request(b"channel=a&data=1"))
    site.protocol.connectionLost(None)
    slow.waiting[0].callback(PublishResult(ids={"a": "1-1"}))
    assert site.transport.value() == b""


def test_a_malformed_head_after_a_lean_answer_is_twisted_webs_400():
    """A /send whose head httptools will not parse goes to twisted.web,
    which refuses it and closes; the whole /send before it was answered."""
    site = SiteHarness()
    got = site.feed(
        send_request(b"channel=a&data=1")
        + b"POST /send HTTP/1.1\r\nHost: x\r\nNo colon here\r\nContent-Length: 0\r\n\r\n"
    )
    assert [status for status, _, _ in got] == [202, 400]
    assert site.transport.disconnecting
