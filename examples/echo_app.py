"""The seed's echo demo, in Python, with nothing but the standard library.

An app server on :4567 that never holds a socket to a browser:

- ``GET /`` serves a page that loads ``chloe.js`` from chloed and connects;
- chloed POSTs every browser message to ``/updates`` (signed; checked with
  :func:`chloed.client.verify`), and the app echoes it to every browser with
  a POST to chloed's ``/send``;
- anything sent to the ``pumpkin`` channel shows on the page too::

    curl -H "Authorization: Bearer $CHLOE_SECRET" -d "channel=pumpkin&data=Trotter" http://localhost:8901/send

Run chloed with ``--app-url http://127.0.0.1:4567/updates`` and the same
secret (``make demo`` does both).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from chloed.client import SendError, SignatureError, send, verify  # noqa: E402

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Chloe echo demo</title>
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; margin: 2em auto; max-width: 40em; }}
#log {{ list-style: none; padding: 0; }} #log li {{ padding: .2em 0; border-bottom: 1px solid #eee; }}
.channel {{ color: #a50; font-weight: 600; }} #status {{ color: #666; }}
</style>
<script src="{chloe}/chloe.js"></script>
</head>
<body>
<h1>Chloe echo demo</h1>
<p id="status">connecting…</p>
<form id="form"><input id="text" autocomplete="off" placeholder="say something" autofocus>
<button>Send</button></form>
<ul id="log"></ul>
<script>
var log = document.getElementById('log');
function show(text, channel) {{
  var li = document.createElement('li');
  if (channel) {{
    var tag = document.createElement('span');
    tag.className = 'channel'; tag.textContent = channel + ': ';
    li.appendChild(tag);
  }}
  li.appendChild(document.createTextNode(typeof text === 'string' ? text : JSON.stringify(text)));
  log.appendChild(li);
}}
var chloe = new Chloe({{host: {host}, port: {port}}});
window.chloe = chloe;
chloe.onmessage(function (data) {{ show(data); }});
chloe.onerror(function (e) {{ show('error: ' + e.code + ': ' + e.message); }});
chloe.connect(function () {{
  document.getElementById('status').textContent = 'connected over ' + chloe.transport;
  chloe.subscribe('pumpkin', function (data, meta) {{ show(data, meta.channel); }});
}});
document.getElementById('form').onsubmit = function (event) {{
  event.preventDefault();
  var input = document.getElementById('text');
  if (input.value) chloe.send(input.value);
  input.value = '';
}};
</script>
</body>
</html>
"""


def make_handler(chloe_url: str, secret: str | None) -> type[BaseHTTPRequestHandler]:
    parts = urlsplit(chloe_url)

    class EchoHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/":
                self._answer(404, b"not found")
                return
            page = PAGE.format(
                chloe=chloe_url.rstrip("/"),
                host="location.hostname" if parts.hostname in ("127.0.0.1", "localhost") else json.dumps(parts.hostname),
                port=parts.port or (443 if parts.scheme == "https" else 80),
            )
            self._answer(200, page.encode("utf-8"), "text/html; charset=utf-8")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if self.path != "/updates":
                self._answer(404, b"not found")
                return
            if secret:
                try:
                    verify(secret, self.headers, body)
                except SignatureError as exc:
                    self._answer(403, str(exc).encode())
                    return
            event = json.loads(body)
            if event.get("type") == "message":
                try:
                    send(chloe_url, secret, event["data"])
                except (SendError, OSError) as exc:
                    self._answer(502, str(exc).encode())
                    return
            self._answer(200, b"ok")

        def log_message(self, format: str, *args: object) -> None:
            sys.stderr.write("echo_app: " + format % args + "\n")

    return EchoHandler


def serve(port: int, chloe_url: str, secret: str | None, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Start the app in a thread; returns the server (``.server_port``)."""
    server = ThreadingHTTPServer((host, port), make_handler(chloe_url, secret))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4567)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--chloe", default="http://localhost:8901", help="chloed's base URL")
    parser.add_argument("--secret", default=os.environ.get("CHLOE_SECRET"))
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), make_handler(args.chloe, args.secret))
    print(f"echo app on http://localhost:{args.port}/ (chloed at {args.chloe})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
