"""A real ``redis-server`` on a free loopback port, for the multi-node tests.

It runs with the append-only file and ``appendfsync always`` (what a
deployment that wants "no message /send accepted is lost when Redis
restarts" needs), no RDB snapshots, in a temporary directory; it is stopped
by its PID, and can be killed and started again on the same port and data.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Iterator

import pytest

from tests.servers import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
START_TIMEOUT = 10.0


def ping(port: int, timeout: float = 1.0) -> bool:
    """Whether a Redis answers ``PING`` on ``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process; ``url`` is what ``backend`` takes."""

    def __init__(self, directory: str, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(directory, "redis.log")

    def start(self) -> "RedisServer":
        command = [
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "yes", "--appendfsync", "always",
            "--dir", self.directory, "--logfile", self.log_path,
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while not ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{self.log()}")
            time.sleep(0.02)  # start-up poll, not synchronisation of a test
        return self

    def kill(self) -> None:
        """SIGKILL: what a crash looks like; the AOF keeps what was fsynced."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def command(self, *args: str | bytes) -> bytes:
        """One command over a plain socket; the raw RESP answer (for tests
        that look into Redis)."""
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            raw = arg.encode() if isinstance(arg, str) else arg
            parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"".join(parts))
            return s.recv(65536)


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    """A fresh ``redis-server`` for one test, stopped after it."""
    if not os.path.exists(REDIS_SERVER):
        pytest.skip("redis-server is not installed (scripts/install-system-deps installs it)")
    server = RedisServer(str(tmp_path)).start()
    yield server
    server.stop()
