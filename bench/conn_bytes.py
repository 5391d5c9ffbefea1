#!/usr/bin/env python3
"""What one idle WebSocket costs chloed, in bytes, and which objects they are.

    .venv/bin/python bench/conn_bytes.py -n 2000            # RSS per connection + object breakdown
    .venv/bin/python bench/conn_bytes.py -n 2000 --trace    # + tracemalloc, by allocating line

chloed runs in this process (``make_service(Config(...), reactor)`` on the
epoll reactor, listening on a free 127.0.0.1 port), so the breakdown can look
at its objects; the clients run in a child process (this file with
``--client``): raw sockets doing the RFC 6455 upgrade, each subscribing to one
channel (as ``bench/loadgen.c --idle`` does) and answering pings, driven over
stdin/stdout (``open K`` -> ``ok K``).

Steps: ``--warm`` connections first (so one-off costs, such as imports,
caches and the first pool of each allocator size class, are not counted),
then the RSS (``VmRSS``) and a census of the objects the garbage collector
tracks, then ``-n`` more connections, a settle, and the same again. It
reports:

* RSS delta / n: what the kernel counts, malloc and pymalloc overheads and
  fragmentation included (the figure of bench/RESULTS.md, measured from a
  warm server instead of a fresh one);
* with ``--trace``: the tracemalloc delta / n by allocating source line,
  instead of the RSS (tracemalloc's own bookkeeping inflates it);
* the census delta / n: gc-tracked objects per connection, by type;
* the walk: the objects reachable from one connection's transport and not
  from another's (so shared objects, interned strings and the factory's
  values are left out), with ``sys.getsizeof`` each, grouped by the
  attribute they hang from: the transport's, the protocol's (instance dict
  entries and slots), the session's; plus the HTTPChannel and Request of
  the upgrade if they are still alive. (``getsizeof`` leaves out the
  inline attribute values of an instance without a dict object, Python
  3.11's usual layout: the walk adds 8 bytes an attribute for them.)

Runs with the project's venv; kernel socket buffers are not in RSS and so
not in these numbers. Each process holds one descriptor per connection:
keep ``-n`` plus ``--warm`` under the open-file limit.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import selectors
import socket
import struct
import sys
import time
import types
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# ------------------------------------------------------------------ client


def _upgrade() -> bytes:
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    return (
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Origin: http://127.0.0.1\r\nUser-Agent: conn_bytes\r\n\r\n"
    ).encode()


def _masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


def _frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Complete server frames taken off the front of ``buf``."""
    out = []
    while len(buf) >= 2:
        opcode, n, i = buf[0] & 0x0F, buf[1] & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                break
            n, i = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, i = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < i + n:
            break
        out.append((opcode, bytes(buf[i:i + n])))
        del buf[:i + n]
    return out


class _Conn:
    __slots__ = ("sock", "buf", "upgraded", "ready")

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf, self.upgraded, self.ready = sock, bytearray(), False, False


