-- Celeriac beat's state on Redis: each command is one atomic call of this script.
--
-- ARGV[1] = command, ARGV[2] = key prefix (global_keyprefix), then the command's arguments.
-- broker(argv) runs a command of the broker's script (broker.lua, made a function of its ARGV
-- ahead of this file: see beat_store.py), so 'send' stores a tick's message with the broker's
-- own code in the same call that claims the tick.
-- Keys (standalone Redis, not Cluster):
--   celeriac.beat.lease     holder id, with a PX expiry: the leader lease
--   celeriac.beat.ticks     hash entry -> last tick (a float's repr)
--   celeriac.beat.unsent    hash entry -> its last tick, while that was claimed to be sent and
--                           is not known to be: the three-step path only, never 'send'
--   celeriac.beat.sent      hash entry -> when its message last went to the broker (unix s;
--                           the anchor and skipped ticks, recorded without one, leave it)
--   celeriac.beat.paused    set of paused entry names
--   celeriac.beat.entries   hash name -> dynamic entry spec (JSON)
--   celeriac.beat.version   counter bumped by every entry change

local cmd, P = ARGV[1], ARGV[2]
local LEASE, TICKS = P .. 'celeriac.beat.lease', P .. 'celeriac.beat.ticks'
local PAUSED, ENTRIES = P .. 'celeriac.beat.paused', P .. 'celeriac.beat.entries'
local VERSION, UNSENT = P .. 'celeriac.beat.version', P .. 'celeriac.beat.unsent'
local SENT = P .. 'celeriac.beat.sent'

-- The fence and the compare-and-set: holder leads, and entry's last tick is previous ('' =
-- none) and not unsent.
local function claimable(holder, entry, previous)
  if redis.call('GET', LEASE) ~= holder then return false end
  if redis.call('HEXISTS', UNSENT, entry) == 1 then return false end
  return (redis.call('HGET', TICKS, entry) or '') == previous
end

-- acquire holder ttl_ms: take a free lease (SET NX PX), or extend our own.
if cmd == 'acquire' then
  local holder, ttl = ARGV[3], ARGV[4]
  if redis.call('SET', LEASE, holder, 'NX', 'PX', ttl) then return 1 end
  if redis.call('GET', LEASE) == holder then
    redis.call('PEXPIRE', LEASE, ttl)
    return 1
  end
  return 0

-- renew holder ttl_ms: extend only a lease we still hold.
elseif cmd == 'renew' then
  if redis.call('GET', LEASE) == ARGV[3] then
    redis.call('PEXPIRE', LEASE, ARGV[4])
    return 1
  end
  return 0

elseif cmd == 'release' then
  if redis.call('GET', LEASE) == ARGV[3] then redis.call('DEL', LEASE) end
  return 0

-- claim holder entry tick previous unsent(0/1)
elseif cmd == 'claim' then
  if not claimable(ARGV[3], ARGV[4], ARGV[6]) then return 0 end
  redis.call('HSET', TICKS, ARGV[4], ARGV[5])
  if ARGV[7] == '1' then redis.call('HSET', UNSENT, ARGV[4], ARGV[5]) end
  return 1

-- settle entry tick sent_at ('' = given up, not sent)
elseif cmd == 'settle' then
  if redis.call('HGET', UNSENT, ARGV[3]) == ARGV[4] then
    redis.call('HDEL', UNSENT, ARGV[3])
    if ARGV[5] ~= '' then redis.call('HSET', SENT, ARGV[3], ARGV[5]) end
  end
  return 0

-- send holder entry tick previous sent_at, then (queue, priority, delay, envelope, bind) per
-- message:
-- claim the tick and store its messages (one per queue its route reaches), or, refused, do
-- nothing. The tick is recorded last: a publish that fails leaves it unclaimed, to be tried
-- again (Redis does not undo a script's earlier writes: of a message routed to two queues, a
-- copy stored before the failure stays, as with the broker's own publish_many).
elseif cmd == 'send' then
  if not claimable(ARGV[3], ARGV[4], ARGV[6]) then return 0 end
  for i = 8, #ARGV, 5 do
    local stored = broker({'publish', P, ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 4],
                           '1', ARGV[i + 3]})
    if stored ~= 1 then return stored end
  end
  redis.call('HSET', TICKS, ARGV[4], ARGV[5])
  redis.call('HSET', SENT, ARGV[4], ARGV[7])
  return 1

-- put name spec replace(0/1)
elseif cmd == 'put' then
  if ARGV[5] == '0' and redis.call('HEXISTS', ENTRIES, ARGV[3]) == 1 then return 0 end
  redis.call('HSET', ENTRIES, ARGV[3], ARGV[4])
  redis.call('INCR', VERSION)
  return 1

elseif cmd == 'remove' then
  local found = redis.call('HDEL', ENTRIES, ARGV[3])
  redis.call('HDEL', TICKS, ARGV[3])
  redis.call('HDEL', UNSENT, ARGV[3])
  redis.call('HDEL', SENT, ARGV[3])
  redis.call('SREM', PAUSED, ARGV[3])
  redis.call('INCR', VERSION)
  return found

-- pause name flag(0/1)
elseif cmd == 'pause' then
  if ARGV[4] == '1' then
    redis.call('SADD', PAUSED, ARGV[3])
  else
    redis.call('SREM', PAUSED, ARGV[3])
  end
  redis.call('INCR', VERSION)
  return 1
end

return redis.error_reply('celeriac beat: unknown command ' .. tostring(cmd))
