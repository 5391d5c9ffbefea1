"""Channels shared by several nodes through Redis (``backend = "redis://…"``).

Every node keeps its own browsers, exactly as the memory broker does; Redis
holds what the nodes share:

``chloe:ids``
    a hash ``{ms, seq}``: the last message id given out, cluster-wide. Ids are
    ``"<ms>-<seq>"`` as on one node, ``seq`` counting every message of the
    cluster and ``ms`` never going back, so one id is a cursor over every
    channel on every node (what an SSE ``Last-Event-ID`` needs). Asking
    for the position pushes ``ms`` on to Redis's clock (see
    ``POSITION_SCRIPT``).
``chloe:h:<channel>``
    a Stream holding the channel's history under the message ids themselves,
    trimmed with ``XDEL`` (which, unlike ``MAXLEN``, moves the stream's
    ``max-deleted-entry-id``, so a resume knows exactly when it missed
    something) to the channel's ``history_size`` entries and ``history_ttl``
    seconds (its policy's: its namespace's, a user channel's, or the
    globals), and expiring ``history_ttl`` after its last message. A user's
    own channel (``#u:<user id>``) is a channel like any other here.
``chloe:s:<session>``
    which node holds a session, for ``/send`` to one session and for browser
    frames POSTed to the wrong node.
``chloe:nodes``, ``chloe:r:<channel>``
    for ``/send`` receipts: each node alive (until when, on Redis's clock,
    its streaming and polling sessions, and whether its channel counts are
    partial) and, per channel, each node's streaming and polling
    subscribers, written before a browser is answered ``subscribed`` (see
    :mod:`.census`).
``chloe:p:<channel>``, ``chloe:pi:<channel>``
    presence: user id → expiry, user id → member (see :class:`RedisPresence`).
``chloe:roster:<node>``
    the node's sessions, ``"<session id> <row>"`` in a sorted set, for
    ``GET /sessions`` on any node; written lazily, never waited on (see
    :mod:`.roster`).
``chloe:u:<user>``, ``chloe:uc:<user>``
    each user's sessions (session id → node, counted while the node is
    alive) and persisted server-side subscriptions (see :mod:`.users`).
``chloe:rv:j:<jti>``, ``chloe:rv:u:<user>``
    revoked tokens (see :mod:`.control`).
pub/sub ``chloe:<db>:c:<channel>``, ``chloe:<db>:all``, ``chloe:<db>:n:<node>``
    live messages: ``"<id> <excluded session> <data>"`` (the data is the JSON
    ``/send`` was given, spliced into frames unparsed); presence
    announcements on the channel's, ``"p …"``; the app's commands to every
    node on everyone's, ``"k <JSON>"`` (see :mod:`.control`); on a node's
    own, messages to one session (``"<session> <id> <excluded session>
    <data>"``) and the
    frames and polls other nodes hand over, ``"f …"``, ``"q …"``, ``"r …"``
    (see :mod:`.handover`), and the node's probes of its own pub/sub
    connection, ``"l <serial>"`` (see :mod:`.liveness`). Pub/sub ignores the
    database number, so the channels carry it.

A publish is one round trip, one script (``EVALSHA``): it takes ``TIME``,
the next id (``HGET``/``HSET``/``HINCRBY``), ``XADD``s the message, trims
(``XLEN``, ``XRANGE``, ``XDEL``) and re-expires (``PEXPIRE``) the stream
and ``PUBLISH``es it, atomically, so every message is both in the history
and on the wire or in neither, in the same order; it also sums the
channel's subscribers over the nodes alive (``HGETALL`` of ``chloe:nodes``
and of the channel's counts) for the receipt. ``/send`` answers 202 once Redis has run it. Each node listening to the channel then gets it once.

A node subscribes to a channel's pub/sub only while it has subscribers for
it, encodes each message it gets once, and hands the same bytes to each of
its subscribers (the memory broker's fan-out).

Joining a channel without losing or repeating a message: the node subscribes
to the pub/sub channel first; the browser's *join* keeps what arrives live
meanwhile; once the subscription is confirmed a script reads, atomically for
every channel of the join, the history after ``since`` and the last id given
out (the *floor*), and writes this node's count of each channel with the
subscriber in it (a join without ``since`` runs the script too, reading
nothing, so that every publish after it is answered counts it). The
browser then gets the history, then what came live
after the floor, and from the first live message past the floor on, every
live one. The same happens for a node's own subscribers after Redis comes
back: each channel is read again after the last id the node delivered.

With several shards (``backend = [url, url, …]``) :mod:`.shards` holds one
broker per shard, each channel's keys on the shard :mod:`.placement` picks
for it, and what is per node or per cluster on the first, the home shard.

The modules, each importing only those after it: :mod:`.shards` (the
contract over one broker per shard), :mod:`.placement` (a channel's
shard), :mod:`.broker` (the
node's channels and sessions, publishing, live delivery), :mod:`.joins`
(subscribers on their way in), :mod:`.handover` (other nodes' requests for
this node's sessions), :mod:`.presence`, :mod:`.roster` (every node's
sessions), :mod:`.users` (every user's sessions), :mod:`.control` (the
app's commands, revocations), :mod:`.channel` (per-channel and
per-join state), :mod:`.census` (subscriber counts), :mod:`.liveness` (the
probes of the pub/sub connection), :mod:`.link` (the two connections),
:mod:`.keys` and :mod:`.scripts` (key names, Lua).
"""

from __future__ import annotations

from chloed.backends.redis.broker import RedisBroker
from chloed.backends.redis.channel import RedisChannel
from chloed.backends.redis.handover import LOOKUP_AGAIN
from chloed.backends.redis.keys import (
    HISTORY_PREFIX,
    IDS_KEY,
    SESSION_PREFIX,
    SESSION_TTL,
    ZERO,
    Key,
    format_key,
    parse_key,
    parse_url,
)
from chloed.backends.redis.link import REPLY_TIMEOUT, RETRY_DELAY, RedisLink
from chloed.backends.redis.presence import RedisPresence
from chloed.backends.redis.scripts import (
    DIRECT_SCRIPT,
    FORWARD_SCRIPT,
    MEMBERS_SCRIPT,
    PRESENCE_SCRIPT,
    PUBLISH_SCRIPT,
    SNAPSHOT_SCRIPT,
)

__all__ = [
    "DIRECT_SCRIPT",
    "FORWARD_SCRIPT",
    "HISTORY_PREFIX",
    "IDS_KEY",
    "LOOKUP_AGAIN",
    "Key",
    "MEMBERS_SCRIPT",
    "PRESENCE_SCRIPT",
    "PUBLISH_SCRIPT",
    "REPLY_TIMEOUT",
    "RETRY_DELAY",
    "RedisBroker",
    "RedisChannel",
    "RedisLink",
    "RedisPresence",
    "SESSION_PREFIX",
    "SESSION_TTL",
    "SNAPSHOT_SCRIPT",
    "ZERO",
    "format_key",
    "parse_key",
    "parse_url",
]
