"""The resource tree of the one port: browser endpoints, the app's API and
the static files, under one ``twisted.web`` Site."""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.web.resource import IResource, Resource
from twisted.web.http import parse_qs
from twisted.web.server import Request, Site
from twisted.web.static import Data

from chloed import __version__, frames, tokens
from chloed.api import Api
from chloed.control import PATHS as CONTROL_PATHS, ControlApi
from chloed.deadletters import DeadLetterApi
from chloed.errors import RequestError
from chloed.http import answer_request_error, authorize, error
from chloed.hub import Hub
from chloed.metrics import Metrics
from chloed.ops import PATHS as OPS_PATHS, Ops
from chloed.pusher.api import PusherApi
from chloed.pusher.protocol import PusherProtocol
from chloed.pusher.socket import app_sockets
from chloed.send import SendResource
from chloed.transports._guard import REQUEST_DEADLINE, GuardedHTTPChannel
from chloed.transports._http import JsonMethodsResource
from chloed.transports._turn import Turn
from chloed.transports.inbound import SessionPostResource
from chloed.transports.longpoll import PollResource, batch_limit
from chloed.transports.sse import SSEResource
from chloed.transports.websocket import websocket_resource


def static_bytes(name: str) -> bytes:
    return (resources.files("chloed") / "static" / name).read_bytes()


class StaticData(JsonMethodsResource, Data):
    """A static file (``/chloe.js``): ``GET`` and ``HEAD``; any other
    method gets the JSON 405 of every other route."""


class IndexPage(JsonMethodsResource):
    """``GET /``: the status page. It says Chloe is up, with its
    version and counters as they are now, then keeps them (and its charts)
    live over Chloe itself, subscribed to ``chloe.status``.

    It shows only :meth:`Metrics.status` with ``public=True``: counts, and
    the names of channels anyone may subscribe to; to whom ``/status``
    answers, or to anyone with ``public_status``. Methods other than
    ``GET`` and ``HEAD`` get the JSON 405 of every other route.
    """

    isLeaf = True

    def __init__(self, hub: Hub, metrics: Metrics) -> None:
        super().__init__()
        self._hub = hub
        self._metrics = metrics
        self._template = static_bytes("index.html").decode("utf-8")

    def render_GET(self, request: Any) -> bytes:
        hub = self._hub
        config = hub.config
        token = ""
        if not config.public_status:
            # Whom /status answers; the page's script gets a token for the
            # live feed, which is held to the same rule.
            try:
                authorize(request, config.secret, loopback=True)
            except RequestError as refusal:
                return answer_request_error(request, refusal)
            token = tokens.feed_token(frames.STATUS_CHANNEL, config.secret)
        # The whole server's, with workers (Metrics.whole).
        status = self._metrics.status(public=True)
        # "<" escaped, so no value can end the <script> it sits in.
        snapshot = json.dumps(status).replace("<", "\\u003c")
        page = (
            self._template.replace("{version}", html.escape(__version__))
            .replace("{sessions}", str(status["sessions"]))
            .replace("{channels}", str(status["channels"]))
            .replace("{snapshot}", snapshot)
            .replace("{feed_token}", json.dumps(token))
        )
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return page.encode("utf-8")


class Root(Resource):
    """Named children first (``/ws``, ``/chloe.js``, ``/``); every other
    path goes whole to a Klein app: the one of ``whole`` named by its first
    segment, else the API. ``/users/…`` is the control API's (``GET
    /users/ID``) but for a request signed with a Pusher ``auth_key``:
    ``pusher_users``'s, when Pusher apps are served."""

    def __init__(self, fallback: IResource, whole: dict[bytes, IResource] | None = None) -> None:
        super().__init__()
        self._fallback = fallback
        self._whole = whole or {}
        self.pusher_users: IResource | None = None

    def getChild(self, path: bytes, request: Any) -> IResource:
        try:
            unquote_to_bytes(request.path).decode("utf-8")
        except UnicodeDecodeError:
            # Klein cannot route it (and would log a traceback trying).
            return _BadPath()
        if path == b"users" and self.pusher_users is not None and b"auth_key" in request.args:
            return self.pusher_users
        # Give Klein back the segment twisted.web just consumed.
        request.postpath.insert(0, request.prepath.pop())
        return self._whole.get(path, self._fallback)


