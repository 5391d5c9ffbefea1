"""Channels shared by several nodes through Redis (``backend = "redis://…"``).

Every node keeps its own browsers, exactly as the memory broker does; Redis
holds what the nodes share:

``chloe:ids``
    a hash ``{ms, seq}``: the last message id given out, cluster-wide. Ids are
    ``"<ms>-<seq>"`` as on one node, ``seq`` counting every message of the
    cluster and ``ms`` never going back, so one id is a cursor over every
    channel on every node (what an SSE ``Last-Event-ID`` needs).
``chloe:h:<channel>``
    a Stream holding the channel's history under the message ids themselves,
    trimmed with ``XDEL`` (which, unlike ``MAXLEN``, moves the stream's
    ``max-deleted-entry-id``, so a resume knows exactly when it missed
    something) to ``history_size`` entries and ``history_ttl`` seconds, and
    expiring ``history_ttl`` after its last message.
``chloe:s:<session>``
    which node holds a session, for ``/send`` to one session and for browser
    frames POSTed to the wrong node.
``chloe:p:<channel>``, ``chloe:pi:<channel>``
    presence: user id → expiry, user id → member (see :class:`RedisPresence`).
pub/sub ``chloe:<db>:c:<channel>``, ``chloe:<db>:all``, ``chloe:<db>:n:<node>``
    live messages: ``"<id> <excluded session> <data>"`` (the data is the JSON
    ``/send`` was given, spliced into frames unparsed); presence
    announcements on the channel's, ``"p …"``; on a node's own, messages to
    one session and forwarded frames ``"f …"``. Pub/sub ignores the database
    number, so the channels carry it.

A publish is one round trip, one script (``EVALSHA``): it takes ``TIME``,
the next id (``HGET``/``HSET``/``HINCRBY``), ``XADD``s the message, trims
(``XLEN``, ``XRANGE``, ``XDEL``) and re-expires (``PEXPIRE``) the stream
and ``PUBLISH``es it, atomically, so every message is both in the history
and on the wire or in neither, in the same order. ``/send`` answers 202 once
Redis has run it. Each node listening to the channel then gets it once.

A node subscribes to a channel's pub/sub only while it has subscribers for
it, encodes each message it gets once, and hands the same bytes to each of
its subscribers (the memory broker's fan-out).

Joining a channel without losing or repeating a message: the node subscribes
to the pub/sub channel first; the browser's *join* keeps what arrives live
meanwhile; once the subscription is confirmed a script reads, atomically for
every channel of the join, the history after ``since`` and the last id given
out (the *floor*). The browser then gets the history, then what came live
after the floor, and from the first live message past the floor on, every
live one. The same happens for a node's own subscribers after Redis comes
back: each channel is read again after the last id the node delivered.
"""

from __future__ import annotations

import heapq
import secrets
import time
from typing import Any, Iterable
from urllib.parse import urlsplit

import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.internet import task
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from chloed import frames
from chloed.backends import BackendUnavailable
from chloed.broker import Broker, Channel, PublishResult, Subscriber
from chloed.frames import Encoded
from chloed.presence import presence_frame

log = Logger()

IDS_KEY = "chloe:ids"
HISTORY_PREFIX = "chloe:h:"
SESSION_PREFIX = "chloe:s:"
SESSION_TTL = 86400  # a dead node's sessions are forgotten after a day
REPLY_TIMEOUT = 5.0
RETRY_DELAY = 0.5
LOOKUP_AGAIN = 0.2

Key = tuple[int, int]
ZERO: Key = (0, 0)

# TIME, the next id per channel, XADD + trim + expiry + PUBLISH: one atomic step.
PUBLISH_SCRIPT = """
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = tonumber(redis.call('HGET', KEYS[1], 'ms') or 0)
if last > ms then ms = last end
local sms = string.format('%.0f', ms)
redis.call('HSET', KEYS[1], 'ms', sms)
local size = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local ids = {}
for i = 2, #KEYS do
  local id = sms .. '-' .. string.format('%.0f', redis.call('HINCRBY', KEYS[1], 'seq', 1))
  if size > 0 and ttl > 0 then
    redis.call('XADD', KEYS[i], id, 'd', ARGV[1])
    -- XDEL, not MAXLEN: only XDEL moves max-deleted-entry-id, which says
    -- exactly which cursors a resume can no longer serve.
    local gone = {}
    local excess = redis.call('XLEN', KEYS[i]) - size
    if excess > 0 then
      for _, entry in ipairs(redis.call('XRANGE', KEYS[i], '-', '+', 'COUNT', excess)) do
        gone[#gone + 1] = entry[1]
      end
    end
    for _, entry in ipairs(redis.call('XRANGE', KEYS[i], '-', string.format('%.0f', ms - ttl), 'COUNT', 100)) do
      gone[#gone + 1] = entry[1]
    end
    if #gone > 0 then redis.call('XDEL', KEYS[i], unpack(gone)) end
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
  redis.call('PUBLISH', ARGV[4] .. ARGV[4 + i], id .. ' ' .. ARGV[5] .. ' ' .. ARGV[1])
  ids[#ids + 1] = id
end
return ids
"""

# A message to everyone (KEYS[2] absent) or to one session (KEYS[2] names
# its node): the next id and one PUBLISH; false when no node holds the session.
DIRECT_SCRIPT = """
local target = ARGV[2] .. 'all'
local head = ''
if #KEYS > 1 then
  local node = redis.call('GET', KEYS[2])
  if not node then return false end
  target = ARGV[2] .. 'n:' .. node
  head = ARGV[4] .. ' '
end
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = tonumber(redis.call('HGET', KEYS[1], 'ms') or 0)
if last > ms then ms = last end
local sms = string.format('%.0f', ms)
redis.call('HSET', KEYS[1], 'ms', sms)
local id = sms .. '-' .. string.format('%.0f', redis.call('HINCRBY', KEYS[1], 'seq', 1))
local reached = redis.call('PUBLISH', target, head .. id .. ' ' .. ARGV[3] .. ' ' .. ARGV[1])
if #KEYS > 1 and reached == 0 then return false end
return id
"""

