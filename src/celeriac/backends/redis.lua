-- Store task results as Celery does (SET with expiry + PUBLISH on the key's own channel), in one
-- atomic step that also keeps Celery's rule: a stored SUCCESS is never replaced.
-- KEYS: result keys; ARGV[1]: expiry in ms (0 = none); ARGV[2..]: the documents, in KEYS order.
local ttl = tonumber(ARGV[1])

local function is_success(doc)
  local ok, meta = pcall(cjson.decode, doc)
  if not ok then ok, meta = pcall(cmsgpack.unpack, doc) end
  return ok and type(meta) == 'table' and meta.status == 'SUCCESS'
end

local stored = 0
for i, key in ipairs(KEYS) do
  local current = redis.call('GET', key)
  if not (current and is_success(current)) then
    if ttl > 0 then
      redis.call('SET', key, ARGV[i + 1], 'PX', ttl)
    else
      redis.call('SET', key, ARGV[i + 1])
    end
    redis.call('PUBLISH', key, ARGV[i + 1])
    stored = stored + 1
  end
end
return stored
