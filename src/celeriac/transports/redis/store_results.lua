-- Storing results in Celery's layout, shared by two scripts: the result backend's ('store') and
-- the broker's ('fetch': a prefork child stores a batch's results, acks it and leases the next
-- batch in one call when the results live in the broker's database).
--
-- SET (with the expiry) and PUBLISH on the key's channel, as Celery does, and a stored SUCCESS
-- is never replaced (Celery's rule).

local function is_success(doc)
  local ok, meta = pcall(cjson.decode, doc)
  if not ok then ok, meta = pcall(cmsgpack.unpack, doc) end
  return ok and type(meta) == 'table' and meta.status == 'SUCCESS'
end

-- Store docs[i] under keys[i]; ttl in ms (0 = none). Returns how many were written.
local function store_results(keys, docs, ttl)
  local stored = 0
  for i, key in ipairs(keys) do
    local current = redis.call('GET', key)
    if not (current and is_success(current)) then
      if ttl > 0 then
        redis.call('SET', key, docs[i], 'PX', ttl)
      else
        redis.call('SET', key, docs[i])
      end
      redis.call('PUBLISH', key, docs[i])
      stored = stored + 1
    end
  end
  return stored
end
