-- Celeriac's Redis result backend: each multi-key step is one call of this script.
-- ARGV[1] = command; the rest depends on it. Key names are Celery's (PROTOCOL.md §4).

local cmd = ARGV[1]

-- store_results() comes from redis_store.lua, loaded ahead of this file.

if cmd == 'store' then
  -- KEYS: result keys; ARGV[2]: expiry in ms (0 = none); ARGV[3..]: documents in KEYS order.
  local docs = {}
  for i = 3, #ARGV do docs[#docs + 1] = ARGV[i] end
  return store_results(KEYS, docs, tonumber(ARGV[2]))

elseif cmd == 'store_read' then
  -- A worker's results, then the documents of the tasks it fetched next (one trip for both).
  -- KEYS: ARGV[3] result keys to store, then the keys to read; ARGV[2]: expiry in ms (0 =
  -- none); ARGV[4..]: documents for the first keys, in order. Returns the read documents.
  local n = tonumber(ARGV[3])
  local keys, docs, read = {}, {}, {}
  for i = 1, n do
    keys[i] = KEYS[i]
    docs[i] = ARGV[3 + i]
  end
  store_results(keys, docs, tonumber(ARGV[2]))
  -- GET one by one: unpack() into MGET is bounded by Lua's C stack (8000 values).
  for i = n + 1, #KEYS do read[#read + 1] = redis.call('GET', KEYS[i]) end
  return read

elseif cmd == 'chord' then
  -- Record finished chord header tasks as Celery 5.7 does (.j zset scored by group index,
  -- .d dedup set, .s size, .t extra count, .c dispatch claim), and claim completed chords.
  -- ARGV: 'chord', group key prefix, expiry s (0 = none), claim expiry s, then per part:
  -- group id, index, task id, .j member, size ('' = unknown). Returns the claimed group ids.
  local P, expires, claim_expires = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
  -- The claim holds the task id of the part that completed the chord: that part claims again
  -- when its message comes back (its worker died before the chord was done, perhaps before
  -- the body was sent); anyone else only once the claim expired.
  local claimer, touched, order = {}, {}, {}
  for i = 5, #ARGV, 5 do
    local gid, index, tid, member, size = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
    local base = P .. gid
    if redis.call('GET', base .. '.c') ~= 'done' then
      if size ~= '' then
        redis.call('SET', base .. '.s', size, 'NX')
      end
      local seen = tid .. ':' .. index
      if redis.call('SISMEMBER', base .. '.d', seen) == 0 then
        redis.call('ZADD', base .. '.j', index, member)
        redis.call('SADD', base .. '.d', seen)
      end
      if expires > 0 then
        for _, suffix in ipairs({'.j', '.t', '.s', '.d'}) do
          redis.call('EXPIRE', base .. suffix, expires)
        end
      end
      if not touched[gid] then
        touched[gid] = true
        order[#order + 1] = gid
      end
      claimer[gid] = 'celeriac:' .. tid
    end
  end
  local claimed = {}
  for _, gid in ipairs(order) do
    local base = P .. gid
    local size = tonumber(redis.call('GET', base .. '.s'))
    local extra = tonumber(redis.call('GET', base .. '.t')) or 0
    if size and redis.call('ZCARD', base .. '.j') >= size + extra then
      local held = redis.call('GET', base .. '.c')
      if not held or held == claimer[gid] then
        redis.call('SET', base .. '.c', claimer[gid], 'EX', claim_expires)
        claimed[#claimed + 1] = gid
      end
    end
  end
  return claimed

elseif cmd == 'chord_done' then
  -- KEYS: .j .t .s .d .c; ARGV[2]: how long the 'done' marker keeps late duplicates out
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
  redis.call('SET', KEYS[5], 'done', 'EX', tonumber(ARGV[2]))
  return 1
end

return redis.error_reply('celeriac: unknown backend command ' .. tostring(cmd))
