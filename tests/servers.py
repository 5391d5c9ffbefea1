"""Real processes for integration tests: a chloed on a free loopback port,
and an app server that records (and checks) what chloed relays to it."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from chloed.client import SignatureError, verify

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
START_TIMEOUT = 20.0


def free_port() -> int:
    """A port nobody listens on right now, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Chloed:
    """``twistd -n chloe`` in a child process, on 127.0.0.1."""

    def __init__(self, *args: str, secret: str | None = "test-secret", env: dict[str, str] | None = None,
                 config: str | None = None, port: int | None = None, nofile: int | None = None) -> None:
        """:param nofile: the open-file limit (soft and hard) to run it under."""
        self.port = port or free_port()
        self.secret = secret
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        command = [TWISTD, "-n", "--pidfile=", "chloe", "--listen", f"tcp:{self.port}:interface=127.0.0.1"]
        if secret:
            command += ["--secret", secret]
        if config:
            command += ["--config", config]
        command += list(args)
        if nofile is not None:
            # A shell sets the limit, not preexec_fn: the test process has threads.
            command = ["sh", "-c", f'ulimit -n {nofile} && exec "$@"', "sh", *command]
        self.log_path = f"/tmp/chloed-test-{self.port}.log"
        self._log = open(self.log_path, "wb")
        environment = {k: v for k, v in os.environ.items() if k != "CHLOE_SECRET"}
        environment.update(env or {})
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=environment)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"chloed exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as response:
                    if response.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                time.sleep(0.05)  # start-up poll, not synchronisation of the test
        raise RuntimeError(f"chloed did not answer /health:\n{self.log()}")

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, auth: bool = True) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request; returns status, headers, body (no raising on 4xx)."""
        all_headers = dict(headers or {})
        if auth and self.secret:
            all_headers.setdefault("Authorization", "Bearer " + self.secret)
        req = urllib.request.Request(self.url + path, data=body, headers=all_headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def send(self, **fields: Any) -> tuple[int, Any]:
        """``POST /send`` with a JSON body; returns status and JSON answer."""
        status, _, body = self.request(
            "POST", "/send", json.dumps(fields).encode(), {"Content-Type": "application/json"}
        )
        return status, json.loads(body)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@dataclass
class Relayed:
    """One POST chloed made to the app."""

    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> Any:
        return json.loads(self.body)


@dataclass
class AppServer:
    """A real HTTP app server: checks chloed's signature, records each POST,
    answers with ``respond(relayed) -> status`` (200 by default)."""

    secret: str | None = "test-secret"
    respond: Callable[[Relayed], int] = lambda relayed: 200
    received: "queue.Queue[Relayed]" = field(default_factory=queue.Queue)
    bad_signatures: int = 0

    def start(self, port: int = 0) -> "AppServer":
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go in separate writes

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                relayed = Relayed(dict(self.headers), body)
                status = 200
                if app.secret:
                    try:
                        verify(app.secret, self.headers, body)
                    except SignatureError:
                        app.bad_signatures += 1
                        status = 403
                if status == 200:
                    app.received.put(relayed)
                    status = app.respond(relayed)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/updates"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def next(self, timeout: float = 10.0) -> Relayed:
        return self.received.get(timeout=timeout)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
