--[[ fetch: lease up to N jobs to a worker (delayed -> waiting when due, waiting -> active),
the highest priority first (see push_waiting in common).
KEYS[1] wait      LIST of waiting job ids of priority 0 (wait:<p> for priority p)
KEYS[2] active    ZSET job id -> lease deadline (ms)
KEYS[3] delayed   ZSET job id -> due time (ms)
KEYS[4] failed    ZSET job id -> time it failed (ms)
KEYS[5] marker    ZSET wake-up marker
KEYS[6] events    STREAM and channel of job events
KEYS[7] seq       STRING counter naming entries that are not jobs
KEYS[8] stats     HASH of counters
KEYS[9] tokens    STRING counter of fencing tokens, one per lease
ARGV[1] prefix    ARGV[2] queue
ARGV[3] count     how many jobs the worker has free slots for
ARGV[4] lease_ms  lease length
ARGV[5] worker    worker id, recorded on the job
ARGV[6] max_bytes largest job document the worker will download
Returns { ms until the next delayed job is due (0 if overdue) or -1 when none,
          id1, token1, attempt1, data1, inputs1, id2, ... }; inputs is '' or, for a
          workflow's node given its dependencies' results, their JSON array.
The first node of a workflow to start sets the workflow running.
A job that would exceed a rate or concurrency limit is parked instead (see
includes/limits.lua); jobs parked under a rate limit whose time has come return first.
An entry of the wait list that is not a known job id, or a document over max_bytes,
goes to the failed store here, without being sent to the worker; an entry naming a job
that is not waiting (a stray copy) is dropped. A job that has lost
its worker before is delivered alone.
]]
-- @include common
local prefix, queue = ARGV[1], ARGV[2]
local q = { prefix = prefix, wait = KEYS[1], failed = KEYS[4], marker = KEYS[5],
  levels = prefix .. 'levels' }
local count = tonumber(ARGV[3])
local worker = ARGV[5]
local max_bytes = tonumber(ARGV[6])
local now = now_ms()
local deadline_ms = now + tonumber(ARGV[4])

