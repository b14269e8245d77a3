"""The Lua scripts of the Redis bus: each step that must be atomic is one script.

Every script runs on Redis 6.2 and later. Keys a script derives from the
channel prefix (the other runners' streams) share the channel's hash tag, so
they live in the same Redis Cluster slot as the keys it is given.

Values are tab-separated: a lease is ``node\\trunner\\tmax_backlog\\tpolicy``;
a ready record is ``node\\trunner\\tremote\\tvia``.
"""

from __future__ import annotations

__all__ = ["ACK", "ACQUIRE", "LEAVE", "PUBLISH", "REGISTER", "RELEASE", "RENEW", "SEND", "SWEEP"]

# Shared helpers, prepended to the scripts that use them.
_HOLDER = """
local function holder(value)
  if not value then return nil end
  return string.match(value, '^([^\\t]*)')
end
"""

# The server's clock, in milliseconds.
_NOW = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# Tell every other live runner some registry news (in its node stream).
_TELL = """
local function tell(prefix, me, maxlen, kind, name, record)
  for _, other in ipairs(redis.call('HKEYS', prefix .. 'nodes')) do
    if other ~= me then
      redis.call('XADD', prefix .. 'n:' .. other, 'MAXLEN', '~', maxlen, '*',
                 'k', kind, 'w', name, 'v', record)
    end
  end
end
"""

#: KEYS: nodes, alive, node stream, ready. ARGV: node, info, ttl ms.
#: Registers this runner and returns the ready hash (a snapshot of the registry).
REGISTER = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
redis.pcall('XGROUP', 'CREATE', KEYS[3], 'g', '0', 'MKSTREAM')
return redis.call('HGETALL', KEYS[4])
"""

#: KEYS: nodes, alive, node stream, seq. ARGV: node. A clean goodbye.
LEAVE = """
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
redis.call('DEL', KEYS[3])
redis.call('HDEL', KEYS[4], ARGV[1])
return 1
"""

#: KEYS: (lease, stream) per name. ARGV: node, ttl ms, the lease value per name,
#: then the orphans key and the prefix.
#: All or nothing: returns {0, index, current value} if another runner holds a
#: name, else {1, {claimed, last claimed id, backlog} per name}. A name taken over
#: from a dead runner gets that runner's pending entries (claimed to this runner,
#: oldest first) before the dead consumer is deleted: nothing it had not finished
#: is lost.
ACQUIRE = (
    _HOLDER
    + """
local node, ttl = ARGV[1], ARGV[2]
local n = #KEYS / 2
for i = 1, n do
  local current = redis.call('GET', KEYS[2 * i - 1])
  if current and holder(current) ~= node then return {0, i, current} end
