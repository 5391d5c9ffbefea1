"""The app side of a Pusher app, for the browser tests of chloed's Pusher
layer: a small web server (stdlib, in a thread) that serves the pages
running the real pusher-js (and Laravel Echo) from ``tests/js/node_modules``
and answers the auth requests pusher-js makes, signed by the official
``pusher`` Python library, which the tests also use to trigger events
through chloed's HTTP API.

Who a page is comes from its URL (``?user=alice``): the page puts it in the
auth endpoints' URLs, and the app answers for that user. The page and the
endpoints share one ``http://127.0.0.1`` origin, as an app's would.

Channels the app refuses: any with ``forbidden`` in its name (403, as an app
refuses a user), and it signs any with ``forged`` in its name with a secret
that is not the app's (what chloed must refuse)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pusher

JS_DIR = Path(__file__).resolve().parent.parent / "js"
PUSHER_JS = JS_DIR / "node_modules" / "pusher-js" / "dist" / "web" / "pusher.js"
# Echo's iife build defines the global ``Echo``: the module, whose
# ``default`` is the Echo class.
ECHO_JS = JS_DIR / "node_modules" / "laravel-echo" / "dist" / "echo.iife.js"

APP_ID = "4242"  # the pusher library takes digits only for an app id
APP_KEY = "app-key"
APP_SECRET = "app-secret"
NOT_THE_SECRET = "not-the-app-secret"


def chloed_config(path: Path, **app: Any) -> str:
    """Write a chloe.toml serving one Pusher app (client events on; ``app``
    adds or overrides ``[[pusher.apps]]`` keys); returns its path."""
    entry: dict[str, Any] = {"id": APP_ID, "key": APP_KEY, "secret": APP_SECRET, "enable_client_messages": True}
    entry.update(app)
    lines = ["[pusher]", "timestamp_window = 600", "", "[[pusher.apps]]"]
    lines += [f"{name} = {json.dumps(value)}" for name, value in entry.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def js_library(path: Path) -> bytes:
    """A JS library from ``tests/js/node_modules``; missing, a failure
    that says how to install it (never a skip)."""
    if not path.is_file():
        raise RuntimeError(
            f"{path} is missing: the browser tests of the Pusher layer need the JS libraries "
            f"tests/js/package-lock.json pins; run `make setup` (npm ci in {JS_DIR})"
        )
    return path.read_bytes()


# The page: pusher-js with the documented options only. ``got`` records
# every event of every channel subscribed with ``sub(name)``, in order
# (a presence channel's ``pusher:subscription_succeeded`` as a snapshot of
# its members); ``states`` the connection's states, ``socketIds`` each
# connection's socket id, ``errors`` what the connection's ``error`` said.
PUSHER_PAGE = Template("""<!doctype html><html><head><meta charset="utf-8"><title>pusher-js</title>
<script src="/pusher.js"></script></head><body><script>
var query = new URLSearchParams(location.search);
var user = encodeURIComponent(query.get('user') || 'anonymous');
window.got = []; window.states = []; window.socketIds = []; window.errors = []; window.signins = [];
var pusher = window.pusher = new Pusher($key, {
  wsHost: '127.0.0.1', wsPort: Number(query.get('port') || $port), forceTLS: false,
  enabledTransports: ['ws'], disableStats: true, cluster: 'mt1',
  channelAuthorization: {endpoint: '/pusher/auth?user=' + user},
  userAuthentication: {endpoint: '/pusher/user-auth?user=' + user}
});
pusher.connection.bind('state_change', function (s) { window.states.push(s.current); });
pusher.connection.bind('connected', function () { window.socketIds.push(pusher.connection.socket_id); });
pusher.connection.bind('error', function (e) { window.errors.push(JSON.parse(JSON.stringify(e))); });
pusher.user.bind('pusher:signin_error', function (e) { window.signins.push(['error', e]); });
function snapshot(channel, event, data) {
  if (event === 'pusher:subscription_succeeded' && channel.members) {
    var members = channel.members;
    return {members: JSON.parse(JSON.stringify(members.members)), count: members.count, me: members.me};
  }
  return data === undefined ? null : JSON.parse(JSON.stringify(data));
}
window.sub = function (name) {
  var channel = pusher.subscribe(name);
  channel.bind_global(function (event, data) {
    window.got.push({channel: name, event: event, data: snapshot(channel, event, data)});
  });
  return channel;
};
window.heard = function (name, event) {
  return window.got.filter(function (g) { return g.channel === name && g.event === event; });
};
</script></body></html>""")

# The page with Laravel Echo on top of pusher-js (Echo hands its options to
# pusher-js). Tests bind with Echo's own calls and push into ``got``.
ECHO_PAGE = Template("""<!doctype html><html><head><meta charset="utf-8"><title>Laravel Echo</title>
<script src="/pusher.js"></script><script src="/echo.js"></script></head><body><script>
var query = new URLSearchParams(location.search);
var user = encodeURIComponent(query.get('user') || 'anonymous');
window.got = [];
window.echo = new Echo.default({
  broadcaster: 'pusher', key: $key, cluster: 'mt1',
  wsHost: '127.0.0.1', wsPort: Number(query.get('port') || $port), forceTLS: false,
  enabledTransports: ['ws'], disableStats: true,
  authEndpoint: '/broadcasting/auth?user=' + user
});
window.record = function (what) {
  return function (data) { window.got.push([what, data === undefined ? null : JSON.parse(JSON.stringify(data))]); };
};
</script></body></html>""")


class PusherApp:
    """The app: pages, libraries and auth endpoints on a free 127.0.0.1
    port; ``pusher`` is the official library's client of chloed's HTTP API
    at ``chloed_port``; ``ws_port`` is where pages connect by default."""

    def __init__(self, chloed_port: int, ws_port: int | None = None) -> None:
        self.pusher = pusher.Pusher(app_id=APP_ID, key=APP_KEY, secret=APP_SECRET,
                                    host="127.0.0.1", port=chloed_port, ssl=False)
        # Signs as the app would with the wrong secret: what chloed must refuse.
        self.forger = pusher.Pusher(app_id=APP_ID, key=APP_KEY, secret=NOT_THE_SECRET,
                                    host="127.0.0.1", port=chloed_port, ssl=False)
        self.auth_requests: list[tuple[str, dict[str, str]]] = []  # (path, form)
        self._lock = threading.Lock()
        ws_port = ws_port or chloed_port
        fill = {"key": json.dumps(APP_KEY), "port": ws_port}
        html = "text/html; charset=utf-8"
        js = "application/javascript"
        self._routes = {
            "/": (html, PUSHER_PAGE.substitute(fill).encode()),
            "/echo": (html, ECHO_PAGE.substitute(fill).encode()),
            "/pusher.js": (js, js_library(PUSHER_JS)),
            "/echo.js": (js, js_library(ECHO_JS)),
        }
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = app._routes.get(urlsplit(self.path).path)
                if route is None:
                    self._answer(404, "text/plain", b"not found")
                else:
                    self._answer(200, *route)

            def do_POST(self) -> None:
                url = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                form = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
                user = parse_qs(url.query).get("user", ["anonymous"])[0]
                with app._lock:
                    app.auth_requests.append((url.path, form))
                if url.path in ("/pusher/auth", "/broadcasting/auth"):
                    status, answer = app.authorize_channel(user, form)
                elif url.path in ("/pusher/user-auth", "/broadcasting/user-auth"):
                    status, answer = 200, app.pusher.authenticate_user(form["socket_id"], app.user_data(user))
                else:
                    status, answer = 404, {"error": "no such endpoint"}
                self._answer(status, "application/json", json.dumps(answer).encode())

            def _answer(self, status: int, ctype: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="pusher-app", daemon=True).start()

    @staticmethod
    def user_data(user: str) -> dict[str, Any]:
        """What the app says of a user: its id and info (``user_info``)."""
        return {"id": user, "user_info": {"name": user.title()}}

    def authorize_channel(self, user: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """The channel auth endpoint: status and JSON answer."""
        channel, socket_id = form["channel_name"], form["socket_id"]
        if "forbidden" in channel:
            return 403, {"error": f"{user} may not subscribe {channel}"}
        signer = self.forger if "forged" in channel else self.pusher
        custom = None
        if channel.startswith("presence-"):
            custom = {"user_id": user, "user_info": {"name": user.title()}}
        return 200, signer.authenticate(channel=channel, socket_id=socket_id, custom_data=custom)

    def auth_requests_for(self, path: str) -> list[dict[str, str]]:
        with self._lock:
            return [form for p, form in self.auth_requests if p == path]

    def url(self, path: str = "/", **query: Any) -> str:
        suffix = "?" + urlencode(query) if query else ""
        return f"http://127.0.0.1:{self.server.server_port}{path}{suffix}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
