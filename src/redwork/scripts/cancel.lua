--[[ cancel: withdraw jobs that have not started (waiting, held behind their key, or
delayed for a retry -> cancelled). A running job is not touched: it is the worker's.
A cancelled job is final; its hash expires like a completed one. A keyed job that was
its key's head releases the key.
KEYS[1] wait      LIST of waiting job ids
KEYS[2] delayed   ZSET of delayed job ids
KEYS[3] marker    ZSET wake-up marker
KEYS[4] events    STREAM and channel of job events
KEYS[5] stats     HASH of counters
ARGV[1] prefix    ARGV[2] queue
ARGV[3] ttl       seconds a cancelled job is kept
ARGV[4..]         job ids
Returns one reply per job: OK, or the state that kept it from being cancelled
('active', 'completed', 'failed', 'cancelled'), or 'unknown' when there is no such job.
]]
-- @include common
local q = { prefix = ARGV[1], wait = KEYS[1], marker = KEYS[3] }
local queue, ttl = ARGV[2], ARGV[3]
local now = now_ms()
local replies = {}
local cancelled = 0
for i = 4, #ARGV do
  local id = ARGV[i]
  local job_key = q.prefix .. 'job:' .. id
  local job = redis.call('HMGET', job_key, 'state', 'key', 'attempt')
  local state, key = job[1], job[2]
  local reply = state or 'unknown'
  if state == 'waiting' or state == 'delayed' then
    if state == 'delayed' then
      redis.call('ZREM', KEYS[2], id)
    elseif redis.call('LREM', KEYS[1], 1, id) == 0 and key then
      -- Not in circulation: held in its key's line.
      if redis.call('LREM', q.prefix .. 'key:' .. key, 1, id) == 1 then
        redis.call('DECR', q.prefix .. 'held')
      end
    end
    release_key(q, id)
    redis.call('HSET', job_key, 'state', 'cancelled', 'finished_at', now)
    redis.call('EXPIRE', job_key, ttl)
    note('cancelled', id, job[3])
    announce_end(q.prefix, id, 'cancelled')
    cancelled = cancelled + 1
    reply = OK
  end
  replies[#replies + 1] = reply
end
if cancelled > 0 then redis.call('HINCRBY', KEYS[5], 'cancelled', cancelled) end
flush_events(KEYS[4], queue, now)
return replies
