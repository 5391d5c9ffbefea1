"""Logging what clients get wrong without letting them fill the disk.

Logged as they happen (Autobahn logs two lines per failed WebSocket),
client mistakes let anyone who can open a TCP connection grow the log as
fast as they can connect, and twistd's ``-l FILE`` keeps every rotated
file. Here each client address
gets at most one line per interval: the first mistake is logged as it
happens, the rest are counted and summed up in one line when the interval
is over (for example ``client 192.0.2.7: 37 more client errors in the last
60 s (websocket_protocol_error: 37)``). Every mistake is counted by kind
all the same, for ``/status`` and ``/metrics``.

Memory is bounded: at most ``max_keys`` addresses are remembered (10,000 by
default). A new address beyond that pushes out the one whose interval began
first, whose summary is then logged early. A client with many addresses
(an IPv6 prefix) still costs up to two lines per address: the limit is per
address, not per network.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any, Callable, Hashable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger()

#: Seconds between two lines about one client.
LOG_INTERVAL = 60.0
#: Client addresses remembered at most.
MAX_KEYS = 10_000
#: Characters of a mistake's description logged at most (some quote headers).
MAX_WHY = 200

#: The kinds of client error counted: a WebSocket failed with 1002 (a frame
#: breaking RFC 6455: reserved opcode or bits, unmasked, bad close frame…),
#: with 1007 (invalid UTF-8), with 1009 (over four times
#: ``max_message_bytes``), and a WebSocket upgrade refused with a 4xx (not
#: an upgrade, a bad key or version, an origin not allowed).
WS_PROTOCOL_ERROR = "websocket_protocol_error"
WS_INVALID_PAYLOAD = "websocket_invalid_payload"
WS_TOO_LARGE = "websocket_too_large"
WS_HANDSHAKE = "websocket_handshake"
#: A browser frame answered with an ``error`` frame (``bad_frame``,
#: ``invalid_channel``, ``forbidden``…), keyed by session (its tag).
FRAME_ERROR = "frame_error"
#: An HTTP request refused by the connection guard and closed (``408``,
#: ``413``, a body length given twice).
HTTP_REFUSED = "http_refused"
KINDS = (WS_PROTOCOL_ERROR, WS_INVALID_PAYLOAD, WS_TOO_LARGE, WS_HANDSHAKE, FRAME_ERROR, HTTP_REFUSED)

#: ``summarize(key, counts by kind, seconds)``: what was held back for ``key``.
Summarize = Callable[[Hashable, "Counter[str]", float], None]


class _Window:
    """One key's interval: when it began and what was held back since."""

    __slots__ = ("start", "held")

    def __init__(self, start: float) -> None:
        self.start = start
        self.held: Counter[str] = Counter()


class LogLimiter:
    """Says whether to log about a key now: yes once per ``interval``, and
    the events held back meanwhile are handed to ``summarize`` when the
    interval is over (by a timer, so the summary comes even if the key
    falls silent).

    :param clock: the reactor's time and timers.
    :param summarize: called with the key, the held-back counts by kind and
        the seconds they span; never with empty counts.
    :param interval: seconds between two allowed events of one key.
    :param max_keys: keys remembered at most; the oldest window is closed
        (and summarized) to make room.
    """

    def __init__(self, clock: IReactorTime, summarize: Summarize,
                 interval: float = LOG_INTERVAL, max_keys: int = MAX_KEYS) -> None:
        self.clock = clock
        self.summarize = summarize
        self.interval = interval
        self.max_keys = max_keys
        # Oldest window first (a key's next window is a new entry, at the end).
        self._windows: OrderedDict[Hashable, _Window] = OrderedDict()
        # How many windows hold something back: the timer runs while any do.
        self._holding = 0
        self._timer: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._windows)

    def allow(self, key: Hashable, kind: str = "") -> bool:
        """Whether to log this event of ``key`` now; if not, it is counted
        under ``kind`` for the summary."""
        now = self.clock.seconds()
        self._expire(now)
        window = self._windows.get(key)
        if window is not None:
            if not window.held:
                self._holding += 1
            window.held[kind] += 1
            self._schedule()
            return False
        while len(self._windows) >= self.max_keys:
            self._close(*self._windows.popitem(last=False), now)
        self._windows[key] = _Window(now)
        return True

    def _close(self, key: Hashable, window: _Window, now: float) -> None:
        if window.held:
            self._holding -= 1
            self.summarize(key, window.held, min(now - window.start, self.interval))

    def _expire(self, now: float) -> None:
        windows = self._windows
        while windows:
            key, window = next(iter(windows.items()))
            if now - window.start < self.interval:
                break
            del windows[key]
            self._close(key, window, now)

    def _schedule(self) -> None:
        """A timer for the oldest window's end, if none is set."""
        if self._timer is not None or not self._windows:
            return
        oldest = next(iter(self._windows.values()))
        delay = max(0.0, oldest.start + self.interval - self.clock.seconds())
        self._timer = self.clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._expire(self.clock.seconds())
        if self._holding:
            self._schedule()


class ClientErrors:
    """Client mistakes: counted by kind (``/status``'s ``client_errors``,
    ``chloe_client_errors_total{kind}``) and logged at most once per client
    address per ``interval``.

    :param clock: the reactor's time and timers.
    """

    def __init__(self, clock: IReactorTime, interval: float = LOG_INTERVAL, max_keys: int = MAX_KEYS) -> None:
        self.counts: Counter[str] = Counter({kind: 0 for kind in KINDS})
        self.limiter = LogLimiter(clock, self._summarize, interval, max_keys)

    def report(self, host: str, kind: str, why: str, **fields: Any) -> None:
        """``host`` (a client address, or a session's tag) got ``kind``
        wrong; ``why`` says how (no payload, no session id); ``fields``
        (plain values, such as the error ``code``) go with the line, for
        ``--log-format json``."""
        self.counts[kind] += 1
        if self.limiter.allow(host, kind):
            log.info("client {host}: {kind}: {why}", host=host, kind=kind, why=why[:MAX_WHY], **fields)

    def _summarize(self, host: Hashable, held: Counter[str], seconds: float) -> None:
        log.info(
            "client {host}: {n} more client errors in the last {seconds:.0f} s ({kinds})",
            host=host, n=sum(held.values()), seconds=seconds,
            kinds=", ".join(f"{kind}: {n}" for kind, n in sorted(held.items())),
        )