-- Promote a few times what the worker asked for, not all that is due: when many fall
-- due at once, each call stays short (other clients wait while a script runs), and
-- every worker's next fetch promotes more.
local promote = math.min(CHUNK, math.max(100, count * 4))
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, promote)
if #due > 0 then
  local promoted, priorities = {}, {}
  for _, id in ipairs(due) do
    local key = prefix .. 'job:' .. id
    local job = redis.call('HMGET', key, 'attempt', 'priority', 'key')
    redis.call('HSET', key, 'state', 'waiting')
    note('promoted', id, job[1])
    -- A job delayed at enqueue joins its key's line now; a retry is its key's head.
    if admit(q, id, job[3], false) then
      promoted[#promoted + 1] = id
      priorities[#promoted] = job[2]
    end
  end
  call_chunked('ZREM', KEYS[3], due)
  push_waiting(q, promoted, priorities, false)
end

-- Rate and concurrency limits (includes/limits.lua); none is the common case.
local specs = limit_specs(q)
if specs then unthrottle(q, specs, now) end

-- Strictly by priority: the highest level first, then down to the plain list.
local ids, origins = {}, {}
local function take(list, level, n)
  for _, id in ipairs(redis.call('RPOP', list, n) or {}) do
    ids[#ids + 1] = id
    origins[#ids] = level
  end
end
for _, level in ipairs(redis.call('ZREVRANGE', q.levels, 0, -1)) do
  local list = KEYS[1] .. ':' .. level
  if #ids < count then take(list, level, count - #ids) end
  if redis.call('LLEN', list) == 0 then redis.call('ZREM', q.levels, level) end
end
if #ids < count then take(KEYS[1], 0, count - #ids) end

local function bury(id, reason, message, attempt)
  to_failed_store(q, id, reason, message, attempt, now)
  redis.call('HINCRBY', KEYS[8], 'failed', 1)
end

local out = { -1 }
local leases = {}

local function lease(id, job, holds, token)
  local key = prefix .. 'job:' .. id
  local attempt = tonumber(job[3] or 0) + 1
  if holds and #holds > 0 then
    redis.call('HSET', key, 'state', 'active', 'worker', worker, 'started_at', now,
      'token', token, 'attempt', attempt, 'holds', cjson.encode(holds))
  else
    redis.call('HSET', key, 'state', 'active', 'worker', worker, 'started_at', now,
      'token', token, 'attempt', attempt)
  end
  if job[7] then redis.call('HDEL', key, 'ahead') end
  leases[#leases + 1] = deadline_ms
  leases[#leases + 1] = id
  note('active', id, attempt)
  out[#out + 1] = id
  out[#out + 1] = token
  out[#out + 1] = attempt
  out[#out + 1] = job[1]
  out[#out + 1] = job[5] or ''
  if job[6] then
    local wf_key = prefix .. 'wf:' .. job[6]
    if redis.call('HGET', wf_key, 'status') == 'pending' then
      redis.call('HSET', wf_key, 'status', 'running', 'started_at', now)
      note('workflow_running', job[6], 0)
    end
  end
end

local i = 1
while i <= #ids do
  local id = ids[i]
  local key = prefix .. 'job:' .. id
  local job = is_job_id(id) and
    redis.call('HMGET', key, 'data', 'state', 'attempt', 'losses', 'inputs', 'wf', 'ahead')
    or { false }
  if not job[1] then
    -- Someone pushed raw bytes (not an id) into the queue: keep them for inspection.
    -- '@' cannot start a job id, so this name never collides with a real job.
    local raw_id = '@raw-' .. redis.call('INCR', KEYS[7])
    local raw_key = prefix .. 'job:' .. raw_id
    redis.call('HSET', raw_key, 'data', string.sub(id, 1, 4096), 'attempt', 0,
      'token', 0, 'losses', 0, 'enqueued_at', now)
    bury(raw_id, 'decode_error',
      'the wait list held an entry that is not the id of a job of this queue', 0)
  elseif job[2] ~= 'waiting' then
    -- A stray copy of the id of a job that is not waiting (pushed again by a foreign
    -- producer, say): the job is where its state says, and running it again would be a
    -- second delivery nobody asked for. The copy is dropped.
  elseif #job[1] > max_bytes then
    bury(id, 'payload_too_large',
      'job document exceeds the worker limit of ' .. max_bytes .. ' bytes', job[3])
    pass_turn(q, job[7])
  else
    -- A job that has lost its worker before may be what killed it (a poison pill):
    -- it travels alone, so that it cannot take the jobs fetched with it down again.
    local suspect = tonumber(job[4] or 0) > 0
    if suspect and #leases > 0 then break end
    -- Tokens come from the queue's counter, not the job's own: a job enqueued again
    -- under the id of a purged or expired one must not hand out a token that an old
    -- delivery of that id still holds.
    local token = redis.call('INCR', KEYS[9])
    local blocked, due, holds
    local scopes = specs and scopes_of(specs, job[1]) or {}
    if #scopes > 0 then
      blocked, due, holds = try_start(q, id, token, scopes, job[7], now)
    end
    if blocked then
      park(q, id, blocked, blocked == job[7], due)
      if blocked ~= job[7] then pass_turn(q, job[7]) end
      note('limited', id, job[3])
    else
      lease(id, job, holds, token)
      if suspect then
        i = i + 1
        break
      end
    end
  end
  i = i + 1
end
-- Put back what this fetch did not take, in the same order, to be taken next.
for j = #ids, i, -1 do push_waiting(q, { ids[j] }, { origins[j] }, true) end
if #leases > 0 then call_chunked('ZADD', KEYS[2], leases, 2) end
if specs then record_starts(q) end

if redis.call('LLEN', KEYS[1]) > 0 or redis.call('ZCARD', q.levels) > 0 then
  -- Work is left: wake the next idle worker.
  redis.call('ZADD', KEYS[5], 0, 'm')
else
  redis.call('DEL', KEYS[5])
end
-- When the worker should look again if nothing wakes it: the next delayed job, or the
-- next time a rate limit has room for parked jobs.
local next_due = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
if next_due[2] then out[1] = math.max(0, tonumber(next_due[2]) - now) end
if specs then
  local throttled = redis.call('ZRANGE', q.prefix .. 'throttled', 0, 0, 'WITHSCORES')
  if throttled[2] then
    local wait = math.max(0, tonumber(throttled[2]) - now)
    if out[1] < 0 or wait < out[1] then out[1] = wait end
  end
end
flush_events(KEYS[6], queue, now)
return out
