--[[ fail: record failed runs, for a batch of jobs. A job given a retry delay is
scheduled again (active -> delayed); one without goes to the failed store
(active -> failed), where it stays, without expiry, until retried or purged.
KEYS[1] active    ZSET of leased job ids
KEYS[2] delayed   ZSET job id -> due time (ms)
KEYS[3] failed    ZSET job id -> time it failed (ms)
KEYS[4] events    STREAM and channel of job events
KEYS[5] stats     HASH of counters
KEYS[6] marker    ZSET wake-up marker
ARGV[1] prefix    ARGV[2] queue
ARGV[3..]         quintuples: job id, fencing token, reason, error text,
                  retry delay in ms (-1 = no retry: the job has failed for good)
Returns one code per job: OK, LEASE_LOST or ALREADY_DONE (as complete).
]]
-- @include common
local prefix, queue = ARGV[1], ARGV[2]
local now = now_ms()
local codes, ended = {}, {}
local dead, retried, fenced = 0, 0, 0
for i = 3, #ARGV, 5 do
  local id = ARGV[i]
  local key = prefix .. 'job:' .. id
  local code, attempt = check_lease(key, ARGV[i + 1])
  if code == OK then
    local retry_in = tonumber(ARGV[i + 4])
    ended[#ended + 1] = id
    if retry_in >= 0 then
      redis.call('HSET', key, 'state', 'delayed', 'reason', ARGV[i + 2], 'error', ARGV[i + 3])
      redis.call('ZADD', KEYS[2], now + retry_in, id)
      note('retry_scheduled', id, attempt)
      retried = retried + 1
    else
      to_failed_store(KEYS[3], prefix, id, ARGV[i + 2], ARGV[i + 3], attempt, now)
      dead = dead + 1
    end
  elseif code == LEASE_LOST then
    fenced = fenced + 1
  end
  codes[#codes + 1] = code
end
if #ended > 0 then call_chunked('ZREM', KEYS[1], ended) end
if retried > 0 then
  redis.call('ZADD', KEYS[6], 0, 'm')
  redis.call('HINCRBY', KEYS[5], 'retried', retried)
end
if dead > 0 then redis.call('HINCRBY', KEYS[5], 'failed', dead) end
if fenced > 0 then redis.call('HINCRBY', KEYS[5], 'fenced', fenced) end
flush_events(KEYS[4], queue, now)
return codes
