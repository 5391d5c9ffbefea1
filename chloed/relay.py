"""The relay to the application: browser sends and lifecycle events become
signed POSTs to ``application_server_url``.

Delivery is at-least-once: each message has an ``X-Chloe-Delivery`` id that
stays the same across retries, so the app can drop a duplicate. What the app
answers decides what the browser hears:

- 2xx: delivered; the browser gets its ``ack``.
- 4xx other than 408 and 429: rejected, never retried (``upstream_rejected``).
- anything else (a connection error, a timeout, 5xx, 408, 429, even a
  redirect, which is not followed): retried with exponential
  backoff and jitter (``Retry-After`` honoured, up to a bound) at most
  ``upstream_retries`` times, then ``upstream_failed``.

Messages of one session (one *lane*) reach the app one at a time, in the
order the browser sent them, retries included; different lanes go in
parallel up to a bound. Everything waiting or in flight counts against
``upstream_queue``: when it is full a new message fails at once with
``upstream_failed`` rather than the queue growing.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import uuid
from collections import deque
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Callable

import treq
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from chloed import frames
from chloed.errors import RelayRejected, RelayUnavailable
from chloed.redact import session_tag

log = Logger()

MAX_LANES_IN_FLIGHT = 64
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
RETRY_AFTER_CAP = 60.0


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Chloe-Signature`` value: ``sha256=`` HMAC of ``ts.body``."""
    mac = hmac.new(secret.encode("utf-8"), b"%d." % timestamp + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def delivery_id(ref: object) -> str:
    """The ``X-Chloe-Delivery`` id of a message.

    A long string ``ref`` (chloe.js makes 128-bit ones) names the message
    however often the browser sends it, across reconnects, so the id is
    derived from it; short refs (a page's own counters) are not unique
    across browsers, so those messages get a random id.
    """
    if isinstance(ref, str) and len(ref) >= 22:
        return hashlib.sha256(b"chloe-delivery:" + ref.encode("utf-8")).hexdigest()[:32]
    return uuid.uuid4().hex


def event_body(
    type: str,
    session: str,
    channel: str | None = None,
    data: bytes | None = None,
    ref: object = None,
    user: object = None,
) -> bytes:
    """The JSON body of a relayed event; ``data`` is spliced in as given."""
    head = frames.dumps(
        {"type": type, "session": session, "channel": channel, "ref": ref, "user": user}
    )
    if data is None:
        return head
    return head[:-1] + b',"data":' + data + b"}"


def _retry_after(value: bytes | None, now: float) -> float | None:
    if not value:
        return None
    text = value.decode("latin-1").strip()
    if text.isascii() and text.isdecimal():
        return float(text)
    try:
        return max(0.0, parsedate_to_datetime(text).timestamp() - now)
    except (TypeError, ValueError):
        return None


class _Transient(Exception):
    """An attempt that may succeed if tried again."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass
class _Job:
    body: bytes
    delivery: str
    result: defer.Deferred[None] = field(default_factory=defer.Deferred)


@dataclass
class RelayStats:
    """Counters for ``/status`` and ``/metrics``."""

    delivered: int = 0
    retries: int = 0
    failures: int = 0
    rejections: int = 0
    overflows: int = 0
    latency: deque[float] = field(default_factory=lambda: deque(maxlen=1024))


class Relay:
    """Signed, ordered, bounded, retried POSTs to the app.

    :param http: a treq ``HTTPClient`` (``StubTreq`` in tests) whose pool
        keeps connections to the app open.
    :param secrets: the first signs; none configured means unsigned.
    :param observe: called with the seconds each delivered POST took.
    """

    def __init__(
        self,
        http: Any,
        url: str,
        secrets: tuple[str, ...],
        clock: IReactorTime,
        timeout: float,
        retries: int,
        queue_size: int,
        rng: Callable[[], float] = random.random,
        observe: Callable[[float], None] | None = None,
    ) -> None:
        self._http = http
        self.url = url
        self._secret = secrets[0] if secrets else None
        self._clock = clock
        self._timeout = timeout
        self._retries = retries
        self.queue_size = queue_size
        self._rng = rng
        self._observe = observe
        self._lanes: dict[str, deque[_Job]] = {}
        self._waiting_lanes: deque[str] = deque()
        self.running = 0
        self.queued = 0
        self.in_flight = 0
        self.stats = RelayStats()
        self._idle: list[defer.Deferred[None]] = []

    def submit(self, lane: str, body: bytes, delivery: str | None = None) -> defer.Deferred[None]:
        """Queue ``body`` for the app behind everything else of ``lane``.

        :returns: a Deferred that fires when the app took it, or fails with
            :class:`RelayRejected` or :class:`RelayUnavailable`.
        """
        if self.queued >= self.queue_size:
            self.stats.overflows += 1
            self.stats.failures += 1
            return defer.fail(RelayUnavailable("the relay queue is full"))
        job = _Job(body, delivery or uuid.uuid4().hex)
        self.queued += 1
        jobs = self._lanes.get(lane)
        if jobs is not None:
            jobs.append(job)
        else:
            self._lanes[lane] = deque([job])
            if self.running < MAX_LANES_IN_FLIGHT:
                self._run(lane)
            else:
                self._waiting_lanes.append(lane)
        return job.result

    def when_idle(self) -> defer.Deferred[None]:
        """Fires once nothing is queued or in flight (for a graceful drain)."""
        if not self.queued:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._idle.append(d)
        return d

    def _run(self, lane: str) -> None:
        self.running += 1
        defer.ensureDeferred(self._drain_lane(lane)).addErrback(
            # (a lane is a session id: logged as its tag)
            lambda f: log.failure("relay lane {lane} crashed", f, lane=session_tag(lane))
        )

    async def _drain_lane(self, lane: str) -> None:
        jobs = self._lanes[lane]
        try:
            while jobs:
                job = jobs[0]
                try:
                    await self._deliver(job)
                except Exception as exc:
                    outcome: Any = exc
                else:
                    outcome = None
                jobs.popleft()
                self.queued -= 1
                if outcome is None:
                    job.result.callback(None)
                else:
                    job.result.errback(outcome)
        finally:
            del self._lanes[lane]
            self.running -= 1
            if self._waiting_lanes:
                self._run(self._waiting_lanes.popleft())
            elif not self.queued:
                idle, self._idle = self._idle, []
                for d in idle:
                    d.callback(None)

    async def _deliver(self, job: _Job) -> None:
        attempt = 0
        while True:
            started = self._clock.seconds()
            try:
                await self._attempt(job)
            except _Transient as exc:
                if attempt >= self._retries:
                    self.stats.failures += 1
                    log.warn(
                        "relay gave up on {delivery} after {attempts} attempts: {reason}",
                        delivery=job.delivery, attempts=attempt + 1, reason=exc.reason,
                    )
                    raise RelayUnavailable(exc.reason) from None
                delay = self._backoff(attempt, exc.retry_after)
                attempt += 1
                self.stats.retries += 1
                log.warn(
                    "relay retry {attempt} of {delivery} in {delay:.2f}s: {reason}",
                    attempt=attempt, delivery=job.delivery, delay=delay, reason=exc.reason,
                )
                await deferLater(self._clock, delay)
            except RelayRejected:
                self.stats.rejections += 1
                raise
            else:
                self.stats.delivered += 1
                elapsed = self._clock.seconds() - started
                self.stats.latency.append(elapsed)
                if self._observe is not None:
                    self._observe(elapsed)
                return

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        ceiling = min(BACKOFF_CAP, BACKOFF_BASE * (2**attempt))
        delay = ceiling / 2 + self._rng() * ceiling / 2
        if retry_after is not None:
            delay = max(delay, min(retry_after, RETRY_AFTER_CAP))
        return delay

    async def _attempt(self, job: _Job) -> None:
        timestamp = int(self._clock.seconds())
        headers = {
            b"Content-Type": [b"application/json"],
            b"User-Agent": [b"chloed"],
            b"X-Chloe-Delivery": [job.delivery.encode("ascii")],
            b"X-Chloe-Timestamp": [b"%d" % timestamp],
        }
        if self._secret is not None:
            headers[b"X-Chloe-Signature"] = [sign(self._secret, timestamp, job.body).encode("ascii")]
        exchange = defer.ensureDeferred(self._exchange(headers, job.body))
        exchange.addTimeout(
            self._timeout, self._clock,
            onTimeoutCancel=lambda result, timeout: Failure(defer.TimeoutError(timeout)),
        )
        self.in_flight += 1
        try:
            code, retry_after = await exchange
        except defer.TimeoutError:
            raise _Transient(f"no answer within {self._timeout}s") from None
        except (RelayRejected, _Transient):
            raise
        except Exception as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from None
        finally:
            self.in_flight -= 1
        if 200 <= code < 300:
            return
        if 400 <= code < 500 and code not in (408, 429):
            raise RelayRejected(code)
        raise _Transient(f"the application answered {code}", _retry_after(retry_after, self._clock.seconds()))

    async def _exchange(self, headers: dict[bytes, list[bytes]], body: bytes) -> tuple[int, bytes | None]:
        response = await self._http.post(self.url, data=body, headers=headers, reactor=self._clock)
        # Read the body so the connection goes back to the pool.
        await treq.content(response)
        return response.code, response.headers.getRawHeaders(b"retry-after", [None])[0]
