"""A chat on pusher-js, served by Chloe: rooms, who is here, who is typing.

``examples/chat_app.py``'s counterpart on the Pusher protocol: the page
runs the real pusher-js, the app uses the official ``pusher`` Python
library, and chloed stands where hosted Pusher would, serving the
``[[pusher.apps]]`` of ``examples/pusher_chat.toml`` (this app reads the
app's id, key and secret from the same file). Standard library plus ``pusher``
(``pip install pusher``; ``make setup`` installs it). The app never holds a
socket to a browser.

- ``GET /`` serves the page; ``GET /pusher.min.js`` serves pusher-js from
  the npm install of ``tests/js`` (``make setup`` runs ``npm ci`` there;
  ``--pusher-js`` points elsewhere), so nothing comes from the internet.
- ``POST /join`` (``{"name", "room"}``) answers a token for this tab and the
  room's channel, ``presence-room-<room>``. The typed name stands in for
  your login: a real app knows its users from its own session.
- pusher-js asks ``POST /pusher/auth`` (with that token as bearer) to let
  its socket into the room; the app checks the token opens that room and
  answers ``pusher.authenticate`` with ``custom_data`` (``user_id`` and
  ``user_info.name``): chloed checks the signature, and shows that member
  to the room (the page's "Here" list, ``pusher:member_added`` and
  ``pusher:member_removed``).
- ``POST /messages`` (``{"text"}``, bearer token) stamps the sender's name
  from the token, not from the page, and triggers it (``pusher.trigger``)
  as a ``message`` event on the room, through chloed's HTTP API; every page
  in the room, the sender's too, shows it when it arrives.
- Typing goes page to page without the app: ``client-typing`` client
  events (``enable_client_messages = true``), at most one a second from a
  page; chloed stamps each with the sender's ``user_id``, which the page
  turns into a name through the room's members, so nobody types as someone
  else.

Run chloed with the same config (``make pusher-demo`` does both)::

    twistd -n chloe --listen tcp:8901:interface=127.0.0.1 --config examples/pusher_chat.toml
    python examples/pusher_chat.py --port 4567 --chloe http://127.0.0.1:8901 --config examples/pusher_chat.toml
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import sys
import threading
import time
import tomllib
from collections import OrderedDict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pusher
import requests
from pusher.errors import PusherError

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "pusher_chat.toml"
PUSHER_JS = HERE.parent / "tests" / "js" / "node_modules" / "pusher-js" / "dist" / "web" / "pusher.min.js"
ROOM_PREFIX = "presence-room-"
ROOM_RE = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)
NAME_MAX = 40
TEXT_MAX = 2000
BODY_MAX = 64 * 1024
MEMBERS_KEPT = 10000


class NotSetUp(Exception):
    """What the app needs to start is missing: a line saying what to do."""


class Refused(Exception):
    """A request the app turns down: ``status`` and a line saying why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Member:
    """Someone who joined: the id the room knows them by, their name, their room."""

    id: str
    name: str
    channel: str


def pusher_app(config: Path) -> dict[str, Any]:
    """The first ``[[pusher.apps]]`` of chloed's config: ``id``, ``key``,
    ``secret``...

    :raises NotSetUp: when there is none, or it cannot take client events.
    """
    with open(config, "rb") as f:
        apps = tomllib.load(f).get("pusher", {}).get("apps", [])
    if not apps:
        raise NotSetUp(f"{config} has no [[pusher.apps]]")
    app = apps[0]
    if not app.get("enable_client_messages"):
        raise NotSetUp(f"{config}: the chat's typing indicator needs enable_client_messages = true")
    return app


def pusher_js(path: Path) -> bytes:
    """pusher-js itself, read once; missing, a line that says how to get it."""
    if not path.is_file():
        raise NotSetUp(f"{path} is missing: run `make setup` (npm ci in tests/js), or give --pusher-js")
    return path.read_bytes()


