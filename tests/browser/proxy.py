"""A TCP proxy between the browser and chloed that can cut every open
connection: gracefully (``close_all``: both sides see a clean close, as when
a server or a load balancer goes away) or brutally (``kill_all``: both sides
get a TCP reset, as when a connection is killed on the way); and, with
``refusing``, an outage during which every new connection is reset."""

from __future__ import annotations

import socket
import struct
import threading

RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


class CuttingProxy:
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<target_port>``.

    Threads and blocking sockets: one thread accepts, two pump each
    connection. Cutting ends the connections open at that moment; new ones
    are accepted as before.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.cuts = 0
        self.accepted = 0
        self._changed = threading.Condition()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._killed: set[socket.socket] = set()
        self._running = True
        self.refusing = False  # an outage: new connections are reset at once
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    # -- forwarding ---------------------------------------------------------

    def _accept(self) -> None:
        while self._running:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
                client.close()
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._changed:
                self._pairs.append((client, server))
                self.accepted += 1
                self._changed.notify_all()
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        if src in self._killed or dst in self._killed:
            return  # the reset is on its way: no FIN before it
        # One side closed: close the other as well (this proxy does not keep
        # half-open connections), and forget the pair.
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._changed:
            if (src, dst) in self._pairs:
                self._pairs.remove((src, dst))
            if (dst, src) in self._pairs:
                self._pairs.remove((dst, src))

    # -- cutting ------------------------------------------------------------

    def close_all(self) -> int:
        """Close every open connection cleanly (FIN both ways); how many."""
        return self._cut(kill=False)

    def kill_all(self) -> int:
        """Reset every open connection (RST both ways); how many."""
        return self._cut(kill=True)

    def _cut(self, kill: bool) -> int:
        with self._changed:
            pairs, self._pairs = self._pairs, []
        for client, server in pairs:
            for s in (client, server):
                try:
                    if kill:
                        # SHUT_RD wakes the pump blocked in recv() without
                        # sending anything; close() with linger 0 then resets.
                        self._killed.add(s)
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
                        s.shutdown(socket.SHUT_RD)
                    else:
                        s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                try:
                    s.close()
                except OSError:
                    pass
        with self._changed:
            self.cuts += 1
        return len(pairs)

    def wait_accepted(self, more_than: int, timeout: float = 15.0) -> int:
        """Block until more than ``more_than`` connections were accepted in
        all; returns the count. Raises ``TimeoutError`` after ``timeout``."""
        with self._changed:
            if not self._changed.wait_for(lambda: self.accepted > more_than, timeout):
                raise TimeoutError(f"no new connection through the proxy in {timeout} s")
            return self.accepted

    def close(self) -> None:
        self._running = False
        self.listener.close()
        self.close_all()