def client_main(port: int, channel: str, window: int) -> None:
    """Open connections on ``open K`` from stdin; answer ``ok K`` once all
    are subscribed; answer pings; ``quit`` closes everything."""
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ, None)
    conns: list[_Conn] = []
    todo = pending = 0
    subscribe = _masked(0x1, json.dumps({"type": "subscribe", "channel": channel}).encode()) if channel else b""
    request = _upgrade()

    def start() -> None:
        nonlocal todo, pending
        while todo and pending < window:
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            conn = _Conn(sock)
            conns.append(conn)
            sel.register(sock, selectors.EVENT_WRITE, conn)
            todo -= 1
            pending += 1

    while True:
        for key, _ in sel.select(timeout=30):
            conn = key.data
            if conn is None:
                line = sys.stdin.readline()
                if not line or line.startswith("quit"):
                    for c in conns:
                        c.sock.close()
                    return
                todo += int(line.split()[1])
                start()
                continue
            sock = conn.sock
            if key.events & selectors.EVENT_WRITE:
                sock.sendall(request)
                sel.modify(sock, selectors.EVENT_READ, conn)
                continue
            try:
                data = sock.recv(65536)
            except ConnectionError:
                data = b""
            if not data:
                raise SystemExit(f"connection closed by the server ({len(conns)} opened)")
            conn.buf += data
            if not conn.upgraded:
                if b"\r\n\r\n" not in conn.buf:
                    continue
                head, _, rest = bytes(conn.buf).partition(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 101"):
                    raise SystemExit(f"upgrade refused: {head[:80]!r}")
                conn.upgraded, conn.buf = True, bytearray(rest)
                if subscribe:
                    sock.sendall(subscribe)
            for opcode, payload in _frames(conn.buf):
                if opcode == 0x9:
                    sock.sendall(_masked(0xA, payload))
                elif opcode == 0x1 and not conn.ready:
                    kind = json.loads(payload).get("type")
                    if kind == ("subscribed" if subscribe else "connected"):
                        conn.ready = True
                        pending -= 1
                        start()
                        if not todo and not pending:
                            sys.stdout.write(f"ok {len(conns)}\n")
                            sys.stdout.flush()
                    elif kind == "error":
                        raise SystemExit(f"error frame: {payload!r}")


# ------------------------------------------------------------------ server


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def census() -> collections.Counter:
    """gc-tracked objects by type name, with their sizes."""
    count: collections.Counter = collections.Counter()
    for obj in gc.get_objects():
        t = type(obj)
        count[(f"{t.__module__}.{t.__qualname__}", "n")] += 1
        count[(f"{t.__module__}.{t.__qualname__}", "b")] += sys.getsizeof(obj)
    return count


_OPAQUE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.CodeType,
           types.MethodDescriptorType, types.WrapperDescriptorType, types.GetSetDescriptorType,
           types.MemberDescriptorType, property, staticmethod, classmethod, types.FrameType)


def reach(roots: list[Any], stop: set[int], skip: Any = frozenset()) -> dict[int, Any]:
    """Every object reachable from ``roots``, not through ``stop`` or
    ``skip`` ids or shared kinds (types, modules, functions)."""
    seen: dict[int, Any] = {}
    todo = list(roots)
    while todo:
        obj = todo.pop()
        i = id(obj)
        if i in seen or i in stop or i in skip or isinstance(obj, _OPAQUE):
            continue
        seen[i] = obj
        todo.extend(gc.get_referents(obj))
    return seen


def deep(obj: Any, stop: set[int], other: dict[int, Any], claimed: set[int]) -> tuple[int, int]:
    """Bytes and objects reachable from ``obj`` that no other connection
    reaches and no earlier group took."""
    size = n = 0
    if id(obj) in claimed:
        return 0, 0
    for i, o in reach([obj], stop, claimed).items():
        if i in other or i in claimed:
            continue
        claimed.add(i)
        size += sys.getsizeof(o)
        n += 1
    return size, n