end
local out = {1}
for i = 1, n do
  local lease, stream = KEYS[2 * i - 1], KEYS[2 * i]
  redis.call('SET', lease, ARGV[2 + i], 'PX', ttl)
  redis.pcall('XGROUP', 'CREATE', stream, 'g', '0', 'MKSTREAM')
  redis.call('PERSIST', stream)
  redis.call('HDEL', ARGV[3 + n], string.sub(stream, #ARGV[4 + n] + 3))
  local claimed, last = 0, ''
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', stream, 'g')) do
    local name, pending
    for j = 1, #c, 2 do
      if c[j] == 'name' then name = c[j + 1] elseif c[j] == 'pending' then pending = c[j + 1] end
    end
    if name ~= node then
      if pending > 0 then
        local entries = redis.call('XPENDING', stream, 'g', '-', '+', pending, name)
        for k = 1, #entries, 100 do
          local ids = {}
          for m = k, math.min(k + 99, #entries) do ids[#ids + 1] = entries[m][1] end
          redis.call('XCLAIM', stream, 'g', node, 0, unpack(ids))
          claimed = claimed + #ids
          last = ids[#ids]
        end
      end
      redis.call('XGROUP', 'DELCONSUMER', stream, 'g', name)
    end
  end
  out[#out + 1] = {claimed, last, redis.call('XLEN', stream)}
end
return out
"""
)

#: KEYS: nodes, alive, node stream, then a lease per name. ARGV: node, ttl ms,
#: info, then the lease value per name. Renews presence and leases; re-registers
#: a runner whose presence expired (or that the server forgot). Returns
#: {registered again (0/1), then per name: 1 renewed, 2 taken again (it had
#: expired), 0 held by another runner}.
RENEW = (
    _HOLDER
    + """
local node, ttl = ARGV[1], ARGV[2]
local again = 0
if redis.call('GET', KEYS[2]) ~= node then
  again = 1
  redis.call('HSET', KEYS[1], node, ARGV[3])
  redis.pcall('XGROUP', 'CREATE', KEYS[3], 'g', '0', 'MKSTREAM')
end
redis.call('SET', KEYS[2], node, 'PX', ttl)
local out = {again}
for i = 4, #KEYS do
  local current = redis.call('GET', KEYS[i])
  if not current then
    redis.call('SET', KEYS[i], ARGV[i], 'PX', ttl)
    out[#out + 1] = 2
  elseif holder(current) == node then
    redis.call('PEXPIRE', KEYS[i], ttl)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""
)

#: KEYS: lease, stream, ready, orphans. ARGV: node, name, backstop ms, prefix, news maxlen.
#: Gives a name up: what is left in its stream waits for a next holder at most
#: the orphan ttl; an empty stream is deleted. Returns the entries left.
RELEASE = (
    _HOLDER
    + _NOW
    + _TELL
    + """
local node, name = ARGV[1], ARGV[2]
if holder(redis.call('GET', KEYS[1])) == node then redis.call('DEL', KEYS[1]) end
if holder(redis.call('HGET', KEYS[3], name)) == node then
  redis.call('HDEL', KEYS[3], name)
  tell(ARGV[4], node, ARGV[5], 'gone', name, node)
end
local left = redis.call('XLEN', KEYS[2])
if left == 0 then
  redis.call('DEL', KEYS[2])
elseif redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  redis.call('HSETNX', KEYS[4], name, now_ms())
end
return left
"""
)

#: KEYS: ready, lease. ARGV: node, name, record ('' when gone), prefix, news maxlen.
#: Publishes a readiness change of a name this runner holds.
PUBLISH = (
    _HOLDER
    + _TELL
    + """
local node, name, record = ARGV[1], ARGV[2], ARGV[3]
if holder(redis.call('GET', KEYS[2])) ~= node then return 0 end
if record == '' then
  if holder(redis.call('HGET', KEYS[1], name)) ~= node then return 0 end
  redis.call('HDEL', KEYS[1], name)
  tell(ARGV[4], node, ARGV[5], 'gone', name, node)
else
  redis.call('HSET', KEYS[1], name, record)
  tell(ARGV[4], node, ARGV[5], 'ready', name, record)
end
return 1
"""
)

#: KEYS: nodes, ready, seq, orphans. ARGV: prefix, node, news maxlen, orphan ttl ms,
#: backstop ms (the expiry of a stream nobody holds, should every runner be gone).
#: Forgets runners whose presence expired (their node stream, their last batch)
#: and the ready workers whose lease expired; tells everyone. Drops (and
#: counts) the messages that waited longer than the orphan ttl for a name no
#: runner holds. Returns {names found gone, each followed by its holder;
#: names whose messages expired, each followed by how many}.
SWEEP = (
    _HOLDER
    + _NOW
    + _TELL
    + """
local prefix, me = ARGV[1], ARGV[2]
local dead = {}
for _, other in ipairs(redis.call('HKEYS', KEYS[1])) do
  if redis.call('EXISTS', prefix .. 'alive:' .. other) == 0 then
    dead[other] = true
    redis.call('HDEL', KEYS[1], other)
    redis.call('DEL', prefix .. 'n:' .. other)
    redis.call('HDEL', KEYS[3], other)
  end
end
local gone = {}
local ready = redis.call('HGETALL', KEYS[2])
for i = 1, #ready, 2 do
  local name, record = ready[i], ready[i + 1]
  local who = holder(record)
  if dead[who] or holder(redis.call('GET', prefix .. 'lease:' .. name)) ~= who then
    redis.call('HDEL', KEYS[2], name)
    gone[#gone + 1] = name
    gone[#gone + 1] = who
  end
end
local now = now_ms()
for i = 1, #gone, 2 do
  tell(prefix, '', ARGV[3], 'gone', gone[i], gone[i + 1])
  if redis.call('EXISTS', prefix .. 'lease:' .. gone[i]) == 0 then
    redis.call('HSETNX', KEYS[4], gone[i], now)
  end
end
local expired = {}
local orphans = redis.call('HGETALL', KEYS[4])
local ttl = tonumber(ARGV[4])
for i = 1, #orphans, 2 do
  local name, since = orphans[i], tonumber(orphans[i + 1])
  local stream = prefix .. 'w:' .. name
  if redis.call('EXISTS', prefix .. 'lease:' .. name) == 1
     or redis.call('EXISTS', stream) == 0 then
    redis.call('HDEL', KEYS[4], name)
  elseif now - since >= ttl then
    local before = redis.call('XLEN', stream)
    redis.call('XTRIM', stream, 'MINID', now - ttl)
    local after = redis.call('XLEN', stream)
    if before > after then
      expired[#expired + 1] = name
      expired[#expired + 1] = before - after
    end
    if after == 0 then
      redis.call('DEL', stream)
      redis.call('HDEL', KEYS[4], name)
    else
      redis.call('PEXPIRE', stream, ARGV[5])
    end
  end
end
return {gone, expired}
"""
)

#: KEYS: (stream, lease) per stream (a node stream gives its alive key).
#: ARGV: node, then per stream: count, trim threshold, the entry IDs.
#: Acknowledges and trims, only for streams this runner still holds (a runner
#: that lost a name never acknowledges its new holder's entries). Returns 1/0 per stream.
ACK = (
    _HOLDER
    + """
local node = ARGV[1]
local at = 2
local out = {}
for s = 1, #KEYS / 2 do
  local stream, lease = KEYS[2 * s - 1], KEYS[2 * s]
  local n, minid = tonumber(ARGV[at]), ARGV[at + 1]
  if holder(redis.call('GET', lease)) == node then
    for k = 1, n, 500 do
      local ids = {}
      for m = k, math.min(k + 499, n) do ids[#ids + 1] = ARGV[at + 1 + m] end
      redis.call('XACK', stream, 'g', unpack(ids))
    end
    redis.call('XTRIM', stream, 'MINID', minid)
    out[s] = 1
  else
    out[s] = 0
  end
  at = at + 2 + n
end
return out
"""
)

#: KEYS: seq, then (stream, lease) per target. ARGV: node, first seq, last seq,
#: default max backlog, backstop ms, codec, prefix, then per message: the
#: target's index (0: a broadcast to every other runner) and the payload.
#:
#: Idempotent: the result of the runner's last batch is kept, and a batch sent
#: again (its reply was lost) gets that result instead of being applied twice.
#: A target whose backlog is full refuses the rest of its messages under
#: ``wait`` (the sender tries again later, in order), drops the oldest unread
#: entry under ``drop_oldest``, and refuses the message otherwise (counted by
#: the sender). A stream that no runner holds expires after the orphan ttl
#: unless someone takes the name (the sweep drops them, counted, after the orphan
#: ttl; the key's own expiry, later, is the backstop). Returns the result as JSON: ``r`` refused and
#: ``d`` dropped message indexes, ``o`` oldest entries dropped, ``b`` broadcast
#: copies dropped (a runner's node stream was full), ``h`` whether each target
#: is held, ``l`` its backlog, ``m`` its limit, ``p`` its policy.
SEND = (
    _NOW
    + """
local node, first, last = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local record = redis.call('HGET', KEYS[1], node)
if record then
  local f, l, result = string.match(record, '^(%d+)\\t(%d+)\\t(.*)$')
  if tonumber(l) >= first then
    if tonumber(f) == first and tonumber(l) == last then return result end
    return redis.error_reply('ERR batch ' .. first .. '-' .. last .. ' after ' .. f .. '-' .. l)
  end
end
local default_max, codec, prefix = tonumber(ARGV[4]), ARGV[6], ARGV[7]
local len, max, policy, held, stop = {}, {}, {}, {}, {}
for t = 1, (#KEYS - 1) / 2 do
  local value = redis.call('GET', KEYS[2 * t + 1])
  if value then
    local _, _, m, p = string.match(value, '^([^\\t]*)\\t([^\\t]*)\\t([^\\t]*)\\t([^\\t]*)')
    max[t], policy[t], held[t] = tonumber(m), p, 1
  else
    max[t], policy[t], held[t] = default_max, 'wait', 0
  end
  len[t] = redis.call('XLEN', KEYS[2 * t])
end
local refused, dropped, oldest, bcast = {}, {}, 0, 0
local nodes = nil
local index, i = 0, 8
while i <= #ARGV do
  index = index + 1
  local t, payload = tonumber(ARGV[i]), ARGV[i + 1]
  i = i + 2
  if t == 0 then
    nodes = nodes or redis.call('HKEYS', prefix .. 'nodes')
    for _, other in ipairs(nodes) do
      if other ~= node then
        local stream = prefix .. 'n:' .. other
        if redis.call('XLEN', stream) < default_max then
          redis.call('XADD', stream, '*', 'c', codec, 'm', payload)
        else
          bcast = bcast + 1
        end
      end
    end
  elseif stop[t] then
    refused[#refused + 1] = index
  else
    local stream = KEYS[2 * t]
    local room = len[t] < max[t]
    if not room and policy[t] == 'drop_oldest' then
      local from = '-'
      if held[t] == 1 then
        for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
          for j = 1, #g, 2 do
            if g[j] == 'last-delivered-id' then from = '(' .. g[j + 1] end
          end
        end
      end
      local unread = redis.call('XRANGE', stream, from, '+', 'COUNT', 1)
      if #unread > 0 then
        redis.call('XDEL', stream, unread[1][1])
        oldest = oldest + 1
        room = true
      end
    end
    if room then
      redis.call('XADD', stream, '*', 'c', codec, 'm', payload)
      len[t] = len[t] + 1
    elseif policy[t] == 'wait' then
      stop[t] = true
      refused[#refused + 1] = index
    else
      dropped[#dropped + 1] = index
    end
  end
end
for t = 1, #held do
  if held[t] == 0 and len[t] > 0 then
    redis.call('PEXPIRE', KEYS[2 * t], ARGV[5])
    redis.call('HSETNX', prefix .. 'orphans', string.sub(KEYS[2 * t], #prefix + 3), now_ms())
  end
end
local result = cjson.encode({r = refused, d = dropped, o = oldest, b = bcast,
                             h = held, l = len, m = max, p = policy})
redis.call('HSET', KEYS[1], node, first .. '\\t' .. last .. '\\t' .. result)
return result
"""
)
