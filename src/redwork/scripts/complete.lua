--[[ complete: record results (active -> completed), for a batch of jobs, with the
state writes each job staged (its effects), applied in the same atomic step.
KEYS[1] active    ZSET of leased job ids
KEYS[2] events    STREAM and channel of job events
KEYS[3] stats     HASH of counters
KEYS[4] wait      LIST of waiting job ids (the next job of a released key joins it)
KEYS[5] marker    ZSET wake-up marker
KEYS[6] delayed   ZSET job id -> due time (ms)
KEYS[7] failed    ZSET of failed job ids
KEYS[8..]         the state entries the batch writes (declared for Cluster routing)
ARGV[1] prefix    ARGV[2] queue
ARGV[3] ttl       seconds a completed job and its result are kept
ARGV[4..]         quadruples: job id, fencing token, result (JSON), effects: '' or
                  JSON {"writes": [[op, key, value, etag], ...], "retry_in": ms}
A workflow's node releases the nodes that depend on it in the same step (see
includes/workflow.lua).
Returns one code per job: OK, LEASE_LOST (fenced: another delivery owns the job,
nothing is written), ALREADY_DONE (this delivery was already recorded) or CONFLICT (an
etag did not match, or a key holds something else than a state entry: nothing is
written and the run counts as failed with reason `conflict`, retried after retry_in ms,
or filed in the failed store when -1 or when the key is of another type; a job asked to
abort ends cancelled instead).
]]
-- @include common
local q = { prefix = ARGV[1], wait = KEYS[4], marker = KEYS[5], delayed = KEYS[6],
  failed = KEYS[7] }
local queue, ttl = ARGV[2], ARGV[3]
local now = now_ms()
local codes, done, ended = {}, {}, {}
local fenced, conflicts, retried, dead, cancelled = 0, 0, 0, 0, 0
for i = 4, #ARGV, 4 do
  local id = ARGV[i]
  local key = q.prefix .. 'job:' .. id
  local code, attempt, wid, holds, abort = check_lease(key, ARGV[i + 1])
  if code == OK then release_slots(q, id, holds) end
  local effects = code == OK and ARGV[i + 3] ~= '' and cjson.decode(ARGV[i + 3])
  if effects then
    local bad, version, kind = check_state(effects.writes)
    if bad then
      code = CONFLICT
      local write = effects.writes[bad]
      local message = 'state ' .. write[2] .. ' is at version ' .. (version or 'none') ..
        ', the job expected ' .. write[4]
      local retry_in = effects.retry_in
      if kind then
        message = 'state ' .. write[2] .. ' holds a ' .. kind .. ', not a state entry'
        retry_in = -1  -- running again cannot help
      end
      if abort then  -- asked to abort: a failed run ends it (see fail.lua)
        to_cancelled(q, id, attempt, wid, ttl, now)
        cancelled = cancelled + 1
      elseif end_failed_run(q, id, attempt, 'conflict', message, retry_in, now) then
        retried = retried + 1
      else
        dead = dead + 1
      end
      ended[#ended + 1] = id
    else
      apply_state(effects.writes)
    end
  end
  if code == OK then
    redis.call('HSET', key, 'state', 'completed', 'result', ARGV[i + 2], 'finished_at', now)
    release_holds(q, id)
    done[#done + 1] = id
    ended[#ended + 1] = id
    note('completed', id, attempt)
    announce_end(q.prefix, id, 'completed')
    -- A workflow's node is kept as long as its workflow.
    if not (wid and node_ended(q, wid, id, 'succeeded', now)) then
      redis.call('EXPIRE', key, ttl)
    end
  elseif code == LEASE_LOST then
    fenced = fenced + 1
  end
  codes[#codes + 1] = code
end
if #ended > 0 then call_chunked('ZREM', KEYS[1], ended) end
if #done > 0 then
  redis.call('HINCRBY', KEYS[3], 'completed', #done)
  local minute = q.prefix .. 'done:' .. math.floor(now / 60000)
  redis.call('INCRBY', minute, #done)
  redis.call('EXPIRE', minute, 3600)
end
if retried > 0 then
  redis.call('ZADD', KEYS[5], 0, 'm')
  redis.call('HINCRBY', KEYS[3], 'retried', retried)
end
if dead > 0 then redis.call('HINCRBY', KEYS[3], 'failed', dead) end
if fenced > 0 then redis.call('HINCRBY', KEYS[3], 'fenced', fenced) end
if retried + dead > 0 then redis.call('HINCRBY', KEYS[3], 'conflicts', retried + dead) end
if cancelled > 0 then redis.call('HINCRBY', KEYS[3], 'cancelled', cancelled) end
flush_events(KEYS[2], queue, now)
return codes
