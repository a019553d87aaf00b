--[[ handback: a stopping worker returns jobs it will not finish (active -> waiting),
at the front of the queue and without spending an attempt. A job asked to abort ends as
cancelled instead.
KEYS[1] wait      LIST of waiting job ids
KEYS[2] active    ZSET of leased job ids
KEYS[3] marker    ZSET wake-up marker
KEYS[4] events    STREAM and channel of job events
ARGV[1] prefix    ARGV[2] queue
ARGV[3] ttl       seconds a cancelled job is kept
ARGV[4..]         pairs: job id, fencing token
Returns one code per job: OK or LEASE_LOST.
]]
-- @include common
local prefix, queue, ttl = ARGV[1], ARGV[2], ARGV[3]
local q = { prefix = prefix, wait = KEYS[1], marker = KEYS[3] }
local now = now_ms()
local codes, returned, priorities, cancelled = {}, {}, {}, {}
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  local key = prefix .. 'job:' .. id
  local code, attempt, wid, holds = check_lease(key, ARGV[i + 1])
  if code == OK then release_slots(q, id, holds) end
  if code == OK and redis.call('HEXISTS', key, 'abort') == 1 then
    to_cancelled(q, id, attempt, wid, ttl, now)
    cancelled[#cancelled + 1] = id
    codes[#codes + 1] = OK
  elseif code == OK then
    attempt = tonumber(attempt) - 1
    redis.call('HSET', key, 'state', 'waiting', 'attempt', attempt)
    redis.call('HDEL', key, 'worker')
    returned[#returned + 1] = id
    priorities[#returned] = redis.call('HGET', key, 'priority')
    note('returned', id, attempt)
    codes[#codes + 1] = OK
  else
    codes[#codes + 1] = LEASE_LOST
  end
end
if #cancelled > 0 then call_chunked('ZREM', KEYS[2], cancelled) end
if #returned > 0 then
  call_chunked('ZREM', KEYS[2], returned)
  push_waiting(q, returned, priorities, true)
  redis.call('ZADD', KEYS[3], 0, 'm')
end
flush_events(KEYS[4], queue, now)
return codes
