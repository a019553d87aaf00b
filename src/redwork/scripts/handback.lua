--[[ handback: a stopping worker returns jobs it will not finish (active -> waiting),
at the front of the queue and without spending an attempt.
KEYS[1] wait      LIST of waiting job ids
KEYS[2] active    ZSET of leased job ids
KEYS[3] marker    ZSET wake-up marker
KEYS[4] events    STREAM and channel of job events
ARGV[1] prefix    ARGV[2] queue
ARGV[3..]         pairs: job id, fencing token
Returns one code per job: OK or LEASE_LOST.
]]
-- @include common
local prefix, queue = ARGV[1], ARGV[2]
local now = now_ms()
local codes = {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local key = prefix .. 'job:' .. id
  local code = check_lease(key, ARGV[i + 1])
  if code == OK then
    local attempt = redis.call('HINCRBY', key, 'attempt', -1)
    redis.call('HSET', key, 'state', 'waiting')
    redis.call('HDEL', key, 'worker')
    redis.call('ZREM', KEYS[2], id)
    redis.call('RPUSH', KEYS[1], id)
    emit(KEYS[4], queue, 'returned', id, attempt, now)
  else
    code = LEASE_LOST
  end
  codes[#codes + 1] = code
end
redis.call('ZADD', KEYS[3], 0, 'm')
return codes
