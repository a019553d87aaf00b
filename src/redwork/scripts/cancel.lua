--[[ cancel: withdraw jobs that have not started (waiting, held behind their key,
delayed, or pending on their dependencies -> cancelled), and ask the workers of running
ones to abort them. A cancelled job is final; its hash expires like a completed one. A
keyed job that was its key's head releases the key; a workflow's nodes that depend on a
cancelled one are skipped. A running job gets the field `abort` and its id is published
on the channel `aborts`: its worker stops it (see Worker) and ends it as cancelled; a
worker lost meanwhile leaves it to recover, which cancels it instead of running it again.
KEYS[1] wait      LIST of waiting job ids
KEYS[2] delayed   ZSET of delayed job ids
KEYS[3] marker    ZSET wake-up marker
KEYS[4] events    STREAM and channel of job events
KEYS[5] stats     HASH of counters
KEYS[6] aborts    pub/sub channel of the ids of running jobs to abort
ARGV[1] prefix    ARGV[2] queue
ARGV[3] ttl       seconds a cancelled job is kept
ARGV[4..]         job ids
Returns one reply per job: OK (cancelled), 'cancelling' (running: abort requested; or
a workflow's node asked for at its workflow's home, sent to its own queue to withdraw), or
the state that kept it from being cancelled ('completed', 'failed', 'cancelled',
'skipped'), or 'unknown' when there is no such job.
]]
-- @include common
local q = { prefix = ARGV[1], wait = KEYS[1], delayed = KEYS[2], marker = KEYS[3] }
local queue, ttl = ARGV[2], ARGV[3]
local now = now_ms()
local replies = {}
local cancelled = 0
for i = 4, #ARGV do
  local id = ARGV[i]
  local reply = cancel_unstarted(q, id, ttl, now)
  if reply == OK then
    cancelled = cancelled + 1
  elseif reply == 'forwarded' then
    reply = 'cancelling'  -- a workflow's node in another queue: withdrawn there
  elseif reply == 'active' then
    local job_key = q.prefix .. 'job:' .. id
    redis.call('HSET', job_key, 'abort', now)
    redis.call('PUBLISH', KEYS[6], id)
    note('cancel_requested', id, redis.call('HGET', job_key, 'attempt'))
    reply = 'cancelling'
  end
  replies[#replies + 1] = reply
end
if cancelled > 0 then redis.call('HINCRBY', KEYS[5], 'cancelled', cancelled) end
flush_events(KEYS[4], queue, now)
return replies
