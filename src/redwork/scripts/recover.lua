--[[ recover: take back jobs whose lease expired because their worker died, hung or
was cut off (active -> waiting, or active -> failed with reason worker_lost once a
job has been lost max_losses times). Any live worker runs this; there is no reaper.
A recovered keyed job stays its key's head: it runs next, before the key's later jobs.
KEYS[1] wait      LIST of waiting job ids
KEYS[2] active    ZSET job id -> lease deadline (ms)
KEYS[3] failed    ZSET of failed job ids
KEYS[4] marker    ZSET wake-up marker
KEYS[5] events    STREAM and channel of job events
KEYS[6] stats     HASH of counters
ARGV[1] prefix    ARGV[2] queue
ARGV[3] max_losses
ARGV[4] limit     most jobs to take back in one call
ARGV[5] ttl       seconds a cancelled job is kept (a job asked to abort is cancelled)
Returns { recovered count, failed count }.
]]
-- @include common
local prefix, queue = ARGV[1], ARGV[2]
local q = { prefix = prefix, wait = KEYS[1], failed = KEYS[3], marker = KEYS[4] }
local max_losses = tonumber(ARGV[3])
local now = now_ms()
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
local ttl = ARGV[5]
local recovered, priorities, buried, cancelled = {}, {}, 0, 0
for _, id in ipairs(expired) do
  local key = prefix .. 'job:' .. id
  local job = redis.call('HMGET', key, 'attempt', 'losses', 'priority', 'abort', 'wf', 'holds')
  release_slots(q, id, job[6])  -- a crashed holder's slots free with its lease
  if job[4] then
    -- Asked to abort, and its worker is gone: it ends as cancelled, not run again.
    to_cancelled(q, id, job[1], job[5], ttl, now)
    cancelled = cancelled + 1
  elseif job[1] then
    local losses = tonumber(job[2] or 0) + 1
    if losses >= max_losses then
      redis.call('HSET', key, 'losses', losses)
      to_failed_store(q, id, 'worker_lost',
        'the worker running this job was lost ' .. losses .. ' times', job[1], now)
      buried = buried + 1
    else
      redis.call('HSET', key, 'state', 'waiting', 'losses', losses)
      recovered[#recovered + 1] = id
      priorities[#recovered] = job[3]
      note('recovered', id, job[1])
    end
  end
end
if #expired > 0 then call_chunked('ZREM', KEYS[2], expired) end
if #recovered > 0 then
  push_waiting(q, recovered, priorities, true)
  redis.call('ZADD', KEYS[4], 0, 'm')
  redis.call('HINCRBY', KEYS[6], 'recovered', #recovered)
end
if buried > 0 then redis.call('HINCRBY', KEYS[6], 'failed', buried) end
if cancelled > 0 then redis.call('HINCRBY', KEYS[6], 'cancelled', cancelled) end
flush_events(KEYS[5], queue, now)
return { #recovered, buried }
