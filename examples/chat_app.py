"""A chat on Chloe: rooms, names, who is here, history on join, a staff room.

The seeds' two chats (a MochiWeb comet room, an SSE + Redis room) with what
their authors listed as missing: several rooms, users joining and leaving,
history, and a room only some may read. The app never holds a socket to a
browser; standard library plus PyJWT (which chloed needs anyway).

- ``GET /`` serves the page: pick a name and a room.
- ``POST /token`` (``{"name", "room"}``) mints the browser's channel token, a
  JWT signed with the shared secret: ``channels`` lists
  ``presence-room-<room>``, and ``private-staff`` for the names given with
  ``--staff``; ``user`` is ``{"id": <random>, "info": {"name": …}}``, which is
  what chloed shows as a member of the room and hands back with every message
  the browser sends. The typed name stands in for your login: a real app
  mints tokens from its own session.
- The page subscribes to its channels with that token; chloed refuses a
  channel the token does not list (``forbidden``) and tells the room's other
  members when someone joins or, ``session_grace`` after their last page went
  away, leaves.
- ``GET /history?channel=C`` with ``Authorization: Bearer <token>`` answers
  the last messages of a channel the token opens. The page asks once chloed
  confirmed the subscription, so a message is either in that history or
  arrives live (the page drops the ones it has by ``seq``).
- A browser's ``send`` with a ``channel`` is relayed by chloed to ``POST
  /updates``, signed; the app checks the signature (403 otherwise), that the
  sender's token opened that channel, and the text, stamps the sender's name,
  keeps it in the room's history and publishes it through chloed's ``/send``.
  Keep chloed's ``client_publish`` off (the default): with it on, chloed
  would also publish what a browser sends, as sent, to channels its token
  lists, and a page could put any name on its words.

Run chloed with ``--app-url http://127.0.0.1:4567/updates`` and the same
secret (``make chat`` does both)::

    CHLOE_SECRET=s3cret python examples/chat_app.py --port 4567 --chloe http://localhost:8901 --staff alice
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import parse_qs, urlsplit

import jwt

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from chloed.client import SendError, SignatureError, send, verify  # noqa: E402

ROOM_PREFIX = "presence-room-"
STAFF_CHANNEL = "private-staff"
ROOM_RE = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)
NAME_MAX = 40
TEXT_MAX = 2000
BODY_MAX = 64 * 1024
DELIVERIES_KEPT = 10000


class Refused(Exception):
    """A request the app turns down: ``status`` and a line saying why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Member:
    """Someone the app minted a token for: their name and what it opens."""

    name: str
    channels: frozenset[str]


