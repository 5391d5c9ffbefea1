"""The relay to the application: browser sends and lifecycle events become
signed POSTs to ``application_server_url``.

Delivery is at-least-once: each message has a delivery id that stays the
same across retries, so the app can drop a duplicate. What the app answers
decides what the browser hears:

- 2xx: delivered; the browser gets its ``ack``.
- 4xx other than 408 and 429: rejected, never retried (``upstream_rejected``).
- anything else (a connection error, a timeout, 5xx, 408, 429, even a
  redirect, which is not followed): retried with exponential
  backoff and jitter (``Retry-After`` honoured, up to a bound) at most
  ``upstream_retries`` times, then ``upstream_failed``.

Messages of one session (one *lane*) reach the app one at a time, in the
order the browser sent them, retries included: only a lane's head is ever
ready, in flight or waiting out a backoff, and the next follows once the
head has its outcome. Different lanes go in parallel. Everything waiting or
in flight counts against ``upstream_queue``: when it is full a new message
fails at once with ``upstream_failed`` rather than the queue growing.

With ``relay_batch`` 1 (the default) each message is one POST, its body the
event and its id in ``X-Chloe-Delivery``, with at most
``MAX_LANES_IN_FLIGHT`` lanes at work at once (the others wait their turn).

With ``relay_batch`` N > 1 the heads that become ready during one reactor
turn (new messages, retries whose backoff is over) are flushed together at
the end of that turn: one POST carries a JSON array of up to N of them, each
item the event with a ``"delivery"`` key added, and ``X-Chloe-Batch`` says
how many. At most ``BATCH_POSTS_IN_FLIGHT`` such POSTs are in flight; what
becomes ready meanwhile waits, and goes in the next flush when one returns.
The app answers for the whole POST (its status applies to every item), or,
with a 2xx and ``{"results": [status, ...]}``, for each item (see
:meth:`Relay._batch_answered`). A message alone in its turn still goes at
once, alone in its POST.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Sequence
from urllib.parse import quote, urlsplit

import treq
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
# Request is what Agent hands the pool's connections; client re-exports it
# but leaves it out of __all__.
from twisted.web._newclient import Request
from twisted.web.client import BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from chloed import frames
from chloed.errors import RelayRejected, RelayUnavailable
from chloed.signing import make_signer
from chloed.spool.base import EVENT, MESSAGE, DeadLetter, Record, Spool
from chloed.spool.memory import MemorySpool

log = Logger()

MAX_LANES_IN_FLIGHT = 64
BATCH_POSTS_IN_FLIGHT = 8
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
RETRY_AFTER_CAP = 60.0

# Header values that never change, shared by every POST (treq and Headers
# copy them; nothing writes to them).
_JSON = [b"application/json"]
_AGENT = [b"chloed"]


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Chloe-Signature`` value: ``sha256=`` HMAC of ``ts.body``."""
    mac = hmac.new(secret.encode("utf-8"), b"%d." % timestamp + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def _random_id() -> str:
    """128 random bits in hex, as ``uuid4().hex`` is, at a fraction of its cost."""
    return os.urandom(16).hex()


def delivery_id(ref: object) -> str:
    """The delivery id of a message (``X-Chloe-Delivery``, or ``"delivery"``
    in a batch).

    A long string ``ref`` (chloe.js makes 128-bit ones) names the message
    however often the browser sends it, across reconnects, so the id is
    derived from it; short refs (a page's own counters) are not unique
    across browsers, so those messages get a random id.
    """
    if isinstance(ref, str) and len(ref) >= 22:
        return hashlib.sha256(b"chloe-delivery:" + ref.encode("utf-8")).hexdigest()[:32]
    return _random_id()


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


def lifecycle_body(
    type: str, session: str, channel: str | None, user: object, node: str, seq: int, previous: str | None = None,
) -> bytes:
    """The JSON body of a lifecycle event: ``node`` and ``seq`` number this
    node's events one by one (a gap is an event the app missed); a
    ``resume`` names the ``previous`` session it continues."""
    event: dict[str, Any] = {"type": type, "session": session, "channel": channel, "user": user,
                             "node": node, "seq": seq}
    if previous is not None:
        event["previous"] = previous
    return frames.dumps(event)


def batch_item(body: bytes, delivery: bytes) -> bytes:
    """``body`` (a JSON object, as :func:`event_body` makes) with
    ``"delivery"`` added, spliced without parsing it again."""
    return body[:-1] + b',"delivery":"' + delivery + b'"}'


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


def _rejects(code: int) -> bool:
    """Whether an answer ``code`` refuses a message for good."""
    return 400 <= code < 500 and code != 408 and code != 429


def _results(body: bytes, count: int) -> list[int] | str | None:
    """The per-item statuses a 2xx answer to a batch of ``count`` gives.

    :returns: None when the body does not give them (every item is
        delivered), the list when it does, or why it is not usable.
    """
    if not body.strip():
        return None
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    if not isinstance(answer, dict) or "results" not in answer:
        return None
    results = answer["results"]
    if not isinstance(results, list) or len(results) != count:
        return f"results is not a list of {count} statuses"
    if not all(type(s) is int for s in results):
        return "results holds something other than integer statuses"
    return results


class _Post:
    """One POST in flight: the messages it carries, when it left, its timer."""

    __slots__ = ("jobs", "started", "timer", "timed_out")

    def __init__(self, jobs: Sequence[Record], started: float) -> None:
        self.jobs = jobs
        self.started = started
        self.timer: IDelayedCall | None = None
        self.timed_out = False


@dataclass
class RelayStats:
    """Counters for ``/status`` and ``/metrics``.

    ``failures`` and ``rejections`` count browser messages and lifecycle
    events alike; ``event_failures`` is the events among them, and
    ``event_overflows`` the events refused because ``events_queue`` was
    full. ``dead`` counts records made dead letters, ``spool_failures``
    those the spool could not take.
    """

    delivered: int = 0
    retries: int = 0
    failures: int = 0
    rejections: int = 0
    overflows: int = 0
    event_failures: int = 0
    event_overflows: int = 0
    dead: int = 0
    spool_failures: int = 0
    recovered: int = 0
    latency: deque[float] = field(default_factory=lambda: deque(maxlen=1024))
    lag: deque[float] = field(default_factory=lambda: deque(maxlen=1024))


class Relay:
    """Signed, ordered, bounded, retried, spooled POSTs to the app.

    :param http: something with treq's ``post(url, data=, headers=,
        reactor=)`` (an :class:`AppClient`; ``StubTreq`` in tests) whose pool
        keeps connections to the app open.
    :param secrets: the first signs; none configured means unsigned.
    :param retries: at most this many retries of a message; None retries
        until ``ttl`` has passed since it arrived.
    :param queue_size: ``upstream_queue``: browser messages queued at most.
    :param observe: called with the seconds each POST the app answered 2xx
        took.
    :param observe_lag: called with the seconds from a record's arrival to
        the app's 2xx for it (queue wait and every retry included).
    :param batch: ``relay_batch``: messages of up to this many lanes per
        POST; 1 sends each alone, in today's format.
    :param spool: where records wait (:class:`MemorySpool` when None).
    :param ttl: ``relay_ttl``: seconds after its arrival a record is
        retried at most, then made a dead letter; None: no bound.
    :param events_queue: lifecycle events queued at most (their own bound,
        so that events never make a browser's message fail); None: as
        ``queue_size``.
    :param signature: ``relay_signature``: ``"chloe"`` or ``"standard"``.
    """

    def __init__(
        self,
        http: Any,
        url: str,
        secrets: tuple[str, ...],
        clock: IReactorTime,
        timeout: float,
        retries: int | None,
        queue_size: int,
        rng: Callable[[], float] = random.random,
        observe: Callable[[float], None] | None = None,
        batch: int = 1,
        spool: Spool | None = None,
        ttl: float | None = None,
        events_queue: int | None = None,
        signature: str = "chloe",
        observe_lag: Callable[[float], None] | None = None,
    ) -> None:
        self._http = http
        self.url = url
        self._signer = make_signer(signature, secrets)
        self._clock = clock
        self._timeout = timeout
        self._timed_out_reason = f"no answer within {timeout}s"
        self._retries = retries
        self.queue_size = queue_size
        self.events_queue = queue_size if events_queue is None else events_queue
        self._rng = rng
        self._observe = observe
        self._observe_lag = observe_lag
        self.batch = batch
        self.spool: Spool = spool if spool is not None else MemorySpool()
        # Until the spool has started (a Redis spool waits for Redis, a disk
        # spool reads its file back), what is submitted waits here, in
        # order: what the spool kept goes before it. The memory spool has
        # nothing to start.
        self._unstarted: list[tuple[Record, Callable[[], object] | None]] | None = (
            None if self.spool.name == "memory" else []
        )
        self.ttl = ttl
        # Unbatched, at most this many lanes at work (a lane waiting out a
        # backoff holds its place); batched, every lane is.
        self._max_lanes = MAX_LANES_IN_FLIGHT if batch == 1 else 1 << 62
        self._max_posts = MAX_LANES_IN_FLIGHT if batch == 1 else BATCH_POSTS_IN_FLIGHT
        self._lanes: dict[str, deque[Record]] = {}
        self._waiting_lanes: deque[str] = deque()
        # Heads ready to go, oldest first, and the flush that sends them.
        self._ready: deque[Record] = deque()
        self._flush_call: IDelayedCall | None = None
        self._flushing = False
        # Every record queued, spooling or in flight, in arrival order: the
        # first is the oldest waiting (/metrics), their sizes the bytes.
        self._waiting: OrderedDict[Record, None] = OrderedDict()
        self.queued_bytes = 0
        self.running = 0
        self.queued_events = 0
        self.in_flight = 0
        self.stats = RelayStats()
        self._idle: list[defer.Deferred[None]] = []

    def start(self) -> defer.Deferred[None]:
        """Open the spool, queueing what it kept, then what was submitted
        meanwhile (fails with :class:`SpoolError` when it cannot be used;
        it may be tried again)."""
        return self.spool.start(self._recover).addCallback(self._started)

    def _started(self, _: object) -> None:
        waiting, self._unstarted = self._unstarted or [], None
        for record, accepted in waiting:
            self._append(record, accepted)

    def submit(
        self, lane: str, body: bytes, delivery: str | None = None, kind: str = MESSAGE,
        accepted: Callable[[], object] | None = None,
    ) -> defer.Deferred[None]:
        """Spool and queue ``body`` (a JSON object) for the app behind
        everything else of ``lane``.

        :param delivery: its delivery id (ASCII letters, digits, ``-``);
            a random one when None.
        :param kind: :data:`MESSAGE` (a browser's, bounded by
            ``upstream_queue``) or :data:`EVENT` (bounded by
            ``events_queue``).
        :param accepted: called once a durable spool has it (never with
            the memory spool).
        :returns: a Deferred that fires when the app took it, or fails with
            :class:`RelayRejected` or :class:`RelayUnavailable`.
        """
        if kind == EVENT:
            if self.queued_events >= self.events_queue:
                self.stats.event_overflows += 1
                self.stats.event_failures += 1
                self.stats.failures += 1
                return defer.fail(RelayUnavailable("the events queue is full"))
        elif self.queued - self.queued_events >= self.queue_size:
            self.stats.overflows += 1
            self.stats.failures += 1
            return defer.fail(RelayUnavailable("the relay queue is full"))
        record = Record(lane, kind, (delivery or _random_id()).encode("ascii"), self._clock.seconds(), body)
        result: defer.Deferred[None] = defer.Deferred()
        record.result = result
        self._count(record, 1)
        if self._unstarted is not None:
            self._unstarted.append((record, accepted))
        else:
            self._append(record, accepted)
        return result

    def _append(self, record: Record, accepted: Callable[[], object] | None) -> None:
        spooled = self.spool.append(record)
        if spooled is None:
            self._enqueue(record)
        else:
            spooled.addCallbacks(self._spooled, self._spool_failed, callbackArgs=(record, accepted),
                                 errbackArgs=(record,))

    def _spooled(self, _: object, record: Record, accepted: Callable[[], object] | None) -> None:
        if accepted is not None:
            accepted()
        self._enqueue(record)

    def _spool_failed(self, failure: Failure, record: Record) -> None:
        self.stats.spool_failures += 1
        self._count(record, -1)
        self._fail(record, _NotSpooled(f"could not spool it: {failure.getErrorMessage()}"))
        self._maybe_idle()

    def _recover(self, record: Record) -> None:
        """A record the spool kept (from before a restart, or a dead node's):
        queued whatever the bounds, since it was accepted already."""
        self.stats.recovered += 1
        self._count(record, 1)
        self._enqueue(record)

    def _count(self, record: Record, sign: int) -> None:
        self.queued_bytes += sign * len(record.body)
        if record.kind == EVENT:
            self.queued_events += sign
        if sign > 0:
            self._waiting[record] = None
        else:
            self._waiting.pop(record, None)

    @property
    def queued(self) -> int:
        """Records queued, spooling or in flight."""
        return len(self._waiting)

    def oldest(self) -> float | None:
        """When the oldest record still waiting arrived."""
        for record in self._waiting:
            return record.arrived
        return None

    def when_idle(self) -> defer.Deferred[None]:
        """Fires once nothing is queued or in flight (for a graceful drain)."""
        if not self.queued:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._idle.append(d)
        return d

    def _maybe_idle(self) -> None:
        if not self.queued and self._idle:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    # -- dead letters ------------------------------------------------------

    def dead_letters(self, limit: int, after: str | None) -> defer.Deferred[list[DeadLetter]]:
        return self.spool.dead_letters(limit, after)

    def replay(self, ids: list[str] | None) -> defer.Deferred[list[Record]]:
        """Queue the dead letters ``ids`` (every one when None) again; fires
        with their records."""
        def queue(records: list[Record]) -> list[Record]:
            for record in records:
                record.attempt = 0
                record.result = None
                self._count(record, 1)
                self._enqueue(record)
            return records

        return self.spool.revive(ids).addCallback(queue)

    def delete_dead(self, id: str) -> defer.Deferred[bool]:
        return self.spool.delete(id)

    # -- scheduling --------------------------------------------------------

    def _enqueue(self, record: Record) -> None:
        lane = record.lane
        jobs = self._lanes.get(lane)
        if jobs is not None:
            jobs.append(record)
        else:
            self._lanes[lane] = deque((record,))
            if self.running < self._max_lanes:
                self.running += 1
                self._make_ready(record)
            else:
                self._waiting_lanes.append(lane)

    def _make_ready(self, job: Record) -> None:
        """``job``, its lane's head, may go now: unbatched at once, batched
        with the rest of this reactor turn's."""
        self._ready.append(job)
        if self.batch == 1:
            # (Not from inside a flush: an answer that came at once would
            # otherwise recurse a lane deep.)
            if not self._flushing:
                self._flush()
        elif self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self._flush)

    def _flush(self) -> None:
        """Send what is ready, as many POSTs as may be in flight."""
        self._flush_call = None
        self._flushing = True
        ready, batch = self._ready, self.batch
        try:
            while ready and self.in_flight < self._max_posts:
                if batch == 1:
                    self._post_one(ready.popleft())
                else:
                    self._post_batch([ready.popleft() for _ in range(min(batch, len(ready)))])
        finally:
            self._flushing = False

    def _settle(self, job: Record, outcome: Exception | None) -> None:
        """``job``, its lane's head, is done: tell its caller, start the next."""
        lane = job.lane
        jobs = self._lanes[lane]
        jobs.popleft()
        self._count(job, -1)
        if outcome is None:
            self.stats.delivered += 1
            self.spool.done(job)
            lag = self._clock.seconds() - job.arrived
            self.stats.lag.append(lag)
            if self._observe_lag is not None:
                self._observe_lag(lag)
            if job.result is not None:
                job.result.callback(None)
        else:
            self._fail(job, outcome)
        # (The callbacks may have queued more on this lane.)
        if jobs:
            self._make_ready(jobs[0])
            return
        del self._lanes[lane]
        if self._waiting_lanes:
            self._make_ready(self._lanes[self._waiting_lanes.popleft()][0])
            return
        self.running -= 1
        self._maybe_idle()

    def _fail(self, job: Record, outcome: Exception) -> None:
        """``job`` failed for good: its caller is told (a record that was
        never spooled is not a dead letter)."""
        if job.kind == EVENT:
            self.stats.event_failures += 1
        if job.key and not isinstance(outcome, _NotSpooled):
            self.stats.dead += 1
            status = outcome.status if isinstance(outcome, (RelayRejected, _GaveUp)) else None
            self.spool.bury(DeadLetter(job, str(outcome), status, self._clock.seconds()))
        if job.result is not None:
            job.result.errback(outcome)

    def _retry(self, job: Record, reason: str, retry_after: float | None, quiet: bool = False,
               status: int | None = None) -> None:
        """A transient failure of ``job``: again after a backoff, or given up
        (past ``upstream_retries`` or ``relay_ttl``): a dead letter.

        :param quiet: the POST's failure was logged already (a batch).
        :param status: the app's answer, None when there was none.
        """
        now = self._clock.seconds()
        give_up = None
        if self._retries is not None and job.attempt >= self._retries:
            give_up = f"gave up after {job.attempt + 1} attempts: {reason}"
        elif self.ttl is not None and now - job.arrived >= self.ttl:
            give_up = f"relay_ttl ({self.ttl:g}s) passed after {job.attempt + 1} attempts: {reason}"
        if give_up is not None:
            self.stats.failures += 1
            log.warn(
                "relay {give_up} ({delivery})", give_up=give_up, delivery=job.delivery.decode("ascii"),
            )
            self._settle(job, _GaveUp(give_up, status))
            return
        delay = self._backoff(job.attempt, retry_after)
        if self.ttl is not None:
            # The last attempt is made when the ttl runs out, not after.
            delay = min(delay, max(0.0, job.arrived + self.ttl - now))
        job.attempt += 1
        self.stats.retries += 1
        if not quiet:
            log.warn(
                "relay retry {attempt} of {delivery} in {delay:.2f}s: {reason}",
                attempt=job.attempt, delivery=job.delivery.decode("ascii"), delay=delay, reason=reason,
            )
        self._clock.callLater(delay, self._make_ready, job)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        ceiling = min(BACKOFF_CAP, BACKOFF_BASE * (2 ** min(attempt, 32)))
        delay = ceiling / 2 + self._rng() * ceiling / 2
        if retry_after is not None:
            delay = max(delay, min(retry_after, RETRY_AFTER_CAP))
        return delay

    # -- the POSTs -----------------------------------------------------------

    def _post_one(self, job: Record) -> None:
        now = self._clock.seconds()
        stamp = b"%d" % int(now)
        headers = {
            b"Content-Type": _JSON,
            b"User-Agent": _AGENT,
            b"X-Chloe-Delivery": [job.delivery],
            b"X-Chloe-Timestamp": [stamp],
        }
        if self._signer is not None:
            headers.update(self._signer.headers(job.delivery, stamp, job.body))
        self._post(_Post((job,), now), job.body, headers, self._one_answered)

    def _post_batch(self, jobs: list[Record]) -> None:
        now = self._clock.seconds()
        body, headers = self.batch_request([batch_item(job.body, job.delivery) for job in jobs], now)
        self._post(_Post(jobs, now), body, headers, self._batch_answered)

    def batch_request(self, items: list[bytes], now: float) -> tuple[bytes, dict[bytes, list[bytes]]]:
        """The body and headers of one batch POST of ``items`` (each a
        message's batch item): a JSON array, signed as every relayed POST
        is. A relay to another kind of endpoint (Pusher's webhooks) makes
        its own."""
        stamp = b"%d" % int(now)
        body = b"[" + b",".join(items) + b"]"
        headers = {
            b"Content-Type": _JSON,
            b"User-Agent": _AGENT,
            b"X-Chloe-Batch": [b"%d" % len(items)],
            b"X-Chloe-Timestamp": [stamp],
        }
        if self._signer is not None:
            headers.update(self._signer.headers(_random_id().encode("ascii"), stamp, body))
        return body, headers

    def _post(
        self, post: _Post, body: bytes, headers: dict[bytes, list[bytes]],
        answered: Callable[[tuple[IResponse, bytes], _Post], None],
    ) -> None:
        """POST ``body``; ``answered`` gets the response and its body, or
        every message of ``post`` is retried if there is none in time."""
        self.in_flight += 1
        try:
            d = self._http.post(self.url, data=body, headers=headers, reactor=self._clock)
        except Exception:
            d = defer.fail()
        # Before the callbacks: a Deferred that has fired runs them at once.
        post.timer = self._clock.callLater(self._timeout, self._time_out, post, d)
        d.addCallback(_read)
        d.addCallbacks(answered, self._broken, callbackArgs=(post,), errbackArgs=(post,))
        d.addErrback(_crashed)

    def _time_out(self, post: _Post, d: defer.Deferred[Any]) -> None:
        post.timed_out = True
        d.cancel()

    def _ended(self, post: _Post) -> None:
        """Bookkeeping of a POST that has its outcome, before acting on it."""
        self.in_flight -= 1
        timer = post.timer
        if timer is not None and not post.timed_out:
            timer.cancel()

    def _broken(self, failure: Failure, post: _Post) -> None:
        """No answer: a timeout, a refused or dropped connection."""
        self._ended(post)
        if post.timed_out:
            reason = self._timed_out_reason
        else:
            reason = f"{type(failure.value).__name__}: {failure.getErrorMessage()}"
        if len(post.jobs) > 1:
            log.warn("relay batch of {count} not delivered, retrying: {reason}", count=len(post.jobs), reason=reason)
        for job in post.jobs:
            self._retry(job, reason, None, quiet=len(post.jobs) > 1)
        self._more()

    def _one_answered(self, answer: tuple[IResponse, bytes], post: _Post) -> None:
        self._ended(post)
        response = answer[0]
        code = response.code
        if 200 <= code < 300:
            self._took(post)
        retry_after = None
        if code >= 300 and not _rejects(code):
            retry_after = _retry_after(
                response.headers.getRawHeaders(b"retry-after", [None])[0], self._clock.seconds()
            )
        self._settle_by(post.jobs[0], code, f"the application answered {code}", retry_after)

    def _batch_answered(self, answer: tuple[IResponse, bytes], post: _Post) -> None:
        """The app's answer to a batch.

        A status other than 2xx is every item's. A 2xx is every item
        delivered, unless its body is ``{"results": [...]}``: then the n-th
        integer is the n-th item's status, read as a single message's would
        be (``Retry-After`` does not apply to them). A ``results`` that is
        not as many integers as items is a broken answer: every item is
        retried.
        """
        self._ended(post)
        response, body = answer
        code = response.code
        jobs = post.jobs
        if not 200 <= code < 300:
            if _rejects(code):
                for job in jobs:
                    self.stats.rejections += 1
                    self._settle(job, RelayRejected(code))
            else:
                reason = f"the application answered {code}"
                retry_after = _retry_after(
                    response.headers.getRawHeaders(b"retry-after", [None])[0], self._clock.seconds()
                )
                log.warn("relay batch of {count} not delivered, retrying: {reason}", count=len(jobs), reason=reason)
                for job in jobs:
                    self._retry(job, reason, retry_after, quiet=True, status=code)
            self._more()
            return
        self._took(post)
        results = _results(body, len(jobs))
        if isinstance(results, str):
            log.warn(
                "relay batch of {count}: the application answered {code} but {why}; retrying every item",
                count=len(jobs), code=code, why=results,
            )
            for job in jobs:
                self._retry(job, f"the application's results were unusable: {results}", None, quiet=True,
                            status=code)
        elif results is None:
            for job in jobs:
                self._settle(job, None)
        else:
            retried = 0
            for job, status in zip(jobs, results):
                retried += self._settle_by(job, status, f"the application answered {status} for it", None, quiet=True)
            if retried:
                log.warn("relay batch of {count}: {retried} items to retry", count=len(jobs), retried=retried)
        self._more()

    def _settle_by(self, job: Record, status: int, reason: str, retry_after: float | None,
                   quiet: bool = False) -> bool:
        """Settle ``job`` as the app's ``status`` for it says: delivered,
        rejected, or retried (True)."""
        if 200 <= status < 300:
            self._settle(job, None)
            return False
        if _rejects(status):
            self.stats.rejections += 1
            self._settle(job, RelayRejected(status))
            return False
        self._retry(job, reason, retry_after, quiet=quiet, status=status)
        return True

    def _took(self, post: _Post) -> None:
        """The app answered ``post`` 2xx: how long it took."""
        elapsed = self._clock.seconds() - post.started
        self.stats.latency.append(elapsed)
        if self._observe is not None:
            self._observe(elapsed)

    def _more(self) -> None:
        """A POST is back: room for what waited (batched; unbatched, a lane
        is never ready without being sent)."""
        if self._ready and self._flush_call is None and not self._flushing:
            self._flush_call = self._clock.callLater(0, self._flush)


