"""max_connections against the open-file limit, on a real chloed: under
1024 open files, with the default max_connections of 100000, browsers are
refused with 503 before the descriptors run out, and the app's API keeps
answering with every browser place taken."""

from __future__ import annotations

import json
import re
import resource
import socket

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.servers import Chloed
from tests.test_integration import TIMEOUT

NOFILE = 1024


class Stream:
    """An SSE stream on a bare socket: cheap enough to hold a thousand."""

    def __init__(self, server: Chloed, channel: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
        self.sock.sendall(f"GET /sse?channel={channel} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        self.seen = b""

    def read_until(self, marker: bytes) -> None:
        """Read until ``marker`` arrived; OSError when the server closed first."""
        while marker not in self.seen:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            self.seen += chunk

    @property
    def status(self) -> int:
        return int(self.seen.split(b" ", 2)[1])

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def own_files():
    """The test holds a thousand sockets too: room for them in its own limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * NOFILE if hard == resource.RLIM_INFINITY else min(hard, 4 * NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if max(soft, wanted) < 2 * NOFILE:
        pytest.skip(f"this process may open only {max(soft, wanted)} files")
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_browsers_are_refused_before_descriptors_run_out(own_files, chloed_factory, app_server):
    """Under 1024 open files, browsers get 503 before chloed runs out of
    descriptors; at the cap /send, /status and /health keep answering, and
    a publish reaches every connected browser."""
    server = chloed_factory("--app-url", app_server.url, nofile=NOFILE)
    streams: list[Stream] = []
    try:
        while True:
            stream = Stream(server, "crowd")
            try:
                stream.read_until(b"\r\n\r\n")
            except OSError as exc:
                stream.close()
                pytest.fail(f"browser {len(streams) + 1} got {exc!r}, not 503:\n{server.log()[-3000:]}")
            if stream.status == 503:
                stream.close()
                break
            assert stream.status == 200
            stream.read_until(b"event: subscribed")
            streams.append(stream)
            assert len(streams) < NOFILE, "never refused"

        cap = int(re.search(r"browsers are capped at (\d+)", server.log()).group(1))
        assert len(streams) == cap
        assert f"max_connections 100000 is above what {NOFILE} open files allow" in server.log()
        # Refused on every try, on a WebSocket too, while the place stays taken.
        for _ in range(3):
            refused = Stream(server, "crowd")
            refused.read_until(b"\r\n\r\n")
            assert refused.status == 503
            refused.close()
        with pytest.raises(InvalidStatus) as denied:
            connect(server.ws_url, open_timeout=TIMEOUT)
        assert denied.value.response.status_code == 503

        for n in range(5):
            status, _, body = server.request("GET", "/health")
            assert status == 200
            status, _, body = server.request("GET", "/status")
            assert status == 200
            state = json.loads(body)
            assert state["sessions"] == cap and state["max_connections"] == cap
            status, receipt = server.send(channel="elsewhere", data={"n": n})
            assert status == 202 and receipt["delivered"] == 0

        status, receipt = server.send(channel="crowd", data="to-every-one-of-you")
        assert status == 202 and receipt["delivered"] == cap
        for stream in streams:
            stream.read_until(b'"to-every-one-of-you"')
        assert "EMFILE" not in server.log()
    finally:
        for stream in streams:
            stream.close()
