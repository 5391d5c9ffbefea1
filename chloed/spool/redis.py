"""The spool of ``relay_spool = "redis"``: records wait in Redis Streams, so
what a node accepted for the app is delivered by another node if that node
dies.

Durability is Redis's: ``accepted`` means Redis has replied to the record's
``XADD`` (it is in Redis's memory; a replica may not have it yet). It
survives Redis's own restart only when Redis persists (AOF, with
``appendfsync always`` for every write, or ``everysec`` for all but the
last second; or RDB snapshots, for all but what came after the last one). Needs Redis 6.2 or later (``XADD
NOMKSTREAM``, exclusive ``XRANGE`` bounds).

Keys (a *stream id* is a node id, or ``<node>-<n>`` when the node had to
start a new stream, see below):

``chloe:relay:s:<stream id>``
    a node's pending records, in the order appended, one entry each:
    ``k`` key, ``l`` lane, ``t`` kind, ``d`` delivery id, ``a`` arrival
    (``repr`` of the float), ``b`` body. ``done`` is ``XDEL``. Created
    (empty) when the node registers; appends use ``NOMKSTREAM``, so an
    append never recreates a stream another node has taken over and
    deleted (it fails instead, and the node registers a new one).
``chloe:relay:owner:<stream id>``
    the node holding that stream (its own, or one it took over), with a
    ``PX`` expiry of ``ttl_ms`` on Redis's clock, renewed every beat. A
    stream whose owner key is gone belongs to a dead node.
``chloe:relay:streams``
    the set of registered stream ids, where nodes look for dead ones.
``chloe:relay:dead``, ``chloe:relay:dead:order``, ``chloe:relay:dead:seq``
    dead letters, cluster-wide: key → JSON head (lane, kind, delivery,
    arrived, reason, status, died), a newline, the body; the sorted set
    orders them by when they became dead letters (score from the counter),
    for paging and for dropping the oldest past ``dead_limit``.

Takeover: every beat a node renews its owner key (a script that also
notices when another node has taken its stream meanwhile: the node then
goes on with a new stream, and what was in the old one may be delivered
twice), then looks at the registered streams and claims one whose owner key
is gone, in a script (it sets that owner key to itself), so exactly one node
takes each dead stream. It reads the stream's entries in order, in pages,
and hands each to ``recover``; ``done`` deletes them there. Once the relay
is done with all of them (and the stream is empty), a script deletes the
stream and its registration. A node never claims a stream it wrote itself;
a restarted node has a new node id, so its old stream is taken over like a
dead node's, by any node, itself included.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Coroutine, NamedTuple

from twisted.internet import defer
from twisted.internet.defer import Deferred, FirstError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from chloed.backends.base import BackendUnavailable
from chloed.backends.redis.link import Call
from chloed.spool.base import DeadLetter, Record, SpoolError
from chloed.spool.memory import DEAD_LETTERS_MAX

log = Logger()

PREFIX = "chloe:relay:"
STREAM_PREFIX = PREFIX + "s:"
OWNER_PREFIX = PREFIX + "owner:"
STREAMS_KEY = PREFIX + "streams"
DEAD_KEY = PREFIX + "dead"
DEAD_ORDER_KEY = PREFIX + "dead:order"
DEAD_SEQ_KEY = PREFIX + "dead:seq"

BEAT = 5.0
TTL_MS = 15_000
#: Entries read per XRANGE when taking a stream over.
PAGE = 500
#: How long :meth:`RedisSpool.start` keeps trying (the link may still be
#: connecting), and how often.
START_TIMEOUT = 5.0
START_RETRY = 0.1
#: Seconds between two log lines about failed fire-and-forget commands.
COMPLAIN_EVERY = 10.0

# -- the scripts (EVAL; each one atomic step) ----------------------------------

# Register or renew this node's own stream. KEYS: its owner key, the stream,
# chloe:relay:streams. ARGV: node, ttl ms, stream id, '1' at start (the
# stream must be new). 0: not ours (another node holds it, or at start it
# exists already), 1: renewed, 2: renewed and the stream made (new, or lost
# by Redis meanwhile).
REGISTER_SCRIPT = """
local owner = redis.call('GET', KEYS[1])
if ARGV[4] == '1' then
  if owner or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
