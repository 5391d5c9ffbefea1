"""A static web server for test pages, standing in for the app that
serves the page a browser loads."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Mapping, Union
from urllib.parse import parse_qs, urlsplit

#: What a path serves: (content type, body), or a function of the query
#: giving them (an app's endpoint: a token it mints, say).
Route = Union[tuple[str, bytes], Callable[[dict[str, list[str]]], tuple[str, bytes]]]


def serve_static(routes: Mapping[str, Route], default: str = "/") -> ThreadingHTTPServer:
    """Serve ``routes`` (path → content type, body) on a free 127.0.0.1
    port; unknown paths get ``default``'s entry. ``.server_port`` tells."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            route = routes.get(url.path, routes[default])
            ctype, body = route(parse_qs(url.query)) if callable(route) else route
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            if callable(route):
                self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
