"""The resource tree of the one port: browser endpoints, the app's API and
the static files, under one ``twisted.web`` Site."""

from __future__ import annotations

import html
from importlib import resources
from typing import Any

from twisted.web.resource import IResource, Resource
from twisted.web.server import Site
from twisted.web.static import Data

from chloed import __version__
from chloed.api import Api
from chloed.hub import Hub
from chloed.transports.inbound import SessionPostResource
from chloed.transports.longpoll import PollResource
from chloed.transports.sse import SSEResource
from chloed.transports.websocket import websocket_resource


def static_bytes(name: str) -> bytes:
    return (resources.files("chloed") / "static" / name).read_bytes()


class IndexPage(Resource):
    """``GET /``: says Chloe is up, with its version and a few counters."""

    isLeaf = True

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self._hub = hub
        self._template = static_bytes("index.html").decode("utf-8")

    def render_GET(self, request: Any) -> bytes:
        hub = self._hub
        page = (
            self._template.replace("{version}", html.escape(__version__))
            .replace("{sessions}", str(len(hub.broker.sessions)))
            .replace("{channels}", str(len(hub.broker.channels)))
        )
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return page.encode("utf-8")


class Root(Resource):
    """Named children first (``/ws``, ``/chloe.js``, ``/``); every other
    path goes whole to the Klein API."""

    def __init__(self, fallback: IResource) -> None:
        super().__init__()
        self._fallback = fallback

    def getChild(self, path: bytes, request: Any) -> IResource:
        # Give Klein back the segment twisted.web just consumed.
        request.postpath.insert(0, request.prepath.pop())
        return self._fallback


class ChloeSite(Site):
    """A Site without the per-request access log: with thousands of
    long-poll browsers that is a line per poll; Chloe logs what happens to
    sessions and messages instead."""

    def log(self, request: Any) -> None:
        pass


def make_site(hub: Hub) -> Site:
    """The Site serving every endpoint of SPEC sections 3, 5 and 6."""
    root = Root(Api(hub).resource())
    root.putChild(b"", IndexPage(hub))
    root.putChild(b"chloe.js", Data(static_bytes("chloe.js"), "application/javascript; charset=utf-8"))
    transports = hub.config.transports
    if "websocket" in transports:
        root.putChild(b"ws", websocket_resource(hub))
    if "sse" in transports:
        root.putChild(b"sse", SSEResource(hub))
    if "longpoll" in transports:
        root.putChild(b"poll", PollResource(hub, jsonp=False))
    if "jsonp" in transports:
        root.putChild(b"jsonp", PollResource(hub, jsonp=True))
    if "sse" in transports or "longpoll" in transports:
        root.putChild(b"session", SessionPostResource(hub))
    site = ChloeSite(root)
    site.displayTracebacks = False
    return site
