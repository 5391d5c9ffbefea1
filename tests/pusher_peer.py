"""What the Pusher integration tests share: a chloed config serving one
Pusher app, a raw Pusher client on the ``websockets`` library (protocol 7,
as pusher-js speaks it), the official ``pusher`` library pointed at chloed,
signed HTTP API requests built with that library's own pieces, and an app
server that receives Chloe's Pusher webhooks."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import pusher
from pusher.http import Request, make_query_string
from pusher.pusher_client import PusherClient
from pusher.signature import sign
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.servers import Chloed

TIMEOUT = 10.0
APP_ID = "12345"  # the pusher library takes digits only
APP_KEY = "app-key"
APP_SECRET = "app-secret"
QUERY = "protocol=7&client=js&version=8.6.0&flash=false"


def pusher_conf(path: Path, options: dict[str, Any] | None = None, others: tuple[dict[str, Any], ...] = (),
                **app: Any) -> str:
    """Write a chloe.toml serving a Pusher app (``app`` adds or overrides
    keys of its ``[[pusher.apps]]``), then the apps of ``others``;
    ``options`` are top-level settings. Returns its path."""
    entry: dict[str, Any] = {"id": APP_ID, "key": APP_KEY, "secret": APP_SECRET}
    entry.update(app)
    lines = [f"{name} = {json.dumps(value)}" for name, value in (options or {}).items()]
    lines += ["", "[pusher]", "timestamp_window = 600"]
    for table in (entry, *others):
        lines += ["", "[[pusher.apps]]"] + [f"{name} = {json.dumps(value)}" for name, value in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def library(server: Chloed, key: str = APP_KEY, secret: str = APP_SECRET, app_id: str = APP_ID) -> pusher.Pusher:
    """The official library, as an app configures it for a self-hosted server."""
    return pusher.Pusher(app_id=app_id, key=key, secret=secret, host="127.0.0.1", port=server.port, ssl=False)


def data_of(frame: dict[str, Any]) -> Any:
    """A frame's data, decoded when the server sent it as a JSON string."""
    data = frame.get("data")
    if isinstance(data, str):
        try:
            return json.loads(data)
        except ValueError:
            return data
    return data


class PusherSocket:
    """A Pusher client on ``/app/{key}``, sending and reading raw frames."""

    def __init__(self, server: Chloed, key: str = APP_KEY, query: str = QUERY, established: bool = True) -> None:
        self.url = f"ws://127.0.0.1:{server.port}/app/{key}?{query}"
        self.ws = connect(self.url, open_timeout=TIMEOUT, max_size=None).__enter__()
        self.socket_id = ""
        if established:
            first = self.recv()
            assert first["event"] == "pusher:connection_established", first
            data = data_of(first)
            assert isinstance(first["data"], str) and data["activity_timeout"] > 0, first
            self.socket_id = data["socket_id"]

    def send(self, frame: Any) -> None:
        self.ws.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))

    def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        raw = self.ws.recv(timeout=timeout)
        return json.loads(raw)

    def ask(self, frame: Any) -> dict[str, Any]:
        self.send(frame)
        return self.recv()

    def until(self, event: str, channel: str | None = None, timeout: float = TIMEOUT) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Read until a frame of ``event`` (on ``channel``); the frames read
        before it, and it."""
        deadline = time.monotonic() + timeout
        before: list[dict[str, Any]] = []
        while True:
            frame = self.recv(timeout=max(0.01, deadline - time.monotonic()))
            if frame.get("event") == event and (channel is None or frame.get("channel") == channel):
                return before, frame
            before.append(frame)

    def ping(self) -> list[dict[str, Any]]:
        """``pusher:ping``: what the socket got before its ``pusher:pong``
        (everything the server did with the frames sent before, the server
        handling a socket's frames in order)."""
        self.send({"event": "pusher:ping", "data": {}})
        return self.until("pusher:pong")[0]

    def subscribe(self, channel: str, **extra: Any) -> dict[str, Any]:
        """``pusher:subscribe``; the answer."""
        return self.ask({"event": "pusher:subscribe", "data": {"channel": channel, **extra}})

    def subscribed(self, channel: str, **extra: Any) -> dict[str, Any]:
        answer = self.subscribe(channel, **extra)
        assert answer["event"] == "pusher_internal:subscription_succeeded" and answer["channel"] == channel, answer
        return answer

    def closed(self, timeout: float = TIMEOUT) -> tuple[list[dict[str, Any]], int | None]:
        """Every frame until the server closes; the close code."""
        frames = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                frames.append(json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic()))))
        except ConnectionClosed as exc:
            return frames, exc.rcvd.code if exc.rcvd is not None else None

    def close(self) -> None:
        self.ws.close()


