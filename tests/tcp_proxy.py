"""A TCP proxy on 127.0.0.1 between chloed and ``redis-server`` that can
make a connection half-dead: :meth:`TcpProxy.freeze_pubsub` stops passing
Redis's bytes to the client on each pub/sub connection (one that sent
``SUBSCRIBE``), and keeps its socket open, which is what a NAT or a
firewall that forgot a connection does. Connections made after go through.

Threads: one accepting, two per connection (one each way).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Iterator

#: ``SUBSCRIBE`` as a RESP bulk string, lower-cased: the mark of a pub/sub
#: connection among the bytes a client sends.
SUBSCRIBE = b"$9\r\nsubscribe\r\n"


class _Connection:
    """One client and its connection to the upstream."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.pubsub = False
        self.frozen = False
        self.closed = threading.Event()
        self.threads: list[threading.Thread] = []

    def close(self) -> None:
        self.closed.set()
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class TcpProxy:
    """Listens on a free port of 127.0.0.1 and forwards each connection to
    ``127.0.0.1:upstream_port``.

    :ivar port: where it listens.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._connections: list[_Connection] = []
        self._lock = threading.Lock()
        self._accepting = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> "TcpProxy":
        self._accepting.start()
        return self

    def stop(self) -> None:
        """Close the listener and every connection; wait for the threads."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._accepting.join(timeout=5)
        for connection in self._snapshot():
            connection.close()
            for thread in connection.threads:
                thread.join(timeout=5)

    def pubsub_connections(self, open_only: bool = True) -> list[_Connection]:
        """The connections that sent ``SUBSCRIBE`` (still open ones only,
        unless ``open_only`` is false)."""
        return [c for c in self._snapshot() if c.pubsub and not (open_only and c.closed.is_set())]

    def freeze_pubsub(self) -> int:
        """Stop passing Redis's bytes on every open pub/sub connection (the
        sockets stay open); returns how many were frozen."""
        frozen = self.pubsub_connections()
        for connection in frozen:
            connection.frozen = True
        return len(frozen)

    def _snapshot(self) -> list[_Connection]:
        with self._lock:
            return list(self._connections)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            connection = _Connection(client, upstream)
            with self._lock:
                self._connections.append(connection)
            for target in (self._to_upstream, self._to_client):
                thread = threading.Thread(target=target, args=(connection,), daemon=True)
                connection.threads.append(thread)
                thread.start()

    def _to_upstream(self, connection: _Connection) -> None:
        for data in _chunks(connection.client):
            if SUBSCRIBE in data.lower():
                connection.pubsub = True
            try:
                connection.upstream.sendall(data)
            except OSError:
                break
        connection.close()

    def _to_client(self, connection: _Connection) -> None:
        for data in _chunks(connection.upstream):
            if connection.frozen:
                continue  # read and dropped: lost on the way, as on a dead path
            try:
                connection.client.sendall(data)
            except OSError:
                break
        connection.close()


def _chunks(sock: socket.socket) -> Iterator[bytes]:
    """What ``sock`` receives, until it is closed or fails."""
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            return
        if not data:
            return
        yield data
