"""The Lua scripts the broker and presence run in Redis (``EVAL``), each
one atomic step; the package docstring describes the keys they touch."""

# Receipts. census: the nodes alive in chloe:nodes, and whether a receipt
# may miss someone (1: a node alive is still writing its channel counts
# again, or the census lately lost nodes, field ''). count: the subscribers
# in a channel's counts (key) of the nodes alive, added to delivered
# (streaming) and queued (polling); the counts of nodes gone are dropped.
COUNT_FUNCTION = """
local function census(nodes, now)
  local alive, lower = {}, 0
  local entries = redis.call('HGETALL', nodes)
  for j = 1, #entries, 2 do
    local value = entries[j + 1]
    if tonumber(string.match(value, '^%d+') or 0) > now then
      if entries[j] == '' then
        lower = 1
      else
        alive[entries[j]] = true
        if string.match(value, '^%d+ %d+ %d+ 1$') then lower = 1 end
      end
    end
  end
  return alive, lower
end
local function count(alive, key, delivered, queued)
  local counts = redis.call('HGETALL', key)
  for j = 1, #counts, 2 do
    if alive[counts[j]] then
      local s, p = string.match(counts[j + 1], '^(%d+) (%d+)$')
      delivered = delivered + tonumber(s or 0)
      queued = queued + tonumber(p or 0)
    else
      redis.call('HDEL', key, counts[j])
    end
  end
  return delivered, queued
end
"""

# Redis's clock, in ms.
NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# A node's entry in chloe:nodes: "<expires ms> <streaming sessions> <polling
# sessions> <partial>", alive ttl ms more on Redis's clock. partial is 1
# while the node's channel counts may lack some (receipts then say they are
# a lower bound). state: '' for a beat, a join, a session opening or
# closing; 'begin' (the node's first) or 'again' when the node starts
# writing all its channel counts; 'done' once Redis has them all. A node
# finding itself forgotten (Redis lost the census, or gave the node up) is
# partial until it has written them again; since others may have been
# forgotten too and not be back yet, field '' then holds until when every
# receipt is a lower bound (not for a node's first entry: a new node has
# nothing to miss). Returns 1 when the node was alive already, else 0
# ('done' then writes nothing: the node's next beat starts over).
ENLIST_FUNCTION = """
local function enlist(nodes, node, now, ttl, streaming, polling, state)
  local old = redis.call('HGET', nodes, node)
  local expires, partial = 0, '0'
  if old then
    local e, p = string.match(old, '^(%d+) %d+ %d+ ?(%d*)$')
    expires = tonumber(e or 0)
    if p == '1' then partial = '1' end
  end
  local fresh = expires > now
  if state == 'done' then
    if not fresh then return 0 end
    partial = '0'
  elseif state == 'begin' then
    partial = '1'
  elseif state == 'again' or not fresh then
    partial = '1'
    if not fresh then
      local young = now + ttl
      if tonumber(redis.call('HGET', nodes, '') or 0) < young then
        redis.call('HSET', nodes, '', string.format('%.0f', young))
      end
    end
  end
  local entry = string.format('%.0f', now + ttl) .. ' ' .. streaming .. ' ' .. polling .. ' ' .. partial
  redis.call('HSET', nodes, node, entry)
  if fresh then return 1 end
  return 0
end
"""

