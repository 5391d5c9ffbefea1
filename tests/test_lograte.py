"""Unit tests of chloed.lograte: one line per client per interval, the rest
summed up when the interval ends, every mistake counted, memory bounded."""

from __future__ import annotations

from collections import Counter
from typing import Any, Hashable

from twisted.internet.task import Clock
from twisted.logger import formatEvent

from chloed.lograte import KINDS, MAX_WHY, ClientErrors, LogLimiter
from tests.fakes import captured_log


class Summaries:
    """What a LogLimiter hands to ``summarize``, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[Hashable, dict[str, int], float]] = []

    def __call__(self, key: Hashable, held: Counter[str], seconds: float) -> None:
        self.calls.append((key, dict(held), seconds))


def limiter(clock: Clock, **options: Any) -> tuple[LogLimiter, Summaries]:
    summaries = Summaries()
    return LogLimiter(clock, summaries, **options), summaries


def test_first_event_of_a_key_is_allowed_the_rest_held_for_the_interval():
    """The first mistake of a client is logged; the next ones within the
    interval are not, whatever their kind."""
    clock = Clock()
    limit, summaries = limiter(clock, interval=60)
    assert limit.allow("1.2.3.4", "a")
    clock.advance(10)
    assert not limit.allow("1.2.3.4", "a")
    assert not limit.allow("1.2.3.4", "b")
    clock.advance(49)
    assert not limit.allow("1.2.3.4", "a")
    assert summaries.calls == []


def test_held_events_are_summed_up_when_the_interval_ends_even_if_the_client_stops():
    """One summary line per interval, by kind, at the interval's end, with
    no further event needed to bring it out; then the client starts afresh."""
    clock = Clock()
    limit, summaries = limiter(clock, interval=60)
    limit.allow("1.2.3.4", "a")
    for kind in ("a", "a", "b"):
        clock.advance(1)
        limit.allow("1.2.3.4", kind)
    clock.advance(56.9)
    assert summaries.calls == []
    clock.advance(0.1)
    assert summaries.calls == [("1.2.3.4", {"a": 2, "b": 1}, 60)]
    assert len(limit) == 0 and not clock.getDelayedCalls()
    assert limit.allow("1.2.3.4", "a")


def test_a_quiet_key_leaves_no_summary_and_no_timer():
    """A client that made one mistake costs one line, no summary, no timer."""
    clock = Clock()
    limit, summaries = limiter(clock, interval=60)
    assert limit.allow("1.2.3.4", "a")
    assert not clock.getDelayedCalls()
    clock.advance(61)
    assert limit.allow("1.2.3.4", "a")
    assert summaries.calls == []


def test_keys_are_limited_apart():
    """One noisy client does not silence another."""
    clock = Clock()
    limit, summaries = limiter(clock, interval=60)
    assert limit.allow("1.1.1.1", "a")
    assert not limit.allow("1.1.1.1", "a")
    clock.advance(30)
    assert limit.allow("2.2.2.2", "a")
    assert not limit.allow("2.2.2.2", "a")
    clock.advance(30)
    assert summaries.calls == [("1.1.1.1", {"a": 1}, 60)]
    assert limit.allow("1.1.1.1", "a")
    assert not limit.allow("2.2.2.2", "a")
    clock.advance(30)
    assert summaries.calls[1:] == [("2.2.2.2", {"a": 2}, 60)]


def test_memory_is_bounded_by_dropping_the_oldest_key():
    """Past max_keys the oldest client is forgotten (its summary logged
    early); the table never grows beyond the cap."""
    clock = Clock()
    limit, summaries = limiter(clock, interval=60, max_keys=3)
    for n in range(3):
        limit.allow(n, "a")
        clock.advance(1)
    limit.allow(0, "a")
    assert limit.allow(3, "a")
    assert len(limit) == 3
    assert summaries.calls == [(0, {"a": 1}, 3)]
    # The forgotten client is allowed again, pushing out the next oldest.
    assert limit.allow(0, "a")
    assert len(limit) == 3
    for n in range(1000):
        limit.allow(("many", n), "a")
    assert len(limit) == 3


def test_client_errors_log_one_line_and_a_summary_and_count_everything():
    """37 mistakes from one address in a minute: two lines (the first one
    and '36 more'), 37 counted; the description is cut to MAX_WHY."""
    clock = Clock()
    errors = ClientErrors(clock, interval=60)
    assert dict(errors.counts) == {kind: 0 for kind in KINDS}
    with captured_log() as events:
        errors.report("192.0.2.7", "websocket_protocol_error", "x" * 1000)
        for _ in range(30):
            errors.report("192.0.2.7", "websocket_protocol_error", "again")
        for _ in range(6):
            errors.report("192.0.2.7", "websocket_too_large", "big")
        clock.advance(60)
    lines = [formatEvent(e) for e in events if e.get("log_namespace") == "chloed.lograte"]
    assert lines == [
        "client 192.0.2.7: websocket_protocol_error: " + "x" * MAX_WHY,
        "client 192.0.2.7: 36 more client errors in the last 60 s "
        "(websocket_protocol_error: 30, websocket_too_large: 6)",
    ]
    assert errors.counts["websocket_protocol_error"] == 31
    assert errors.counts["websocket_too_large"] == 6
