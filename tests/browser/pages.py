"""A static web server for test pages, standing in for the app that
serves the page a browser loads."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve_static(routes: dict[str, tuple[str, bytes]], default: str = "/") -> ThreadingHTTPServer:
    """Serve ``routes`` (path → content type, body) on a free 127.0.0.1
    port; unknown paths get ``default``'s entry. ``.server_port`` tells."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ctype, body = routes.get(self.path.split("?")[0], routes[default])
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
