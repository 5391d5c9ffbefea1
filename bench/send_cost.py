#!/usr/bin/env python3
"""The Python cost of ``POST /send`` in-process: a chloed Site
(``make_service`` on a MemoryReactorClock) fed whole requests over a
StringTransport, no sockets and no subscribers, so what is left is parsing,
validation, the broker and the answer.

    .venv/bin/python bench/send_cost.py            # one message a request (form)
    .venv/bin/python bench/send_cost.py --batch 100  # JSON arrays of 100
    .venv/bin/python bench/send_cost.py --user       # to a user (user=), not a channel
    PYTHONPATH=/tmp/old .venv/bin/python bench/send_cost.py   # another checkout's code

Prints µs per message and messages per second on one core.
"""

from __future__ import annotations

import argparse
import json
import time

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from chloed.config import Config
from chloed.service import make_service


def request(batch: int, target: str = "channel") -> bytes:
    if batch:
        items = [{target: f"bench-{i % 1000}", "data": "x" * 100} for i in range(batch)]
        body, ctype = json.dumps(items).encode(), b"application/json"
    else:
        body, ctype = target.encode() + b"=bench-7&data=" + b"x" * 100, b"application/x-www-form-urlencoded"
    return (
        b"POST /send HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer bench-secret\r\n"
        b"Content-Type: " + ctype + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=0, help="messages per request (a JSON array); 0: a form")
    parser.add_argument("--requests", type=int, default=0, help="requests to time (default: about 2 s worth)")
    parser.add_argument("--user", action="store_true", help="to a user (user=) rather than a channel")
    args = parser.parse_args()
    service = make_service(Config(secret=("bench-secret",)), MemoryReactorClock(), open_files=lambda n: n)
    peer = IPv4Address("TCP", "127.0.0.1", 5555)
    protocol = service.site.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    data = request(args.batch, "user" if args.user else "channel")
    protocol.dataReceived(data)
    assert transport.value().startswith(b"HTTP/1.1 202"), transport.value()[:200]
    count = args.requests or (200 if args.batch else 20000)
    for _ in range(count // 10):  # warm-up
        protocol.dataReceived(data)
        transport.clear()
    started = time.perf_counter()
    for _ in range(count):
        protocol.dataReceived(data)
        transport.clear()
    elapsed = time.perf_counter() - started
    messages = count * (args.batch or 1)
    print(f"{elapsed / messages * 1e6:.1f} us per message, {messages / elapsed:,.0f} messages/s "
          f"({count} requests of {args.batch or 1})")


if __name__ == "__main__":
    main()