# The next id: TIME, never going back, and the cluster-wide counter.
NEXT_ID = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms = now
local last = tonumber(redis.call('HGET', KEYS[1], 'ms') or 0)
if last > ms then ms = last end
local sms = string.format('%.0f', ms)
redis.call('HSET', KEYS[1], 'ms', sms)
"""

# KEYS: chloe:ids, chloe:nodes, the n streams, the n channels' counts.
# ARGV: data, pub/sub prefix, excluded session, n, the n channel names,
# their n history sizes, their n history ttls (ms): each channel's own
# (its policy's), so a publish to several stays one step. Per channel: the
# next id, XADD + trim + expiry, PUBLISH, and the receipt; one atomic step.
# Returns the ids, then delivered, queued, and 1 when they are a lower
# bound.
PUBLISH_SCRIPT = COUNT_FUNCTION + NEXT_ID + """
local n = tonumber(ARGV[4])
local ids = {}
local delivered, queued = 0, 0
local alive, lower = census(KEYS[2], now)
for i = 1, n do
  local stream = KEYS[2 + i]
  local size, ttl = tonumber(ARGV[4 + n + i]), tonumber(ARGV[4 + 2 * n + i])
  local id = sms .. '-' .. string.format('%.0f', redis.call('HINCRBY', KEYS[1], 'seq', 1))
  if size > 0 and ttl > 0 then
    redis.call('XADD', stream, id, 'd', ARGV[1])
    -- XDEL, not MAXLEN: only XDEL moves max-deleted-entry-id, which says
    -- exactly which cursors a resume can no longer serve.
    local gone = {}
    local excess = redis.call('XLEN', stream) - size
    if excess > 0 then
      for _, entry in ipairs(redis.call('XRANGE', stream, '-', '+', 'COUNT', excess)) do
        gone[#gone + 1] = entry[1]
      end
    end
    for _, entry in ipairs(redis.call('XRANGE', stream, '-', string.format('%.0f', ms - ttl), 'COUNT', 100)) do
      gone[#gone + 1] = entry[1]
    end
    if #gone > 0 then redis.call('XDEL', stream, unpack(gone)) end
    redis.call('PEXPIRE', stream, ttl)
  end
  redis.call('PUBLISH', ARGV[2] .. ARGV[4 + i], id .. ' ' .. ARGV[3] .. ' ' .. ARGV[1])
  ids[#ids + 1] = id
  delivered, queued = count(alive, KEYS[2 + n + i], delivered, queued)
end
ids[#ids + 1] = delivered
ids[#ids + 1] = queued
ids[#ids + 1] = lower
return ids
"""

# The subscribers of one channel on every node alive (KEYS: chloe:nodes,
# the channel's counts): streaming, polling.
SUBSCRIBERS_SCRIPT = COUNT_FUNCTION + NOW + """
local alive = census(KEYS[1], now)
local delivered, queued = count(alive, KEYS[2], 0, 0)
return {delivered, queued}
"""

# A message to everyone (KEYS[3] absent: returns the id, the sessions of
# every node alive, streaming and polling, and 1 when the census lately lost
# nodes) or to one session (KEYS[3] names its node: returns the id, or false
# when no node holds the session).
DIRECT_SCRIPT = """
local target = ARGV[2] .. 'all'
local head = ''
if #KEYS > 2 then
  local node = redis.call('GET', KEYS[3])
  if not node then return false end
  target = ARGV[2] .. 'n:' .. node
  head = ARGV[4] .. ' '
end
""" + NEXT_ID + """
local id = sms .. '-' .. string.format('%.0f', redis.call('HINCRBY', KEYS[1], 'seq', 1))
local reached = redis.call('PUBLISH', target, head .. id .. ' ' .. ARGV[3] .. ' ' .. ARGV[1])
if #KEYS > 2 then
  if reached == 0 then return false end
  return {id}
end
local delivered, queued, lower = 0, 0, 0
local nodes = redis.call('HGETALL', KEYS[2])
for j = 1, #nodes, 2 do
  if tonumber(string.match(nodes[j + 1], '^%d+') or 0) > now then
    local s, p = string.match(nodes[j + 1], '^%d+ (%d+) (%d+)')
    if s then
      delivered = delivered + tonumber(s)
      queued = queued + tonumber(p)
    elseif nodes[j] == '' then
      lower = 1
    end
  end
end
return {id, delivered, queued, lower}
"""

# A node's beat (KEYS[1] chloe:nodes; ARGV: node, ttl ms, streaming and
# polling sessions, and enlist's state, '' unless given; an empty ttl
# leaves): holds the node alive for ttl ms more on Redis's clock and
# forgets nodes past their time. Returns 1 when the node was alive already,
# 0 when its channel counts may have been dropped meanwhile (it then writes
# them all again).
NODE_SCRIPT = ENLIST_FUNCTION + NOW + """
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 0
end
local nodes = redis.call('HGETALL', KEYS[1])
for j = 1, #nodes, 2 do
  if tonumber(string.match(nodes[j + 1], '^%d+') or 0) <= now then
    redis.call('HDEL', KEYS[1], nodes[j])
  end
end
return enlist(KEYS[1], ARGV[1], now, tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5] or '')
"""

# A session opening (KEYS: chloe:nodes, the session's chloe:s: key; ARGV:
# node, ttl ms, streaming and polling sessions with it, the key's ttl s):
# which node holds it, and the node's sessions, in one step sent before the
# browser is answered connected. Returns as NODE_SCRIPT.
SESSION_SCRIPT = ENLIST_FUNCTION + NOW + """
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[5])
return enlist(KEYS[1], ARGV[1], now, tonumber(ARGV[2]), ARGV[3], ARGV[4], '')
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

# Atomically, for several channels (KEYS: chloe:ids, chloe:nodes, the n
# streams, and for a join the n channels' counts; ARGV: n, the node ('' but
# for a join), its ttl ms, streaming and polling sessions, the counts' ttl
# s, the n cursors, '' for none, and for a join the n counts "<streaming>
# <polling>"): for a join, this node's counts of its channels, with the
# joining subscriber, so that every publish after the join is answered
# counts it; then the server's time, the last id given out, whether the
# node was alive (as NODE_SCRIPT; 1 when not a join), and for each stream
# after its cursor: whether it exists, the newest entry trimmed away, the
# first entry kept, the entries.
SNAPSHOT_SCRIPT = ENLIST_FUNCTION + NOW + """
local n = tonumber(ARGV[1])
local fresh = 1
if ARGV[2] ~= '' then
  fresh = enlist(KEYS[2], ARGV[2], now, tonumber(ARGV[3]), ARGV[4], ARGV[5], '')
  for i = 1, n do
    local key, value = KEYS[2 + n + i], ARGV[6 + n + i]
    if value == '' then
      redis.call('HDEL', key, ARGV[2])
    else
      redis.call('HSET', key, ARGV[2], value)
      redis.call('EXPIRE', key, ARGV[6])
    end
  end
end
local head = redis.call('HMGET', KEYS[1], 'ms', 'seq')
local out = {string.format('%.0f', now), head[1] or '0', head[2] or '0', fresh}
for i = 1, n do
  local stream, since = KEYS[2 + i], ARGV[6 + i]
  if since == '' or redis.call('EXISTS', stream) == 0 then
    out[#out + 1] = {0}
  else
    local info = redis.call('XINFO', 'STREAM', stream)
    local deleted, first = '0-0', '0-0'
    for j = 1, #info, 2 do
      if info[j] == 'max-deleted-entry-id' then deleted = info[j + 1]
      elseif info[j] == 'recorded-first-entry-id' then first = info[j + 1] end
    end
    out[#out + 1] = {1, deleted, first, redis.call('XRANGE', stream, '(' .. since, '+')}
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
local changed = {}
for _, uid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  local member = redis.call('HGET', KEYS[3], uid) or '{}'
  redis.call('ZREM', KEYS[2], uid)
  redis.call('HDEL', KEYS[3], uid)
  local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  redis.call('PUBLISH', target, 'p ' .. string.format('%.0f', seq) .. ' leave  ' .. member)
  changed[#changed + 1] = 'leave'
  changed[#changed + 1] = uid
end
for i = 4, #ARGV, 2 do
  local uid = ARGV[i]
  local old = redis.call('ZSCORE', KEYS[2], uid)
  redis.call('ZADD', KEYS[2], 'GT', now + hold, uid)
  if not old then
    redis.call('HSET', KEYS[3], uid, ARGV[i + 1])
    local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
    redis.call('PUBLISH', target, 'p ' .. string.format('%.0f', seq) .. ' join ' .. ARGV[3] .. ' ' .. ARGV[i + 1])
    changed[#changed + 1] = 'join'
    changed[#changed + 1] = uid
  end
end
if #ARGV >= 4 then
  redis.call('PEXPIRE', KEYS[2], 2 * hold)
  redis.call('PEXPIRE', KEYS[3], 2 * hold)
end
return changed
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

# Which nodes have subscribers of a channel (KEYS[1], a set of nodes; KEYS[2]
# the nodes hash, for who is alive): ARGV[1] the node, ARGV[2] "1" when it
# now has some, "0" when none. Answers 1 when the cluster went with it: the
# first node in, the last node out. A node that died is dropped from the set
# by the next node to come or go.
OCCUPANCY_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if node ~= ARGV[1] then
    local entry = redis.call('HGET', KEYS[2], node)
    local expires = entry and tonumber(string.match(entry, '^%d+'))
    if not expires or expires < now then
      redis.call('SREM', KEYS[1], node)
    end
  end
end
if ARGV[2] == '1' then
  local added = redis.call('SADD', KEYS[1], ARGV[1])
  redis.call('EXPIRE', KEYS[1], 86400)
  if added == 1 and redis.call('SCARD', KEYS[1]) == 1 then return 1 end
  return 0
end
local removed = redis.call('SREM', KEYS[1], ARGV[1])
if removed == 1 and redis.call('SCARD', KEYS[1]) == 0 then return 1 end
return 0
"""

# A node's roster (KEYS[1], a sorted set of "<session id> <row>"; ARGV: its
# ttl ms, then pairs of session id and row, '' for a session gone): each
# session's member replaced (ZREMRANGEBYLEX of "<id> …": ids hold neither a
# space nor anything below "!"), the expiry pushed on.
ROSTER_SCRIPT = """
local key = KEYS[1]
for i = 2, #ARGV, 2 do
  local id, row = ARGV[i], ARGV[i + 1]
  redis.call('ZREMRANGEBYLEX', key, '[' .. id .. ' ', '(' .. id .. '!')
  if row ~= '' then
    redis.call('ZADD', key, 0, id .. ' ' .. row)
  end
end
redis.call('PEXPIRE', key, ARGV[1])
return 1
"""

# A page of GET /sessions (KEYS[1] chloe:nodes; ARGV: the rosters' key
# prefix, the page's size, and the cursor: a node and the last session id
# listed of it, '' for its first): the rosters of the nodes alive on
# Redis's clock, by node name then session id, from the cursor on. Returns
# {node, member, node, member, ...}, then the next cursor's node and id
# (false after the last page; id '' for "from that node's first").
ROSTER_PAGE_SCRIPT = NOW + """
local alive = {}
local entries = redis.call('HGETALL', KEYS[1])
for j = 1, #entries, 2 do
  if entries[j] ~= '' and tonumber(string.match(entries[j + 1], '^%d+') or 0) > now then
    alive[#alive + 1] = entries[j]
  end
end
table.sort(alive)
local limit, from, after = tonumber(ARGV[2]), ARGV[3], ARGV[4]
local out, got = {}, 0
for _, node in ipairs(alive) do
  if node >= from then
    local start = '-'
    if node == from and after ~= '' then start = '[' .. after .. '!' end
    -- One more than the page holds: whether a next page has any.
    local members = redis.call('ZRANGEBYLEX', ARGV[1] .. node, start, '+', 'LIMIT', 0, limit - got + 1)
    for i, member in ipairs(members) do
      if got == limit then
        if i == 1 then return {out, node, ''} end
        return {out, node, string.match(members[i - 1], '^(%S+)')}
      end
      out[#out + 1] = node
      out[#out + 1] = member
      got = got + 1
    end
  end
end
return {out, false, false}
"""


# The position (KEYS[1] chloe:ids): the last seq given out, under an ms
# pushed on to Redis's clock (never back: NEXT_ID takes the larger), so a
# cursor is as young as it can be (a resume from it within a channel's ttl
# is recovered, however long ago the last message was) and every id given
# out after it is above it. Returns the ms and the seq.
POSITION_SCRIPT = NOW + """
local head = redis.call('HMGET', KEYS[1], 'ms', 'seq')
local ms = tonumber(head[1] or 0)
if now > ms then
  ms = now
  redis.call('HSET', KEYS[1], 'ms', string.format('%.0f', ms))
end
return {string.format('%.0f', ms), head[2] or '0'}
"""

# A page of a channel's history (KEYS: chloe:ids, the stream; ARGV: the
# page's size, and the cursor, its ms and its seq, '' for the newest
# messages). Answers as SNAPSHOT_SCRIPT does for one stream (the server's
# time, the position, 1, then whether the stream exists, the newest entry
# trimmed away, the first entry kept, and the page, oldest first), then 1
# when more follow the page, then the ms of the position now, pushed on as
# POSITION_SCRIPT's is when the page is empty (its cursor then). A cursor
# above the position (or with a seq above it) is not of this cluster: its
# page starts at the oldest entry.
HISTORY_SCRIPT = NOW + """
local limit = tonumber(ARGV[1])
local head = redis.call('HMGET', KEYS[1], 'ms', 'seq')
local hms, hseq = tonumber(head[1] or 0), tonumber(head[2] or 0)
local stream, more, got = {0}, 0, 0
local ms = hms
if redis.call('EXISTS', KEYS[2]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[2])
  local deleted, first = '0-0', '0-0'
  for j = 1, #info, 2 do
    if info[j] == 'max-deleted-entry-id' then deleted = info[j + 1]
    elseif info[j] == 'recorded-first-entry-id' then first = info[j + 1] end
  end
  local entries = {}
  if ARGV[2] == '' then
    local newest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', limit)
    for j = #newest, 1, -1 do entries[#entries + 1] = newest[j] end
  else
    local from = '(' .. ARGV[2]
    if tonumber(ARGV[3]) > hms or tonumber(ARGV[4]) > hseq then from = '-' end
    entries = redis.call('XRANGE', KEYS[2], from, '+', 'COUNT', limit + 1)
    if #entries > limit then
      more = 1
      entries[#entries] = nil
    end
  end
  got = #entries
  stream = {1, deleted, first, entries}
end
if got == 0 and now > ms then
  ms = now
  redis.call('HSET', KEYS[1], 'ms', string.format('%.0f', ms))
end
local sms = string.format('%.0f', ms)
return {string.format('%.0f', now), string.format('%.0f', hms), head[2] or '0', 1, stream, more, sms}
"""

# Users. A user's hash chloe:u:<user> holds session id -> node; a session
# counts while its node is alive in chloe:nodes (census(); the node asking
# always is), and the entries of nodes gone are dropped as they are met.

# A session of a user (KEYS: chloe:nodes, the user's hash; ARGV: session
# id, this node, the user's limit, 0 for none, the hash's ttl s): counted
# unless the user has limit sessions already on the nodes alive (one
# counted already stays so). Returns 1 when counted, 0 when refused.
USER_JOIN_SCRIPT = COUNT_FUNCTION + NOW + """
local alive = census(KEYS[1], now)
alive[ARGV[2]] = true
local held, again = 0, false
local entries = redis.call('HGETALL', KEYS[2])
for j = 1, #entries, 2 do
  if not alive[entries[j + 1]] then
    redis.call('HDEL', KEYS[2], entries[j])
  elseif entries[j] == ARGV[1] then
    again = true
  else
    held = held + 1
  end
end
local limit = tonumber(ARGV[3])
if not again and limit > 0 and held >= limit then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""

# This node's sessions of users, written or removed (KEYS: the user's hash
# of each entry; ARGV: this node, the hashes' ttl s, then per key a session
# id and '1', held here: written, the expiry pushed on, or '0', gone:
# removed if this node's, not a node's that took the session over).
USERS_SCRIPT = """
for i = 1, #KEYS do
  local session = ARGV[1 + 2 * i]
  if ARGV[2 + 2 * i] == '1' then
    redis.call('HSET', KEYS[i], session, ARGV[1])
    redis.call('EXPIRE', KEYS[i], ARGV[2])
  elseif redis.call('HGET', KEYS[i], session) == ARGV[1] then
    redis.call('HDEL', KEYS[i], session)
  end
end
return 1
"""

# A user's sessions on the nodes alive (KEYS: chloe:nodes, the user's hash;
# ARGV: the rosters' key prefix, this node): session id, node and its
# roster member ("<id> <row>", see ROSTER_SCRIPT; '' for this node's own,
# or one not written yet) of each.
USER_SESSIONS_SCRIPT = COUNT_FUNCTION + NOW + """
local alive = census(KEYS[1], now)
alive[ARGV[2]] = true
local out = {}
local entries = redis.call('HGETALL', KEYS[2])
for j = 1, #entries, 2 do
  local session, node = entries[j], entries[j + 1]
  if not alive[node] then
    redis.call('HDEL', KEYS[2], session)
  else
    local member = ''
    if node ~= ARGV[2] then
      local found = redis.call('ZRANGEBYLEX', ARGV[1] .. node, '[' .. session .. ' ', '(' .. session .. '!',
        'LIMIT', 0, 1)
      if found[1] then member = found[1] end
    end
    out[#out + 1] = session
    out[#out + 1] = node
    out[#out + 1] = member
  end
end
return out
"""

# A command to every node (KEYS: chloe:nodes, then the target's key: the
# user's hash, or the session's chloe:s:; ARGV: the pub/sub channel, the
# payload, what KEYS[2] is, 'user', 'session' or '' for none, this node):
# how many sessions it targets on the nodes alive, counted before the
# PUBLISH, in one step. Returns the count.
CONTROL_SCRIPT = COUNT_FUNCTION + NOW + """
local n = 0
if ARGV[3] ~= '' then
  local alive = census(KEYS[1], now)
  alive[ARGV[4]] = true
  if ARGV[3] == 'user' then
    local entries = redis.call('HGETALL', KEYS[2])
    for j = 2, #entries, 2 do
      if alive[entries[j]] then n = n + 1 end
    end
  else
    local node = redis.call('GET', KEYS[2])
    if node and alive[node] then n = 1 end
  end
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return n
"""

# A token revoked by its jti (KEYS[1] chloe:rv:j:<jti>; ARGV[1]: until
# when, epoch ms): refused until the latest until it was given, the key
# expiring then (on Redis's clock).
REVOKE_SCRIPT = NOW + """
local until_ms = tonumber(ARGV[1])
local old = tonumber(redis.call('GET', KEYS[1]) or 0)
if old > until_ms then until_ms = old end
if until_ms > now then
  redis.call('SET', KEYS[1], string.format('%.0f', until_ms), 'PX', string.format('%.0f', until_ms - now))
end
return 1
"""
