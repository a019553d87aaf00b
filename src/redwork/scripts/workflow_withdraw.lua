--[[ workflow_withdraw: cancel workflows' jobs in this queue that have not started
(-> cancelled), asked by their workflows' home (outbox messages 'cancel', see
includes/workflow.lua): each end is told to the home like any other. A job that has
started runs to its end; one that has ended stays as it is.
KEYS[1] wait      LIST of waiting job ids
KEYS[2] delayed   ZSET of delayed job ids
KEYS[3] marker    ZSET wake-up marker
KEYS[4] events    STREAM and channel of job events
KEYS[5] stats     HASH of counters
KEYS[6] outbox    LIST of this queue's messages for others
ARGV[1] prefix    ARGV[2] queue
ARGV[3] ttl       seconds a cancelled job is kept
ARGV[4..]         messages, JSON {op: 'cancel', queue, wf, id}
Returns { one reply per message: OK, or the state that kept the job from being
cancelled ('unknown': no such job) ; messages written to this queue's outbox }.
]]
-- @include common
local q = { prefix = ARGV[1], wait = KEYS[1], delayed = KEYS[2], marker = KEYS[3] }
local queue = ARGV[2]
local now = now_ms()
local outbox_before = redis.call('LLEN', KEYS[6])
local replies, cancelled = {}, 0
for i = 4, #ARGV do
  local reply = cancel_unstarted(q, cjson.decode(ARGV[i]).id, ARGV[3], now)
  if reply == OK then cancelled = cancelled + 1 end
  replies[#replies + 1] = reply
end
if cancelled > 0 then redis.call('HINCRBY', KEYS[5], 'cancelled', cancelled) end
flush_events(KEYS[4], queue, now)
return { replies, redis.call('LLEN', KEYS[6]) - outbox_before }