class _BadPath(Resource):
    """A path that is not UTF-8: a JSON 400, whatever the method."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        return error(request, 400, "bad_request", "the path is not UTF-8")


_FORM = b"application/x-www-form-urlencoded"
_MULTIPART = b"multipart/form-data"


class ChloeRequest(Request):
    """twisted.web's request, but a form body is told by comparing bytes.

    Twisted reads the ``Content-Type`` of every POST through the ``email``
    package to see whether the body is a form: about a quarter of the
    Python time of a ``POST /send`` (bench/profiles). Here a form is
    parsed as Twisted would, once the media type compares equal; a
    multipart body still goes Twisted's way.
    """

    _form = False

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        ctype = self.requestHeaders.getRawHeaders(b"content-type")
        media = ctype[0].partition(b";")[0].strip().lower() if ctype else b""
        self._form = command == b"POST" and media == _FORM
        self._parsePOSTFormSubmission = command == b"POST" and media == _MULTIPART
        super().requestReceived(command, path, version)

    def process(self) -> None:
        content = self.content
        if self._form and content is not None:
            body = content.read()
            if body:
                self.args.update(parse_qs(body, 1))
            content.seek(0, 0)
        super().process()


class ChloeSite(Site):
    """A Site without the per-request access log: with thousands of
    long-poll browsers that is a line per poll; Chloe logs what happens to
    sessions and messages instead. A request must arrive whole within
    ``request_deadline`` seconds, its body no larger than ``max_body_bytes``
    (see :mod:`chloed.transports._guard`)."""

    protocol = GuardedHTTPChannel  # type: ignore[assignment]  # Twisted wants its HTTP/2 wrapper; HTTP/1.1 alone is ours
    requestFactory = ChloeRequest
    request_deadline = REQUEST_DEADLINE
    max_body_bytes: int | None = None
    client_errors: Any = None
    #: ``POST /send``'s render, for the lean path (chloed.transports._lean).
    send_render: Any = None
    #: The Pusher API's render, for its publishes on the lean path.
    pusher_render: Any = None

    def log(self, request: Any) -> None:
        pass


def make_site(hub: Hub, metrics: Metrics | None = None, pusher: PusherProtocol | None = None) -> Site:
    """The Site serving every endpoint of SPEC sections 3, 5 and 6.

    :param metrics: what ``/status``, ``/metrics`` and ``/`` report; one is
        made and attached to ``hub`` when None.
    :param pusher: the Pusher layer, whose ``/app`` (sockets), ``/apps``
        and ``/users`` (HTTP API) are served when given.
    """
    if metrics is None:
        metrics = Metrics(hub.clock).attach(hub)
    ops = Ops(hub, metrics).resource()
    whole = {path: ops for path in OPS_PATHS}
    whole[b"relay"] = DeadLetterApi(hub.relay, hub.config.secret).resource()
    whole.update(dict.fromkeys(CONTROL_PATHS, ControlApi(hub).resource()))
    root = Root(Api(hub).resource(), whole)
    root.putChild(b"", IndexPage(hub, metrics))
    # The reactor turn WebSocket writes are coalesced in, and /send's
    # batches gathered in.
    turn = Turn(hub.clock)
    send = SendResource(hub, turn)
    root.putChild(b"send", send)
    root.putChild(b"chloe.js", StaticData(static_bytes("chloe.js"), "application/javascript; charset=utf-8"))
    transports = hub.config.transports
    if "websocket" in transports:
        root.putChild(b"ws", websocket_resource(hub, turn=turn))
    if "sse" in transports:
        root.putChild(b"sse", SSEResource(hub))
    if "longpoll" in transports:
        root.putChild(b"poll", PollResource(hub, jsonp=False))
    if "jsonp" in transports:
        root.putChild(b"jsonp", PollResource(hub, jsonp=True))
    if "sse" in transports or "longpoll" in transports:
        root.putChild(b"session", SessionPostResource(hub))
    if pusher is not None:
        hub.pusher = pusher
        root.putChild(b"app", app_sockets(hub, pusher, turn))
        pusher_api = PusherApi(pusher)
        root.putChild(b"apps", pusher_api)
        root.pusher_users = PusherApi(pusher, by_key=True)
    site = ChloeSite(root, reactor=hub.clock)
    # The largest body any endpoint takes: a batch of browser frames, or
    # of messages to /send.
    site.max_body_bytes = max(batch_limit(hub), hub.config.send_batch_bytes)
    site.displayTracebacks = False
    site.client_errors = hub.client_errors
    site.send_render = send.render
    if pusher is not None:
        site.pusher_render = pusher_api.render
    return site
