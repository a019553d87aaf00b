--[[ retry_failed: send jobs from the failed store back to the queue (failed -> waiting),
with a fresh attempt budget. Their last error stays on the job until it runs again.
A keyed job whose key has a head in circulation waits first in its key's line.
KEYS[1] wait      LIST of waiting job ids
KEYS[2] failed    ZSET of failed job ids
KEYS[3] marker    ZSET wake-up marker
KEYS[4] events    STREAM and channel of job events
ARGV[1] prefix    ARGV[2] queue
ARGV[3..]         job ids; none means every failed job
Returns the number of jobs sent back.
]]
-- @include common
local q = { prefix = ARGV[1], wait = KEYS[1], marker = KEYS[3] }
local queue = ARGV[2]
local now = now_ms()
local ids = {}
for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
if #ids == 0 then ids = redis.call('ZRANGE', KEYS[2], 0, -1) end
local moved = 0
for _, id in ipairs(ids) do
  -- Entries buried by fetch as raw bytes (@raw-N) are not jobs and cannot run again.
  if string.sub(id, 1, 1) ~= '@' and redis.call('ZREM', KEYS[2], id) == 1 then
    local job_key = q.prefix .. 'job:' .. id
    redis.call('HSET', job_key, 'state', 'waiting', 'attempt', 0, 'losses', 0)
    if admit(q, id, redis.call('HGET', job_key, 'key'), true) then
      redis.call('LPUSH', KEYS[1], id)
    end
    note('requeued', id, 0)
    moved = moved + 1
  end
end
if moved > 0 then redis.call('ZADD', KEYS[3], 0, 'm') end
flush_events(KEYS[4], queue, now)
return moved