class Chat:
    """The chat's rules, without HTTP.

    :param client: the ``pusher`` library's client of chloed's HTTP API.
    """

    def __init__(self, client: pusher.Pusher, clock: Any = time.time) -> None:
        self.pusher = client
        self.clock = clock
        # token -> member, the oldest forgotten first past MEMBERS_KEPT.
        self._members: "OrderedDict[str, Member]" = OrderedDict()
        self._last_id = 0
        self._lock = threading.Lock()

    @classmethod
    def for_chloed(cls, chloe_url: str, app: dict[str, Any]) -> "Chat":
        """A chat publishing through the chloed at ``chloe_url``, as ``app``."""
        parts = urlsplit(chloe_url)
        https = parts.scheme == "https"
        client = pusher.Pusher(
            app_id=app["id"], key=app["key"], secret=app["secret"],
            host=parts.hostname, port=parts.port or (443 if https else 80), ssl=https,
        )
        return cls(client)

    # -- joining ------------------------------------------------------------

    def join(self, name: Any, room: Any) -> dict[str, Any]:
        """A token for ``name`` in ``room``, and the room's channel.

        :raises Refused: 400 for a bad name or room.
        """
        if not isinstance(name, str) or not isinstance(room, str):
            raise Refused(400, "name and room are required")
        name = " ".join(name.split())
        if not name or len(name) > NAME_MAX or not name.isprintable():
            raise Refused(400, f"a name is 1 to {NAME_MAX} printable characters")
        if not ROOM_RE.fullmatch(room):
            raise Refused(400, "a room name is 1 to 64 letters, digits, '-' or '_'")
        member = Member(secrets.token_hex(8), name, ROOM_PREFIX + room)
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._members[token] = member
            while len(self._members) > MEMBERS_KEPT:
                self._members.popitem(last=False)
        return {"token": token, "user": {"id": member.id, "name": name}, "channel": member.channel}

    def member(self, authorization: str | None) -> Member:
        """Who the bearer of a token from :meth:`join` is.

        :raises Refused: 401 without a token, or with one the app does not know.
        """
        if not authorization or not authorization.startswith("Bearer "):
            raise Refused(401, "Authorization: Bearer <the token of POST /join> is required")
        with self._lock:
            member = self._members.get(authorization[len("Bearer "):].strip())
        if member is None:
            raise Refused(401, "unknown token: join again")
        return member

    # -- what pusher-js asks ------------------------------------------------

    def authorize(self, authorization: str | None, form: dict[str, str]) -> dict[str, Any]:
        """pusher-js's channel authorization request: the signed answer that
        lets its socket into the member's room, as that member.

        :raises Refused: 401 for no member, 403 for another channel, 400
            for a bad request.
        """
        member = self.member(authorization)
        channel, socket_id = form.get("channel_name"), form.get("socket_id")
        if not channel or not socket_id:
            raise Refused(400, "channel_name and socket_id are required")
        if channel != member.channel:
            raise Refused(403, f"{member.name} may not subscribe to {channel}")
        custom = {"user_id": member.id, "user_info": {"name": member.name}}
        try:
            return self.pusher.authenticate(channel=channel, socket_id=socket_id, custom_data=custom)
        except ValueError as exc:
            raise Refused(400, str(exc)) from None

    # -- messages -------------------------------------------------------------

    def say(self, authorization: str | None, request: Any) -> dict[str, Any]:
        """A message from the bearer: stamped with their name and triggered
        on their room.

        :raises Refused: 401 for no member, 400 for no text, 502 when
            chloed refused it.
        """
        member = self.member(authorization)
        text = request.get("text") if isinstance(request, dict) else None
        if not isinstance(text, str) or not text.strip() or len(text) > TEXT_MAX:
            raise Refused(400, f'a message is {{"text": 1 to {TEXT_MAX} characters}}')
        with self._lock:
            self._last_id += 1
            message = {"id": self._last_id, "user": member.id, "name": member.name, "text": text,
                       "at": int(self.clock())}
        try:
            self.pusher.trigger(member.channel, "message", message)
        except (PusherError, requests.RequestException) as exc:
            raise Refused(502, f"chloed refused the message: {exc}") from None
        return message


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Chloe chat, on pusher-js</title>
<style>
body { font: 16px/1.5 system-ui, sans-serif; margin: 2em auto; max-width: 52em; padding: 0 1em; }
#chat { display: grid; grid-template-columns: 1fr 12em; gap: 1em; }
#chat[hidden], #join[hidden] { display: none; }
ul { list-style: none; padding: 0; margin: 0; }
#messages li { padding: .15em 0; border-bottom: 1px solid #eee; }
.name { font-weight: 600; } .time { color: #999; font-size: .8em; margin-right: .5em; }
.notice { color: #777; font-style: italic; } .you { color: #06c; }
#status, #typing { color: #666; } #typing { min-height: 1.5em; margin: .25em 0; } .error { color: #b00; }
</style>
<script src="/pusher.min.js"></script>
</head>
<body>
<h1>Chloe chat, on pusher-js</h1>
<p id="status">pick a name and a room</p>
<form id="join">
  <input id="name" placeholder="your name" maxlength="40" autocomplete="off" required autofocus>
  <input id="room" value="lobby" placeholder="room" pattern="[A-Za-z0-9_\\-]{1,64}" required>
  <button>Join</button>
</form>
<div id="chat" hidden>
  <section>
    <h2 id="room-title"></h2>
    <ul id="messages"></ul>
    <p id="typing" aria-live="polite"></p>
    <form id="say"><input id="text" maxlength="2000" autocomplete="off" placeholder="say something">
    <button>Send</button></form>
  </section>
  <aside><h2>Here</h2><ul id="members"></ul></aside>
</div>
<ul id="errors"></ul>
<script>
(function () {
  'use strict';
  var $ = function (id) { return document.getElementById(id); };
  var KEY = __KEY__, WS_HOST = __HOST__, WS_PORT = __PORT__;
  var TYPING_EVERY = 1000, TYPING_SHOWN = 3000;  // ms
  var me = null;          // {token, user: {id, name}, channel} from POST /join
  var channel = null;     // pusher-js's presence channel of the room
  var typers = {};        // user id -> the timer that stops showing them
  var lastTyping = 0;

  // Everything from users goes into the page as text, never as HTML.
  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function problem(text) { $('errors').appendChild(el('li', 'error', text)); }
  function notice(text) { $('messages').appendChild(el('li', 'notice', text)); }
  function nameOf(id) {
    var member = channel && channel.members.get(id);
    return member && member.info && typeof member.info.name === 'string' ? member.info.name : '?';
  }

  function renderMembers() {
    var ul = $('members'), here = [];
    channel.members.each(function (member) { here.push(member); });
    here.sort(function (a, b) { return nameOf(a.id).localeCompare(nameOf(b.id)) || a.id.localeCompare(b.id); });
    ul.textContent = '';
    here.forEach(function (member) {
      var li = el('li', member.id === me.user.id ? 'you' : '', nameOf(member.id));
      li.dataset.id = member.id;
      ul.appendChild(li);
    });
  }

  function renderTyping() {
    var names = Object.keys(typers).map(nameOf);
    $('typing').textContent = !names.length ? '' :
      names.join(', ') + (names.length === 1 ? ' is typing…' : ' are typing…');
  }
  function typing(id) {
    clearTimeout(typers[id]);
    typers[id] = setTimeout(function () { delete typers[id]; renderTyping(); }, TYPING_SHOWN);
    renderTyping();
  }
  function stoppedTyping(id) {
    if (!(id in typers)) return;
    clearTimeout(typers[id]);
    delete typers[id];
    renderTyping();
  }

  function show(message) {
    var li = el('li');
    li.dataset.id = message.id;
    li.appendChild(el('span', 'time', new Date(message.at * 1000).toLocaleTimeString()));
    li.appendChild(el('span', 'name' + (message.user === me.user.id ? ' you' : ''), String(message.name)));
    li.appendChild(document.createTextNode(': '));
    li.appendChild(el('span', 'text', String(message.text)));
    $('messages').appendChild(li);
  }

  function enter(answer) {
    me = answer;
    $('room-title').textContent = me.channel.replace(/^presence-room-/, '') + ' — as ' + me.user.name;
    $('join').hidden = true; $('chat').hidden = false;
    var pusher = window.pusher = new Pusher(KEY, {
      wsHost: WS_HOST, wsPort: WS_PORT, forceTLS: false,
      enabledTransports: ['ws', 'wss'],   // Chloe serves no SockJS or xhr fallbacks
      cluster: 'mt1',                     // pusher-js wants one; chloed ignores it
      channelAuthorization: {endpoint: '/pusher/auth', headers: {Authorization: 'Bearer ' + me.token}}
    });
    pusher.connection.bind('state_change', function (states) {
      $('status').textContent = states.current === 'connected'
        ? 'connected, socket ' + pusher.connection.socket_id : states.current + '…';
    });
    pusher.connection.bind('error', function (e) {
      // chloed's pusher:error frames: {type: 'PusherError', data: {code, message}}
      if (e && e.type === 'PusherError' && e.data) problem('pusher: ' + e.data.code + ': ' + e.data.message);
    });
    channel = pusher.subscribe(me.channel);
    channel.bind('pusher:subscription_succeeded', function () { renderMembers(); $('text').focus(); });
    channel.bind('pusher:subscription_error', function (e) {
      problem('cannot enter the room: ' + (e.error || ('status ' + e.status)));
    });
    channel.bind('pusher:member_added', function (member) {
      renderMembers(); notice(nameOf(member.id) + ' joined');
    });
    channel.bind('pusher:member_removed', function (member) {
      stoppedTyping(member.id);
      renderMembers();
      notice((member.info && member.info.name || '?') + ' left');
    });
    channel.bind('message', function (message) { stoppedTyping(message.user); show(message); });
    // chloed puts the sender's user_id on a client event of a presence channel.
    channel.bind('client-typing', function (data, metadata) {
      if (metadata && metadata.user_id && metadata.user_id !== me.user.id) typing(metadata.user_id);
    });
  }

  function post(path, body) {
    var headers = {'Content-Type': 'application/json'};
    if (me) headers.Authorization = 'Bearer ' + me.token;
    return fetch(path, {method: 'POST', headers: headers, body: JSON.stringify(body)}).then(function (response) {
      return response.json().then(function (answer) {
        if (!response.ok) throw new Error(answer.error || ('status ' + response.status));
        return answer;
      });
    });
  }

  $('join').onsubmit = function (event) {
    event.preventDefault();
    post('/join', {name: $('name').value, room: $('room').value}).then(enter, function (e) {
      problem('cannot join: ' + (e.message || e));
    });
  };
  $('text').addEventListener('input', function () {
    var now = Date.now();
    if (!channel || !channel.subscribed || !$('text').value || now - lastTyping < TYPING_EVERY) return;
    lastTyping = now;
    channel.trigger('client-typing', {});
  });
  $('say').onsubmit = function (event) {
    event.preventDefault();
    var text = $('text').value;
    if (!text.trim() || !me) return;
    $('text').value = '';
    lastTyping = 0;
    post('/messages', {text: text}).then(null, function (e) { problem('not sent: ' + (e.message || e)); });
  };
})();
</script>
</body>
</html>
"""


def render_page(chloe_url: str, key: str) -> bytes:
    """The page, connecting pusher-js to chloed at ``chloe_url`` with ``key``."""
    parts = urlsplit(chloe_url)
    loopback = parts.hostname in ("127.0.0.1", "localhost")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    page = (PAGE.replace("__KEY__", json.dumps(key))
            .replace("__HOST__", "location.hostname" if loopback else json.dumps(parts.hostname))
            .replace("__PORT__", str(port)))
    return page.encode("utf-8")


def make_handler(chat: Chat, page: bytes, library: bytes) -> type[BaseHTTPRequestHandler]:
    class ChatHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, status: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, value: Any) -> None:
            self._answer(status, json.dumps(value).encode("utf-8"))

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/":
                self._answer(200, page, "text/html; charset=utf-8")
            elif path == "/pusher.min.js":
                self._answer(200, library, "application/javascript; charset=utf-8")
            else:
                self._json(404, {"error": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > BODY_MAX:
                self.close_connection = True
                self._json(413, {"error": "too large"})
                return
            body = self.rfile.read(length)
            authorization = self.headers.get("Authorization")
            try:
                path = urlsplit(self.path).path
                if path == "/join":
                    request = _json_body(body)
                    if not isinstance(request, dict):
                        raise Refused(400, 'expected {"name", "room"}')
                    self._json(200, chat.join(request.get("name"), request.get("room")))
                elif path == "/pusher/auth":
                    # pusher-js posts a form: socket_id, channel_name.
                    form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
                    self._json(200, chat.authorize(authorization, form))
                elif path == "/messages":
                    self._json(200, chat.say(authorization, _json_body(body)))
                else:
                    self._json(404, {"error": "not found"})
            except Refused as exc:
                self._json(exc.status, {"error": str(exc)})

        def log_message(self, format: str, *args: object) -> None:
            sys.stderr.write("pusher_chat: " + format % args + "\n")

    return ChatHandler


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise Refused(400, "the body is not JSON") from None


def make_server(port: int, chloe_url: str, config: Path = CONFIG, library: Path = PUSHER_JS,
                host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """The app on ``host:port``, as chloed's config's first Pusher app,
    publishing through the chloed at ``chloe_url``."""
    app = pusher_app(config)
    chat = Chat.for_chloed(chloe_url, app)
    handler = make_handler(chat, render_page(chloe_url, app["key"]), pusher_js(library))
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve(port: int, chloe_url: str, config: Path = CONFIG, library: Path = PUSHER_JS,
          host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Start the app in a thread; returns the server (``.server_port``)."""
    server = make_server(port, chloe_url, config, library, host)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4567)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--chloe", default="http://127.0.0.1:8901", help="chloed's base URL")
    parser.add_argument("--config", type=Path, default=CONFIG,
                        help="chloed's TOML, whose first [[pusher.apps]] is this app (default: %(default)s)")
    parser.add_argument("--pusher-js", type=Path, default=PUSHER_JS, help="pusher.min.js (default: %(default)s)")
    args = parser.parse_args()
    try:
        server = make_server(args.port, args.chloe, args.config, args.pusher_js, args.host)
    except (NotSetUp, OSError) as exc:
        parser.error(str(exc))
    print(f"pusher chat on http://localhost:{args.port}/ (chloed at {args.chloe})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