class _NotSpooled(RelayUnavailable):
    """A failure of a record no spool holds (it could not be spooled)."""


class _GaveUp(RelayUnavailable):
    """Retried past ``upstream_retries`` or ``relay_ttl``; ``status`` is
    the app's last answer, None when it never answered."""

    def __init__(self, reason: str, status: int | None) -> None:
        super().__init__(reason)
        self.status = status


def _crashed(failure: Failure) -> None:
    log.failure("relay POST crashed", failure)


def _read(response: IResponse) -> Any:
    """The response and its body (read, so its connection goes back to the
    pool)."""
    if response.length == 0:
        return (response, b"")
    return treq.content(response).addCallback(lambda body: (response, body))


# -- the HTTP client -----------------------------------------------------------


class _Request(Request):
    """A POST whose bytes, head and body, are made in one go and written in
    one write.

    ``Request`` would build a ``Headers``, then write the head and stream
    the body through a producer, a length check and their Deferreds; the
    relay's requests are small and whole, and their header values are its
    own (checked for line breaks all the same).
    """

    def __init__(self, path: bytes, wire: bytes) -> None:
        super().__init__(b"POST", path, _NO_HEADERS, None, persistent=True)
        self._wire = wire

    def writeTo(self, transport: Any) -> defer.Deferred[None]:
        transport.write(self._wire)
        return defer.succeed(None)

    def stopWriting(self) -> None:
        """Nothing to stop: :meth:`writeTo` wrote everything at once."""