elseif owner and owner ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
if redis.call('EXISTS', KEYS[2]) == 1 then return 1 end
redis.call('XDEL', KEYS[2], redis.call('XADD', KEYS[2], '*', 'x', ''))
return 2
"""

# Renew the streams this node took over. KEYS: their owner keys. ARGV:
# node, ttl ms. Per key 1 while it is still ours (an owner key that expired
# meanwhile is taken again: nobody else claimed it), 0 once another node's.
RENEW_SCRIPT = """
local out = {}
for i, key in ipairs(KEYS) do
  local owner = redis.call('GET', key)
  if owner and owner ~= ARGV[1] then
    out[i] = 0
  else
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    out[i] = 1
  end
end
return out
"""

# Claim one dead node's stream. KEYS: chloe:relay:streams, then the owner key
# and the stream of each candidate. ARGV: node, ttl ms, then each candidate's
# stream id. The first candidate without an owner whose stream exists
# becomes this node's (its id is returned); registrations whose owner and
# stream are both gone are dropped. False when there is none.
CLAIM_SCRIPT = """
for i = 3, #ARGV do
  local owner, stream = KEYS[2 * i - 4], KEYS[2 * i - 3]
  if redis.call('EXISTS', owner) == 0 then
    if redis.call('EXISTS', stream) == 1 then
      redis.call('SET', owner, ARGV[1], 'PX', ARGV[2])
      return ARGV[i]
    end
    redis.call('SREM', KEYS[1], ARGV[i])
  end
end
return false
"""

# Let go of a stream. KEYS: its owner key, the stream, chloe:relay:streams.
# ARGV: node, stream id, '1' to let go even with entries left (a clean stop:
# another node takes them at once). 1: the stream was empty and is deleted
# with its registration; 0: entries are left; -1: another node holds it.
LEAVE_SCRIPT = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return -1 end
if redis.call('XLEN', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('SREM', KEYS[3], ARGV[2])
  return 1
end
if ARGV[3] == '1' then redis.call('DEL', KEYS[1]) end
return 0
"""

# A record becomes a dead letter. KEYS: dead, dead:order, dead:seq, and the
# stream it is in (absent when in none). ARGV: key, encoded letter, the
# bound, the entry id. Drops the oldest past the bound. Returns the count
# kept, how many were dropped, and the first ten of them.
BURY_SCRIPT = """
if #KEYS > 3 then redis.call('XDEL', KEYS[4], ARGV[4]) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[1])
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
local out = {0, 0}
if excess > 0 then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, excess - 1)
  for i, id in ipairs(oldest) do
    redis.call('HDEL', KEYS[1], id)
    if i <= 10 then out[#out + 1] = id end
  end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, excess - 1)
  out[2] = #oldest
end
out[1] = redis.call('ZCARD', KEYS[2])
return out
"""

# A page of dead letters. KEYS: dead, dead:order. ARGV: limit, '1' when
# after the id in ARGV[3] (nothing when that id is unknown). Returns id,
# letter, id, letter...
PAGE_SCRIPT = """
local start = 0
if ARGV[2] == '1' then
  local rank = redis.call('ZRANK', KEYS[2], ARGV[3])
  if not rank then return {} end
  start = rank + 1
end
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], start, start + tonumber(ARGV[1]) - 1)) do
  local letter = redis.call('HGET', KEYS[1], id)
  if letter then
    out[#out + 1] = id
    out[#out + 1] = letter
  end
end
return out
"""

