"""A TCP proxy between the browser and chloed that can cut every
connection: gracefully (a close, as when the server goes away) or with a
reset (a killed TCP connection)."""

from __future__ import annotations

import socket
import struct
import threading


class CuttingProxy:
    """Forwards 127.0.0.1:<port> to ``target``; ``cut(kill)`` ends every
    connection open now, new ones are accepted as before."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.cuts = 0
        self.killed: set[int] = set()
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self.running:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.pairs.append((client, server))
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
        if id(src) in self.killed:
            return  # the reset is on its way: no FIN before it
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self, kill: bool) -> int:
        """End every open connection; with ``kill`` by TCP reset."""
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for client, server in pairs:
            for s in (client, server):
                try:
                    if kill:
                        # Linger 0: close sends a reset. SHUT_RD first wakes
                        # the pump blocked in recv (a close alone would not,
                        # and would not release the socket) without a FIN.
                        self.killed.add(id(s))
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        s.shutdown(socket.SHUT_RD)
                    else:
                        s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass
        self.cuts += 1
        return len(pairs)

    def close(self) -> None:
        self.running = False
        self.listener.close()
        self.cut(kill=False)
