--[[ fail: record failed runs, for a batch of jobs. A job given a retry delay is
scheduled again (active -> delayed); one without goes to the failed store
(active -> failed), where it stays, without expiry, until retried or purged. A run
stopped because the job was cancelled (reason 'cancelled'), or any failed run of a job
asked to abort, ends it as cancelled (active -> cancelled), never retried.
KEYS[1] active    ZSET of leased job ids
KEYS[2] delayed   ZSET job id -> due time (ms)
KEYS[3] failed    ZSET job id -> time it failed (ms)
KEYS[4] events    STREAM and channel of job events
KEYS[5] stats     HASH of counters
KEYS[6] marker    ZSET wake-up marker
KEYS[7] wait      LIST of waiting job ids (the next job of a released key joins it)
ARGV[1] prefix    ARGV[2] queue
ARGV[3] ttl       seconds a cancelled job is kept
ARGV[4..]         quintuples: job id, fencing token, reason, error text,
                  retry delay in ms (-1 = no retry: the job has failed for good)
Returns one code per job: OK, LEASE_LOST or ALREADY_DONE (as complete).
]]
-- @include common
local q = { prefix = ARGV[1], delayed = KEYS[2], failed = KEYS[3], marker = KEYS[6],
  wait = KEYS[7] }
local queue, ttl = ARGV[2], ARGV[3]
local now = now_ms()
local codes, ended = {}, {}
local dead, retried, fenced, cancelled = 0, 0, 0, 0
for i = 4, #ARGV, 5 do
  local id = ARGV[i]
  local code, attempt, wid, holds, abort = check_lease(q.prefix .. 'job:' .. id, ARGV[i + 1])
  if code == OK then release_slots(q, id, holds) end
  -- A run that fails after the job was asked to abort ends it as cancelled too, even when
  -- the worker had not heard of the request yet.
  if code == OK and (ARGV[i + 2] == 'cancelled' or abort) then
    ended[#ended + 1] = id
    to_cancelled(q, id, attempt, wid, ttl, now)
    cancelled = cancelled + 1
  elseif code == OK then
    ended[#ended + 1] = id
    if end_failed_run(q, id, attempt, ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4]), now) then
      retried = retried + 1
    else
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
if cancelled > 0 then redis.call('HINCRBY', KEYS[5], 'cancelled', cancelled) end
flush_events(KEYS[4], queue, now)
return codes