# Dead letters back to the pending records, appended to this node's stream
# in the order they first arrived. KEYS: dead, dead:order, the stream. ARGV:
# '1' for every one, else '0' and the ids. False when the stream is gone;
# else the count kept, then id, letter, new entry id of each.
REVIVE_SCRIPT = """
if redis.call('EXISTS', KEYS[3]) == 0 then return false end
local ids = {}
if ARGV[1] == '1' then
  ids = redis.call('ZRANGE', KEYS[2], 0, -1)
else
  for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
end
local found = {}
for _, id in ipairs(ids) do
  local letter = redis.call('HGET', KEYS[1], id)
  local cut = letter and string.find(letter, '\\n', 1, true)
  if cut then
    local head = cjson.decode(string.sub(letter, 1, cut - 1))
    found[#found + 1] = {
      id = id, letter = letter, head = head, body = string.sub(letter, cut + 1),
      at = tonumber(head.arrived) or 0, seq = tonumber(redis.call('ZSCORE', KEYS[2], id)) or 0,
    }
  end
end
table.sort(found, function(a, b)
  if a.at ~= b.at then return a.at < b.at end
  return a.seq < b.seq
end)
local out = {0}
for _, f in ipairs(found) do
  local entry = redis.call('XADD', KEYS[3], '*', 'k', f.id, 'l', f.head.lane, 't', f.head.kind,
    'd', f.head.delivery, 'a', f.head.arrived, 'b', f.body)
  redis.call('HDEL', KEYS[1], f.id)
  redis.call('ZREM', KEYS[2], f.id)
  out[#out + 1] = f.id
  out[#out + 1] = f.letter
  out[#out + 1] = entry
end
out[1] = redis.call('ZCARD', KEYS[2])
return out
"""

# Forget one dead letter. KEYS: dead, dead:order. ARGV: its id. Returns
# whether it was there, and the count kept.
DELETE_SCRIPT = """
local gone = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return {gone, redis.call('ZCARD', KEYS[2])}
"""


class Entry(NamedTuple):
    """A record's token: where it is in Redis (``done`` deletes it there)."""

    stream: str
    id: str


class _Appending:
    """A record's token while its ``XADD`` has no reply yet: what was asked
    of it meanwhile (``done``, ``bury``) waits for the entry id."""

    __slots__ = ("after",)

    def __init__(self) -> None:
        self.after: list[Callable[[], None]] = []


class _Claim:
    """A dead node's stream this node took over: what was read of it, and
    the records handed to the relay it has not finished with."""

    def __init__(self, sid: str) -> None:
        self.sid = sid
        self.stream = STREAM_PREFIX + sid
        self.owner = OWNER_PREFIX + sid
        self.last: str | None = None
        self.outstanding: set[str] = set()
        self.caught_up = False
        self.reading = False
        self.leaving = False
        self.handed = 0


def _raw(value: Any) -> bytes:
    """A reply as the bytes Redis holds: txredisapi hands valid UTF-8 back
    as ``str`` (so encoding it again is lossless), anything else as bytes."""
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _record(fields: Any) -> Record | None:
    """The record of a stream entry's fields; None when it is not one."""
    try:
        pairs = dict(zip(map(_text, fields[::2]), fields[1::2]))
        record = Record(
            _text(pairs["l"]), _text(pairs["t"]), _raw(pairs["d"]), float(_text(pairs["a"])), _raw(pairs["b"])
        )
        record.key = _text(pairs["k"])
    except (KeyError, TypeError, ValueError):
        return None
    return record


def encode_letter(letter: DeadLetter) -> bytes:
    """A dead letter as ``chloe:relay:dead`` keeps it: a one-line JSON head
    (what the revive script reads; ``arrived`` as text, exactly), then the
    body as it was."""
    record = letter.record
    head = {
        "lane": record.lane, "kind": record.kind, "delivery": record.delivery.decode("ascii"),
        "arrived": repr(record.arrived), "reason": letter.reason, "status": letter.status, "died": letter.died,
    }
    return json.dumps(head, separators=(",", ":")).encode("ascii") + b"\n" + record.body


def decode_letter(key: str, value: bytes) -> DeadLetter:
    head, _, body = value.partition(b"\n")
    fields = json.loads(head)
    record = Record(fields["lane"], fields["kind"], fields["delivery"].encode("ascii"), float(fields["arrived"]), body)
    record.key = key
    return DeadLetter(record, fields["reason"], fields["status"], fields["died"])