# Request.headers of a _Request: its wire bytes carry the real ones.
_NO_HEADERS = Headers()


@dataclass(frozen=True)
class _Target:
    """What every POST to one URL shares: the pool's key, the endpoint, the
    request path and the start of the head (request line and Host)."""

    key: tuple[bytes, bytes, int]
    endpoint: Any
    path: bytes
    head: bytes


def _target(reactor: Any, url: str) -> _Target:
    parts = urlsplit(url)
    scheme = parts.scheme.encode("ascii")
    default = 443 if scheme == b"https" else 80
    port = parts.port or default
    hostname = (parts.hostname or "").encode("idna")
    host = b"[" + hostname + b"]" if b":" in hostname else hostname
    if port != default:
        host += b":%d" % port
    text = quote(parts.path or "/", safe="/%:@!$&'()*+,;=~")
    if parts.query:
        text += "?" + quote(parts.query, safe="/%:@!$&'()*+,;=~?")
    path = text.encode("ascii")
    endpoint: Any = HostnameEndpoint(reactor, hostname, port)
    if scheme == b"https":
        endpoint = wrapClientTLS(BrowserLikePolicyForHTTPS().creatorForNetloc(hostname, port), endpoint)
    return _Target((scheme, hostname, port), endpoint, path, b"POST " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n")


class AppClient:
    """The relay's HTTP client: treq's ``post``, done straight on an
    ``HTTPConnectionPool``.

    treq and ``Agent`` parse the URL, build an endpoint (IDNA and all) and
    wrap the request in cookie, redirect and decoding agents on every POST;
    the relay posts to one URL and needs none of that, so this works the
    URL out once and hands the pool's connection the request's bytes.
    Redirects are not followed (the relay retries them) and nothing is
    decoded, as with the treq client it replaces.
    """

    def __init__(self, reactor: Any, pool: HTTPConnectionPool) -> None:
        self._reactor = reactor
        self._pool = pool
        self._targets: dict[str, _Target] = {}

    def post(
        self, url: str, data: bytes, headers: dict[bytes, list[bytes]], reactor: Any = None
    ) -> defer.Deferred[IResponse]:
        """POST ``data`` to ``url``; fires with the response once its
        headers are in (cancel it to abort), or fails with ``ValueError``
        if a header value holds a line break (nothing is sent)."""
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = _target(self._reactor, url)
        wire = [target.head]
        for name, values in headers.items():
            for value in values:
                if b"\n" in value or b"\r" in value:
                    return defer.fail(ValueError(f"a line break in the {name!r} header"))
                wire.append(name + b": " + value + b"\r\n")
        wire.append(b"Content-Length: %d\r\n\r\n" % len(data))
        wire.append(data)
        request = _Request(target.path, b"".join(wire))
        d = self._pool.getConnection(target.key, target.endpoint)
        return d.addCallback(lambda protocol: protocol.request(request))