# A request for a session another node holds (browser frames POSTed, "f",
# or a poll, "q", that reached the wrong node): to that node, or false when
# none holds it.
FORWARD_SCRIPT = """
local node = redis.call('GET', KEYS[1])
if not node then return false end
local reached = redis.call('PUBLISH', ARGV[1] .. 'n:' .. node, ARGV[4] .. ' ' .. ARGV[2] .. ' ' .. ARGV[3])
return reached > 0
"""

# Atomically, for several channels: the server's time, the last id given
# out, and for each stream after its ARGV cursor ('' for none): whether it
# exists, the newest entry trimmed away, the first entry kept, the entries.
SNAPSHOT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local head = redis.call('HMGET', KEYS[1], 'ms', 'seq')
local out = {string.format('%.0f', now), head[1] or '0', head[2] or '0'}
for i = 2, #KEYS do
  if ARGV[i - 1] == '' or redis.call('EXISTS', KEYS[i]) == 0 then
    out[#out + 1] = {0}
  else
    local info = redis.call('XINFO', 'STREAM', KEYS[i])
    local deleted, first = '0-0', '0-0'
    for j = 1, #info, 2 do
      if info[j] == 'max-deleted-entry-id' then deleted = info[j + 1]
      elseif info[j] == 'recorded-first-entry-id' then first = info[j + 1] end
    end
    out[#out + 1] = {1, deleted, first, redis.call('XRANGE', KEYS[i], '(' .. ARGV[i - 1], '+')}
  end
end
return out
"""


# Presence of a channel: zset chloe:p:<channel> (user id -> when it expires,
# pushed forward by every node holding the user) and hash chloe:pi:<channel>
# (user id -> member JSON). First those past expiry leave, then each
# (user id, member JSON) of ARGV is held for ARGV[1] ms more; a user not
# there before joins. Announcements go over the channel's pub/sub as
# "p <seq> <join|leave> <excluded session> <member JSON>".
PRESENCE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local hold = tonumber(ARGV[1])
local target = ARGV[2]
for _, uid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  local member = redis.call('HGET', KEYS[3], uid) or '{}'
  redis.call('ZREM', KEYS[2], uid)
  redis.call('HDEL', KEYS[3], uid)
  local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  redis.call('PUBLISH', target, 'p ' .. string.format('%.0f', seq) .. ' leave  ' .. member)
end
for i = 4, #ARGV, 2 do
  local uid = ARGV[i]
  local old = redis.call('ZSCORE', KEYS[2], uid)
  redis.call('ZADD', KEYS[2], 'GT', now + hold, uid)
  if not old then
    redis.call('HSET', KEYS[3], uid, ARGV[i + 1])
    local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
    redis.call('PUBLISH', target, 'p ' .. string.format('%.0f', seq) .. ' join ' .. ARGV[3] .. ' ' .. ARGV[i + 1])
  end
end
if #ARGV >= 4 then
  redis.call('PEXPIRE', KEYS[2], 2 * hold)
  redis.call('PEXPIRE', KEYS[3], 2 * hold)
end
return 1
"""

# The members of a presence channel now, and the last seq given out (so
# announcements already reflected here can be told apart).
MEMBERS_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {redis.call('HGET', KEYS[1], 'seq') or '0'}
for _, uid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf')) do
  out[#out + 1] = uid
  out[#out + 1] = redis.call('HGET', KEYS[3], uid) or '{}'
end
return out
"""


def parse_key(text: bytes | str | None) -> Key | None:
    """``(ms, seq)`` of a message id (Redis orders stream ids so), or None
    when ``text`` is not an id."""
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    ms, dash, seq = text.partition("-")
    if not dash or not (ms.isascii() and ms.isdigit() and seq.isascii() and seq.isdigit()):
        return None
    if len(ms) > 16 or len(seq) > 20:
        return None
    return int(ms), int(seq)


def format_key(key: Key) -> str:
    return f"{key[0]}-{key[1]}"


def parse_url(url: str) -> tuple[str, int, int]:
    """Host, port and database number of a ``redis://host:port/db`` URL."""
    parts = urlsplit(url)
    db = parts.path.strip("/")
    return parts.hostname or "127.0.0.1", parts.port or 6379, int(db) if db else 0


class _Snapshot:
    """What :data:`SNAPSHOT_SCRIPT` answered."""

    __slots__ = ("now_ms", "head", "streams")

    def __init__(self, reply: list[Any]) -> None:
        self.now_ms = int(reply[0])
        self.head: Key = (int(reply[1]), int(reply[2]))
        self.streams = reply[3:]

    def recovered(self, index: int, after: Key, ttl_ms: float, keeps: bool) -> bool:
        """Whether stream ``index`` holds everything published after ``after``
        (the memory broker's rule, on what Redis says it trimmed)."""
        if after > self.head:
            return False
        unexpired = keeps and after[0] >= self.now_ms - ttl_ms
        stream = self.streams[index]
        if not stream[0]:
            return unexpired or after >= self.head
        deleted = parse_key(stream[1]) or ZERO
        first = parse_key(stream[2]) or ZERO
        ok = after >= deleted
        if after < first and deleted == ZERO:
            # Before the first message of this life of the stream: an older
            # life may have expired, unless too little time has passed.
            ok = ok and unexpired
        return ok

    def entries(self, index: int) -> list[tuple[Key, str, bytes]]:
        """``(key, id, data)`` of stream ``index``, in order."""
        stream = self.streams[index]
        if not stream[0]:
            return []
        out = []
        for raw_id, fields in stream[3]:
            key = parse_key(raw_id)
            if key is None:
                continue
            data = fields[1] if len(fields) >= 2 else b"null"
            out.append((key, raw_id.decode("ascii"), data))
        return out


class _Join:
    """A subscriber on its way into one or more channels.

    While the channels are not ready, or their history is being read, live
    messages are kept in ``buffer``; once read, ``floor`` is the last id given
    out when the history was read, and live messages at or below it (already
    in the history) are dropped until one above it comes.
    """

    __slots__ = ("subscriber", "names", "since", "buffer", "floor", "deferred", "reading", "catching")

    def __init__(self, subscriber: Subscriber, names: list[str], since: str | None) -> None:
        self.subscriber = subscriber
        self.names = names
        self.since = since
        self.buffer: list[tuple[Key, Encoded]] = []
        self.floor: Key | None = None
        self.deferred: Deferred[Any] = Deferred()
        self.reading = False
        # channels read, whose live messages are still at or below the floor
        self.catching: set[str] = set()


class RedisChannel(Channel):
    """A channel of this node: its subscribers, and its state towards Redis.

    :ivar confirmed: Redis confirmed the pub/sub subscription.
    :ivar ready: and this node knows the last id it has (``cursor``):
        subscribers may join.
    :ivar buffer: live messages held for the subscribers while the channel
        is read again after Redis came back.
    """

    __slots__ = ("joining", "confirmed", "ready", "subscribing", "checking", "cursor", "buffer")

    def __init__(self, name: str) -> None:
        super().__init__(name, 0)
        self.joining: list[_Join] = []
        self.confirmed = False
        self.ready = False
        self.subscribing = False
        self.checking = False
        self.cursor: Key | None = None
        self.buffer: list[tuple[Key, str, bytes, str | None]] | None = None

    def delivering(self) -> bool:
        """Whether someone here already gets the channel's live messages
        (a subscriber, or a join past its history)."""
        return bool(self.subscribers) or any(join.floor is not None for join in self.joining)

    def position(self) -> Key | None:
        """The last id this node has for the channel."""
        last = parse_key(self.last_id)
        if last is None:
            return self.cursor
        if self.cursor is None:
            return last
        return max(last, self.cursor)


class _Commands(txredisapi.RedisProtocol):
    """The connection for commands; tells the broker when it goes."""

    def connectionLost(self, why: Failure) -> None:
        try:
            super().connectionLost(why)
        finally:
            self.factory.lost(self)


class _Subscriptions(txredisapi.SubscriberProtocol):
    """The pub/sub connection; hands every message to the broker."""

    def messageReceived(self, pattern: Any, channel: bytes, message: bytes) -> None:
        try:
            self.factory.broker._on_message(channel, message)
        except Exception:
            log.failure("a message from Redis on {channel} could not be delivered", channel=channel)

    def connectionLost(self, why: Failure) -> None:
        try:
            super().connectionLost(why)
        finally:
            self.factory.lost(self)


class _Factory(protocol.Factory):
    """Builds one kind of connection; txredisapi's protocols expect a factory
    with ``stopTrying``, ``connectionError`` and ``isLazy``."""

    isLazy = True
    noisy = False

    def __init__(self, broker: "RedisBroker", proto: type, dbid: int | None, timeout: float | None) -> None:
        self.broker = broker
        self.proto = proto
        self.dbid = dbid
        self.timeout = timeout

    def buildProtocol(self, addr: Any) -> Any:
        proto = self.proto(None, replyTimeout=self.timeout, dbid=self.dbid, convertNumbers=False)
        proto.factory = self
        proto.whenConnected().addCallback(self.ready)
        return proto

    def ready(self, proto: Any) -> None:
        if self.proto is _Commands:
            self.broker._commands_ready(proto)
        else:
            self.broker._subscriptions_ready(proto)

    def lost(self, proto: Any) -> None:
        if self.proto is _Commands:
            self.broker._commands_lost(proto)
        else:
            self.broker._subscriptions_lost(proto)

    def stopTrying(self) -> None:
        """Called by txredisapi when ``SELECT`` fails: it logs it."""

    def connectionError(self, why: str) -> None:
        log.error("redis: {why}", why=why)


class _Connector(Service):
    """Keeps the broker's two connections to Redis up (reconnecting with
    backoff) while the server runs."""

    def __init__(self, broker: "RedisBroker") -> None:
        self.broker = broker

    def startService(self) -> None:
        super().startService()
        self.broker.connect()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        return self.broker.disconnect()


class RedisBroker(Broker):
    """The broker of one node of several sharing Redis.

    :param url: ``redis://host:port/db``.
    :param reactor: connects to Redis; the clock unless given.
    :param node: this node's name in Redis (random unless given).
    """

    backend = "redis"
    asynchronous = True

    def __init__(
        self,
        clock: IReactorTime,
        history_size: int,
        history_ttl: float,
        url: str,
        reactor: Any = None,
        node: str | None = None,
    ) -> None:
        super().__init__(clock, history_size, history_ttl)
        self.url = url
        self.host, self.port, self.db = parse_url(url)
        self._reactor = reactor if reactor is not None else clock
        self.node = node or secrets.token_hex(8)
        self.pubsub = f"chloe:{self.db}:"
        self._channel_prefix = (self.pubsub + "c:").encode("ascii")
        self._all = (self.pubsub + "all").encode("ascii")
        self._mine = (self.pubsub + "n:" + self.node).encode("ascii")
        self._ttl_ms = int(history_ttl * 1000)
        self._keeps = history_size > 0 and self._ttl_ms > 0
        self.channels: dict[str, RedisChannel] = {}  # type: ignore[assignment]
        self._commands: Any = None
        self._subscriptions: Any = None
        self._base_confirmed = False
        self._services: list[ClientService] = []
        self.presence: RedisPresence | None = None
        self._stopping = False
        # Set by the hub: takes frames POSTed for one of this node's
        # sessions on another node.
        self.on_forward: Any = None
        # Set by the poll transport: answers a poll of one of this node's
        # sessions that reached another node, through the replier it is given.
        self.on_poll: Any = None
        self._polls: dict[str, Deferred[Any]] = {}
        self._renewal: LoopingCall | None = None

    # -- connections ------------------------------------------------------

    def service(self) -> Service:
        """The service that connects this broker while the server runs."""
        return _Connector(self)

    def make_presence(self, clock: IReactorTime, grace: float, announce: Any = None) -> "RedisPresence":
        """Presence kept in Redis, for the hub (in place of
        :class:`chloed.presence.Presence`)."""
        self.presence = RedisPresence(self, clock, grace)
        return self.presence

    def connect(self) -> None:
        """Open both connections; they come back by themselves when lost."""
        if self.presence is not None:
            self.presence.start()
        # Sessions older than SESSION_TTL stay reachable by /send.
        self._renewal = LoopingCall(self._register_all)
        self._renewal.clock = self._clock
        self._renewal.start(SESSION_TTL / 4, now=False).addErrback(
            lambda f: log.failure("renewing session keys stopped", f)
        )
        policy = backoffPolicy(initialDelay=0.1, maxDelay=2.0, factor=2.0)
        for proto, dbid, timeout in ((_Commands, self.db, REPLY_TIMEOUT), (_Subscriptions, None, None)):
            endpoint = HostnameEndpoint(self._reactor, self.host, self.port, timeout=5)
            service = ClientService(
                endpoint, _Factory(self, proto, dbid, timeout), retryPolicy=policy, clock=self._reactor
            )
            self._services.append(service)
            service.startService()

    def disconnect(self) -> Deferred[Any]:
        services, self._services = self._services, []
        self._stopping = True
        if self.presence is not None:
            self.presence.stop()
        if self._renewal is not None and self._renewal.running:
            self._renewal.stop()
        return defer.gatherResults([s.stopService() for s in services], consumeErrors=True)

    @property  # type: ignore[override]
    def backend_state(self) -> str:
        """``up`` while both connections are, ``down`` otherwise."""
        if self._commands is not None and self._subscriptions is not None and self._base_confirmed:
            return "up"
        return "down"

    def _commands_ready(self, proto: Any) -> None:
        log.info("redis: connected to {host}:{port}/{db}", host=self.host, port=self.port, db=self.db)
        self._commands = proto
        self._register_all()
        for channel in list(self.channels.values()):
            self._check(channel)
            for join in list(channel.joining):
                self._try_join(join)

    def _commands_lost(self, proto: Any) -> None:
        if self._commands is proto:
            self._commands = None
            if not self._stopping:
                log.warn("redis: lost the connection for commands; /send answers 503 until it is back")

    def _subscriptions_ready(self, proto: Any) -> None:
        self._subscriptions = proto
        base = [self._all.decode("ascii"), self._mine.decode("ascii")]
        self._call_sub("subscribe", base).addCallbacks(
            self._base_subscribed, self._base_failed, callbackArgs=(proto,), errbackArgs=(proto,)
        )
        for channel in list(self.channels.values()):
            self._subscribe_channel(channel)

    def _base_subscribed(self, _: Any, proto: Any) -> None:
        if self._subscriptions is proto:
            self._base_confirmed = True

    def _base_failed(self, failure: Failure, proto: Any) -> None:
        if self._subscriptions is proto:
            log.warn("redis: SUBSCRIBE failed ({why}); trying again", why=failure.getErrorMessage())
            self._later(self._subscriptions_ready, proto)

    def _later(self, f: Any, *args: Any) -> None:
        """Try ``f`` again in a moment: Redis answered an error (it may be
        loading its data after a restart)."""
        if not self._stopping:
            self._reactor.callLater(RETRY_DELAY, f, *args)

    def _subscriptions_lost(self, proto: Any) -> None:
        if self._subscriptions is not proto:
            return
        self._subscriptions = None
        self._base_confirmed = False
        if not self._stopping:
            log.warn("redis: lost the pub/sub connection; resubscribing when it is back")
        for channel in self.channels.values():
            # Read again, once subscribed again, after the last id delivered
            # live; joins still dropping repeats go on dropping them.
            channel.confirmed = channel.ready = channel.subscribing = False

    def _call(self, method: str, *args: Any) -> Deferred[Any]:
        """A command on the command connection; fails with
        :class:`BackendUnavailable` when there is none."""
        proto = self._commands
        if proto is None:
            return defer.fail(BackendUnavailable("not connected to Redis"))
        try:
            d = getattr(proto, method)(*args)
        except Exception as exc:
            return defer.fail(BackendUnavailable(str(exc)))
        return d.addErrback(self._unavailable)

    @staticmethod
    def _unavailable(failure: Failure) -> Failure:
        if failure.check(txredisapi.ConnectionError, ConnectionError):
            raise BackendUnavailable(failure.getErrorMessage())
        if failure.check(txredisapi.ResponseError):
            raise BackendUnavailable("Redis answered: " + failure.getErrorMessage())
        return failure

    def _call_sub(self, method: str, names: list[str]) -> Deferred[Any]:
        proto = self._subscriptions
        if proto is None:
            return defer.fail(BackendUnavailable("no pub/sub connection"))
        try:
            return getattr(proto, method)(names)
        except Exception as exc:
            return defer.fail(BackendUnavailable(str(exc)))

    # -- sessions ---------------------------------------------------------

    def add_session(self, session: Subscriber) -> None:
        super().add_session(session)
        self._register(session.id)

    def remove_session(self, session: Subscriber, channels: Iterable[str]) -> None:
        super().remove_session(session, channels)
        if self._commands is not None and session.id not in self.sessions:
            self._call("delete", SESSION_PREFIX + session.id).addErrback(self._ignore)

    def _register_all(self) -> None:
        for session_id in list(self.sessions):
            self._register(session_id)

    def _register(self, session_id: str) -> None:
        if self._commands is not None:
            self._call("set", SESSION_PREFIX + session_id, self.node, SESSION_TTL).addErrback(self._ignore)

    @staticmethod
    def _ignore(failure: Failure) -> None:
        """For commands sent without waiting: Redis being away is expected
        (they are sent again when it is back); anything else is logged."""
        if not failure.check(BackendUnavailable, txredisapi.ConnectionError):
            log.failure("redis: a command failed", failure)

    # -- subscriptions ----------------------------------------------------

    def _channel(self, name: str) -> RedisChannel:
        channel = self.channels.get(name)
        if channel is None:
            channel = self.channels[name] = RedisChannel(name)
            self._subscribe_channel(channel)
        return channel

    def _subscribe_channel(self, channel: RedisChannel) -> None:
        if self._subscriptions is None or channel.subscribing or channel.confirmed:
            return
        if self.channels.get(channel.name) is not channel:
            return  # forgotten meanwhile
        channel.subscribing = True
        proto = self._subscriptions
        self._call_sub("subscribe", [self.pubsub + "c:" + channel.name]).addCallbacks(
            self._confirmed, self._subscribe_failed, callbackArgs=(channel, proto), errbackArgs=(channel,)
        )

    def _confirmed(self, _: Any, channel: RedisChannel, proto: Any) -> None:
        if self.channels.get(channel.name) is not channel or self._subscriptions is not proto:
            return
        channel.subscribing = False
        channel.confirmed = True
        if channel.delivering():
            channel.buffer = []
        self._check(channel)

    def _subscribe_failed(self, failure: Failure, channel: RedisChannel) -> None:
        channel.subscribing = False
        if self._subscriptions is not None:
            self._later(self._subscribe_channel, channel)
        if not failure.check(BackendUnavailable, txredisapi.ConnectionError):
            log.failure("redis: subscribing to {channel} failed", failure, channel=channel.name)

    def _check(self, channel: RedisChannel) -> None:
        """Once subscribed: learn the channel's position (and, after Redis
        came back, deliver what its subscribers missed), then let joins in."""
        if not channel.confirmed or channel.ready or channel.checking or self._commands is None:
            return
        if self.channels.get(channel.name) is not channel:
            return
        channel.checking = True
        position = channel.position()
        since = format_key(position) if position is not None and channel.delivering() else ""
        self._snapshot([channel.name], [since]).addCallbacks(
            self._checked, self._check_failed, callbackArgs=(channel, since), errbackArgs=(channel,)
        )

    def _checked(self, snapshot: _Snapshot, channel: RedisChannel, since: str) -> None:
        channel.checking = False
        if self.channels.get(channel.name) is not channel or not channel.confirmed:
            return
        floor = snapshot.head
        position = channel.position()
        buffered, channel.buffer = channel.buffer or [], None
        if since:
            after = parse_key(since) or ZERO
            if not snapshot.recovered(0, after, self._ttl_ms, self._keeps):
                log.warn("redis: some messages of {channel} were lost while Redis was away", channel=channel.name)
            for key, id, data in snapshot.entries(0):
                self._deliver_live(channel, id, data, None)
            for key, id, data, exclude in buffered:
                if key > floor:
                    self._deliver_live(channel, id, data, exclude)
        channel.cursor = floor if position is None else max(floor, position)
        if self.presence is not None and channel.name.startswith("presence-"):
            channel.checking = True
            self.presence.load(channel.name).addCallbacks(
                self._loaded, self._check_failed, callbackArgs=(channel,), errbackArgs=(channel,)
            )
            return
        self._now_ready(channel)

    def _loaded(self, _: Any, channel: RedisChannel) -> None:
        channel.checking = False
        if self.channels.get(channel.name) is channel and channel.confirmed:
            self._now_ready(channel)

    def _now_ready(self, channel: RedisChannel) -> None:
        channel.ready = True
        for join in list(channel.joining):
            self._try_join(join)

    def _check_failed(self, failure: Failure, channel: RedisChannel) -> None:
        channel.checking = False
        if self._commands is not None:
            self._later(self._check, channel)
        if not failure.check(BackendUnavailable):
            log.failure("redis: reading {channel} failed", failure, channel=channel.name)

    def subscribe(  # type: ignore[override]
        self, name: str, subscriber: Subscriber, since: str | None = None
    ) -> Deferred[tuple[bool, list[Encoded]] | None]:
        """Join ``subscriber`` to ``name``; fires with ``(recovered,
        missed)`` once it is in, or None when it left before."""

        def one(answer: Any) -> Any:
            if answer is None:
                return None
            recovered, missed = answer
            return recovered.get(name, True), missed

        return self.subscribe_many([name], subscriber, since).addCallback(one)

    def subscribe_many(
        self, names: list[str], subscriber: Subscriber, since: str | None
    ) -> Deferred[tuple[dict[str, bool], list[Encoded]] | None]:
        """Join ``subscriber`` to several channels at once, replaying after
        one cursor merged across them in publish order.

        Fires with ``({channel: recovered}, missed)`` once it is in every
        channel (``recovered`` only for those given ``since``), or None when
        it left them all before; waits while Redis is away.
        """
        join = _Join(subscriber, list(dict.fromkeys(names)), since)
        for name in join.names:
            channel = self._channel(name)
            channel.joining.append(join)
        self._try_join(join)
        return join.deferred

    def _try_join(self, join: _Join) -> None:
        if join.reading or join.deferred.called or join.floor is not None:
            return
        channels = [self.channels[name] for name in join.names]
        if not all(channel.ready for channel in channels):
            return
        if join.since is None:
            self._finish(join, None, {})
            return
        join.reading = True
        after = parse_key(join.since)
        since = format_key(after) if after is not None else "0-0"
        names = list(join.names)
        self._snapshot(names, [since] * len(names)).addCallbacks(
            self._read, self._read_failed, callbackArgs=(join, names, after), errbackArgs=(join,)
        )

    def _read(self, snapshot: _Snapshot, join: _Join, names: list[str], after: Key | None) -> None:
        join.reading = False
        if join.deferred.called:
            return
        channels = [self.channels.get(name) for name in join.names]
        if not all(channel is not None and channel.ready for channel in channels):
            # Redis went away meanwhile: read again once it is back.
            self._try_join(join)
            return
        if after is not None and after > snapshot.head:
            after = None  # not an id of this cluster
        recovered: dict[str, bool] = {}
        streams = []
        for index, name in enumerate(names):
            if name not in join.names:
                continue  # unsubscribed meanwhile
            recovered[name] = after is not None and snapshot.recovered(index, after, self._ttl_ms, self._keeps)
            streams.append([(key, name, id, data) for key, id, data in snapshot.entries(index)])
        missed = [frames.message(name, id, data) for _, name, id, data in heapq.merge(*streams)]
        self._finish(join, snapshot.head, recovered, missed)

    def _read_failed(self, failure: Failure, join: _Join) -> None:
        join.reading = False
        if not failure.check(BackendUnavailable):
            log.failure("redis: reading history failed", failure)
            self._abandon(join, failure)
        elif self._commands is not None:
            self._later(self._try_join, join)
        # else: tried again when the command connection is back

    def _abandon(self, join: _Join, failure: Failure) -> None:
        for name in join.names:
            channel = self.channels.get(name)
            if channel is not None and join in channel.joining:
                channel.joining.remove(join)
                self._maybe_forget(channel)
        if not join.deferred.called:
            join.deferred.errback(failure)

    def _finish(
        self, join: _Join, floor: Key | None, recovered: dict[str, bool], missed: list[Encoded] | None = None
    ) -> None:
        """The join is in: hand over the history and what came live since,
        and move it to the channels' subscribers (or keep dropping repeats
        until the live messages pass the floor)."""
        out = list(missed or ())
        buffered, join.buffer = join.buffer, []
        for key, frame in buffered:
            if floor is None or key > floor:
                out.append(frame)
        join.floor = floor if floor is not None else ZERO
        for name in join.names:
            channel = self.channels[name]
            position = channel.position()
            caught_up = floor is None or (position is not None and position >= floor)
            if caught_up:
                self._promote(join, channel)
            else:
                join.catching.add(name)
        join.deferred.callback((recovered, out))

    def _promote(self, join: _Join, channel: RedisChannel) -> None:
        if join in channel.joining:
            channel.joining.remove(join)
        join.catching.discard(channel.name)
        channel.subscribers[join.subscriber] = None

    def unsubscribe(self, name: str, subscriber: Subscriber) -> bool:
        """Remove ``subscriber`` (joined or still joining); True when it was
        there."""
        channel = self.channels.get(name)
        if channel is None:
            return False
        found = False
        if subscriber in channel.subscribers:
            del channel.subscribers[subscriber]
            found = True
        for join in list(channel.joining):
            if join.subscriber is subscriber:
                channel.joining.remove(join)
                join.catching.discard(name)
                if name in join.names and not join.deferred.called:
                    join.names.remove(name)
                    if not join.names:
                        join.deferred.callback(None)
                    else:
                        self._try_join(join)
                found = True
        self._maybe_forget(channel)
        return found

    def _maybe_forget(self, channel: Channel) -> None:
        assert isinstance(channel, RedisChannel)
        if channel.subscribers or channel.joining:
            return
        if self.channels.get(channel.name) is channel:
            del self.channels[channel.name]
            if self.presence is not None:
                self.presence.forget(channel.name)
            if channel.confirmed or channel.subscribing:
                self._call_sub("unsubscribe", [self.pubsub + "c:" + channel.name]).addErrback(self._ignore)

    def replay(self, name: str, since: str) -> tuple[bool, list[Encoded]]:  # pragma: no cover
        raise NotImplementedError("with Redis, subscribe and subscribe_many replay")

    def replay_many(self, names: Iterable[str], since: str) -> tuple[bool, list[Encoded]]:  # pragma: no cover
        raise NotImplementedError("with Redis, subscribe and subscribe_many replay")

    def _snapshot(self, names: list[str], sinces: list[str]) -> Deferred[_Snapshot]:
        keys = [IDS_KEY] + [HISTORY_PREFIX + name for name in names]
        return self._call("eval", SNAPSHOT_SCRIPT, keys, sinces).addCallback(_Snapshot)

    # -- publishing -------------------------------------------------------

    def publish(  # type: ignore[override]
        self, names: Iterable[str], data: bytes, exclude: str | None = None
    ) -> Deferred[PublishResult]:
        """Publish ``data`` to each channel; fires once Redis has stored and
        published it, with the ids (``delivered``/``queued`` stay 0: nodes
        deliver on their own), or fails with :class:`BackendUnavailable`."""
        names = list(names)
        keys = [IDS_KEY] + [HISTORY_PREFIX + name for name in names]
        args = [data, self.history_size, self._ttl_ms, self.pubsub + "c:", exclude or ""] + names

        def done(ids: list[bytes]) -> PublishResult:
            result = PublishResult()
            for name, id in zip(names, ids):
                result.ids[name] = id.decode("ascii")
            return result

        return self._call("eval", PUBLISH_SCRIPT, keys, args).addCallback(done)

    def broadcast(self, data: bytes, exclude: str | None = None) -> Deferred[PublishResult]:  # type: ignore[override]
        """Send ``data`` to every session of every node."""
        d = self._call("eval", DIRECT_SCRIPT, [IDS_KEY], [data, self.pubsub, exclude or ""])
        return d.addCallback(lambda id: PublishResult(id=id.decode("ascii")))

    def to_session(self, session_id: str, data: bytes) -> Deferred[PublishResult | None]:  # type: ignore[override]
        """Send ``data`` to one session on whichever node holds it; fires
        with None when none does."""
        keys = [IDS_KEY, SESSION_PREFIX + session_id]
        d = self._call("eval", DIRECT_SCRIPT, keys, [data, self.pubsub, "", session_id])
        return d.addCallback(lambda id: PublishResult(id=id.decode("ascii")) if id else None)

    def forward(self, session_id: str, body: bytes) -> Deferred[bool]:
        """Hand browser frames POSTed here to the node holding
        ``session_id``; fires with whether one does."""
        return self._hand_over(session_id, "f", body)

    def _hand_over(self, session_id: str, kind: str, body: bytes | str, again: bool = True) -> Deferred[bool]:
        """Publish a request to the node holding ``session_id``; fires with
        whether one took it. A session is registered without waiting for
        Redis, so a request following its opening at once may come first:
        a session not found is looked up once more a moment later."""
        args = [self.pubsub, session_id, body, kind]
        found = self._call("eval", FORWARD_SCRIPT, [SESSION_PREFIX + session_id], args).addCallback(bool)
        if not again:
            return found

        def retry(taken: bool) -> Any:
            if taken:
                return True
            return task.deferLater(self._reactor, LOOKUP_AGAIN, self._hand_over, session_id, kind, body, False)

        return found.addCallback(retry)

    def forward_poll(self, session_id: str, cursor: int, timeout: float) -> Deferred[tuple[int, bytes] | None]:
        """Ask the node holding ``session_id`` for its next poll answer
        after ``cursor``; fires with ``(status, JSON body)``, or None when no
        node holds the session (or it did not answer within ``timeout``)."""
        request_id = secrets.token_hex(8)
        answer: Deferred[tuple[int, bytes] | None] = Deferred()
        self._polls[request_id] = answer
        timer = self._reactor.callLater(timeout, self._poll_answered, request_id, None)
        body = f"{request_id} {self.node} {cursor}"
        asked = self._hand_over(session_id, "q", body)

        def sent(reached: Any) -> None:
            if not reached:
                self._poll_answered(request_id, None)

        def failed(failure: Failure) -> None:
            if timer.active():
                timer.cancel()
            self._polls.pop(request_id, None)
            if not answer.called:
                answer.errback(failure)

        asked.addCallbacks(sent, failed)
        return answer.addBoth(self._poll_done, timer)

    @staticmethod
    def _poll_done(result: Any, timer: Any) -> Any:
        if timer.active():
            timer.cancel()
        return result

    def _poll_answered(self, request_id: str, answer: tuple[int, bytes] | None) -> None:
        waiting = self._polls.pop(request_id, None)
        if waiting is not None and not waiting.called:
            waiting.callback(answer)

    def answer_poll(self, node: str, request_id: str, status: int, body: bytes) -> None:
        """Send a poll's answer back to the node that forwarded it."""
        payload = b"r %s %d %s" % (request_id.encode("ascii"), status, body)
        self._call("publish", self.pubsub + "n:" + node, payload).addErrback(self._ignore)

    def _poll_replier(self, node: str, request_id: str) -> Any:
        def reply(status: int, body: bytes) -> None:
            self.answer_poll(node, request_id, status, body)

        return reply

    # -- live messages ----------------------------------------------------

    def _on_message(self, channel_name: bytes, payload: bytes) -> None:
        if channel_name.startswith(self._channel_prefix):
            name = channel_name[len(self._channel_prefix):].decode("ascii")
            channel = self.channels.get(name)
            if channel is None:
                return
            if payload[:2] == b"p ":
                if self.presence is not None:
                    self.presence.event(name, payload)
                return
            raw_id, raw_exclude, data = payload.split(b" ", 2)
            id = raw_id.decode("ascii")
            exclude = raw_exclude.decode("ascii") or None
            if channel.buffer is not None:
                key = parse_key(id)
                if key is not None:
                    channel.buffer.append((key, id, data, exclude))
                return
            self._deliver_live(channel, id, data, exclude)
            return
        if channel_name == self._mine:
            if payload[:2] == b"f ":
                _, session_id, body = payload.split(b" ", 2)
                if self.on_forward is not None:
                    self.on_forward(session_id.decode("ascii"), body)
                return
            if payload[:2] == b"q ":
                _, session_id, request_id, node, cursor = payload.split(b" ", 4)
                if self.on_poll is not None:
                    self.on_poll(session_id.decode("ascii"), int(cursor), self._poll_replier(
                        node.decode("ascii"), request_id.decode("ascii")))
                return
            if payload[:2] == b"r ":
                _, request_id, status, body = payload.split(b" ", 3)
                self._poll_answered(request_id.decode("ascii"), (int(status), body))
                return
            session_id, rest = payload.split(b" ", 1)
            session = self.sessions.get(session_id.decode("ascii"))
            raw_id, _, data = rest.split(b" ", 2)
            if session is not None:
                started = time.perf_counter()
                result = PublishResult()
                self._fan_out((session,), frames.message(None, raw_id.decode("ascii"), data), None, result)
                self._count(1, result, started)
            return
        if channel_name == self._all:
            raw_id, raw_exclude, data = payload.split(b" ", 2)
            started = time.perf_counter()
            result = PublishResult()
            frame = frames.message(None, raw_id.decode("ascii"), data)
            self._fan_out(self.sessions.values(), frame, raw_exclude.decode("ascii") or None, result)
            self._count(1, result, started)

    def _deliver_live(self, channel: RedisChannel, id: str, data: bytes, exclude: str | None) -> None:
        """One message of ``channel``: encoded once, to every subscriber,
        and to the joins on their way in."""
        started = time.perf_counter()
        frame = frames.message(channel.name, id, data)
        channel.last_id = id
        result = PublishResult()
        self._fan_out(channel.subscribers, frame, exclude, result)
        if channel.joining:
            key = parse_key(id)
            if key is not None:
                for join in tuple(channel.joining):
                    self._offer(join, channel, key, frame, exclude)
        self._count(1, result, started)

    def _offer(self, join: _Join, channel: RedisChannel, key: Key, frame: Encoded, exclude: str | None) -> None:
        if exclude is not None and join.subscriber.id == exclude:
            if join.floor is not None and key > join.floor:
                self._promote(join, channel)
            return
        if join.floor is None:
            join.buffer.append((key, frame))
            return
        if key > join.floor:
            self._promote(join, channel)
            try:
                join.subscriber.deliver(frame)
            except Exception:
                log.failure("delivery to {session} failed", session=join.subscriber.id)

    def sweep(self) -> int:
        """History lives in Redis, which expires it: nothing to sweep."""
        return 0


class RedisPresence:
    """Who is in each ``presence-`` channel, across every node.

    The hub's interface of :class:`chloed.presence.Presence`. A user is a
    member while some node holds a session of it there: that node pushes the
    user's expiry in Redis ``session_grace`` ahead, every ``interval``
    seconds; once no node does (its last tab left, or its node died) it
    expires, and the first node to sweep announces the leave. ``members``
    answers from this node's copy, loaded when the channel gets its first
    local subscriber and kept up by the join and leave announcements.
    """

    def __init__(self, broker: RedisBroker, clock: IReactorTime, grace: float) -> None:
        self._broker = broker
        self._clock = clock
        self._hold_ms = max(1, int(grace * 1000))
        self.interval = max(0.2, min(grace / 3.0, 10.0))
        # channel -> user id -> (member JSON, this node's sessions of it)
        self._local: dict[str, dict[str, tuple[bytes, set[str]]]] = {}
        # channel -> user id -> member JSON: every member, as last heard
        self._mirror: dict[str, dict[str, bytes]] = {}
        self._floor: dict[str, int] = {}
        self._loading: dict[str, list[bytes]] = {}
        self._ticker: LoopingCall | None = None

    def start(self) -> None:
        self._ticker = LoopingCall(self.refresh)
        self._ticker.clock = self._clock
        self._ticker.start(self.interval, now=False).addErrback(
            lambda f: log.failure("presence refresh stopped", f)
        )

    def stop(self) -> None:
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()

    def members(self, channel: str) -> list[dict[str, Any]]:
        """The members of ``channel`` as ``{"id", "info"}``."""
        return [frames.loads(member) for member in self._mirror.get(channel, {}).values()]

    def join(self, channel: str, session: str, user: dict[str, Any]) -> None:
        """``session`` of ``user`` subscribed to ``channel`` on this node."""
        uid = str(user["id"])
        local = self._local.setdefault(channel, {})
        entry = local.get(uid)
        if entry is not None:
            entry[1].add(session)
            return
        member = frames.dumps({"id": uid, "info": user.get("info")})
        local[uid] = (member, {session})
        self._mirror.setdefault(channel, {})[uid] = member
        self._hold(channel, [(uid, member)], session)

    def part(self, channel: str, session: str, user: dict[str, Any]) -> None:
        """``session`` left ``channel``; once this node has no session of
        the user there it stops holding it, and it leaves when it expires."""
        uid = str(user["id"])
        local = self._local.get(channel, {})
        entry = local.get(uid)
        if entry is None:
            return
        entry[1].discard(session)
        if not entry[1]:
            del local[uid]
            if not local:
                del self._local[channel]

    def refresh(self) -> None:
        """Hold this node's members, and sweep those nobody holds, in every
        presence channel this node has members or subscribers in."""
        names = set(self._local)
        names.update(name for name in self._broker.channels if name.startswith("presence-"))
        for channel in names:
            held = [(uid, entry[0]) for uid, entry in self._local.get(channel, {}).items()]
            self._hold(channel, held, "")

    def _hold(self, channel: str, held: list[tuple[str, bytes]], exclude: str) -> None:
        keys = [IDS_KEY, "chloe:p:" + channel, "chloe:pi:" + channel]
        args: list[Any] = [self._hold_ms, self._broker.pubsub + "c:" + channel, exclude]
        for uid, member in held:
            args += [uid, member]
        self._broker._call("eval", PRESENCE_SCRIPT, keys, args).addErrback(self._broker._ignore)

    def load(self, channel: str) -> Deferred[None]:
        """Read the members of ``channel`` (when this node starts listening
        to it); announcements coming meanwhile are applied after."""
        self._loading[channel] = []
        keys = [IDS_KEY, "chloe:p:" + channel, "chloe:pi:" + channel]

        def loaded(reply: list[Any]) -> None:
            mirror = {}
            for i in range(1, len(reply) - 1, 2):
                mirror[reply[i].decode("utf-8")] = reply[i + 1]
            for uid, entry in self._local.get(channel, {}).items():
                mirror.setdefault(uid, entry[0])
            self._mirror[channel] = mirror
            self._floor[channel] = int(reply[0])
            for payload in self._loading.pop(channel, []):
                self.event(channel, payload)

        def failed(failure: Failure) -> Failure:
            self._loading.pop(channel, None)
            return failure

        return self._broker._call("eval", MEMBERS_SCRIPT, keys, []).addCallbacks(loaded, failed)

    def event(self, channel: str, payload: bytes) -> None:
        """A join or leave announced through Redis: update the copy, tell
        this node's subscribers."""
        pending = self._loading.get(channel)
        if pending is not None:
            pending.append(payload)
            return
        _, raw_seq, event, exclude, member = payload.split(b" ", 4)
        if int(raw_seq) <= self._floor.get(channel, 0):
            return
        value = frames.loads(member)
        uid = str(value.get("id"))
        mirror = self._mirror.setdefault(channel, {})
        if event == b"join":
            mirror[uid] = member
        else:
            mirror.pop(uid, None)
        frame = presence_frame(channel, event.decode("ascii"), value)
        self._broker.announce(channel, frame, exclude.decode("ascii") or None)

    def forget(self, channel: str) -> None:
        """This node no longer listens to ``channel``."""
        if channel not in self._local:
            self._mirror.pop(channel, None)
        self._floor.pop(channel, None)
        self._loading.pop(channel, None)
