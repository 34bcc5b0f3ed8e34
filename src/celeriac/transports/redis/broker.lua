-- Celeriac's Redis broker: every step that touches more than one key is one call of this script,
-- so no message ever exists only in a client's memory.
--
-- ARGV[1] = command, ARGV[2] = key prefix (kombu's global_keyprefix), then the command's
-- arguments. Keys are derived here from the prefix (standalone Redis, not Cluster).
--
-- Layout shared with Celery/kombu (PROTOCOL.md §2):
--   <q>, <q>\6\22{3,6,9}         ready lists, LPUSH in, RPOP out; bucket 0 is served first
--   unacked / unacked_index      tag -> '[envelope, exchange, queue]' / tag -> last lease renewal
--   _kombu.binding.<q>           so Celery tools can resolve the queue
-- Celeriac's own, beside it:
--   celeriac.leases.<q>          zset tag -> lease deadline (server time)
--   celeriac.delayed.<q>         zset raw envelope -> due time (ETA / delayed requeue)
--   celeriac.deliveries          hash tag -> delivery count (also the fencing token of a lease)
--   celeriac.queues              set of queues that have leases or delayed messages (for sweeps)
--   celeriac.wake.<q>            list holding at most a few tokens: wakes an idle consumer
--   celeriac.dead, .dead.seq     zset of dead-letter documents scored by their id
--   celeriac.dead.caps           hash max_count, max_age (s) the brokers set; 0: no cap

-- store_results() comes from backends/redis_store.lua, loaded ahead of this file.

local cmd, P = ARGV[1], ARGV[2]
local SEP = '\6\22'
local STEPS = {0, 3, 6, 9}
local UNACKED, INDEX = P .. 'unacked', P .. 'unacked_index'
local COUNTS, QUEUES = P .. 'celeriac.deliveries', P .. 'celeriac.queues'
local DEAD, DEADSEQ = P .. 'celeriac.dead', P .. 'celeriac.dead.seq'
local DEADCAPS = P .. 'celeriac.dead.caps'

local function lease_key(q) return P .. 'celeriac.leases.' .. q end
local function delayed_key(q) return P .. 'celeriac.delayed.' .. q end
local function wake_key(q) return P .. 'celeriac.wake.' .. q end

local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- Celery's priority buckets: max(step <= p); a lower bucket is served first.
local function bucket(q, priority)
  local p, step = tonumber(priority) or 0, 0
  for _, s in ipairs(STEPS) do
    if p >= s then step = s end
  end
  if step == 0 then return P .. q end
  return P .. q .. SEP .. step
end

local function priority_of(doc)
  if type(doc) == 'table' and type(doc.properties) == 'table' then
    return doc.properties.priority
  end
  return 0
end

-- At most a couple of tokens per queue: enough to wake idle consumers, never a backlog.
local function wake(q, token)
  local key = wake_key(q)
  if token == 'd' or redis.call('LLEN', key) == 0 then
    redis.call('LPUSH', key, token or '1')
    redis.call('LTRIM', key, 0, 2)
  end
end

local function dead(envelope, q, reason)
  local id = redis.call('INCR', DEADSEQ)
  local doc = cjson.encode({id = id, queue = q, reason = reason, failed_at = tostring(now()),
                            envelope = envelope})
  redis.call('ZADD', DEAD, id, doc)
  -- The caps (absent: the defaults of brokers/dead_letters.py). Ids grow with time, so the
  -- oldest are always at the front: each dead letter is looked at once when it goes.
  local caps = redis.call('HMGET', DEADCAPS, 'max_count', 'max_age')
  local max_count, max_age = tonumber(caps[1]) or 10000, tonumber(caps[2]) or 604800
  if max_count > 0 then redis.call('ZREMRANGEBYRANK', DEAD, 0, -(max_count + 1)) end
  if max_age > 0 then
    local cutoff = now() - max_age
    while true do
      local oldest = redis.call('ZRANGE', DEAD, 0, 0)
      if #oldest == 0 then break end
      local ok, d = pcall(cjson.decode, oldest[1])
      if ok and type(d) == 'table' and (tonumber(d.failed_at) or 0) >= cutoff then break end
      redis.call('ZREMRANGEBYRANK', DEAD, 0, 0)
    end
  end
end

-- kombu's unacked entry is the JSON '[envelope, exchange, routing_key]'. We keep the envelope
-- byte for byte: cut it out of the entry when the tail is as expected, re-encode otherwise.
-- Returns the envelope, the exchange, the routing key and the decoded envelope (nil when the
-- entry is not one).
local function envelope_of(entry)
  local ok, e = pcall(cjson.decode, entry)
  if not ok or type(e) ~= 'table' or type(e[1]) ~= 'table' then return nil end
  local ex = type(e[2]) == 'string' and e[2] or ''
  local rk = type(e[3]) == 'string' and e[3] or ''
  local tail = ', ' .. cjson.encode(ex) .. ', ' .. cjson.encode(rk) .. ']'
  if string.sub(entry, 1, 1) == '[' and string.sub(entry, -#tail) == tail then
    return string.sub(entry, 2, #entry - #tail), ex, rk, e[1]
  end
  return cjson.encode(e[1]), ex, rk, e[1]
end

local function release(q, tag)
  redis.call('HDEL', UNACKED, tag)
  redis.call('ZREM', INDEX, tag)
  redis.call('ZREM', lease_key(q), tag)
end

-- Push an envelope onto queue q at the end served next; true when it went there. A key of
-- another type is not written to: the push would fail half-way through the script, after the
-- message was taken from where it was (a script is not rolled back), so it is dead-lettered
-- with the reason instead. Callers take a message from where it was only after this.
local function put_back(q, priority, envelope)
  local key = bucket(q, priority)
  local kind = redis.call('TYPE', key).ok
  if kind ~= 'list' and kind ~= 'none' then
    dead(envelope, q, 'cannot put it back on ' .. key .. ': that key holds a ' .. kind)
    return false
  end
  redis.call('RPUSH', key, envelope)
  return true
end

-- Put an in-flight message back at the head of its queue (next to be served).
local function restore(q, tag)
  local entry = redis.call('HGET', UNACKED, tag)
  if entry then
    local envelope, _, _, doc = envelope_of(entry)
    if not envelope then
      dead(entry, q, 'unreadable unacked entry')
    elseif put_back(q, priority_of(doc), envelope) then
      wake(q)
    end
  end
  release(q, tag)
end

-- kombu's binding member 'key SEP pattern SEP queue'.
local function binding_parts(member)
  local a = string.find(member, SEP, 1, true)
  local b = a and string.find(member, SEP, a + #SEP, true)
  if not b then return nil end
  return string.sub(member, 1, a - 1), string.sub(member, a + #SEP, b - 1),
         string.sub(member, b + #SEP)
end

-- kombu's topic rule as a Lua pattern: words split on '.', a '*' word is one word, a '#' word
-- any run of characters (kombu's regex '.*?'), every other word itself.
local function topic_pattern(key)
  local out, start = {}, 1
  while true do
    local dot = string.find(key, '.', start, true)
    local word = string.sub(key, start, (dot or 0) - 1)
    if word == '*' then
      out[#out + 1] = '[^%.]+'
    elseif word == '#' then
      out[#out + 1] = '.-'
    else
      out[#out + 1] = (string.gsub(word, '%W', '%%%0'))
    end
    if not dot then break end
    start = dot + 1
  end
  return '^' .. table.concat(out, '%.') .. '$'
end

-- The queues kombu's restore pushes a message taken through exchange ex with key rk to (its
-- _lookup): the queue the key names on the default exchange, else every queue
-- _kombu.binding.<ex> binds the key to (a binding with a pattern is a topic one).
local function destinations(ex, rk)
  if ex == '' then return rk ~= '' and {rk} or {} end
  local out, seen = {}, {}
  for _, member in ipairs(redis.call('SMEMBERS', P .. '_kombu.binding.' .. ex)) do
    local key, pattern, q = binding_parts(member)
    local hit = false
    if q and pattern ~= '' then
      hit = string.match(rk, topic_pattern(key)) ~= nil
    elseif q then
      hit = key == rk
    end
    if hit and not seen[q] then
      seen[q] = true
      out[#out + 1] = q
    end
  end
  table.sort(out)
  return out
end

-- A delivery a Celery worker abandoned: back where kombu's restore would put it, and counted
-- as the delivery it was. Dead-lettered with the reason when nothing is bound to take it.
local function restore_abandoned(tag)
  local entry = redis.call('HGET', UNACKED, tag)
  if entry then
    local envelope, ex, rk, doc = envelope_of(entry)
    local targets = envelope and destinations(ex, rk) or {}
    if not envelope then
      dead(entry, '', 'unreadable unacked entry')
    elseif #targets == 0 then
      dead(envelope, ex, string.format("restoring it: exchange '%s' routes '%s' to no queue",
                                       ex, rk))
    else
      redis.call('HINCRBY', COUNTS, tag, 1)
    end
    for _, q in ipairs(targets) do
      if put_back(q, priority_of(doc), envelope) then wake(q) end
    end
  end
  redis.call('HDEL', UNACKED, tag)
  redis.call('ZREM', INDEX, tag)
end

-- The caller's lease is current: same delivery count and the message is still leased.
local function holds(q, tag, count)
  return tonumber(redis.call('HGET', COUNTS, tag)) == tonumber(count)
     and redis.call('ZSCORE', lease_key(q), tag)
end

-- Move due delayed messages to their queues and restore expired leases. Returns how many
-- moved and the seconds until the next one is due (-1: nothing waiting).
local function sweep(t, max_items, celery_vt)
  local moved, next_due = 0, -1
  local function consider(score)
    local wait = tonumber(score) - t
    if next_due < 0 or wait < next_due then next_due = math.max(wait, 0) end
  end
  for _, q in ipairs(redis.call('SMEMBERS', QUEUES)) do
    local dkey, lkey = delayed_key(q), lease_key(q)
    local due = redis.call('ZRANGEBYSCORE', dkey, '-inf', t, 'LIMIT', 0, max_items)
    -- RPUSH latest first, so the earliest due is the first served.
    for i = #due, 1, -1 do
      local ok, doc = pcall(cjson.decode, due[i])
      put_back(q, ok and priority_of(doc) or 0, due[i])
      redis.call('ZREM', dkey, due[i])
    end
    if #due > 0 then wake(q) end
    local expired = redis.call('ZRANGEBYSCORE', lkey, '-inf', t, 'LIMIT', 0, max_items)
    for _, tag in ipairs(expired) do restore(q, tag) end
    moved = moved + #due + #expired
    local first = redis.call('ZRANGE', dkey, 0, 0, 'WITHSCORES')
    local lease = redis.call('ZRANGE', lkey, 0, 0, 'WITHSCORES')
    if first[2] then consider(first[2]) end
    if lease[2] then consider(lease[2]) end
    if not first[2] and not lease[2] then redis.call('SREM', QUEUES, q) end
  end
  -- Deliveries abandoned by Celery workers (no Celeriac lease): kombu's own rule.
  if celery_vt > 0 then
    local old = redis.call('ZRANGEBYSCORE', INDEX, '-inf', t - celery_vt, 'LIMIT', 0, max_items)
    for _, tag in ipairs(old) do
      local entry = redis.call('HGET', UNACKED, tag)
      local ex, rk
      if entry then
        local _
        _, ex, rk = envelope_of(entry)
      end
      -- ours (taken from queue rk through the default exchange): its lease decides
      if not (ex == '' and rk ~= '' and redis.call('ZSCORE', lease_key(rk), tag)) then
        restore_abandoned(tag)
        moved = moved + 1
      end
    end
  end
  return moved, next_due
end

-- Lease one popped element to the caller, or dead-letter it when it is not an envelope.
local function lease(raw, q, t, deadline)
  local ok, doc = pcall(cjson.decode, raw)
  if not ok then
    dead(raw, q, 'not a JSON envelope: ' .. tostring(doc))
    return nil
  end
  if type(doc) ~= 'table' or type(doc.properties) ~= 'table' then
    dead(raw, q, 'not a kombu envelope: no properties object')
    return nil
  end
  local tag = doc.properties.delivery_tag
  local fresh = type(tag) ~= 'string' or tag == ''
  if not fresh and redis.call('HEXISTS', UNACKED, tag) == 1 then
    local _, _, held_on = envelope_of(redis.call('HGET', UNACKED, tag))
    if held_on == nil or held_on == q then
      -- A second copy of a message that is in flight right now (a publish retried after its
      -- reply was lost): the lease on the first copy already guarantees delivery.
      return nil, 'duplicate'
    end
    -- The same envelope on another queue: kombu pushes one envelope (one tag) to every queue
    -- an exchange routes it to. This copy needs a tag of its own.
    fresh = true
  end
  if fresh then
    tag = 'celeriac-' .. redis.call('INCR', P .. 'celeriac.tagseq')
    doc.properties.delivery_tag = tag
    raw = cjson.encode(doc)
  end
  redis.call('HSET', UNACKED, tag, '[' .. raw .. ', "", ' .. cjson.encode(q) .. ']')
  redis.call('ZADD', INDEX, t, tag)
  redis.call('ZADD', lease_key(q), deadline, tag)
  local id = type(doc.headers) == 'table' and doc.headers.id or nil
  return tag, redis.call('HINCRBY', COUNTS, tag, 1), raw, type(id) == 'string' and id or nil
end

-- The stored state of task ``id`` under the result key prefix ``rp`` (the result backend in
-- this same database), '' when there is none, '?' when it cannot be read here.
local function stored_state(rp, id)
  if rp == '' or not id then return '?' end
  local doc = redis.call('GET', rp .. id)
  if not doc then return '' end
  local ok, meta = pcall(cjson.decode, doc)
  if ok and type(meta) == 'table' and type(meta.status) == 'string' then return meta.status end
  return '?'
end

if cmd == 'publish' then
  -- Runs of messages, each: q, priority, delay (s from now, '' = none), bind ('1' = declare
  -- the binding), count, then that many envelopes, to store in order (the first is served
  -- first). Delays are relative, so they are measured on one clock (the server's), whatever
  -- the clients' clocks say; the zset holds server times. Each queue is woken once, after its
  -- messages are in.
  local woken, at, i = {}, nil, 3
  while i <= #ARGV do
    local q, priority, delay, n = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 4])
    if ARGV[i + 3] == '1' then
      redis.call('SADD', P .. '_kombu.binding.' .. q, q .. SEP .. SEP .. q)
    end
    local first, last = i + 5, i + 4 + n
    if delay ~= '' and tonumber(delay) > 0 then
      at = at or now()
      for j = first, last do redis.call('ZADD', delayed_key(q), at + tonumber(delay), ARGV[j]) end
      redis.call('SADD', QUEUES, q)
      woken[q] = 'd'
    else
      -- unpack() is bounded by Lua's C stack (8000 values): a run is pushed 1000 at a time.
      local key = bucket(q, priority)
      for j = first, last, 1000 do
        redis.call('LPUSH', key, unpack(ARGV, j, math.min(j + 999, last)))
      end
      woken[q] = woken[q] or '1'
    end
    i = last + 1
  end
  for q, token in pairs(woken) do wake(q, token == 'd' and 'd' or nil) end
  return 1

elseif cmd == 'fetch' then
  -- lease seconds, limit, sweep ('1'/'0'), sweep batch, celery vt, queue count, queues...,
  -- result key prefix ('' = the results live elsewhere), result expiry ms (0 = none), ack
  -- count, that many triples to ack first (queue, tag, delivery count, as for 'ack'), then
  -- (task id, document) pairs to store first under the result key prefix.
  -- Returns {seconds to next due or '', duplicates dropped, q1, tag1, count1, envelope1, state1,
  -- ...}; a state is '' when no result is stored and '?' when it was not looked up.
  local vt, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
  local nq = tonumber(ARGV[8])
  local rp = ARGV[9 + nq] or ''
  local first_ack = 12 + nq
  local first_result = first_ack + 3 * (tonumber(ARGV[11 + nq]) or 0)
  -- Results before acks: a message is never gone while its result is not stored.
  if first_result <= #ARGV and rp ~= '' then
    local keys, docs = {}, {}
    for i = first_result, #ARGV, 2 do
      keys[#keys + 1] = rp .. ARGV[i]
      docs[#docs + 1] = ARGV[i + 1]
    end
    store_results(keys, docs, tonumber(ARGV[10 + nq]) or 0)
  end
  for i = first_ack, first_result - 1, 3 do
    local q, tag, count = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    if holds(q, tag, count) then
      release(q, tag)
      redis.call('HDEL', COUNTS, tag)
    end
  end
  local t = now()
  local out = {'', 0}
  if ARGV[5] == '1' then
    local _, next_due = sweep(t, tonumber(ARGV[6]), tonumber(ARGV[7]))
    out[1] = tostring(next_due)
  end
  local got, deadline = 0, t + vt
  local leased = {}  -- queues this call leased from: the sweeper looks at them (one SADD each)
  for _, step in ipairs(STEPS) do
    for i = 1, nq do
      local q = ARGV[8 + i]
      local key = bucket(q, step)
      while got < limit do
        local items = redis.call('RPOP', key, limit - got)
        if not items then break end
        for _, raw in ipairs(items) do
          local tag, count, envelope, id = lease(raw, q, t, deadline)
          if count == 'duplicate' then
            out[2] = out[2] + 1
          elseif tag then
            got = got + 1
            leased[q] = true
            out[#out + 1] = q
            out[#out + 1] = tag
            out[#out + 1] = count
            out[#out + 1] = envelope
            out[#out + 1] = stored_state(rp, id)
          end
        end
      end
    end
  end
  for q in pairs(leased) do redis.call('SADD', QUEUES, q) end
  -- A full batch may have left work behind: pass the baton to another idle consumer.
  if got >= limit then
    for i = 1, nq do
      local q = ARGV[8 + i]
      for _, step in ipairs(STEPS) do
        if redis.call('LLEN', bucket(q, step)) > 0 then
          wake(q)
          break
        end
      end
    end
  end
  return out

elseif cmd == 'ack' or cmd == 'extend' then
  -- lease seconds (extend), then triples: queue, tag, delivery count
  local t = now()
  local deadline = t + (tonumber(ARGV[3]) or 0)
  local done = 0
  for i = 4, #ARGV, 3 do
    local q, tag, count = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    if holds(q, tag, count) then
      if cmd == 'ack' then
        release(q, tag)
        redis.call('HDEL', COUNTS, tag)
      else
        redis.call('ZADD', lease_key(q), 'XX', deadline, tag)
        redis.call('ZADD', INDEX, 'XX', t, tag)
      end
      done = done + 1
    end
  end
  return done

elseif cmd == 'requeue' then
  -- queue, tag, count, delay (s from now, '' = none), counted ('1'/'0')
  local q, tag, count, delay = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
  if not holds(q, tag, count) then return 0 end
  if ARGV[7] == '0' then redis.call('HINCRBY', COUNTS, tag, -1) end
  if delay ~= '' and tonumber(delay) > 0 then
    local entry = redis.call('HGET', UNACKED, tag)
    local envelope = entry and envelope_of(entry)
    if envelope then
      redis.call('ZADD', delayed_key(q), now() + tonumber(delay), envelope)
      redis.call('SADD', QUEUES, q)
      wake(q, 'd')
    elseif entry then
      dead(entry, q, 'unreadable unacked entry')
    end
    release(q, tag)
    return envelope and 1 or 0
  end
  restore(q, tag)
  return 1

elseif cmd == 'dead_letter' then
  -- queue, tag, count, reason
  local q, tag, count, reason = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
  if not holds(q, tag, count) then return 0 end
  local entry = redis.call('HGET', UNACKED, tag)
  if entry then dead(envelope_of(entry) or entry, q, reason) end
  release(q, tag)
  redis.call('HDEL', COUNTS, tag)
  return 1

elseif cmd == 'dead_raw' then
  -- queue, envelope, reason: a message that was never leased (a broadcast copy)
  dead(ARGV[4], ARGV[3], ARGV[5])
  return 1

elseif cmd == 'replay' then
  -- ids... (none = all); each dead letter goes back to the tail of its queue
  local docs = {}
  if #ARGV == 2 then
    docs = redis.call('ZRANGE', DEAD, 0, -1)
  else
    for i = 3, #ARGV do
      for _, d in ipairs(redis.call('ZRANGEBYSCORE', DEAD, ARGV[i], ARGV[i])) do
        docs[#docs + 1] = d
      end
    end
  end
  for _, d in ipairs(docs) do
    local doc = cjson.decode(d)
    local ok, env = pcall(cjson.decode, doc.envelope)
    redis.call('LPUSH', bucket(doc.queue, ok and priority_of(env) or 0), doc.envelope)
    redis.call('ZREM', DEAD, d)
    wake(doc.queue)
  end
  return #docs

elseif cmd == 'rate' then
  -- key, interval: reserve the next slot of a rate limit shared by every worker
  local key, interval = P .. 'celeriac.rate.' .. ARGV[3], tonumber(ARGV[4])
  local t = now()
  local start = math.max(tonumber(redis.call('GET', key)) or 0, t)
  local nxt = start + interval
  redis.call('SET', key, string.format('%.6f', nxt), 'PX', math.ceil((nxt - t + 60) * 1000))
  return string.format('%.6f', start)

elseif cmd == 'purge' then
  -- queue: ready and delayed messages (leased ones are left to their holders)
  local q = ARGV[3]
  local n = redis.call('ZCARD', delayed_key(q))
  redis.call('DEL', delayed_key(q))
  for _, step in ipairs(STEPS) do
    local key = bucket(q, step)
    n = n + redis.call('LLEN', key)
    redis.call('DEL', key)
  end
  return n
end

return redis.error_reply('celeriac: unknown broker command ' .. tostring(cmd))