def breakdown(hub: Any, factory: Any, reactor: Any, site: Any,
              show_attributes: bool = False) -> list[tuple[str, int, int]]:
    """(group, bytes, objects) for one connection; ``show_attributes``
    prints the names set on its transport and protocol."""
    from chloed.transports.websocket import ChloeWebSocket

    gc.collect()
    protos = [o for o in gc.get_objects() if type(o) is ChloeWebSocket and o.session is not None]
    a, b = protos[len(protos) // 2], protos[len(protos) // 2 + 1]
    stop = {id(x) for x in (hub, factory, reactor, site, hub.broker, hub.config, sys.modules)}
    for name in ("log", "_log"):
        stop.add(id(getattr(a, name)))
    stop |= {id(x) for x in vars(factory).values()}
    other = reach([b.transport], stop)
    mine = reach([a.transport], stop)
    if id(b) in mine:
        raise RuntimeError("one connection reaches another: add a stop")
    rows: list[tuple[str, int, int]] = []
    claimed: set[int] = set()

    def one(label: str, obj: Any) -> None:
        i = id(obj)
        if i in claimed or i in other or i in stop:
            return
        claimed.add(i)
        rows.append((label, sys.getsizeof(obj), 1))

    def group(label: str, obj: Any) -> None:
        size, n = deep(obj, stop, other, claimed)
        if n:
            rows.append((label, size, n))

    def parts(prefix: str, obj: Any) -> None:
        one(f"{prefix} object", obj)
        # Reading __dict__ makes a dict object of an instance's inline
        # values (Python 3.11+): only a dict that was there before counts.
        dicts = [r for r in gc.get_referents(obj) if type(r) is dict]
        d = getattr(obj, "__dict__", None)
        if d is not None and any(r is d for r in dicts):
            one(f"{prefix}.__dict__ ({len(d)} attributes)", d)
        elif d:
            rows.append((f"{prefix} inline values ({len(d)} attributes, about)", 8 * len(d), 0))
        if d is not None:
            for k, v in sorted(d.items(), key=lambda kv: kv[0]):
                group(f"{prefix}.{k}", v)
        for k in getattr(type(obj), "__slots__", ()):
            if hasattr(obj, k):
                group(f"{prefix}.{k}", getattr(obj, k))

    transport = a.transport
    session = a.session
    # One group per attribute: the transport's (but its protocol), then the
    # protocol's (but its session), then the session's.
    claimed.update((id(a), id(session)))
    parts("tcp.Server", transport)
    claimed.discard(id(a))
    parts("ChloeWebSocket", a)
    claimed.discard(id(session))
    parts("Session", session)
    for i, o in mine.items():
        if i not in claimed and i not in other:
            rows.append((f"other: {type(o).__qualname__}", sys.getsizeof(o), 1))
            claimed.add(i)
    if show_attributes:
        for label, obj in (("tcp.Server", transport), ("ChloeWebSocket", a)):
            names = list(vars(obj)) + [k for k in getattr(type(obj), "__slots__", ()) if hasattr(obj, k)]
            print(f"{label}: {len(names)} attributes: {' '.join(names)}")
    return rows


def shared_growth(hub: Any, reactor: Any, n0: dict[str, int]) -> dict[str, int]:
    """Sizes of the containers every connection adds an entry to."""
    out = {
        "reactor._selectables": sys.getsizeof(reactor._selectables),
        "reactor._reads": sys.getsizeof(reactor._reads),
        "broker.sessions": sys.getsizeof(hub.broker.sessions),
    }
    return {k: v - n0.get(k, 0) for k, v in out.items()}


def server_main(args: argparse.Namespace) -> None:
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor, defer, task
    from twisted.internet.protocol import ProcessProtocol

    sys.path.insert(0, REPO)
    from chloed.config import Config
    from chloed.service import make_service

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    config = Config(listen=(f"tcp:{port}:interface=127.0.0.1",), heartbeat=args.heartbeat,
                    max_connections=100000)
    service = make_service(config, reactor)
    service.startService()
    hub, site = service.hub, service.site
    factory = site.resource.children[b"ws"]._factory

    class Client(ProcessProtocol):
        def __init__(self) -> None:
            self.waiting: defer.Deferred | None = None
            self.out = b""

        def outReceived(self, data: bytes) -> None:
            self.out += data
            while b"\n" in self.out:
                line, self.out = self.out.split(b"\n", 1)
                d, self.waiting = self.waiting, None
                if d is not None:
                    d.callback(line.decode())

        def errReceived(self, data: bytes) -> None:
            sys.stderr.write(data.decode(errors="replace"))

        def processEnded(self, reason: Any) -> None:
            d, self.waiting = self.waiting, None
            if d is not None:
                d.errback(reason)

        def say(self, line: str) -> None:
            assert self.transport is not None
            self.transport.write(line.encode() + b"\n")

        def open(self, k: int) -> defer.Deferred:
            self.waiting = defer.Deferred()
            self.say(f"open {k}")
            return self.waiting

    client = Client()
    reactor.spawnProcess(client, sys.executable,
                         [sys.executable, os.path.abspath(__file__), "--client", "--port", str(port),
                          "--channel", args.channel], env=os.environ)

    def settle(seconds: float) -> defer.Deferred:
        return task.deferLater(reactor, seconds, lambda: None)

    @defer.inlineCallbacks
    def run() -> Any:
        n = args.n
        result: dict[str, Any] = {"n": n, "warm": args.warm, "channel": args.channel, "python": sys.version.split()[0]}
        try:
            yield client.open(args.warm)
            yield settle(args.settle)
            gc.collect()
            containers0 = shared_growth(hub, reactor, {})
            rss0 = rss_bytes()
            census0 = census() if args.census else None
            trace0 = None
            if args.trace:
                import tracemalloc

                tracemalloc.start(1)
                trace0 = tracemalloc.take_snapshot()
            t0 = time.monotonic()
            yield client.open(n)
            result["connect_s"] = round(time.monotonic() - t0, 2)
            yield settle(args.settle)
            gc.collect()
            if trace0 is not None:
                import tracemalloc

                trace1 = tracemalloc.take_snapshot()
                tracemalloc.stop()
                stats = trace1.compare_to(trace0, "lineno")
                per = sorted(stats, key=lambda s: -s.size_diff)
                print(f"tracemalloc: {sum(s.size_diff for s in stats) / n:.0f} B per connection; by line:")
                for s in per[:args.top]:
                    if s.size_diff / n < 8:
                        break
                    f = s.traceback[0]
                    name = f.filename.replace(REPO + "/", "").split("site-packages/")[-1]
                    print(f"  {s.size_diff / n:7.0f} B {s.count_diff / n:5.1f} blocks  {name}:{f.lineno}")
                result["tracemalloc_per_conn"] = round(sum(s.size_diff for s in stats) / n)
            else:
                rss1 = rss_bytes()
                result["rss_before_kb"], result["rss_after_kb"] = rss0 // 1024, rss1 // 1024
                result["rss_per_conn"] = round((rss1 - rss0) / n)
                print(f"RSS: {rss0 / 1e6:.1f} MB -> {rss1 / 1e6:.1f} MB: {(rss1 - rss0) / n:.0f} B per connection")
            if census0 is not None:
                census1 = census()
                rows = []
                for (name, kind), v in census1.items():
                    if kind != "n":
                        continue
                    dn = (v - census0.get((name, "n"), 0)) / n
                    db = (census1[(name, "b")] - census0.get((name, "b"), 0)) / n
                    if dn >= 0.5:
                        rows.append((db, dn, name))
                rows.sort(reverse=True)
                print("gc-tracked objects per connection (getsizeof, shallow):")
                for db, dn, name in rows:
                    print(f"  {db:7.0f} B {dn:5.1f}  {name}")
                print(f"  {sum(r[0] for r in rows):7.0f} B in all")
            grown = shared_growth(hub, reactor, containers0)
            print("shared containers, growth per connection: "
                  + ", ".join(f"{k} {v / n:.0f} B" for k, v in grown.items()))
            rows = breakdown(hub, factory, reactor, site, args.attributes)
            total = sum(r[1] for r in rows)
            result["walk_per_conn"] = total
            objects = sum(r[2] for r in rows)
            print(f"one connection, objects no other connection reaches: {total} B in {objects} objects")
            merged: dict[str, list[int]] = {}
            for label, size, count in rows:
                m = merged.setdefault(label, [0, 0])
                m[0] += size
                m[1] += count
            for label, (size, count) in sorted(merged.items(), key=lambda kv: -kv[1][0]):
                if size >= args.min_bytes:
                    print(f"  {size:6d} B {count:4d} obj  {label}")
            small = sum(s for s, c in merged.values() if s < args.min_bytes)
            print(f"  {small:6d} B  (groups under {args.min_bytes} B each)")
            from twisted.web.http import HTTPChannel, Request

            alive = collections.Counter(type(o).__qualname__ for o in gc.get_objects()
                                        if isinstance(o, (HTTPChannel, Request)))
            print(f"HTTPChannel / Request objects alive with {n + args.warm} WebSockets: {dict(alive) or 'none'}")
            result["http_objects_alive"] = dict(alive)
            print(json.dumps(result))
        finally:
            client.say("quit")
            reactor.stop()

    reactor.callWhenRunning(run)
    reactor.run()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=2000, help="connections measured (default 2000)")
    p.add_argument("--warm", type=int, default=200, help="connections opened before measuring")
    p.add_argument("--channel", default="bench", help="channel each client subscribes to ('' for none)")
    p.add_argument("--heartbeat", type=float, default=25.0)
    p.add_argument("--settle", type=float, default=1.0, help="seconds waited after connecting")
    p.add_argument("--trace", action="store_true", help="tracemalloc by line (RSS not reported)")
    p.add_argument("--no-census", dest="census", action="store_false", help="skip the gc census")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--min-bytes", type=int, default=16, help="walk groups below this are summed")
    p.add_argument("--attributes", action="store_true", help="name the attributes of one connection")
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--window", type=int, default=50, help="handshakes in flight at once")
    args = p.parse_args()
    if args.client:
        client_main(args.port, args.channel, args.window)
    else:
        server_main(args)


if __name__ == "__main__":
    main()