class Listener:
    """A socket subscribed to a public channel from the start; a thread
    records every event it gets there (the rest in ``others``)."""

    def __init__(self, server: Chloed, channel: str) -> None:
        self.channel = channel
        self.peer = PusherSocket(server)
        self.peer.subscribed(channel)
        self.seen: list[tuple[str, Any]] = []
        self.others: list[dict[str, Any]] = []
        self.ended: str | None = None
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while True:
                frame = json.loads(self.peer.ws.recv())
                with self.cond:
                    if frame.get("channel") == self.channel and not frame["event"].startswith("pusher"):
                        self.seen.append((frame["event"], frame.get("data")))
                    else:
                        self.others.append(frame)
                    self.cond.notify_all()
        except ConnectionClosed as exc:
            with self.cond:
                self.ended = repr(exc)
                self.cond.notify_all()

    def wait_for(self, count: int, timeout: float = TIMEOUT) -> list[tuple[str, Any]]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.seen) >= count or self.ended is not None, timeout)
            return list(self.seen)

    def close(self) -> None:
        self.peer.close()
        self.thread.join(TIMEOUT)


# -- the HTTP API, signed by the library's own pieces ----------------------------


def api_client(server: Chloed, key: str = APP_KEY, secret: str = APP_SECRET, app_id: str = APP_ID) -> PusherClient:
    """The library's HTTP client (what ``pusher.Pusher`` sends through)."""
    return PusherClient(app_id=app_id, key=key, secret=secret, host="127.0.0.1", port=server.port, ssl=False)


def signed(client: PusherClient, method: str, path: str, params: dict[str, Any] | None = None,
           secret: str | None = None, **query: str) -> Request:
    """The library's signed request of ``path``; ``query`` overrides
    parameters of its query (``auth_timestamp``, ``body_md5``...), signed
    again after, with ``secret`` if given."""
    request = Request(client, method, path, params)
    if query or secret is not None:
        request.query_params.update(query)
        request.query_params.pop("auth_signature")
        text = "\n".join([method, path, make_query_string(request.query_params)])
        request.query_params["auth_signature"] = sign(secret or client.secret, text)
    return request


def send(request: Request) -> tuple[int, bytes]:
    """Send a signed request as it is; the status and body (no raising)."""
    req = urllib.request.Request(request.url, data=request.body if request.method == "POST" else None,
                                 headers=request.headers, method=request.method)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# -- the app's webhook endpoint -------------------------------------------------


class Webhooks:
    """A real app server at ``url`` receiving Chloe's Pusher webhooks.

    It checks each POST as an app does, with the library's
    ``validate_webhook(key, signature, body)``, and answers 401 to one that
    fails; otherwise ``status(events)`` (200 by default). Every event of
    every POST is recorded with the status its POST was answered, and so
    is whether each POST validated.
    """

    def __init__(self, key: str = APP_KEY, secret: str = APP_SECRET, app_id: str = APP_ID) -> None:
        self.validator = pusher.Pusher(app_id=app_id, key=key, secret=secret)
        self.status: Callable[[list[dict[str, Any]]], int] = lambda events: 200
        self.posts: list[tuple[dict[str, str], bytes, bool]] = []
        self.events: list[tuple[dict[str, Any], int]] = []
        self.cond = threading.Condition()
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = dict(self.headers)
                valid = hooks.validator.validate_webhook(
                    headers.get("X-Pusher-Key", ""), headers.get("X-Pusher-Signature", ""), body
                )
                events = valid["events"] if valid is not None else []
                status = 401 if valid is None else hooks.status(events)
                with hooks.cond:
                    hooks.posts.append((headers, body, valid is not None))
                    hooks.events.extend((event, status) for event in events)
                    hooks.cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/pusher/webhooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def of(self, channel: str) -> list[tuple[dict[str, Any], int]]:
        """The events about ``channel`` so far, each with the status its
        POST got."""
        with self.cond:
            return [(e, s) for e, s in self.events if e.get("channel") == channel]

    def wait(self, channel: str, until: Callable[[list[dict[str, Any]]], bool],
             timeout: float = TIMEOUT) -> list[tuple[dict[str, Any], int]]:
        """The events of ``channel`` once ``until(their list)`` holds (or the
        timeout passed: the caller's assertions then say what came)."""
        with self.cond:
            self.cond.wait_for(lambda: until([e for e, s in self.events if e.get("channel") == channel]), timeout)
            return [(e, s) for e, s in self.events if e.get("channel") == channel]

    def wait_for(self, channel: str, name: str, timeout: float = TIMEOUT) -> list[tuple[dict[str, Any], int]]:
        """The events of ``channel`` once one named ``name`` is among them."""
        return self.wait(channel, lambda events: any(e["name"] == name for e in events), timeout)

    def invalid_posts(self) -> list[tuple[dict[str, str], bytes]]:
        with self.cond:
            return [(h, b) for h, b, ok in self.posts if not ok]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
