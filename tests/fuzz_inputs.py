"""Clients that can say what no well-behaved library would, for the fuzz
suite (tests/test_fuzz.py): a raw WebSocket over a socket (any handshake
headers, any frame bits), raw HTTP bytes, a small SSE reader, and JWTs
built by hand (tampered, unsigned, odd claims)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import jwt

TIMEOUT = 10.0

# WebSocket opcodes (RFC 6455 section 5.2).
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MASK = b"\x37\xfa\x21\x3d"


# -- raw WebSocket ----------------------------------------------------------


def ws_frame(
    opcode: int,
    payload: bytes = b"",
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: int | None = None,
    length_form: str | None = None,
) -> bytes:
    """One client frame, with whatever bits the case wants.

    :param rsv: the three RSV bits, as a number 0-7.
    :param length: the length to announce instead of the payload's.
    :param length_form: ``"16"`` or ``"64"`` to force that length encoding.
    """
    first = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0xF)
    size = len(payload) if length is None else length
    mask_bit = 0x80 if mask else 0
    if length_form == "64" or (length_form is None and size > 0xFFFF):
        head = bytes([first, mask_bit | 127]) + struct.pack("!Q", size)
    elif length_form == "16" or (length_form is None and size > 125):
        head = bytes([first, mask_bit | 126]) + struct.pack("!H", size)
    else:
        head = bytes([first, mask_bit | size])
    if not mask:
        return head + payload
    key = MASK  # fixed: the cases are the same on every run
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


@dataclass
class ServerFrames:
    """What a server wrote on a WebSocket until it closed (or we gave up)."""

    frames: list[tuple[int, bytes]] = field(default_factory=list)
    closed: bool = False
    leftover: bytes = b""

    @property
    def close_code(self) -> int | None:
        for opcode, payload in self.frames:
            if opcode == CLOSE:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        return None

    def texts(self) -> list[Any]:
        return [json.loads(p) for op, p in self.frames if op == TEXT]


def _one_frame(data: bytes) -> tuple[int, bytes, int] | None:
    """The first whole unmasked server frame in ``data``: its opcode, its
    payload and how many bytes it took; None while it is incomplete."""
    if len(data) < 2:
        return None
    opcode, size, at = data[0] & 0xF, data[1] & 0x7F, 2
    if size == 126:
        if len(data) < 4:
            return None
        size, at = struct.unpack("!H", data[2:4])[0], 4
    elif size == 127:
        if len(data) < 10:
            return None
        size, at = struct.unpack("!Q", data[2:10])[0], 10
    if len(data) < at + size:
        return None
    return opcode, data[at:at + size], at + size


def parse_server_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Split unmasked server frames; returns them and what is left over."""
    out = []
    while (frame := _one_frame(data)) is not None:
        opcode, payload, used = frame
        out.append((opcode, payload))
        data = data[used:]
    return out, data


class RawWebSocket:
    """A WebSocket client on a bare socket.

    :param headers: handshake headers over the defaults; a value of None
        leaves that header out.
    :param request_line: replaces ``GET /ws HTTP/1.1``.
    """

    def __init__(
        self,
        port: int,
        headers: dict[str, str | None] | None = None,
        request_line: str = "GET /ws HTTP/1.1",
        extra_lines: list[str] | None = None,
    ) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        all_headers: dict[str, str | None] = {
            "Host": f"127.0.0.1:{port}",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": base64.b64encode(b"chloe-fuzz-key16").decode(),
            "Sec-WebSocket-Version": "13",
        }
        all_headers.update(headers or {})
        lines = [request_line] + [f"{k}: {v}" for k, v in all_headers.items() if v is not None]
        lines += extra_lines or []
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self._recv()
            if not chunk:
                break
            head += chunk
        head, _, self.buffer = head.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        self.headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except ConnectionResetError:
            return b""

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server already hung up: that is what we wait for

    def read_until_closed(self, timeout: float = TIMEOUT) -> ServerFrames:
        """Every frame the server writes until it closes the TCP connection."""
        data = self.buffer
        deadline = time.monotonic() + timeout
        closed = False
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self._recv()
            except socket.timeout:
                break
            if not chunk:
                closed = True
                break
            data += chunk
        frames, rest = parse_server_frames(data)
        return ServerFrames(frames, closed, rest)

    def read_text(self, timeout: float = TIMEOUT) -> Any:
        """The next text frame as JSON (skipping any other frame)."""
        deadline = time.monotonic() + timeout
        while True:
            frame = _one_frame(self.buffer)
            if frame is not None:
                opcode, payload, used = frame
                self.buffer = self.buffer[used:]
                if opcode == TEXT:
                    return json.loads(payload)
                continue
            if time.monotonic() > deadline:
                raise TimeoutError("no text frame")
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self._recv()
            if not chunk:
                raise EOFError("closed")
            self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


# -- raw HTTP ---------------------------------------------------------------


@dataclass
class RawAnswer:
    status: int | None
    head: str
    body: bytes
    closed: bool

    @property
    def headers(self) -> dict[str, str]:
        out = {}
        for line in self.head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            out[name.strip().lower()] = value.strip()
        return out

    @property
    def content(self) -> bytes:
        """The body, de-chunked."""
        if self.headers.get("transfer-encoding", "").lower() != "chunked":
            return self.body
        out, rest = b"", self.body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2:]
        return out