def _unwrap(failure: Failure) -> Failure:
    """The failure inside gatherResults's FirstError."""
    value = failure.value
    return value.subFailure if isinstance(value, FirstError) else failure


def _spool_error(failure: Failure) -> Failure:
    """Failures callers see are SpoolErrors (the relay knows no Redis)."""
    if failure.check(SpoolError):
        return failure
    return Failure(SpoolError(f"Redis: {failure.getErrorMessage()}"))


class RedisSpool:
    """Records in Redis Streams, taken over by another node when this one
    dies (see the module's docstring for the keys and the protocol).

    :param call: sends a command on the node's Redis command connection
        (:meth:`RedisLink.call`); appends go on it in order, so they persist
        in order.
    :param node: this node's id, unique in the cluster and new on each start.
    :param clock: times the beats (and the retries of :meth:`start`).
    :param dead_limit: dead letters kept cluster-wide; past it the oldest go.
    :param beat: seconds between two renewals of the owner key (and looks
        for dead streams); at most a third of ``ttl_ms``.
    :param ttl_ms: how long after its last beat a node's stream may be taken
        over.
    :param start_timeout: how long :meth:`start` waits for Redis.
    """

    name = "redis"
    durable = True

    def __init__(
        self,
        call: Call,
        node: str,
        clock: IReactorTime,
        dead_limit: int = DEAD_LETTERS_MAX,
        beat: float = BEAT,
        ttl_ms: int = TTL_MS,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self._call = call
        self.node = node
        self._clock = clock
        self.dead_limit = dead_limit
        self.interval = min(beat, ttl_ms / 3000)
        self.ttl_ms = ttl_ms
        self.start_timeout = start_timeout
        self._recover: Callable[[Record], None] = lambda record: None
        self._keys = 0
        self._generation = 0
        self._use_stream(node)
        # Streams this node wrote, taken from it meanwhile: never claimed
        # back (the relay here holds their records).
        self._written: set[str] = set()
        self._pending = 0
        self._dead_count = 0
        self.dead_dropped = 0
        self._claims: dict[str, _Claim] = {}
        self._running = False
        self._registered = False
        self._loop: LoopingCall | None = None
        self._retry: Deferred[None] | None = None
        self._beating: Deferred[None] | None = None
        self._reregistering = False
        self._busy: set[Deferred[None]] = set()
        self._idle_waiters: list[Deferred[None]] = []
        self._complained_at: float | None = None
        self._held_back = 0

    def _use_stream(self, sid: str) -> None:
        self.sid = sid
        self.stream = STREAM_PREFIX + sid
        self._owner = OWNER_PREFIX + sid

    # -- what the relay sees ----------------------------------------------

    @property
    def pending(self) -> int:
        """Records in this node's own stream, as far as it knows."""
        return self._pending

    @property
    def recovering(self) -> int:
        """Records of dead nodes' streams handed to the relay, not yet done."""
        return sum(len(claim.outstanding) for claim in self._claims.values())

    def start(self, recover: Callable[[Record], None]) -> Deferred[None]:
        """Register this node's stream (trying for ``start_timeout``: the
        link may be connecting still) and start beating; ``recover`` gets
        what dead nodes left, from the first beat on.

        :raises SpoolError: (through the Deferred) when Redis cannot be
            reached or refuses.
        """
        self._recover = recover
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        deadline = self._clock.seconds() + self.start_timeout
        while True:
            try:
                await self._register(fresh=True)
                break
            except BackendUnavailable as exc:
                if self._clock.seconds() + START_RETRY > deadline:
                    raise SpoolError(f"Redis cannot be reached for the relay spool: {exc}") from None
            except Exception as exc:
                raise SpoolError(f"Redis refused the relay spool: {exc}") from None
            self._retry = deferLater(self._clock, START_RETRY, lambda: None)
            try:
                await self._retry
            except defer.CancelledError:
                raise SpoolError("the relay spool was stopped while starting") from None
            finally:
                self._retry = None
        self._running = True
        self._registered = True
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self._clock
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: log.failure("the relay spool's beat stopped", f)
        )

    def append(self, record: Record) -> Deferred[None]:
        """``XADD`` ``record`` to this node's stream; fires once Redis has
        it. Its key is ``<node>.<n>``, made here (the entry id only comes
        with the reply), kept in the entry and so across a takeover."""
        if not self._running:
            return defer.fail(SpoolError("the relay spool is not running"))
        self._keys += 1
        record.key = f"{self.node}.{self._keys}"
        waiting = _Appending()
        record.token = waiting
        stream = self.stream
        d = self._call(
            "execute_command", "XADD", stream, "NOMKSTREAM", "*",
            "k", record.key, "l", record.lane, "t", record.kind, "d", record.delivery,
            "a", repr(record.arrived), "b", record.body,
        )
        return d.addCallbacks(
            self._appended, self._append_failed,
            callbackArgs=(record, waiting, stream), errbackArgs=(record, waiting),
        )

    def _appended(self, reply: Any, record: Record, waiting: _Appending, stream: str) -> None:
        if reply is None:
            # NOMKSTREAM: the stream is gone (taken over and emptied, or Redis
            # lost it); nothing was written.
            self._settle(record, waiting, None)
            self._stream_gone()
            raise SpoolError("the relay spool's stream in Redis is gone; the next append goes to a new one")
        if stream == self.stream:
            self._pending += 1
        self._settle(record, waiting, Entry(stream, _text(reply)))

    def _append_failed(self, failure: Failure, record: Record, waiting: _Appending) -> Failure:
        self._settle(record, waiting, None)
        return _spool_error(failure)

    def _settle(self, record: Record, waiting: _Appending, token: Entry | None) -> None:
        """The XADD has its outcome: what waited for it goes ahead."""
        if record.token is waiting:
            record.token = token
        for later in waiting.after:
            later()

    def done(self, record: Record) -> None:
        """``XDEL`` the record where it is (its own stream or a dead node's);
        nothing waits on it."""
        token = record.token
        if isinstance(token, _Appending):
            token.after.append(lambda: self.done(record))
            return
        if not isinstance(token, Entry):
            return
        record.token = None
        self._call("execute_command", "XDEL", token.stream, token.id).addErrback(self._complain, "XDEL of a record")
        self._forget(token)

    def bury(self, letter: DeadLetter) -> None:
        """Out of its stream and into the dead letters, in one script; the
        oldest dead letters go past ``dead_limit``. Should it fail, the
        record stays pending in its stream (a takeover delivers it again)."""
        record = letter.record
        token = record.token
        if isinstance(token, _Appending):
            token.after.append(lambda: self.bury(letter))
            return
        keys = [DEAD_KEY, DEAD_ORDER_KEY, DEAD_SEQ_KEY]
        args: list[Any] = [record.key, encode_letter(letter), self.dead_limit]
        if isinstance(token, Entry):
            keys.append(token.stream)
            args.append(token.id)
            record.token = None
        self._call("eval", BURY_SCRIPT, keys, args).addCallbacks(
            self._buried, self._complain, errbackArgs=("keeping a dead letter",)
        )
        if isinstance(token, Entry):
            # After the script is sent: a claimed stream it empties may be
            # deleted next.
            self._forget(token)

    def _buried(self, reply: Any) -> None:
        self._dead_count = int(reply[0])
        dropped = int(reply[1])
        if dropped:
            self.dead_dropped += dropped
            log.warn(
                "more than {limit} dead letters: the {count} oldest are dropped ({ids})",
                limit=self.dead_limit, count=dropped, ids=", ".join(map(_text, reply[2:])),
            )

    def dead_letters(self, limit: int, after: str | None) -> Deferred[list[DeadLetter]]:
        """A page of the cluster's dead letters, oldest first."""
        if limit < 1:
            return defer.succeed([])
        args = [limit, "0" if after is None else "1", after or ""]
        d = self._call("eval", PAGE_SCRIPT, [DEAD_KEY, DEAD_ORDER_KEY], args)

        def letters(reply: Any) -> list[DeadLetter]:
            found = []
            for i in range(0, len(reply), 2):
                try:
                    found.append(decode_letter(_text(reply[i]), _raw(reply[i + 1])))
                except (KeyError, TypeError, ValueError):
                    log.warn("dead letter {id} in Redis is not readable; skipped", id=_text(reply[i]))
            return found

        return d.addCallbacks(letters, _spool_error)

    def dead_count(self) -> int:
        """The count of the last look (each beat, and each change made here)."""
        return self._dead_count

    def revive(self, ids: list[str] | None) -> Deferred[list[Record]]:
        """Move dead letters back into this node's stream, in one script;
        fires with their records, in the order they first arrived."""
        if not self._running:
            return defer.fail(SpoolError("the relay spool is not running"))
        args: list[str] = ["1"]
        if ids is not None:
            args = ["0", *dict.fromkeys(ids)]
            if len(args) == 1:
                return defer.succeed([])
        stream = self.stream
        d = self._call("eval", REVIVE_SCRIPT, [DEAD_KEY, DEAD_ORDER_KEY, stream], args)

        def revived(reply: Any) -> list[Record]:
            if reply is None:
                self._stream_gone()
                raise SpoolError("the relay spool's stream in Redis is gone; try again")
            self._dead_count = int(reply[0])
            records = []
            for i in range(1, len(reply), 3):
                record = decode_letter(_text(reply[i]), _raw(reply[i + 1])).record
                record.token = Entry(stream, _text(reply[i + 2]))
                if stream == self.stream:
                    self._pending += 1
                records.append(record)
            return records

        return d.addCallbacks(revived, _spool_error)

    def delete(self, id: str) -> Deferred[bool]:
        d = self._call("eval", DELETE_SCRIPT, [DEAD_KEY, DEAD_ORDER_KEY], [id])

        def deleted(reply: Any) -> bool:
            self._dead_count = int(reply[1])
            return int(reply[0]) == 1

        return d.addCallbacks(deleted, _spool_error)

    def stop(self) -> Deferred[None]:
        """Stop beating and let go of every stream: this node's own is
        deleted when empty; with records left, its owner key is, so that
        another node delivers them at its next beat rather than ``ttl_ms``
        later. Call it once the relay has drained (or given up): what it
        still holds may be delivered twice. Fires when Redis has answered
        (never fails: Redis away, the owner keys expire by themselves)."""
        self._running = False
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._retry is not None:
            self._retry.cancel()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        await self.idle()
        leaving: list[Deferred[Any]] = [self._leave(claim, release=True) for claim in list(self._claims.values())]
        if self._registered:
            self._registered = False
            own = self._call("eval", LEAVE_SCRIPT, [self._owner, self.stream, STREAMS_KEY], [self.node, self.sid, "1"])
            leaving.append(own.addCallbacks(self._left_own, self._complain, errbackArgs=("letting go of the stream",)))
        await defer.gatherResults(leaving, consumeErrors=True)

    def _left_own(self, reply: Any) -> None:
        if int(reply) == 0:
            log.info("relay spool: records are left in {stream} for another node to deliver", stream=self.stream)

    # -- the beat -----------------------------------------------------------

    def beat(self) -> Deferred[None]:
        """Renew this node's streams, refresh the dead letters' count, and
        claim one dead stream (its reading goes on afterwards: see
        :meth:`idle`). Fires when done; one at a time."""
        beating = self._beating
        if beating is None:
            beating = self._beating = self._track(self._beat())

            def over(_: Any) -> None:
                self._beating = None

            beating.addBoth(over)
        waiter: Deferred[None] = defer.Deferred()
        beating.addBoth(lambda _: waiter.callback(None))
        return waiter

    def _tick(self) -> Deferred[None]:
        return self.beat() if self._running else defer.succeed(None)

    async def _beat(self) -> None:
        call = self._call
        claims = list(self._claims.values())
        sent = [
            call(
                "eval", REGISTER_SCRIPT, [self._owner, self.stream, STREAMS_KEY],
                [self.node, self.ttl_ms, self.sid, "0"],
            ),
            call("execute_command", "ZCARD", DEAD_ORDER_KEY),
            call("execute_command", "SMEMBERS", STREAMS_KEY),
        ]
        if claims:
            sent.append(call("eval", RENEW_SCRIPT, [claim.owner for claim in claims], [self.node, self.ttl_ms]))
        try:
            replies = await defer.gatherResults(sent, consumeErrors=True)
        except FirstError as exc:
            self._complain(exc.subFailure, "the beat")
            return
        registered, count, members = replies[0], replies[1], replies[2]
        self._dead_count = int(count)
        if int(registered) == 2:
            log.warn("relay spool: {stream} was gone from Redis (taken over while this node missed its beats, "
                     "or Redis lost its data): made again", stream=self.stream)
        try:
            if int(registered) == 0:
                await self._register(fresh=False)
            if claims:
                for claim, ours in zip(claims, replies[3]):
                    if not int(ours) and self._claims.get(claim.sid) is claim:
                        log.warn("relay spool: another node took {sid} over from this one", sid=claim.sid)
                        del self._claims[claim.sid]
            if self._running:
                await self._claim([_text(m) for m in members or []])
        except Exception:
            self._complain(Failure(), "the beat")
        for claim in list(self._claims.values()):
            if not claim.reading and self._running:
                self._track(self._read(claim))

    async def _register(self, fresh: bool) -> None:
        """Register (or renew) this node's stream; when another node holds
        it, go on with a new one."""
        while True:
            result = await self._call(
                "eval", REGISTER_SCRIPT, [self._owner, self.stream, STREAMS_KEY],
                [self.node, self.ttl_ms, self.sid, "1" if fresh else "0"],
            )
            if int(result) != 0:
                return
            if not fresh:
                log.warn(
                    "relay spool: another node took {stream} over (this node missed its beats for {ttl} ms): "
                    "its {count} records may be delivered twice; going on with a new stream",
                    stream=self.stream, ttl=self.ttl_ms, count=self._pending,
                )
                self._written.add(self.sid)
            self._generation += 1
            self._use_stream(f"{self.node}-{self._generation}")
            self._pending = 0
            fresh = True

    def _stream_gone(self) -> None:
        """An append found no stream: register one before the next."""
        if self._reregistering or not self._running:
            return
        self._reregistering = True

        async def again() -> None:
            try:
                await self._register(fresh=False)
            except Exception:
                self._complain(Failure(), "registering the stream again")
            finally:
                self._reregistering = False

        self._track(again())

    async def _claim(self, members: list[str]) -> None:
        """Take over one stream whose node is gone, if there is one."""
        candidates = sorted(set(members) - {self.sid} - self._written - set(self._claims))
        if not candidates:
            return
        keys = [STREAMS_KEY]
        for sid in candidates:
            keys += [OWNER_PREFIX + sid, STREAM_PREFIX + sid]
        taken = await self._call("eval", CLAIM_SCRIPT, keys, [self.node, self.ttl_ms, *candidates])
        if taken is None:
            return
        sid = _text(taken)
        log.info("relay spool: taking over {stream}, whose node is gone", stream=STREAM_PREFIX + sid)
        self._claims[sid] = _Claim(sid)

    async def _read(self, claim: _Claim) -> None:
        """Hand the relay what it has not seen of a claimed stream, in
        order, a page at a time; let go of it once it is done with all."""
        claim.reading = True
        try:
            while self._running and self._claims.get(claim.sid) is claim:
                start = "-" if claim.last is None else "(" + claim.last
                entries = await self._call("execute_command", "XRANGE", claim.stream, start, "+", "COUNT", PAGE)
                for entry_id, fields in entries or []:
                    claim.last = entry_id = _text(entry_id)
                    record = _record(fields)
                    if record is None:
                        log.warn("relay spool: entry {id} of {stream} is not a record; deleted",
                                 id=entry_id, stream=claim.stream)
                        self._call("execute_command", "XDEL", claim.stream, entry_id).addErrback(
                            self._complain, "XDEL of a record")
                        continue
                    record.token = Entry(claim.stream, entry_id)
                    claim.outstanding.add(entry_id)
                    claim.handed += 1
                    try:
                        self._recover(record)
                    except Exception:
                        log.failure("relay spool: a record taken over could not be queued")
                if len(entries or []) < PAGE:
                    claim.caught_up = True
                    break
        except Exception:
            self._complain(Failure(), "reading " + claim.stream)
        finally:
            claim.reading = False
        if claim.caught_up and not claim.outstanding:
            await self._leave(claim)

    def _forget(self, token: Entry) -> None:
        """Bookkeeping of a record deleted from its stream."""
        if token.stream == self.stream:
            self._pending = max(0, self._pending - 1)
            return
        claim = self._claims.get(token.stream[len(STREAM_PREFIX):])
        if claim is None or claim.stream != token.stream:
            return
        claim.outstanding.discard(token.id)
        if claim.caught_up and not claim.outstanding and not claim.reading:
            self._track(self._leave(claim))

    def _leave(self, claim: _Claim, release: bool = False) -> Deferred[None]:
        """Delete a claimed stream the relay is done with (or, ``release``,
        let go of it with what is left)."""
        if claim.leaving or self._claims.get(claim.sid) is not claim:
            return defer.succeed(None)
        claim.leaving = True
        d = self._call(
            "eval", LEAVE_SCRIPT, [claim.owner, claim.stream, STREAMS_KEY],
            [self.node, claim.sid, "1" if release else "0"],
        )

        def left(reply: Any) -> None:
            result = int(reply)
            if result == 1:
                log.info("relay spool: took over {count} records of {stream}; it is deleted",
                         count=claim.handed, stream=claim.stream)
            elif result == -1:
                log.warn("relay spool: another node took {stream} over from this one", stream=claim.stream)
            if result != 0 or release:
                self._claims.pop(claim.sid, None)

        def over(_: Any) -> None:
            claim.leaving = False

        return d.addCallbacks(left, self._complain, errbackArgs=("letting go of " + claim.stream,)).addBoth(over)

    # -- housekeeping -------------------------------------------------------

    def _track(self, work: Coroutine[Any, Any, None] | Deferred[None]) -> Deferred[None]:
        """Run ``work``, counted until it ends (:meth:`idle`)."""
        d = Deferred.fromCoroutine(work) if not isinstance(work, Deferred) else work
        self._busy.add(d)

        def ended(result: Any) -> None:
            self._busy.discard(d)
            if isinstance(result, Failure):
                log.failure("relay spool: unexpected failure", result)
            if not self._busy:
                waiters, self._idle_waiters = self._idle_waiters, []
                for waiter in waiters:
                    waiter.callback(None)

        d.addBoth(ended)
        return d

    def idle(self) -> Deferred[None]:
        """Fires once no beat, takeover read or release is under way (for
        stopping, and for tests)."""
        if not self._busy:
            return defer.succeed(None)
        waiter: Deferred[None] = defer.Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def _complain(self, failure: Failure, what: str) -> None:
        """Log a failed command nobody waits on, at most once per
        :data:`COMPLAIN_EVERY` (Redis away, they all fail)."""
        now = self._clock.seconds()
        if self._complained_at is not None and now - self._complained_at < COMPLAIN_EVERY:
            self._held_back += 1
            return
        held, self._held_back = self._held_back, 0
        self._complained_at = now
        failure = _unwrap(failure)
        if failure.check(BackendUnavailable, SpoolError):
            log.warn("relay spool: {what} failed: {why} ({held} more failures held back)",
                     what=what, why=failure.getErrorMessage(), held=held)
        else:
            log.failure("relay spool: {what} failed ({held} more failures held back)", failure, what=what, held=held)
