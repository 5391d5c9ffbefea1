"""Unit tests of chloed.transports._http, what browser endpoints share."""

from __future__ import annotations

import json

import pytest
from twisted.web.test.requesthelper import DummyRequest

from chloed.transports._http import BrowserResource, valid_callback


class Endpoint(BrowserResource):
    isLeaf = True

    def render_GET(self, request):
        return b"got"

    def render_OPTIONS(self, request):
        return b""


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"BREW", b"PATCH"])
def test_other_methods_get_a_json_405(method):
    """A method the endpoint does not serve gets 405 with Allow and a JSON
    error, like every other error of a browser endpoint."""
    request = DummyRequest([b""])
    request.method = method
    body = Endpoint().render(request)
    assert request.responseCode == 405
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"application/json"]
    allowed = request.responseHeaders.getRawHeaders(b"allow")[0].split(b", ")
    assert set(allowed) >= {b"GET", b"OPTIONS"}
    answer = json.loads(body)
    assert answer["error"] == "method_not_allowed" and method.decode() in answer["message"]


def test_head_is_refused_not_rendered_as_get():
    """HEAD is a 405 (twisted.web's Resource would render GET, which on a
    browser endpoint opens a session), with no body and GET in Allow."""
    request = DummyRequest([b""])
    request.method = b"HEAD"
    assert Endpoint().render(request) == b""
    assert request.responseCode == 405
    assert request.responseHeaders.getRawHeaders(b"allow") == [b"GET, OPTIONS"]
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"application/json"]


def test_served_methods_render():
    request = DummyRequest([b""])
    assert Endpoint().render(request) == b"got"


@pytest.mark.parametrize(
    "name,ok",
    [("cb", True), ("$", True), ("_a.b$.c9", True), ("a" * 64, True), ("a" * 65, False), ("1a", False),
     ("a..b", False), (".a", False), ("a.", False), ("a-b", False), ("a b", False), ("é", False), ("", False)],
)
def test_valid_callback(name, ok):
    assert valid_callback(name) is ok


class PostOnly(BrowserResource):
    isLeaf = True

    def render_POST(self, request):
        return b"posted"


@pytest.mark.parametrize("method", [b"HEAD", b"GET", b"DELETE"])
def test_endpoint_without_get_refuses_head_too(method):
    """HEAD of an endpoint with no GET is a 405, not Resource.render_HEAD
    calling the missing render_GET (an AttributeError, a 500 and a traceback)."""
    request = DummyRequest([b""])
    request.method = method
    body = PostOnly().render(request)
    assert request.responseCode == 405
    assert request.responseHeaders.getRawHeaders(b"allow") == [b"POST"]
    if method == b"HEAD":
        assert body == b""  # a HEAD answer has none
    else:
        assert json.loads(body)["error"] == "method_not_allowed"


class WithChild(BrowserResource):
    def __init__(self):
        super().__init__()
        self.putChild(b"known", Endpoint())

    def render_GET(self, request):
        return b"parent"


@pytest.mark.parametrize("path", [b"", b"x", b"known-not"])
def test_unknown_path_below_an_endpoint_is_a_json_404(path):
    """/poll/ or /jsonp/x name nothing: a JSON 404, not an HTML page."""
    request = DummyRequest([path])
    child = WithChild().getChildWithDefault(path, request)
    body = child.render(request)
    assert request.responseCode == 404
    assert json.loads(body)["error"] == "not_found"


def test_known_children_are_still_found():
    resource = WithChild()
    assert isinstance(resource.getChildWithDefault(b"known", DummyRequest([b"known"])), Endpoint)
