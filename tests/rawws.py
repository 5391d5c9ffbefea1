"""A WebSocket client by hand, for the frames no real client will send:
the upgrade request, masked frames with any opcode, bits or length, and a
parser of what the server answers (RFC 6455 section 5.2)."""

from __future__ import annotations

import base64
import os
import socket
import struct
import time
from typing import NamedTuple

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def upgrade_request(host: str = "127.0.0.1", path: str = "/ws", origin: str | None = None) -> bytes:
    """An RFC 6455 opening handshake, as a browser sends it."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, masked: bool = True,
          length: int | None = None) -> bytes:
    """One client frame; ``length`` claims another payload length than the
    payload's (a header announcing more than is sent)."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if masked else 0
    if n < 126:
        header = struct.pack("!BB", first, mask_bit | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not masked:
        return header + payload
    mask = os.urandom(4)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Frame(NamedTuple):
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        """The status code of a close frame (None when it has none)."""
        assert self.opcode == OP_CLOSE
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None


def parse_frames(data: bytes) -> list[Frame]:
    """The server's (unmasked) frames in ``data``; a cut-off last frame is left out."""
    frames, i = [], 0
    while len(data) - i >= 2:
        opcode, n = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if n == 126:
            if len(data) - i < 2:
                break
            n = struct.unpack("!H", data[i:i + 2])[0]
            i += 2
        elif n == 127:
            if len(data) - i < 8:
                break
            n = struct.unpack("!Q", data[i:i + 8])[0]
            i += 8
        if len(data) - i < n:
            break
        frames.append(Frame(opcode, data[i:i + n]))
        i += n
    return frames


class RawWebSocket:
    """A socket that has done the upgrade to ``/ws`` of a real chloed."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.sendall(upgrade_request())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            assert chunk, f"closed during the upgrade: {head!r}"
            head += chunk
        status, self.rest = head.split(b"\r\n\r\n", 1)
        assert status.startswith(b"HTTP/1.1 101"), status

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_until_eof(self, answer_close: bool = False) -> tuple[list[Frame], float]:
        """Every frame until the server closes TCP, and how many seconds the
        close took after the close frame (or after the call, with none).

        :param answer_close: reply to the server's close frame, as a
            browser would; otherwise stay silent.
        """
        data, started, closed_at, answered = self.rest, time.monotonic(), None, False
        while True:
            frames = parse_frames(data)
            if closed_at is None and any(f.opcode == OP_CLOSE for f in frames):
                closed_at = time.monotonic()
                if answer_close and not answered:
                    answered = True
                    try:
                        self.send(frame(OP_CLOSE, struct.pack("!H", 1000)))
                    except OSError:  # the server has given up on us already
                        pass
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                break
            data += chunk
        self.sock.close()
        return parse_frames(data), time.monotonic() - (closed_at or started)

    def close(self) -> None:
        self.sock.close()
