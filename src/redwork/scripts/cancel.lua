--[[ cancel: withdraw jobs that have not started (waiting, held behind their key,
delayed, or pending on their dependencies -> cancelled). A running job is not touched:
it is the worker's. A cancelled job is final; its hash expires like a completed one. A
keyed job that was its key's head releases the key; a workflow's nodes that depend on a
cancelled one are skipped.
KEYS[1] wait      LIST of waiting job ids
KEYS[2] delayed   ZSET of delayed job ids
KEYS[3] marker    ZSET wake-up marker
KEYS[4] events    STREAM and channel of job events
KEYS[5] stats     HASH of counters
ARGV[1] prefix    ARGV[2] queue
ARGV[3] ttl       seconds a cancelled job is kept
ARGV[4..]         job ids
Returns one reply per job: OK, or the state that kept it from being cancelled
('active', 'completed', 'failed', 'cancelled', 'skipped'), or 'unknown' when there is
no such job.
]]
-- @include common
local q = { prefix = ARGV[1], wait = KEYS[1], delayed = KEYS[2], marker = KEYS[3] }
local queue, ttl = ARGV[2], ARGV[3]
local now = now_ms()
local replies = {}
local cancelled = 0
for i = 4, #ARGV do
  local reply = cancel_unstarted(q, ARGV[i], ttl, now)
  if reply == OK then cancelled = cancelled + 1 end
  replies[#replies + 1] = reply
end
if cancelled > 0 then redis.call('HINCRBY', KEYS[5], 'cancelled', cancelled) end
flush_events(KEYS[4], queue, now)
return replies