@dataclass
class Chat:
    """The chat's state and rules, without HTTP.

    :param chloe_url: chloed's base URL, for ``/send``.
    :param secret: the shared secret (a list while keys rotate: the first
        signs, any verifies).
    :param staff: names whose tokens also open ``private-staff``.
    :param publish: ``publish(channel, data)``; chloed's ``/send`` by default.
    """

    chloe_url: str
    secret: str | list[str]
    staff: frozenset[str] = frozenset()
    history_size: int = 50
    token_ttl: float = 12 * 3600
    clock: Callable[[], float] = time.time
    publish: Callable[[str, Any], Any] | None = None
    members: dict[str, Member] = field(default_factory=dict)
    _history: dict[str, deque[dict[str, Any]]] = field(default_factory=dict, init=False)
    _deliveries: "OrderedDict[str, None]" = field(default_factory=OrderedDict, init=False)
    _last_seq: int = field(default=0, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    @property
    def _keys(self) -> list[str]:
        return [self.secret] if isinstance(self.secret, str) else list(self.secret)

    # -- tokens -------------------------------------------------------------

    def mint(self, name: Any, room: Any) -> dict[str, Any]:
        """A token for ``name`` in ``room``, and what the page needs with it.

        :raises Refused: 400 for a bad name or room.
        """
        if not isinstance(name, str) or not isinstance(room, str):
            raise Refused(400, "name and room are required")
        name = " ".join(name.split())
        if not name or len(name) > NAME_MAX or not name.isprintable():
            raise Refused(400, f"a name is 1 to {NAME_MAX} printable characters")
        if not ROOM_RE.fullmatch(room):
            raise Refused(400, "a room name is 1 to 64 letters, digits, '-' or '_'")
        channel = ROOM_PREFIX + room
        channels = [channel] + ([STAFF_CHANNEL] if name in self.staff else [])
        user = {"id": secrets.token_hex(16), "info": {"name": name}}
        now = self.clock()
        claims = {"channels": channels, "user": user, "iat": int(now), "exp": int(now + self.token_ttl)}
        token = jwt.encode(claims, self._keys[0], algorithm="HS256")
        with self._lock:
            self.members[user["id"]] = Member(name, frozenset(channels))
        return {"token": token, "user": user, "room": channel, "staff": STAFF_CHANNEL}

    def _claims(self, token: str) -> dict[str, Any]:
        for key in self._keys:
            try:
                return jwt.decode(token, key, algorithms=["HS256"], options={"require": ["exp"]})
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidTokenError as exc:
                raise Refused(403, f"bad token: {exc}") from None
        raise Refused(403, "bad token: the signature does not match")

    # -- history ------------------------------------------------------------

    def history(self, authorization: str | None, channel: str) -> list[dict[str, Any]]:
        """The last messages of ``channel``, for the bearer of a token that
        opens it.

        :raises Refused: 401 without a token, 403 when it does not open it.
        """
        if not authorization or not authorization.startswith("Bearer "):
            raise Refused(401, "Authorization: Bearer <channel token> is required")
        allowed = self._claims(authorization[len("Bearer "):].strip()).get("channels")
        if not isinstance(allowed, list) or channel not in allowed:
            raise Refused(403, f"the token does not open {channel}")
        with self._lock:
            return list(self._history.get(channel, ()))

    # -- what chloed relays -------------------------------------------------

    def relayed(self, headers: Mapping[str, str], body: bytes) -> str:
        """Handle one POST from chloed: check it, publish the message.

        :returns: a line for the answer's body (the status is 200).
        :raises Refused: 403 for a bad signature or a sender not allowed in
            the channel, 400 for a message that is not a chat message, 502
            when chloed refused the publish (chloed then tries again).
        """
        try:
            verify(self._keys, headers, body)
        except SignatureError as exc:
            raise Refused(403, str(exc)) from None
        try:
            event = json.loads(body)
        except ValueError:
            raise Refused(400, "the body is not JSON") from None
        if not isinstance(event, dict) or event.get("type") != "message":
            return "ignored"
        delivery = _header(headers, "X-Chloe-Delivery")
        with self._lock:
            if delivery and delivery in self._deliveries:
                return "already published"
        channel = event.get("channel")
        user = event.get("user")
        member = self.members.get(user.get("id")) if isinstance(user, dict) else None
        if member is None:
            raise Refused(403, "unknown user: join again")
        if channel not in member.channels:
            raise Refused(403, f"{member.name} may not write to {channel}")
        data = event.get("data")
        text = data.get("text") if isinstance(data, dict) else None
        if not isinstance(text, str) or not text.strip() or len(text) > TEXT_MAX:
            raise Refused(400, f'a message is {{"text": 1 to {TEXT_MAX} characters}}')
        with self._lock:
            # Strictly increasing across rooms and across restarts of the app.
            self._last_seq = max(self._last_seq + 1, int(self.clock() * 1_000_000))
            message = {"seq": self._last_seq, "name": member.name, "user": user["id"],
                       "text": text, "at": int(self.clock())}
            self._history.setdefault(channel, deque(maxlen=self.history_size)).append(message)
        try:
            (self.publish or self._send)(channel, message)
        except (SendError, OSError) as exc:
            raise Refused(502, f"chloed refused the publish: {exc}") from None
        if delivery:
            with self._lock:
                self._deliveries[delivery] = None
                while len(self._deliveries) > DELIVERIES_KEPT:
                    self._deliveries.popitem(last=False)
        return "published"

    def _send(self, channel: str, data: Any) -> Any:
        return send(self.chloe_url, self._keys[0], data, channel=channel)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Chloe chat</title>
<style>
body { font: 16px/1.5 system-ui, sans-serif; margin: 2em auto; max-width: 52em; padding: 0 1em; }
#chat { display: grid; grid-template-columns: 1fr 12em; gap: 1em; }
#chat[hidden], #join[hidden] { display: none; }
ul { list-style: none; padding: 0; margin: 0; }
#messages li, #staff-messages li { padding: .15em 0; border-bottom: 1px solid #eee; }
.name { font-weight: 600; } .time { color: #999; font-size: .8em; margin-right: .5em; }
.notice { color: #777; font-style: italic; } .you { color: #06c; }
#status, #staff-status { color: #666; } .error { color: #b00; }
section { margin-bottom: 1em; }
</style>
<script src="__CHLOE__/chloe.js"></script>
</head>
<body>
<h1>Chloe chat</h1>
<p id="status">connecting…</p>
<form id="join">
  <input id="name" placeholder="your name" maxlength="40" autocomplete="off" required autofocus>
  <input id="room" value="lobby" placeholder="room" pattern="[A-Za-z0-9_\\-]{1,64}" required>
  <button>Join</button>
</form>
<div id="chat" hidden>
  <div>
    <section>
      <h2><span id="room-title"></span> <button id="leave" type="button">Leave</button></h2>
      <ul id="messages"></ul>
      <form id="say"><input id="text" maxlength="2000" autocomplete="off" placeholder="say something">
      <button>Send</button></form>
    </section>
    <section>
      <h2>Staff room</h2>
      <p id="staff-status">…</p>
      <ul id="staff-messages"></ul>
      <form id="staff-say" hidden><input id="staff-text" maxlength="2000" autocomplete="off"
        placeholder="to staff only"> <button>Send</button></form>
    </section>
  </div>
  <aside><h2>Here</h2><ul id="members"></ul></aside>
</div>
<ul id="errors"></ul>
<script>
(function () {
  'use strict';
  var $ = function (id) { return document.getElementById(id); };
  // ?transport=sse&transport=longpoll picks chloe.js's transports, in order.
  var wanted = new URLSearchParams(location.search).getAll('transport');
  var chloe = new Chloe({host: __HOST__, port: __PORT__, transports: wanted.length ? wanted : undefined});
  window.chloe = chloe;
  var me = null;          // {token, user, room, staff} from POST /token
  var members = {};       // user id -> name, in the room
  var seen = {};          // channel -> {seq: true}

  // Everything from users goes into the page as text, never as HTML.
  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function problem(text) { $('errors').appendChild(el('li', 'error', text)); }
  function list(channel) { return channel === me.staff ? $('staff-messages') : $('messages'); }

  // A chat message, in seq order, once (history and live may overlap).
  function show(channel, message) {
    if (!message || typeof message.seq !== 'number') return;
    var marks = seen[channel] = seen[channel] || {};
    if (marks[message.seq]) return;
    marks[message.seq] = true;
    var li = el('li');
    li.dataset.seq = message.seq;
    li.appendChild(el('span', 'time', new Date(message.at * 1000).toLocaleTimeString()));
    li.appendChild(el('span', 'name' + (message.user === me.user.id ? ' you' : ''), String(message.name)));
    li.appendChild(document.createTextNode(': '));
    li.appendChild(el('span', 'text', String(message.text)));
    var ul = list(channel), after = null;
    for (var i = ul.children.length - 1; i >= 0; i--) {
      var seq = Number(ul.children[i].dataset.seq);
      if (!isNaN(seq) && seq < message.seq) break;
      if (!isNaN(seq)) after = ul.children[i];
    }
    ul.insertBefore(li, after);
  }
  function notice(text) {
    var li = el('li', 'notice', text);
    li.dataset.seq = Date.now() * 1000;   // the app's seq is microseconds too
    $('messages').appendChild(li);
  }

  function renderMembers() {
    var ul = $('members'), ids = Object.keys(members);
    ids.sort(function (a, b) { return members[a].localeCompare(members[b]) || a.localeCompare(b); });
    ul.textContent = '';
    ids.forEach(function (id) {
      var li = el('li', id === me.user.id ? 'you' : '', members[id]);
      li.dataset.id = id;
      ul.appendChild(li);
    });
  }
  function memberName(member) {
    return member && member.info && typeof member.info.name === 'string' ? member.info.name : '?';
  }

  function fetchHistory(channel) {
    fetch('/history?channel=' + encodeURIComponent(channel), {
      headers: {Authorization: 'Bearer ' + me.token}, cache: 'no-store'
    }).then(function (response) {
      if (!response.ok) throw new Error('history: ' + response.status);
      return response.json();
    }).then(function (answer) {
      if (me && (channel === me.room || channel === me.staff)) {
        answer.messages.forEach(function (message) { show(channel, message); });
      }
    }).then(null, function (e) { problem(String(e.message || e)); });
  }

  // chloed answers each subscribe with `subscribed` (with the members on a
  // presence channel), again after every reconnect; then live messages
  // flow, so history asked for from here on leaves no gap.
  function onsubscribed(frame) {
    if (!me) return;
    if (frame.channel === me.room) {
      members = {};
      (frame.members || []).forEach(function (m) { members[m.id] = memberName(m); });
      renderMembers();
      fetchHistory(frame.channel);
    } else if (frame.channel === me.staff) {
      $('staff-status').textContent = 'you are in the staff room';
      $('staff-say').hidden = false;
      fetchHistory(frame.channel);
    }
  }
  function onpresence(frame) {
    if (!me || frame.channel !== me.room || !frame.member) return;
    var id = String(frame.member.id), name = memberName(frame.member);
    if (frame.event === 'join') { members[id] = name; notice(name + ' joined'); }
    else if (frame.event === 'leave') { delete members[id]; notice(name + ' left'); }
    renderMembers();
  }
  chloe.onsubscribed(onsubscribed);
  chloe.onpresence(onpresence);

  chloe.onerror(function (e) {
    if (me && e.channel === me.staff && e.code === 'forbidden') {
      $('staff-status').textContent = 'refused: ' + e.code + ': ' + e.message;
      $('staff-status').className = 'error';
      return;
    }
    problem('error: ' + e.code + ': ' + e.message);
  });
  chloe.onclose(function () { $('status').textContent = 'reconnecting…'; });
  chloe.connect(function () {
    $('status').textContent = 'connected over ' + chloe.transport;
  });

  function enter(answer) {
    if (me) leave();
    me = answer;
    members = {}; seen = {};
    $('messages').textContent = ''; $('staff-messages').textContent = ''; $('members').textContent = '';
    $('staff-status').textContent = 'asking…'; $('staff-status').className = '';
    $('staff-say').hidden = true;
    $('room-title').textContent = me.room.replace(/^presence-room-/, '') + ' — as ' + me.user.info.name;
    $('join').hidden = true; $('chat').hidden = false;
    chloe.subscribe(me.room, function (data) { show(me.room, data); }, {token: me.token});
    chloe.subscribe(me.staff, function (data) { show(me.staff, data); }, {token: me.token});
    $('text').focus();
  }
  function leave() {
    chloe.unsubscribe(me.room); chloe.unsubscribe(me.staff);
    me = null;
    try { sessionStorage.removeItem('chat'); } catch (e) { /* no storage */ }
    $('chat').hidden = true; $('join').hidden = false;
  }
  function join(name, room) {
    return fetch('/token', {
      method: 'POST', headers: {'Content-Type': 'application/json'},
      body: JSON.stringify({name: name, room: room})
    }).then(function (response) {
      return response.json().then(function (answer) {
        if (!response.ok) throw new Error(answer.error || ('status ' + response.status));
        return answer;
      });
    }).then(function (answer) {
      enter(answer);
      // A reload of this tab comes back as the same member, so the room
      // sees no leave and join (chloed keeps a member for session_grace).
      try { sessionStorage.setItem('chat', JSON.stringify(answer)); } catch (e) { /* no storage */ }
    }).then(null, function (e) { problem('cannot join: ' + (e.message || e)); });
  }
  function expiry(token) {
    try {
      var part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      return JSON.parse(atob(part)).exp * 1000;
    } catch (e) { return 0; }
  }
  (function () {
    var stored = null;
    try { stored = JSON.parse(sessionStorage.getItem('chat')); } catch (e) { stored = null; }
    if (stored && stored.token && expiry(stored.token) > Date.now() + 60000) enter(stored);
  })();
  $('leave').onclick = leave;
  $('join').onsubmit = function (event) {
    event.preventDefault();
    join($('name').value, $('room').value);
  };

  function sayer(form, input, channel) {
    $(form).onsubmit = function (event) {
      event.preventDefault();
      var text = $(input).value;
      if (!text.trim() || !me) return;
      $(input).value = '';
      chloe.send({text: text}, {channel: channel(), ack: function (error) {
        if (error) problem('not sent: ' + error.code + ': ' + error.message);
      }});
    };
  }
  sayer('say', 'text', function () { return me.room; });
  sayer('staff-say', 'staff-text', function () { return me.staff; });
})();
</script>
</body>
</html>
"""


def render_page(chloe_url: str) -> bytes:
    """The page, loading chloe.js from chloed and connecting to it."""
    parts = urlsplit(chloe_url)
    loopback = parts.hostname in ("127.0.0.1", "localhost")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    page = (PAGE.replace("__CHLOE__", chloe_url.rstrip("/"))
            .replace("__HOST__", "location.hostname" if loopback else json.dumps(parts.hostname))
            .replace("__PORT__", str(port)))
    return page.encode("utf-8")


def make_handler(chat: Chat) -> type[BaseHTTPRequestHandler]:
    page = render_page(chat.chloe_url)

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
            url = urlsplit(self.path)
            try:
                if url.path == "/":
                    self._answer(200, page, "text/html; charset=utf-8")
                elif url.path == "/history":
                    channel = parse_qs(url.query).get("channel", [""])[0]
                    messages = chat.history(self.headers.get("Authorization"), channel)
                    self._json(200, {"channel": channel, "messages": messages})
                else:
                    self._json(404, {"error": "not found"})
            except Refused as exc:
                self._json(exc.status, {"error": str(exc)})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > BODY_MAX:
                self.close_connection = True
                self._json(413, {"error": "too large"})
                return
            body = self.rfile.read(length)
            try:
                if self.path == "/token":
                    try:
                        request = json.loads(body)
                    except ValueError:
                        raise Refused(400, "the body is not JSON") from None
                    if not isinstance(request, dict):
                        raise Refused(400, 'expected {"name", "room"}')
                    self._json(200, chat.mint(request.get("name"), request.get("room")))
                elif self.path == "/updates":
                    self._answer(200, chat.relayed(self.headers, body).encode(), "text/plain")
                else:
                    self._json(404, {"error": "not found"})
            except Refused as exc:
                self._json(exc.status, {"error": str(exc)})

        def log_message(self, format: str, *args: object) -> None:
            sys.stderr.write("chat_app: " + format % args + "\n")

    return ChatHandler


def serve(port: int, chat: Chat, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Start the app in a thread; returns the server (``.server_port``)."""
    server = ThreadingHTTPServer((host, port), make_handler(chat))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


def _names(text: str) -> Iterable[str]:
    return (" ".join(name.split()) for name in text.split(",") if name.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4567)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--chloe", default="http://localhost:8901", help="chloed's base URL")
    parser.add_argument("--secret", default=os.environ.get("CHLOE_SECRET"),
                        help="the shared secret (default: $CHLOE_SECRET)")
    parser.add_argument("--staff", default="alice",
                        help="comma-separated names whose tokens open private-staff (default: alice)")
    args = parser.parse_args()
    if not args.secret:
        parser.error("a secret is required (--secret or CHLOE_SECRET): it signs the channel tokens")
    chat = Chat(args.chloe, args.secret, staff=frozenset(_names(args.staff)))
    server = ThreadingHTTPServer((args.host, args.port), make_handler(chat))
    print(f"chat app on http://localhost:{args.port}/ (chloed at {args.chloe}; staff: {args.staff})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