def raw_request(port: int, method: str, path: str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> tuple[int | None, dict[str, str], bytes]:
    """One request written whole on a socket, even if the server answers
    (and hangs up) before it has read it all, as chloed does with a body
    over its limit; urllib would raise instead of reading that answer."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close",
             f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    answer = raw_http(port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body, timeout=TIMEOUT)
    return answer.status, answer.headers, answer.content


def raw_http(port: int, data: bytes, half_close: bool = False, timeout: float = 5.0) -> RawAnswer:
    """Write ``data`` on a fresh connection; read one answer (or the close).
    An answer that says ``Connection: close`` is read on to the close, so
    ``closed`` tells whether the server did close.

    :param half_close: shut our side down after writing, as a client that
        has nothing more to say.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        received = b""
        closed = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b"\r\n\r\n" in received:
                head, _, body = received.partition(b"\r\n\r\n")
                length = None
                closing = False
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                    if name.strip().lower() == b"connection" and value.strip().lower() == b"close":
                        closing = True
                if length is not None and len(body) >= length and not closing:
                    break
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                closed = True
                break
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        text = head.decode("latin-1")
        parts = text.split(" ", 2)
        status = int(parts[1]) if text.startswith("HTTP/") and len(parts) > 1 and parts[1].isdigit() else None
        return RawAnswer(status, text, body, closed)
    finally:
        sock.close()


# -- SSE --------------------------------------------------------------------


class SSE:
    """An EventSource request: status, and events read one by one."""

    def __init__(self, port: int, path: str, headers: dict[str, str] | None = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        self.conn.request("GET", path, headers=headers or {})
        self.response = self.conn.getresponse()
        self.status = self.response.status

    def body(self) -> bytes:
        return self.response.read()

    def event(self) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        while True:
            line = self.response.readline().decode("utf-8")
            if line == "":
                raise EOFError("stream ended")
            line = line.rstrip("\n")
            if line == "":
                if "data" in fields:
                    fields["data"] = json.loads(fields["data"])
                    return fields
                fields = {}
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = value

    def close(self) -> None:
        self.conn.close()


# -- tokens -----------------------------------------------------------------


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def hand_signed(header: bytes, payload: bytes, secret: str) -> str:
    """A JWT from raw JSON bytes, HS256-signed by hand (claims PyJWT would
    not let us write)."""
    signing_input = b64url(header) + "." + b64url(payload)
    mac = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(mac)


def mint(claims: dict[str, Any], secret: str, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def later(seconds: int = 3600) -> int:
    return int(time.time()) + seconds


# =============================================================================
# The tables of named bad inputs. Each row is one kind of mistake; the
# runners in tests/test_fuzz.py say what chloed must answer.
# =============================================================================

MAX = 10000  # max_message_bytes of the fuzzed chloed
SECRET = "fuzz-secret-of-at-least-thirty-two-bytes"
GOOD_ORIGIN = "http://good.example"

CLOSED = "closed"  # the connection must be closed (protocol abuse)


def _pad_to(size: int) -> str:
    """A well-formed ping frame of exactly ``size`` bytes."""
    head = '{"type":"ping","pad":"'
    return head + "x" * (size - len(head) - 2) + '"}'


# -- WebSocket frames: (name, payload, expected) ---------------------------
# payload: str for a text message, bytes for a binary one.
# expected: an error code; a dict of error fields ({"code": …, "ref": …,
# "channel": …}, None meaning "absent"); a list of the exact answers (for
# what is tolerated on purpose); ("ack", ref); or CLOSED.

def _sub(channel_json: str, extra: str = "") -> str:
    return '{"type":"subscribe","channel":%s%s}' % (channel_json, extra)


WS_FRAMES: list[tuple[str, str | bytes, Any]] = [
    # not JSON, or not an object
    ("empty text", "", "bad_frame"),
    ("whitespace only", "  \n\t ", "bad_frame"),
    ("lone open brace", "{", "bad_frame"),
    ("lone close brace", "}", "bad_frame"),
    ("plain words", "hello chloe", "bad_frame"),
    ("truncated object", '{"type":"ping"', "bad_frame"),
    ("trailing garbage", '{"type":"ping"} x', "bad_frame"),
    ("two objects in one frame", '{"type":"ping"}{"type":"ping"}', "bad_frame"),
    ("json null", "null", "bad_frame"),
    ("json true", "true", "bad_frame"),
    ("json number", "42", "bad_frame"),
    ("json string", '"ping"', "bad_frame"),
    ("json empty array", "[]", "bad_frame"),
    ("json array of frames", '[{"type":"ping"}]', "bad_frame"),
    ("single quotes", "{'type':'ping'}", "bad_frame"),
    ("unquoted key", '{type:"ping"}', "bad_frame"),
    ("trailing comma", '{"type":"ping",}', "bad_frame"),
    ("javascript comment", '/* hi */{"type":"ping"}', "bad_frame"),
    ("nul after the object", '{"type":"ping"}\x00', "bad_frame"),
    ("raw control character in a string", '{"type":"ping","x":"a\x01b"}', "bad_frame"),
    ("unknown escape", '{"type":"ping","x":"\\q"}', "bad_frame"),
    ("short unicode escape", '{"type":"ping","x":"\\u12"}', "bad_frame"),
    ("hex number", '{"type":"ping","ref":0x10}', "bad_frame"),
    ("leading zero number", '{"type":"ping","ref":007}', "bad_frame"),
    # numbers JSON has no room for
    ("NaN data", '{"type":"send","data":NaN}', "bad_frame"),
    ("Infinity data", '{"type":"send","data":Infinity}', "bad_frame"),
    ("-Infinity data", '{"type":"send","data":-Infinity}', "bad_frame"),
    ("NaN ref", '{"type":"ping","ref":NaN}', "bad_frame"),
    ("NaN deep in data", '{"type":"send","data":{"a":{"b":[1,NaN]}}}', "bad_frame"),
    ("1e400 data", '{"type":"send","data":1e400}', "bad_frame"),
    ("-1e400 nested data", '{"type":"send","data":{"a":[-1e400]}}', "bad_frame"),
    ("1e400 ref", '{"type":"ping","ref":1e400}', "bad_frame"),
    ("5000-digit integer", '{"type":"send","data":' + "9" * 5000 + "}", "bad_frame"),
    # nesting deeper than the parser goes (within max_message_bytes)
    ("deeply nested arrays", '{"type":"send","data":' + "[" * 4900 + "]" * 4900 + "}", "bad_frame"),
    ("deeply nested objects", '{"type":"send","data":' + '{"a":' * 1500 + "1" + "}" * 1500 + "}", "bad_frame"),
    ("deeply nested ref", '{"type":"ping","ref":' + "[" * 4000 + "]" * 4000 + "}", "bad_frame"),
    ("deeply nested unclosed", "[" * 9000, "bad_frame"),
    # lone surrogates: valid JSON escapes, but no UTF-8 form
    ("lone high surrogate in data", '{"type":"send","data":"\\ud800"}', "bad_frame"),
    ("lone low surrogate in data", '{"type":"send","data":"\\udfff"}', "bad_frame"),
    ("reversed surrogate pair", '{"type":"send","data":"\\udc00\\ud800"}', "bad_frame"),
    ("lone surrogate in an error's ref", '{"type":"nope","ref":"\\ud800"}', "bad_frame"),
    ("lone surrogate in a send's ref", '{"type":"send","data":1,"ref":"\\udc00"}', "bad_frame"),
    ("lone surrogate in channel", '{"type":"subscribe","channel":"\\ud800"}', "bad_frame"),
    ("lone surrogate in type", '{"type":"\\ud800"}', "bad_frame"),
    ("lone surrogate in a key", '{"type":"ping","\\ud800":1}', "bad_frame"),
    ("lone surrogate in token", '{"type":"subscribe","channel":"private-room","token":"\\ud800"}', "bad_frame"),
    ("lone surrogate in since", '{"type":"subscribe","channel":"s","since":"\\ud800"}', "bad_frame"),
    # type
    ("no type", "{}", "bad_frame"),
    ("no type keeps ref", '{"ref":"r9"}', {"code": "bad_frame", "ref": "r9"}),
    ("type null", '{"type":null}', "bad_frame"),
    ("type number", '{"type":1}', "bad_frame"),
    ("type true", '{"type":true}', "bad_frame"),
    ("type false", '{"type":false}', "bad_frame"),
    ("type list", '{"type":["ping"]}', "bad_frame"),
    ("type object", '{"type":{"name":"ping"}}', "bad_frame"),
    ("type float", '{"type":1.5}', "bad_frame"),
    ("type empty", '{"type":""}', "unknown_type"),
    ("type upper case", '{"type":"PING"}', "unknown_type"),
    ("type capitalised", '{"type":"Ping"}', "unknown_type"),
    ("type leading space", '{"type":" ping"}', "unknown_type"),
    ("type trailing space", '{"type":"ping "}', "unknown_type"),
    ("type with nul", '{"type":"ping\\u0000"}', "unknown_type"),
    ("type subscribed", '{"type":"subscribed","channel":"a"}', "unknown_type"),
    ("type message", '{"type":"message","channel":"a","data":1}', "unknown_type"),
    ("type error", '{"type":"error","code":"bad_frame"}', "unknown_type"),
    ("type connected", '{"type":"connected"}', "unknown_type"),
    ("type pong", '{"type":"pong"}', "unknown_type"),
    ("type ack", '{"type":"ack","ref":1}', "unknown_type"),
    ("type presence", '{"type":"presence"}', "unknown_type"),
    ("type publish", '{"type":"publish","channel":"a","data":1}', "unknown_type"),
    ("type cyrillic", '{"type":"пинг"}', "unknown_type"),
    ("type 4000 characters", '{"type":"' + "t" * 4000 + '"}', "unknown_type"),
    ("unknown type keeps ref", '{"type":"nope","ref":"r1"}', {"code": "unknown_type", "ref": "r1"}),
    ("unknown type keeps integer ref", '{"type":"nope","ref":-3}', {"code": "unknown_type", "ref": -3}),
    ("duplicate type, last unknown", '{"type":"ping","type":"nope"}', "unknown_type"),
    # last key wins, as in every browser's JSON.parse
    ("duplicate type, last ping", '{"type":"nope","type":"ping"}', [{"type": "pong"}]),
    # subscribe: channel
    ("subscribe without channel", '{"type":"subscribe","ref":1}', {"code": "bad_frame", "ref": 1}),
    ("subscribe channel null", _sub("null"), "bad_frame"),
    ("subscribe channel number", _sub("7"), {"code": "invalid_channel", "channel": None}),
    ("subscribe channel true", _sub("true"), {"code": "invalid_channel", "channel": None}),
    ("subscribe channel float", _sub("1.5"), "invalid_channel"),
    ("subscribe channel empty list", _sub("[]"), "invalid_channel"),
    ("subscribe channel list", _sub('["a"]'), {"code": "invalid_channel", "channel": None}),
    ("subscribe channel object", _sub('{"name":"a"}'), "invalid_channel"),
    ("subscribe channel empty", _sub('""'), "invalid_channel"),
    ("subscribe channel space", _sub('" "'), "invalid_channel"),
    ("subscribe channel with space", _sub('"a b"'), {"code": "invalid_channel", "channel": "a b"}),
    ("subscribe channel with slash", _sub('"a/b"'), "invalid_channel"),
    ("subscribe channel with hash", _sub('"a#b"'), "invalid_channel"),
    ("subscribe channel with star", _sub('"room*"'), "invalid_channel"),
    ("subscribe channel with comma", _sub('"a,b"'), "invalid_channel"),
    ("subscribe channel accented", _sub('"caf\\u00e9"'), "invalid_channel"),
    ("subscribe channel newline", _sub('"a\\n"'), "invalid_channel"),
    ("subscribe channel nul", _sub('"a\\u0000"'), "invalid_channel"),
    ("subscribe channel tab", _sub('"a\\tb"'), "invalid_channel"),
    ("subscribe channel emoji", _sub('"\\ud83c\\udf83"'), "invalid_channel"),
    ("subscribe channel fullwidth", _sub('"\\uff41"'), "invalid_channel"),
    ("subscribe channel question mark", _sub('"a?b"'), "invalid_channel"),
    ("subscribe channel percent", _sub('"a%20b"'), "invalid_channel"),
    ("subscribe channel backslash", _sub('"a\\\\b"'), "invalid_channel"),
    ("subscribe channel quote", _sub('"a\\"b"'), "invalid_channel"),
    ("subscribe channel markup", _sub('"<script>"'), "invalid_channel"),
    ("subscribe channel 129 characters", _sub('"' + "c" * 129 + '"'), {"code": "invalid_channel", "channel": None}),
    ("subscribe channel 4000 characters", _sub('"' + "c" * 4000 + '"'), "invalid_channel"),
    ("duplicate channel, last bad", '{"type":"subscribe","channel":"ok","channel":"a b"}', "invalid_channel"),
    # subscribe: since
    ("since number", _sub('"s"', ',"since":12'), {"code": "bad_frame", "channel": "s"}),
    ("since true", _sub('"s"', ',"since":true'), "bad_frame"),
    ("since list", _sub('"s"', ',"since":["1-1"]'), "bad_frame"),
    ("since object", _sub('"s"', ',"since":{}'), "bad_frame"),
    ("since float", _sub('"s"', ',"since":1.5'), "bad_frame"),
    ("since empty", _sub('"s"', ',"since":""'), "bad_frame"),
    ("since 65 characters", _sub('"s"', ',"since":"' + "1" * 65 + '"'), "bad_frame"),
    # an opaque id Chloe never gave: a resume that cannot be complete
    ("since not an id", _sub('"s-since-a"', ',"since":"abc"'),
     [{"type": "subscribed", "channel": "s-since-a", "recovered": False}]),
    ("since from the future", _sub('"s-since-b"', ',"since":"99999999999999-99999999999"'),
     [{"type": "subscribed", "channel": "s-since-b", "recovered": False}]),
    ("since negative", _sub('"s-since-c"', ',"since":"-1"'),
     [{"type": "subscribed", "channel": "s-since-c", "recovered": False}]),
    # subscribe: token
    ("token number", _sub('"private-room"', ',"token":12'), "bad_frame"),
    ("token true", _sub('"private-room"', ',"token":true'), "bad_frame"),
    ("token list", _sub('"private-room"', ',"token":["a.b.c"]'), "bad_frame"),
    ("token object", _sub('"private-room"', ',"token":{"alg":"none"}'), "bad_frame"),
    ("token empty", _sub('"private-room"', ',"token":""'), "bad_frame"),
    ("token 8193 characters", _sub('"private-room"', ',"token":"' + "t" * 8193 + '"'), "bad_frame"),
    # unsubscribe
    ("unsubscribe without channel", '{"type":"unsubscribe"}', "bad_frame"),
    ("unsubscribe channel null", '{"type":"unsubscribe","channel":null}', "bad_frame"),
    ("unsubscribe channel number", '{"type":"unsubscribe","channel":5}', "invalid_channel"),
    ("unsubscribe channel empty", '{"type":"unsubscribe","channel":""}', "invalid_channel"),
    ("unsubscribe channel with space", '{"type":"unsubscribe","channel":"a b"}', "invalid_channel"),
    ("unsubscribe channel list", '{"type":"unsubscribe","channel":["a"]}', "invalid_channel"),
    ("unsubscribe channel not subscribed", '{"type":"unsubscribe","channel":"never-subscribed"}',
     [{"type": "unsubscribed", "channel": "never-subscribed"}]),
    # send
    ("send without data", '{"type":"send","ref":"r2"}', {"code": "bad_frame", "ref": "r2"}),
    ("send without data names its channel", '{"type":"send","channel":"room","ref":"r3"}',
     {"code": "bad_frame", "ref": "r3", "channel": "room"}),
    ("send channel number", '{"type":"send","channel":5,"data":1}', "invalid_channel"),
    ("send channel empty", '{"type":"send","channel":"","data":1}', "invalid_channel"),
    ("send channel with space", '{"type":"send","channel":"a b","data":1,"ref":"r4"}',
     {"code": "invalid_channel", "ref": "r4"}),
    ("send channel list", '{"type":"send","channel":["a"],"data":1}', "invalid_channel"),
    ("send channel object", '{"type":"send","channel":{},"data":1}', "invalid_channel"),
    ("send channel true", '{"type":"send","channel":true,"data":1}', "invalid_channel"),
    # a ref Chloe cannot echo is refused: the send is not relayed
    ("send ref list", '{"type":"send","data":1,"ref":[1]}', "bad_frame"),
    ("send ref object", '{"type":"send","data":1,"ref":{"id":1}}', "bad_frame"),
    ("send ref float", '{"type":"send","data":1,"ref":1.5}', "bad_frame"),
    ("send ref true", '{"type":"send","data":1,"ref":true}', "bad_frame"),
    ("send ref 129 characters", '{"type":"send","data":1,"ref":"' + "r" * 129 + '"}', "bad_frame"),
    ("send ref 128 characters", '{"type":"send","data":1,"ref":"' + "r" * 128 + '"}', ("ack", "r" * 128)),
    # auth and refresh that are no frame of theirs (the session stays)
    ("auth without token", '{"type":"auth"}', "bad_frame"),
    ("auth token a number", '{"type":"auth","token":5}', "bad_frame"),
    ("auth token empty", '{"type":"auth","token":""}', "bad_frame"),
    ("auth token null", '{"type":"auth","token":null}', "bad_frame"),
    ("auth token a list", '{"type":"auth","token":["a.b.c"]}', "bad_frame"),
    ("auth token of 8193 characters", '{"type":"auth","token":"' + "t" * 8193 + '"}', "bad_frame"),
    ("auth since of 65 characters", '{"type":"auth","token":"a.b.c","since":"' + "1" * 65 + '"}', "bad_frame"),
    ("auth since a number", '{"type":"auth","token":"a.b.c","since":5}', "bad_frame"),
    ("refresh without a connection token", '{"type":"refresh","token":"a.b.c"}', "bad_frame"),
    ("refresh without token", '{"type":"refresh"}', "bad_frame"),
    ("refresh channel not a name", '{"type":"refresh","channel":"a b","token":"a.b.c"}', "invalid_channel"),
    # namespaces (the fuzzed chloed has one: chat)
    ("subscribe to a namespace not configured", _sub('"nope:x"', ',"ref":"ns"'),
     {"code": "invalid_channel", "ref": "ns", "channel": "nope:x"}),
    ("send to a namespace not configured", '{"type":"send","channel":"nope:x","data":1}', "invalid_channel"),
    # ping
    ("ping with stray fields", '{"type":"ping","channel":7,"data":[1],"x":{}}', [{"type": "pong"}]),
    ("ping ref object", '{"type":"ping","ref":{"a":1}}', "bad_frame"),
    # sizes (max_message_bytes = MAX; Autobahn closes past 4 x MAX)
    ("one byte over the limit", _pad_to(MAX + 1), "too_large"),
    ("twice the limit", _pad_to(2 * MAX), "too_large"),
    ("exactly four times the limit", _pad_to(4 * MAX), "too_large"),
    ("over the limit in bytes not characters",
     '{"type":"send","data":"' + "\u00e9" * (MAX // 2) + '"}', "too_large"),
    ("over four times the limit", _pad_to(4 * MAX + 1), CLOSED),
    ("one megabyte text", "x" * 2 ** 20, CLOSED),
    # binary messages
    ("binary ping", b'{"type":"ping"}', "bad_frame"),
    ("binary garbage", b"\x00\xff\xfe\x80", "bad_frame"),
    ("empty binary", b"", "bad_frame"),
    ("binary over four times the limit", b"x" * (4 * MAX + 1), CLOSED),
]


# -- channel tokens: (name, channel, token) --------------------------------
# Every one must be answered forbidden. Tokens are made when the case runs
# (they carry times); ``token`` is a function of nothing, None for "no token".


def _claims(**extra: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {"channels": ["private-room", "presence-room"], "exp": later()}
    claims.update(extra)
    return {k: v for k, v in claims.items() if v is not _DROP}


_DROP = object()
_HS256 = b'{"alg":"HS256","typ":"JWT"}'
_OTHER_SECRET = "somebody-elses-secret-of-32-bytes-or-more"


def _tamper_payload() -> str:
    header, _, signature = mint(_claims(channels=["private-other"]), SECRET).split(".")
    return ".".join([header, b64url(json.dumps(_claims()).encode()), signature])


def _flip_last(token: str) -> str:
    return token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]


def _none_signed_with_secret() -> str:
    header = b'{"alg":"none","typ":"JWT"}'
    return hand_signed(header, json.dumps(_claims()).encode(), SECRET)


def _hs(algorithm: str) -> str:
    digest = {"HS384": hashlib.sha384, "HS512": hashlib.sha512}[algorithm]
    signing_input = b64url(('{"alg":"%s","typ":"JWT"}' % algorithm).encode()) + "." + b64url(
        json.dumps(_claims()).encode()
    )
    return signing_input + "." + b64url(hmac.new(SECRET.encode(), signing_input.encode(), digest).digest())


def _valid() -> str:
    return mint(_claims(), SECRET)


TOKENS: list[tuple[str, str, Any]] = [
    ("no token on a private channel", "private-room", None),
    ("no token on a presence channel", "presence-room", None),
    ("expired token", "private-room", lambda: mint(_claims(exp=later(-3600)), SECRET)),
    ("token expired a second ago", "private-room", lambda: mint(_claims(exp=later(-1)), SECRET)),
    ("tampered payload", "private-room", _tamper_payload),
    ("tampered signature", "private-room", lambda: _flip_last(_valid())),
    ("signature stripped", "private-room", lambda: _valid().rsplit(".", 1)[0] + "."),
    ("signed with another secret", "private-room", lambda: mint(_claims(), _OTHER_SECRET)),
    ("alg none, unsigned", "private-room",
     lambda: b64url(b'{"alg":"none","typ":"JWT"}') + "." + b64url(json.dumps(_claims()).encode()) + "."),
    ("alg none with our signature", "private-room", _none_signed_with_secret),
    ("alg HS384 with our secret", "private-room", lambda: _hs("HS384")),
    ("alg HS512 with our secret", "private-room", lambda: _hs("HS512")),
    ("alg RS256 header", "private-room",
     lambda: hand_signed(b'{"alg":"RS256","typ":"JWT"}', json.dumps(_claims()).encode(), SECRET)),
    ("alg number", "private-room", lambda: hand_signed(b'{"alg":5}', json.dumps(_claims()).encode(), SECRET)),
    ("token for another channel", "private-room", lambda: mint(_claims(channels=["private-other"]), SECRET)),
    ("private token used on presence", "presence-room",
     lambda: mint(_claims(channels=["private-room"], user={"id": 1}), SECRET)),
    ("channels claim a string", "private-room", lambda: mint(_claims(channels="private-room"), SECRET)),
    ("channels claim missing", "private-room", lambda: mint(_claims(channels=_DROP), SECRET)),
    ("channels claim numbers", "private-room", lambda: mint(_claims(channels=[1, 2]), SECRET)),
    ("channels claim an object", "private-room",
     lambda: mint(_claims(channels={"private-room": True}), SECRET)),
    ("channels claim null", "private-room", lambda: mint(_claims(channels=None), SECRET)),
    ("no exp", "private-room", lambda: mint(_claims(exp=_DROP), SECRET)),
    ("exp a string", "private-room", lambda: mint(_claims(exp="never"), SECRET)),
    ("exp 1e400", "private-room",
     lambda: hand_signed(_HS256, b'{"channels":["private-room"],"exp":1e400}', SECRET)),
    ("exp NaN", "private-room",
     lambda: hand_signed(_HS256, b'{"channels":["private-room"],"exp":NaN}', SECRET)),
    ("exp null", "private-room", lambda: mint(_claims(exp=None), SECRET)),
    ("not valid before an hour from now", "private-room", lambda: mint(_claims(nbf=later(3600)), SECRET)),
    ("presence without user", "presence-room", lambda: mint(_claims(), SECRET)),
    ("presence user without id", "presence-room", lambda: mint(_claims(user={"info": {}}), SECRET)),
    ("presence user id a list", "presence-room", lambda: mint(_claims(user={"id": [1]}), SECRET)),
    ("presence user id null", "presence-room", lambda: mint(_claims(user={"id": None}), SECRET)),
    ("presence user a string", "presence-room", lambda: mint(_claims(user="alice"), SECRET)),
    ("garbage token", "private-room", lambda: "garbage"),
    ("three empty-ish segments", "private-room", lambda: "a.b.c"),
    ("two segments", "private-room", lambda: "e30.e30"),
    ("four segments", "private-room", lambda: _valid() + ".e30"),
    ("header not JSON", "private-room", lambda: b64url(b"{") + ".e30.c2ln"),
    ("header a JSON array", "private-room", lambda: b64url(b"[1]") + ".e30.c2ln"),
    ("header nested 2000 deep", "private-room", lambda: b64url(b"[" * 2000 + b"]" * 2000) + ".e30.c2ln"),
    ("payload nested 2000 deep, signed", "private-room",
     lambda: hand_signed(_HS256, b"[" * 2000 + b"]" * 2000, SECRET)),
    ("payload a JSON list, signed", "private-room", lambda: hand_signed(_HS256, b'["private-room"]', SECRET)),
    ("not base64", "private-room", lambda: "@@@.@@@.@@@"),
    ("non-ASCII token", "private-room", lambda: "\u00e9.\u00e9.\u00e9"),
    ("unsupported crit header", "private-room",
     lambda: hand_signed(b'{"alg":"HS256","crit":["exp"]}', json.dumps(_claims()).encode(), SECRET)),
    ("kid a list", "private-room",
     lambda: hand_signed(b'{"alg":"HS256","kid":[1]}', json.dumps(_claims()).encode(), SECRET)),
    ("leading space", "private-room", lambda: " " + _valid()),
    ("Bearer prefix", "private-room", lambda: "Bearer " + _valid()),
]


# -- connection tokens: (name, token, error code, error code on the URL) -----
# Each is sent in an ``auth`` frame on a new WebSocket: the error, then the
# connection closes (but for too_large: a frame over the limit is refused as
# any frame is, and the session stays). Those with a code for the URL are
# also the ``?token=`` of a new long-poll, JSONP and SSE session, which
# must end with that error (the others have no ``sub``: on a URL they are
# channel tokens, as before issue 19). Made when the case runs (they carry
# times).


def _user(**extra: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {"sub": "fuzz-user", "exp": later(), "iat": int(time.time())}
    claims.update(extra)
    return {k: v for k, v in claims.items() if v is not _DROP}


def _user_token(**extra: Any) -> Callable[[], str]:
    return lambda: mint(_user(**extra), SECRET)


def _user_raw(payload: bytes) -> Callable[[], str]:
    return lambda: hand_signed(_HS256, payload, SECRET)


def _hmac_signed(algorithm: str, payload: bytes) -> str:
    """A JWT signed with our secret by an HMAC other than HS256."""
    digest = {"HS384": hashlib.sha384, "HS512": hashlib.sha512}[algorithm]
    signing_input = b64url(('{"alg":"%s","typ":"JWT"}' % algorithm).encode()) + "." + b64url(payload)
    return signing_input + "." + b64url(hmac.new(SECRET.encode(), signing_input.encode(), digest).digest())


def _swap_payload(token: str, claims: dict[str, Any]) -> str:
    header, _, signature = token.split(".")
    return ".".join([header, b64url(json.dumps(claims).encode()), signature])


CONNECTION_TOKENS: list[tuple[str, Callable[[], str], str, str | None]] = [
    ("garbage", lambda: "garbage", "token_invalid", None),
    ("three junk segments", lambda: "a.b.c", "token_invalid", None),
    ("empty JSON segments", lambda: "e30.e30.e30", "token_invalid", None),
    ("not base64", lambda: "@@@.@@@.@@@", "token_invalid", None),
    ("header nested 2000 deep", lambda: b64url(b"[" * 2000 + b"]" * 2000) + ".e30.c2ln", "token_invalid", None),
    ("a channel token (no sub)", lambda: mint({"channels": ["private-room"], "exp": later()}, SECRET),
     "token_invalid", None),
    ("Bearer prefix", lambda: "Bearer " + mint(_user(), SECRET), "token_invalid", None),
    ("sub of 129 characters", _user_token(sub="u" * 129), "token_invalid", "token_invalid"),
    ("sub of 10000 characters", _user_token(sub="u" * 10000), "too_large", "token_invalid"),
    ("sub empty", _user_token(sub=""), "token_invalid", "token_invalid"),
    ("sub a number", _user_token(sub=5), "token_invalid", "token_invalid"),
    ("sub null", _user_token(sub=None), "token_invalid", "token_invalid"),
    ("sub a list", _user_token(sub=["a"]), "token_invalid", "token_invalid"),
    ("sub with a nul", _user_token(sub="a\x00b"), "token_invalid", "token_invalid"),
    ("sub with a newline", _user_token(sub="a\nb"), "token_invalid", "token_invalid"),
    ("sub a lone surrogate", _user_raw(b'{"sub":"\\ud800","exp":9999999999}'), "token_invalid",
     "token_invalid"),
    ("expired", _user_token(exp=later(-3600)), "token_expired", "token_expired"),
    ("no exp", _user_token(exp=_DROP), "token_invalid", "token_invalid"),
    ("exp a string", _user_token(exp="never"), "token_invalid", "token_invalid"),
    ("exp 1e400", _user_raw(b'{"sub":"fuzz-user","exp":1e400}'), "token_invalid", "token_invalid"),
    ("exp NaN", _user_raw(b'{"sub":"fuzz-user","exp":NaN}'), "token_invalid", "token_invalid"),
    ("iat a string", _user_token(iat="yesterday"), "token_invalid", "token_invalid"),
    ("iat 1e400", _user_raw(b'{"sub":"fuzz-user","exp":9999999999,"iat":1e400}'), "token_invalid",
     "token_invalid"),
    ("not valid before an hour from now", _user_token(nbf=later(3600)), "token_invalid", "token_invalid"),
    ("jti of 129 characters", _user_token(jti="j" * 129), "token_invalid", "token_invalid"),
    ("jti a number", _user_token(jti=5), "token_invalid", "token_invalid"),
    ("signed with another secret", lambda: mint(_user(), _OTHER_SECRET), "token_invalid", "token_invalid"),
    ("alg none, unsigned", lambda: b64url(b'{"alg":"none","typ":"JWT"}') + "." + b64url(
        json.dumps(_user()).encode()) + ".", "token_invalid", "token_invalid"),
    ("alg HS512 with our secret", lambda: _hmac_signed("HS512", json.dumps(_user()).encode()), "token_invalid",
     "token_invalid"),
    ("alg RS256 header, HS256 signature",
     lambda: hand_signed(b'{"alg":"RS256","typ":"JWT"}', json.dumps(_user()).encode(), SECRET), "token_invalid",
     "token_invalid"),
    ("tampered payload", lambda: _swap_payload(mint(_user(sub="someone"), SECRET), _user()), "token_invalid",
     "token_invalid"),
    ("signature stripped", lambda: mint(_user(), SECRET).rsplit(".", 1)[0] + ".", "token_invalid",
     "token_invalid"),
]


# -- the control API and GET /channels/NAME/history --------------------------
# (name, method, path, body, status, error code); the bearer secret is sent.
# The fuzzed chloed has one namespace, chat: a channel nope:x is in none.

_BIG_USER = "u" * 10000

CONTROL_REQUESTS: list[tuple[str, str, str, bytes | None, int, str]] = [
    ("disconnect body empty", "POST", "/disconnect", b"", 400, "invalid_request"),
    ("disconnect body truncated", "POST", "/disconnect", b'{"user":', 400, "invalid_request"),
    ("disconnect body an array", "POST", "/disconnect", b'[{"user":"u"}]', 400, "invalid_request"),
    ("disconnect body null", "POST", "/disconnect", b"null", 400, "invalid_request"),
    ("disconnect body NaN", "POST", "/disconnect", b'{"user":"u","reason":NaN}', 400, "invalid_request"),
    ("disconnect body nested 5000 deep", "POST", "/disconnect", b"[" * 5000 + b"]" * 5000, 400,
     "invalid_request"),
    ("disconnect body not UTF-8", "POST", "/disconnect", b'{"user":"\xff"}', 400, "invalid_request"),
    ("disconnect body a lone surrogate", "POST", "/disconnect", b'{"user":"\\ud800"}', 400, "invalid_request"),
    ("disconnect body of 70 KB", "POST", "/disconnect", b'{"reason":"' + b"r" * 70000 + b'"}', 413, "too_large"),
    ("disconnect unknown field", "POST", "/disconnect", b'{"user":"u","bogus":1}', 400, "invalid_request"),
    ("disconnect misspelt user", "POST", "/disconnect", b'{"usr":"u"}', 400, "invalid_request"),
    ("disconnect unknown field of 10000 characters", "POST", "/disconnect",
     b'{"user":"u","' + b"f" * 10000 + b'":1}', 400, "invalid_request"),
    ("disconnect no target", "POST", "/disconnect", b'{"reason":"r"}', 400, "invalid_request"),
    ("disconnect session and user", "POST", "/disconnect", b'{"session":"s","user":"u"}', 400, "invalid_request"),
    ("disconnect user of 10000 characters", "POST", "/disconnect", b'{"user":"' + _BIG_USER.encode() + b'"}', 400,
     "invalid_user"),
    ("disconnect user of 129 characters", "POST", "/disconnect", b'{"user":"' + b"u" * 129 + b'"}', 400,
     "invalid_user"),
    ("disconnect user empty", "POST", "/disconnect", b'{"user":""}', 400, "invalid_user"),
    ("disconnect user with a nul", "POST", "/disconnect", b'{"user":"a\\u0000b"}', 400, "invalid_user"),
    ("disconnect user a number", "POST", "/disconnect", b'{"user":5}', 400, "invalid_user"),
    ("disconnect user an object", "POST", "/disconnect", b'{"user":{"id":"u"}}', 400, "invalid_user"),
    ("disconnect session a number", "POST", "/disconnect", b'{"session":5}', 400, "invalid_request"),
    ("disconnect session empty", "POST", "/disconnect", b'{"session":""}', 400, "invalid_request"),
    ("disconnect unknown session", "POST", "/disconnect", b'{"session":"no-such-session"}', 404, "unknown_session"),
    ("disconnect session of 10000 characters", "POST", "/disconnect",
     b'{"session":"' + b"s" * 10000 + b'"}', 404, "unknown_session"),
    ("disconnect session a JWT", "POST", "/disconnect", b'{"session":"eyJhbGciOiJIUzI1NiJ9.e30.c2ln"}', 404,
     "unknown_session"),
    ("disconnect reason of 201 characters", "POST", "/disconnect", b'{"user":"u","reason":"' + b"r" * 201 + b'"}',
     400, "invalid_request"),
    ("disconnect reason a list", "POST", "/disconnect", b'{"user":"u","reason":["r"]}', 400, "invalid_request"),
    ("disconnect reconnect a string", "POST", "/disconnect", b'{"user":"u","reconnect":"false"}', 400,
     "invalid_request"),
    ("disconnect reconnect 0", "POST", "/disconnect", b'{"user":"u","reconnect":0}', 400, "invalid_request"),
    ("subscribe without channel", "POST", "/subscribe", b'{"user":"u"}', 400, "invalid_request"),
    ("subscribe channel of a namespace not configured", "POST", "/subscribe", b'{"user":"u","channel":"nope:x"}',
     400, "invalid_channel"),
    ("subscribe a reserved channel", "POST", "/subscribe", b'{"user":"u","channel":"chloe.status"}', 400,
     "invalid_channel"),
    ("subscribe a user channel", "POST", "/subscribe", b'{"user":"u","channel":"#u:other"}', 400,
     "invalid_channel"),
    ("subscribe channel with a space", "POST", "/subscribe", b'{"user":"u","channel":"a b"}', 400,
     "invalid_channel"),
    ("subscribe channel of 10000 characters", "POST", "/subscribe",
     b'{"user":"u","channel":"' + b"c" * 10000 + b'"}', 400, "invalid_channel"),
    ("subscribe channel a list", "POST", "/subscribe", b'{"user":"u","channel":["a"]}', 400, "invalid_channel"),
    ("subscribe persist with a session", "POST", "/subscribe", b'{"session":"s","channel":"a","persist":true}',
     400, "invalid_request"),
    ("subscribe persist a string", "POST", "/subscribe", b'{"user":"u","channel":"a","persist":"yes"}', 400,
     "invalid_request"),
    ("subscribe user of 10000 characters", "POST", "/subscribe",
     b'{"user":"' + _BIG_USER.encode() + b'","channel":"a"}', 400, "invalid_user"),
    ("subscribe reason (a field of disconnect)", "POST", "/subscribe", b'{"user":"u","channel":"a","reason":"r"}',
     400, "invalid_request"),
    ("subscribe unknown session", "POST", "/subscribe", b'{"session":"nope","channel":"a"}', 404,
     "unknown_session"),
    ("unsubscribe channel of a namespace not configured", "POST", "/unsubscribe",
     b'{"user":"u","channel":"nope:x","persist":true}', 400, "invalid_channel"),
    ("unsubscribe no target", "POST", "/unsubscribe", b'{"channel":"a"}', 400, "invalid_request"),
    ("unsubscribe body a string", "POST", "/unsubscribe", b'"a"', 400, "invalid_request"),
    ("revoke nothing named", "POST", "/revoke", b"{}", 400, "invalid_request"),
    ("revoke jti and user", "POST", "/revoke", b'{"jti":"j","user":"u"}', 400, "invalid_request"),
    ("revoke jti empty", "POST", "/revoke", b'{"jti":""}', 400, "invalid_request"),
    ("revoke jti of 10000 characters", "POST", "/revoke", b'{"jti":"' + b"j" * 10000 + b'"}', 400,
     "invalid_request"),
    ("revoke jti a number", "POST", "/revoke", b'{"jti":5}', 400, "invalid_request"),
    ("revoke jti with a control character", "POST", "/revoke", b'{"jti":"a\\u001fb"}', 400, "invalid_request"),
    ("revoke jti with before", "POST", "/revoke", b'{"jti":"j","before":5}', 400, "invalid_request"),
    ("revoke user with until", "POST", "/revoke", b'{"user":"u","until":5}', 400, "invalid_request"),
    ("revoke until negative", "POST", "/revoke", b'{"jti":"j","until":-1}', 400, "invalid_request"),
    ("revoke until 1e400", "POST", "/revoke", b'{"jti":"j","until":1e400}', 400, "invalid_request"),
    ("revoke until of 5000 digits", "POST", "/revoke", b'{"jti":"j","until":' + b"9" * 5000 + b"}", 400,
     "invalid_request"),
    ("revoke until past year 9999", "POST", "/revoke", b'{"jti":"j","until":253402300800}', 400,
     "invalid_request"),
    ("revoke until true", "POST", "/revoke", b'{"jti":"j","until":true}', 400, "invalid_request"),
    ("revoke before a string", "POST", "/revoke", b'{"user":"u","before":"now"}', 400, "invalid_request"),
    ("revoke user of 10000 characters", "POST", "/revoke", b'{"user":"' + _BIG_USER.encode() + b'"}', 400,
     "invalid_user"),
    ("revoke unknown field", "POST", "/revoke", b'{"jti":"j","exp":5}', 400, "invalid_request"),
    ("user of 10000 characters", "GET", "/users/" + _BIG_USER, None, 400, "invalid_user"),
    ("user of 129 characters", "GET", "/users/" + "u" * 129, None, 400, "invalid_user"),
    ("user with a nul", "GET", "/users/a%00b", None, 400, "invalid_user"),
    ("user with a newline", "GET", "/users/a%0Ab", None, 400, "invalid_user"),
    ("user not UTF-8", "GET", "/users/%FF", None, 400, "bad_request"),
    ("users without an id", "GET", "/users", None, 404, "not_found"),
    ("history limit negative", "GET", "/channels/news/history?limit=-1", None, 400, "invalid_request"),
    ("history limit 0", "GET", "/channels/news/history?limit=0", None, 400, "invalid_request"),
    ("history limit 1001", "GET", "/channels/news/history?limit=1001", None, 400, "invalid_request"),
    ("history limit of 5000 digits", "GET", "/channels/news/history?limit=" + "9" * 5000, None, 400,
     "invalid_request"),
    ("history limit letters", "GET", "/channels/news/history?limit=ten", None, 400, "invalid_request"),
    ("history limit twice", "GET", "/channels/news/history?limit=1&limit=2", None, 400, "invalid_request"),
    ("history since letters", "GET", "/channels/news/history?since=abc", None, 400, "invalid_request"),
    ("history since of 65 characters", "GET", "/channels/news/history?since=" + "1" * 32 + "-" + "1" * 32, None,
     400, "invalid_request"),
    ("history since a JWT", "GET", "/channels/news/history?since=eyJhbGciOiJIUzI1NiJ9.e30.c2ln", None, 400,
     "invalid_request"),
    ("history since not UTF-8", "GET", "/channels/news/history?since=%FF", None, 400, "invalid_request"),
    ("history of a namespace not configured", "GET", "/channels/nope:x/history", None, 400, "invalid_channel"),
    ("history of a user channel", "GET", "/channels/%23u%3Aalice/history", None, 400, "invalid_channel"),
    ("history of a bad name", "GET", "/channels/a%20b/history", None, 400, "invalid_channel"),
    ("GET /disconnect", "GET", "/disconnect", None, 405, "method_not_allowed"),
    ("DELETE /users/u", "DELETE", "/users/u", None, 405, "method_not_allowed"),
    ("POST /channels/news/history", "POST", "/channels/news/history", b"{}", 405, "method_not_allowed"),
    ("POST /revoke/more", "POST", "/revoke/more", b"{}", 404, "not_found"),
]


# -- WebSocket protocol violations after a good handshake: (name, bytes) ----
# Each must close the connection (Autobahn fails by dropping TCP, so a close
# frame, when there is one, must carry a protocol error code).

_PING = b'{"type":"ping"}'

WS_VIOLATIONS: list[tuple[str, Any]] = (
    [(f"reserved opcode {op:#x}", lambda op=op: ws_frame(op, b"x")) for op in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF)]
    + [
        ("RSV1 on text", lambda: ws_frame(TEXT, _PING, rsv=4)),
        ("RSV2 on text", lambda: ws_frame(TEXT, _PING, rsv=2)),
        ("RSV3 on text", lambda: ws_frame(TEXT, _PING, rsv=1)),
        ("all RSV bits on binary", lambda: ws_frame(BINARY, b"x", rsv=7)),
        ("RSV1 on ping", lambda: ws_frame(PING, b"x", rsv=4)),
        ("RSV2 on close", lambda: ws_frame(CLOSE, close_payload(1000), rsv=2)),
        ("unmasked text", lambda: ws_frame(TEXT, _PING, mask=False)),
        ("unmasked binary", lambda: ws_frame(BINARY, b"x", mask=False)),
        ("unmasked ping", lambda: ws_frame(PING, b"x", mask=False)),
        ("unmasked close", lambda: ws_frame(CLOSE, close_payload(1000), mask=False)),
        ("fragmented ping", lambda: ws_frame(PING, b"x", fin=False)),
        ("fragmented pong", lambda: ws_frame(PONG, b"x", fin=False)),
        ("fragmented close", lambda: ws_frame(CLOSE, close_payload(1000), fin=False)),
        ("ping over 125 bytes", lambda: ws_frame(PING, b"x" * 126)),
        ("pong over 125 bytes", lambda: ws_frame(PONG, b"x" * 200)),
        ("close over 125 bytes", lambda: ws_frame(CLOSE, close_payload(1000, b"r" * 124))),
        ("continuation with nothing to continue", lambda: ws_frame(CONT, b"x")),
        ("text inside a fragmented text",
         lambda: ws_frame(TEXT, b'{"type":', fin=False) + ws_frame(TEXT, b'"ping"}')),
        ("binary inside a fragmented text",
         lambda: ws_frame(TEXT, b'{"type":', fin=False) + ws_frame(BINARY, b"x")),
        ("64-bit length with the top bit set", lambda: ws_frame(TEXT, b"", length=1 << 63, length_form="64")),
        ("64-bit length of a terabyte", lambda: ws_frame(TEXT, b"", length=1 << 40, length_form="64")),
        ("length over four times the limit", lambda: ws_frame(TEXT, b"", length=4 * MAX + 1)),
        ("16-bit length for a short payload", lambda: ws_frame(TEXT, _PING, length_form="16")),
        ("64-bit length for a short payload", lambda: ws_frame(TEXT, _PING, length_form="64")),
    ]
    + [(f"close code {code}", lambda code=code: ws_frame(CLOSE, close_payload(code)))
       for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)]
    + [
        ("close with a one-byte payload", lambda: ws_frame(CLOSE, b"\x03")),
        ("close reason not UTF-8", lambda: ws_frame(CLOSE, close_payload(1000, b"bye \xff"))),
        ("text not UTF-8", lambda: ws_frame(TEXT, b'{"type":"send","data":"\xff"}')),
        ("text with an encoded surrogate", lambda: ws_frame(TEXT, b'{"type":"send","data":"\xed\xa0\x80"}')),
        ("text with an overlong encoding", lambda: ws_frame(TEXT, b'{"type":"send","data":"\xc0\xaf"}')),
        ("text beyond U+10FFFF", lambda: ws_frame(TEXT, b'{"type":"send","data":"\xf4\x90\x80\x80"}')),
        ("text ending inside a character", lambda: ws_frame(TEXT, b'{"type":"ping"}\xe2\x82')),
        ("invalid UTF-8 across fragments",
         lambda: ws_frame(TEXT, b'{"type":"ping","x":"\xe2', fin=False) + ws_frame(CONT, b'\x28\xa1"}')),
        ("garbage words after the handshake", lambda: b"hello world\r\n"),
        ("a second HTTP request", lambda: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("a TLS ClientHello", lambda: bytes.fromhex("16030100a5010000a10303") + bytes(range(32))),
        ("nul bytes", lambda: b"\x00" * 16),
    ]
)


# -- WebSocket handshakes: (name, RawWebSocket kwargs, expected status) ------

HANDSHAKES: list[tuple[str, dict[str, Any], int]] = [
    ("no Sec-WebSocket-Key", {"headers": {"Sec-WebSocket-Key": None}}, 400),
    ("key not base64", {"headers": {"Sec-WebSocket-Key": "!!!not base64!!!"}}, 400),
    ("key of 3 bytes", {"headers": {"Sec-WebSocket-Key": "AAAA"}}, 400),
    ("key of 32 bytes", {"headers": {"Sec-WebSocket-Key": base64.b64encode(b"k" * 32).decode()}}, 400),
    ("two keys", {"extra_lines": ["Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]}, 400),
    ("version 12", {"headers": {"Sec-WebSocket-Version": "12"}}, 400),
    ("version 14", {"headers": {"Sec-WebSocket-Version": "14"}}, 400),
    ("version not a number", {"headers": {"Sec-WebSocket-Version": "abc"}}, 400),
    ("no version", {"headers": {"Sec-WebSocket-Version": None}}, 400),
    ("no Connection header", {"headers": {"Connection": None}}, 400),
    ("Connection: close", {"headers": {"Connection": "close"}}, 400),
    ("Upgrade: h2c", {"headers": {"Upgrade": "h2c"}}, 400),
    ("no Host", {"headers": {"Host": None}}, 400),
    ("junk extension offer", {"headers": {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits=99, x;;;"}}, 400),
    ("junk subprotocol list", {"headers": {"Sec-WebSocket-Protocol": ",,, @@"}}, 400),
    ("POST upgrade", {"request_line": "POST /ws HTTP/1.1"}, 405),
]


# -- POST /send: (name, headers, body, auth, status, error code) -------------
# auth: True sends the right bearer; otherwise headers say it all.

_JSON = {"Content-Type": "application/json"}
_FORM = {"Content-Type": "application/x-www-form-urlencoded"}

SEND_REQUESTS: list[tuple[str, dict[str, str], bytes, bool, int, str]] = [
    ("no Authorization", _JSON, b'{"data":1}', False, 401, "unauthorized"),
    ("wrong secret", {**_JSON, "Authorization": "Bearer not-the-secret"}, b'{"data":1}', False, 401, "unauthorized"),
    ("Basic auth", {**_JSON, "Authorization": "Basic " + base64.b64encode(b"u:" + SECRET.encode()).decode()},
     b'{"data":1}', False, 401, "unauthorized"),
    ("Bearer without a token", {**_JSON, "Authorization": "Bearer"}, b'{"data":1}', False, 401, "unauthorized"),
    ("the secret with a tail", {**_JSON, "Authorization": "Bearer " + SECRET + "x"}, b'{"data":1}', False, 401,
     "unauthorized"),
    ("the secret cut short", {**_JSON, "Authorization": "Bearer " + SECRET[:-1]}, b'{"data":1}', False, 401,
     "unauthorized"),
    ("the secret without a scheme", {**_JSON, "Authorization": SECRET}, b'{"data":1}', False, 401, "unauthorized"),
    ("Token scheme", {**_JSON, "Authorization": "Token " + SECRET}, b'{"data":1}', False, 401, "unauthorized"),
    ("non-ASCII bearer", {**_JSON, "Authorization": "Bearer s\u00e9cret"}, b'{"data":1}', False, 401,
     "unauthorized"),
    ("empty JSON body", _JSON, b"", True, 400, "bad_request"),
    ("truncated JSON body", _JSON, b'{"data":', True, 400, "bad_request"),
    ("JSON null body", _JSON, b"null", True, 400, "bad_request"),
    # (an array is a batch since issue 16: one with no message is refused whole)
    ("empty JSON array (an empty batch)", _JSON, b'[]', True, 400, "bad_request"),
    ("JSON string body", _JSON, b'"data"', True, 400, "bad_request"),
    ("JSON object without data", _JSON, b"{}", True, 400, "bad_request"),
    ("channel but no data", _JSON, b'{"channel":"a"}', True, 400, "bad_request"),
    ("unknown field", _JSON, b'{"data":1,"bogus":2}', True, 400, "bad_request"),
    ("NaN data", _JSON, b'{"data":NaN}', True, 400, "bad_request"),
    ("Infinity data", _JSON, b'{"data":[Infinity]}', True, 400, "bad_request"),
    ("1e400 data", _JSON, b'{"data":1e400}', True, 400, "bad_request"),
    ("lone surrogate data", _JSON, b'{"data":"\\ud800"}', True, 400, "bad_request"),
    ("lone surrogate channel", _JSON, b'{"data":1,"channel":"\\udc00"}', True, 400, "bad_request"),
    ("not UTF-8", _JSON, b'{"data":"\xff"}', True, 400, "bad_request"),
    ("UTF-16 body", _JSON, '{"data":1}'.encode("utf-16"), True, 400, "bad_request"),
    ("deeply nested data", _JSON, b'{"data":' + b"[" * 4000 + b"]" * 4000 + b"}", True, 400, "bad_request"),
    ("5000-digit integer data", _JSON, b'{"data":' + b"7" * 5000 + b"}", True, 400, "bad_request"),
    ("channel a number", _JSON, b'{"data":1,"channel":5}', True, 400, "invalid_channel"),
    ("channel an object", _JSON, b'{"data":1,"channel":{}}', True, 400, "invalid_channel"),
    ("channel list of numbers", _JSON, b'{"data":1,"channel":[5]}', True, 400, "invalid_channel"),
    ("one bad channel of two", _JSON, b'{"data":1,"channel":["ok","a b"]}', True, 400, "invalid_channel"),
    ("channel empty", _JSON, b'{"data":1,"channel":""}', True, 400, "invalid_channel"),
    ("channel 129 characters", _JSON, b'{"data":1,"channel":"' + b"c" * 129 + b'"}', True, 400, "invalid_channel"),
    ("channel list nested", _JSON, b'{"data":1,"channel":[["a"]]}', True, 400, "invalid_channel"),
    ("session a number", _JSON, b'{"data":1,"session":5}', True, 400, "bad_request"),
    ("exclude a list", _JSON, b'{"data":1,"exclude":[]}', True, 400, "bad_request"),
    ("session and channel", _JSON, b'{"data":1,"session":"s","channel":"a"}', True, 400, "bad_request"),
    ("unknown session", _JSON, b'{"data":1,"session":"no-such-session"}', True, 404, "unknown_session"),
    # empty targets are mistakes, never "everyone"
    ("session empty", _JSON, b'{"data":1,"session":""}', True, 400, "bad_request"),
    ("channel list empty", _JSON, b'{"data":1,"channel":[]}', True, 400, "invalid_channel"),
    ("form session empty", _FORM, b"data=1&session=", True, 400, "bad_request"),
    ("body one byte over the limit", _JSON, b'{"data":"' + b"x" * (MAX - 10) + b'"}', True, 413, "too_large"),
    ("body of a megabyte", _JSON, b'{"data":"' + b"x" * 2 ** 20 + b'"}', True, 413, "too_large"),
    ("empty form", _FORM, b"", True, 400, "bad_request"),
    ("form without data", _FORM, b"channel=a", True, 400, "bad_request"),
    ("form data twice", _FORM, b"data=1&data=2", True, 400, "bad_request"),
    ("form bad channel", _FORM, b"data=x&channel=a%20b", True, 400, "invalid_channel"),
    ("form empty channel", _FORM, b"data=x&channel=", True, 400, "invalid_channel"),
    ("form data not UTF-8", _FORM, b"data=%FF", True, 400, "bad_request"),
    ("form channel not UTF-8", _FORM, b"data=x&channel=%FF", True, 400, "bad_request"),
    ("form session twice", _FORM, b"data=x&session=a&session=b", True, 400, "bad_request"),
    ("form session and channel", _FORM, b"data=x&session=s&channel=a", True, 400, "bad_request"),
    ("form unknown session", _FORM, b"data=x&session=nope", True, 404, "unknown_session"),
    # users (issue 19)
    ("user of 9000 characters", _JSON, b'{"data":1,"user":"' + b"u" * 9000 + b'"}', True, 400, "invalid_user"),
    ("user of 129 characters", _JSON, b'{"data":1,"user":"' + b"u" * 129 + b'"}', True, 400, "invalid_user"),
    ("user empty", _JSON, b'{"data":1,"user":""}', True, 400, "invalid_user"),
    ("user a number", _JSON, b'{"data":1,"user":5}', True, 400, "invalid_user"),
    ("user an object", _JSON, b'{"data":1,"user":{}}', True, 400, "invalid_user"),
    ("user list empty", _JSON, b'{"data":1,"user":[]}', True, 400, "invalid_user"),
    ("user list with null", _JSON, b'{"data":1,"user":["a",null]}', True, 400, "invalid_user"),
    ("user with a nul", _JSON, b'{"data":1,"user":"a\\u0000b"}', True, 400, "invalid_user"),
    ("user with a DEL", _JSON, b'{"data":1,"user":"a\\u007fb"}', True, 400, "invalid_user"),
    ("user a lone surrogate", _JSON, b'{"data":1,"user":"\\ud800"}', True, 400, "bad_request"),
    ("user and session", _JSON, b'{"data":1,"user":"u","session":"s"}', True, 400, "bad_request"),
    ("form user empty", _FORM, b"data=x&user=", True, 400, "invalid_user"),
    ("form user of 9000 characters", _FORM, b"data=x&user=" + b"u" * 9000, True, 400, "invalid_user"),
    ("form user with a nul", _FORM, b"data=x&user=a%00b", True, 400, "invalid_user"),
    ("form user not UTF-8", _FORM, b"data=x&user=%FF", True, 400, "bad_request"),
    ("form user and session", _FORM, b"data=x&user=u&session=s", True, 400, "bad_request"),
    # namespaces: the fuzzed chloed has chat, its data held to 1000 bytes
    ("channel of a namespace not configured", _JSON, b'{"data":1,"channel":"nope:x"}', True, 400,
     "invalid_channel"),
    ("form channel of a namespace not configured", _FORM, b"data=x&channel=nope:x", True, 400, "invalid_channel"),
    ("data over its namespace's limit", _JSON, b'{"data":"' + b"x" * 1200 + b'","channel":"chat:a"}', True, 413,
     "too_large"),
    ("data over the limit of one namespace of two", _JSON,
     b'{"data":"' + b"x" * 1200 + b'","channel":["plain","chat:a"]}', True, 413, "too_large"),
    # an unknown form field is a 400 that names it, never a broadcast
    ("form misspelt user", _FORM, b"data=x&users=u1", True, 400, "bad_request"),
    ("form misspelt channel", _FORM, b"data=x&chanel=room", True, 400, "bad_request"),
    ("form bogus field", _FORM, b"data=x&bogus=1", True, 400, "bad_request"),
    ("form unknown field beside a channel", _FORM, b"data=x&channel=a&extra=1", True, 400, "bad_request"),
    ("form empty field name", _FORM, b"data=x&=1", True, 400, "bad_request"),
    ("form field not UTF-8", _FORM, b"data=x&%FF=1", True, 400, "bad_request"),
    ("form over the limit", _FORM, b"data=" + b"x" * MAX, True, 413, "too_large"),
    ("JSON body as text/plain", {"Content-Type": "text/plain"}, b'{"data":1}', True, 400, "bad_request"),
    ("JSON body without a content type", {}, b'{"data":1}', True, 400, "bad_request"),
    ("JSON body as application/xml", {"Content-Type": "application/xml"}, b'{"data":1}', True, 400,
     "bad_request"),
    ("latin-1 JSON body", {"Content-Type": "application/json; charset=latin-1"}, b'{"data":"caf\xe9"}', True,
     400, "bad_request"),
    ("upper-case content type, no data", {"Content-Type": "APPLICATION/JSON"}, b"{}", True, 400, "bad_request"),
]


# -- long-poll and JSONP queries ---------------------------------------------
# Opening a session with bad subscriptions: (name, query, error codes the
# frames after ``connected`` must carry, in order).

POLL_OPENS: list[tuple[str, str, list[str]]] = [
    ("poll channel with a space", "channel=a%20b", ["invalid_channel"]),
    ("poll channel empty", "channel=", ["invalid_channel"]),
    ("poll channel 129 characters", "channel=" + "c" * 129, ["invalid_channel"]),
    ("poll channel of 10000 characters", "channel=" + "c" * 10000, ["invalid_channel"]),
    ("poll channel with a slash", "channel=a%2Fb", ["invalid_channel"]),
    ("poll channel with a nul", "channel=a%00", ["invalid_channel"]),
    ("poll private channel without token", "channel=private-room", ["forbidden"]),
    ("poll private channel, garbage token", "channel=private-room&token=garbage", ["forbidden"]),
    ("poll private channel, token not UTF-8", "channel=private-room&token=%FF", ["forbidden"]),
    ("poll since of 65 characters", "channel=ok&since=" + "1" * 65, ["bad_frame"]),
    ("poll good and bad channels", "channel=ok&channel=a%20b&channel=", ["invalid_channel", "invalid_channel"]),
    ("poll nine channels, limit eight", "&".join(f"channel=c{i}" for i in range(9)), ["too_many_subscriptions"]),
    ("poll channel of a namespace not configured", "channel=nope:x", ["invalid_channel"]),
]

# Polling an existing session with a bad cursor: (name, cursor query part).
BAD_CURSORS: list[tuple[str, str]] = [
    ("cursor missing", ""),
    ("cursor empty", "cursor="),
    ("cursor letters", "cursor=abc"),
    ("cursor negative", "cursor=-1"),
    ("cursor decimal", "cursor=1.5"),
    ("cursor with plus", "cursor=%2B1"),
    ("cursor with a leading space", "cursor=%201"),
    ("cursor hex", "cursor=0x1"),
    ("cursor superscript two", "cursor=%C2%B2"),
    ("cursor arabic-indic digit", "cursor=%D9%A3"),
    ("cursor fullwidth digit", "cursor=%EF%BC%91"),
    ("cursor of 5000 digits", "cursor=" + "9" * 5000),
    ("cursor of 21 digits", "cursor=" + "1" * 21),
    ("cursor beyond what was sent", "cursor=99"),
    ("cursor not UTF-8", "cursor=%FF"),
    ("cursor twice, first bad", "cursor=abc&cursor=0"),
]

# Session names that name no session: (name, session query value).
BAD_SESSIONS: list[tuple[str, str]] = [
    ("unknown session", "no-such-session"),
    ("empty session", ""),
    ("session not UTF-8", "%FF"),
    ("session of 10000 characters", "s" * 10000),
    ("session with a nul", "a%00b"),
]

# -- JSONP callbacks that must get 400 ---------------------------------------
# (name, the query part after "callback=", already percent-encoded)

BAD_CALLBACKS: list[tuple[str, str]] = [
    ("callback empty", ""),
    ("callback starts with a digit", "1abc"),
    ("callback with a hyphen", "a-b"),
    ("callback with a space", "a%20b"),
    ("callback with parentheses", "a(b)"),
    ("callback alert(1)", "alert(1)"),
    ("callback with a semicolon", "a%3Bb"),
    ("callback double dot", "a..b"),
    ("callback leading dot", ".a"),
    ("callback trailing dot", "a."),
    ("callback only a dot", "."),
    ("callback with brackets", "a%5B0%5D"),
    ("callback with a quote", "a'b"),
    ("callback with a double quote", "a%22b"),
    ("callback with markup", "%3Cscript%3E"),
    ("callback accented", "caf%C3%A9"),
    ("callback fullwidth", "%EF%BD%81"),
    ("callback with a line separator", "a%E2%80%A8"),
    ("callback nul", "%00"),
    ("callback with a nul inside", "a%00b"),
    ("callback part of 65 characters", "a" * 65),
    ("callback of 304 characters in 64-character parts", ".".join(["a" * 60] * 5)),
    ("callback with a slash", "a%2Fb"),
    ("callback with a backslash", "a%5Cb"),
    ("callback with an equals sign", "a%3Db"),
    ("callback with a colon", "a:b"),
    ("callback with a comma", "a%2Cb"),
    ("callback with a plus", "a%2Bb"),
    ("callback with a star", "a*b"),
    ("callback with a hash", "a%23b"),
    ("callback not UTF-8", "%FF"),
    ("callback with a newline", "a%0Ab"),
    ("callback with a tab", "a%09b"),
    ("callback zero-width space", "a%E2%80%8Bb"),
    ("callback with a combining accent", "a%CC%81"),
    ("callback twice, first bad", "1bad&callback=ok"),
]

# -- POST /session/<id>: bad bodies on a live long-poll session ----------------
# (name, content type, body, status, error code of the 4xx or of the frames
# the next poll carries)

SESSION_BODIES: list[tuple[str, str, bytes, int, list[str]]] = [
    ("session body empty", "text/plain", b"", 400, ["bad_frame"]),
    ("session body truncated", "text/plain", b'{"type":', 400, ["bad_frame"]),
    ("session body NaN", "text/plain", b"NaN", 400, ["bad_frame"]),
    ("session body 1e400", "text/plain", b'[{"type":"send","data":1e400}]', 400, ["bad_frame"]),
    ("session body not UTF-8", "text/plain", b'{"type":"ping","x":"\xff"}', 400, ["bad_frame"]),
    ("session body lone surrogate in a batch", "text/plain", b'[{"type":"ping","x":"\\ud800"}]', 400,
     ["bad_frame"]),
    ("session body nested too deep", "text/plain", b"[" * 20000 + b"]" * 20000, 400, ["bad_frame"]),
    ("session body over four times the limit", "text/plain", b"[" + b" " * (4 * MAX) + b"]", 413, ["too_large"]),
    ("session body of a megabyte", "application/json", b"x" * 2 ** 20, 413, ["too_large"]),
    ("session batch of an empty list", "text/plain", b"[[]]", 204, ["bad_frame"]),
    ("session batch of numbers", "text/plain", b"[1,2]", 204, ["bad_frame", "bad_frame"]),
    ("session batch of an unknown type", "text/plain", b'[{"type":"nope"}]', 204, ["unknown_type"]),
    ("session batch with a bad channel", "text/plain", b'[{"type":"subscribe","channel":"a b"}]', 204,
     ["invalid_channel"]),
    ("session batch subscribe without channel", "text/plain", b'[{"type":"subscribe"}]', 204, ["bad_frame"]),
    ("session batch send without data", "text/plain", b'[{"type":"send"}]', 204, ["bad_frame"]),
    ("session private channel without token", "text/plain", b'{"type":"subscribe","channel":"private-room"}',
     204, ["forbidden"]),
    ("session body JSON null", "text/plain", b"null", 204, ["bad_frame"]),
    ("session body JSON number", "text/plain", b"42", 204, ["bad_frame"]),
    ("session batch item over the limit", "text/plain",
     b'[{"type":"ping","pad":"' + b"x" * (MAX + 10) + b'"}]', 204, ["too_large"]),
    ("session batch mixing good and bad", "text/plain",
     b'[{"type":"nope"},{"type":"unsubscribe"},{"type":"send","channel":5,"data":1}]', 204,
     ["unknown_type", "bad_frame", "invalid_channel"]),
    ("session body as JSON content type, unknown type", "application/json", b'{"type":"nope"}', 204,
     ["unknown_type"]),
]

# -- Origins refused (allowed_origins = [GOOD_ORIGIN]) ------------------------

BAD_ORIGINS: list[tuple[str, str]] = [
    ("another site", "http://evil.example"),
    ("null origin", "null"),
    ("allowed origin as a prefix", "http://good.example.evil.example"),
    ("other scheme", "https://good.example"),
    ("other port", "http://good.example:8080"),
    ("userinfo trick", "http://good.example@evil.example"),
]

# -- raw HTTP that is not HTTP: (name, bytes, half_close, expected status) ----
# expected None: the server hangs up without an answer.

RAW_HTTP: list[tuple[str, bytes, bool, int | None]] = [
    ("request line of one word", b"GARBAGE\r\n\r\n", False, 400),
    ("empty request line", b"\r\n\r\n", True, 400),
    ("method only", b"GET\r\n\r\n", False, 400),
    ("four words in the request line", b"GET / HTTP/1.1 extra\r\n\r\n", False, 400),
    ("HTTP/9.9", b"GET / HTTP/9.9\r\n\r\n", False, 400),
    ("not HTTP", b"GET / FOO/1.1\r\n\r\n", False, 400),
    ("binary junk", b"\xff\xfe\x00\x01" * 25 + b"\r\n\r\n", False, 400),
    ("TLS ClientHello on the plain port", bytes.fromhex("16030100a5010000a10303") + b"\x00" * 32 + b"\r\n\r\n",
     False, 400),
    ("request line of 70 KB", b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", False, None),
    ("one header of 20 KB", b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", False, None),
    ("400 headers", b"GET /health HTTP/1.1\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 60) for i in range(400))
     + b"\r\n", False, 400),
    ("header without a colon", b"GET /health HTTP/1.1\r\nNoColonHere\r\n\r\n", False, 400),
    ("Content-Length not a number", b"POST /send HTTP/1.1\r\nContent-Length: abc\r\n\r\n", False, 400),
    ("Content-Length negative", b"POST /send HTTP/1.1\r\nContent-Length: -1\r\n\r\n", False, 400),
    ("Content-Length in exponent form", b"POST /send HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n", False, 400),
    ("two different Content-Lengths", b"POST /send HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
     False, 400),
    ("Content-Length and chunked", b"POST /send HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"
     b"\r\n0\r\n\r\n", False, 400),
    ("Transfer-Encoding gzip", b"POST /send HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", False, 400),
    ("Transfer-Encoding chunked then identity, a request hidden after the body",
     b"POST /send HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n"
     b"GET /health HTTP/1.1\r\n\r\n", False, 400),
    ("Transfer-Encoding identity and Content-Length",
     b"POST /send HTTP/1.1\r\nTransfer-Encoding: identity\r\nContent-Length: 0\r\n\r\n", False, 400),
    ("chunk size not hex", b"POST /send HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", False, 400),
    ("chunk size negative", b"POST /send HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", False, 400),
    ("chunk data longer than its size",
     b"POST /send HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n", False, 400),
    ("chunk size with a space inside", b"POST /send HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1 0\r\n", False,
     400),
    ("body shorter than Content-Length, then EOF",
     b"POST /send HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc", True, None),
    ("chunked body cut off, then EOF",
     b"POST /send HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc", True, None),
    ("multipart body without parts", b"POST /send HTTP/1.1\r\nAuthorization: Bearer " + SECRET.encode()
     + b"\r\nContent-Type: multipart/form-data; boundary=x\r\nContent-Length: 5\r\n\r\nhello", False, 400),
    ("multipart without a boundary", b"POST /send HTTP/1.1\r\nAuthorization: Bearer " + SECRET.encode()
     + b"\r\nContent-Type: multipart/form-data\r\nContent-Length: 5\r\n\r\nhello", False, 400),
]

# Methods a browser endpoint does not serve: (name, method, path).
WRONG_METHODS: list[tuple[str, str, str]] = [
    ("POST /poll", "POST", "/poll"),
    ("DELETE /poll", "DELETE", "/poll"),
    ("POST /sse", "POST", "/sse"),
    ("PATCH /sse", "PATCH", "/sse"),
    ("PUT /jsonp", "PUT", "/jsonp?callback=cb"),
    ("POST /jsonp/send", "POST", "/jsonp/send?callback=cb"),
    ("GET /session/x", "GET", "/session/x"),
    ("BREW /session/x", "BREW", "/session/x"),
    ("PUT /", "PUT", "/"),
    ("TRACE /", "TRACE", "/"),
    ("OPTIONS /chloe.js", "OPTIONS", "/chloe.js"),
    ("DELETE /chloe.js", "DELETE", "/chloe.js"),
]
